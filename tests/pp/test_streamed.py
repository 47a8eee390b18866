"""The streamed (chunked, dask) normalisation equals the in-memory one and holds no dense matrix."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import dask.array as da
import numpy as np
import pytest
from scipy import sparse

import normalisr_sc as nsc

CHUNK = 257  # not a divisor of the number of cells: the last block is short


@pytest.fixture(scope="module")
def screen() -> ad.AnnData:
    adata = nsc.datasets.simulate(n_cells=1200, n_genes=300, n_targets=6, moi=3.0, seed=3)
    adata.X = sparse.csr_matrix(adata.X)
    return adata


@pytest.fixture(scope="module")
def in_memory(screen) -> ad.AnnData:
    return nsc.pp.normalize(screen, covariates=["batch"], copy=True)


def assert_same_normalisation(streamed: ad.AnnData, expected: ad.AnnData) -> None:
    assert streamed.shape == expected.shape
    assert list(streamed.obs_names) == list(expected.obs_names)
    assert list(streamed.var_names) == list(expected.var_names)
    for key in ("lcpm", "normalisr"):
        layer = streamed.layers[key]
        assert isinstance(layer, da.Array), f"layers[{key!r}] is not lazy"
        np.testing.assert_allclose(layer.compute(), expected.layers[key], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(streamed.obs["nsc_weight"], expected.obs["nsc_weight"], rtol=1e-10)
    np.testing.assert_array_equal(streamed.obs["nsc_outlier"], expected.obs["nsc_outlier"])
    np.testing.assert_allclose(streamed.var["nsc_scale"], expected.var["nsc_scale"], rtol=1e-12)
    for key in ("nsc_covariates", "nsc_covariates_norm"):
        np.testing.assert_allclose(streamed.obsm[key], expected.obsm[key], rtol=1e-10)
    np.testing.assert_allclose(
        streamed.varm["nsc_normvar"], expected.varm["nsc_normvar"], rtol=1e-8, atol=1e-12
    )


@pytest.mark.slow
def test_chunked_normalize_equals_in_memory(screen, in_memory):
    streamed = nsc.pp.normalize(
        screen, covariates=["batch"], chunked=True, chunk_size=CHUNK, copy=True
    )
    assert_same_normalisation(streamed, in_memory)
    # The counts the user passed are untouched and still in memory.
    assert sparse.issparse(screen.X)


@pytest.mark.slow
def test_dask_counts_are_streamed_without_asking(screen, in_memory):
    adata = screen.copy()
    adata.X = da.from_array(screen.X, chunks=(400, -1), asarray=False)
    nsc.pp.normalize(adata, covariates=["batch"], chunk_size=CHUNK)
    assert_same_normalisation(adata, in_memory)


@pytest.mark.slow
def test_backed_counts_need_copy_and_stay_on_disk(screen, in_memory, tmp_path):
    path = tmp_path / "screen.h5ad"
    screen.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="copy=True"):
        nsc.pp.normalize(backed, covariates=["batch"])
    assert "normalisr" not in backed.layers
    assert "nsc_weight" not in backed.obs
    result = nsc.pp.normalize(backed, covariates=["batch"], chunk_size=CHUNK, copy=True)
    assert isinstance(result.X, da.Array)
    assert_same_normalisation(result, in_memory)


@pytest.mark.slow
def test_streamed_results_survive_h5ad_round_trip(screen, in_memory, tmp_path):
    streamed = nsc.pp.normalize(
        screen, covariates=["batch"], chunked=True, chunk_size=CHUNK, copy=True
    )
    path = tmp_path / "normalised.h5ad"
    streamed.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(
        back.layers["normalisr"], in_memory.layers["normalisr"], rtol=1e-8, atol=1e-10
    )
    np.testing.assert_allclose(
        back.varm["nsc_normvar"], in_memory.varm["nsc_normvar"], rtol=1e-8, atol=1e-12
    )


@pytest.mark.slow
def test_chunked_steps_equal_in_memory_steps(in_memory):
    adata = in_memory.copy()
    nsc.pp.compute_var(adata, chunked=True, chunk_size=CHUNK, key_added="weight_streamed")
    expected = adata.copy()
    nsc.pp.compute_var(expected, key_added="weight_streamed")
    np.testing.assert_allclose(
        adata.obs["weight_streamed"], expected.obs["weight_streamed"], rtol=1e-10
    )
    nsc.pp.normvar(adata, chunked=True, chunk_size=CHUNK, key_added="streamed", dtype="float32")
    nsc.pp.normvar(expected, key_added="streamed", dtype="float32")
    assert adata.layers["streamed"].dtype == np.float32
    np.testing.assert_allclose(
        adata.layers["streamed"].compute(), expected.layers["streamed"], rtol=1e-5, atol=1e-6
    )


def test_chunked_false_refuses_dask_counts(screen):
    adata = screen.copy()
    adata.X = da.from_array(screen.X, chunks=(400, -1), asarray=False)
    with pytest.raises(ValueError, match="chunked=False"):
        nsc.pp.normalize(adata, chunked=False)
    assert "nsc_weight" not in adata.obs
    assert isinstance(adata.X, da.Array)


@pytest.mark.parametrize("chunk_size", [0, -5, 2.5])
def test_bad_chunk_size(screen, chunk_size):
    adata = screen.copy()
    with pytest.raises(ValueError, match="chunk_size"):
        nsc.pp.normalize(adata, chunked=True, chunk_size=chunk_size)
    assert "lcpm" not in adata.layers
    assert adata.shape == screen.shape


@pytest.mark.slow
def test_streamed_recipe_never_holds_a_dense_matrix():
    """Peak traced memory stays far below one dense float64 cells x genes matrix.

    QC and outlier removal are off: subsetting the user's own sparse counts in place
    copies them, which is not the recipe's working memory.
    """
    adata = nsc.datasets.simulate(n_cells=12000, n_genes=2000, mean_total_counts=2000.0, seed=5)
    adata.X = sparse.csr_matrix(adata.X)
    dense_bytes = adata.n_obs * adata.n_vars * 8
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        nsc.pp.normalize(
            adata,
            covariates=["batch"],
            qc=None,
            remove_outliers=False,
            chunked=True,
            chunk_size=250,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(adata.layers["normalisr"], da.Array)
    assert peak < 0.3 * dense_bytes, f"peak {peak / 1e6:.1f} MB vs dense {dense_bytes / 1e6:.1f} MB"


@pytest.mark.slow
def test_view_of_backed_counts_reads_only_its_cells(screen, tmp_path):
    path = tmp_path / "screen.h5ad"
    screen.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    picked = np.arange(screen.n_obs) % 2 == 0
    result = nsc.pp.normalize(backed[picked], covariates=["batch"], chunk_size=CHUNK, copy=True)
    expected = nsc.pp.normalize(screen[picked], covariates=["batch"], copy=True)
    assert_same_normalisation(result, expected)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Writing zarr v2 data")
def test_counts_in_a_zarr_store_are_streamed(screen, in_memory, tmp_path):
    zarr = pytest.importorskip("zarr")
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    screen.write_zarr(tmp_path / "screen.zarr")
    store = zarr.open_group(tmp_path / "screen.zarr", mode="r")
    adata = ad.AnnData(
        X=read_elem_lazy(store["X"], chunks=(300, screen.n_vars)),
        obs=read_elem(store["obs"]),
        var=read_elem(store["var"]),
    )
    nsc.pp.normalize(adata, covariates=["batch"], chunk_size=CHUNK)
    assert isinstance(adata.X, da.Array)
    assert_same_normalisation(adata, in_memory)
