"""qc_reads, lcpm and scaling_factor streamed (chunked, dask X, backed h5ad) equal in memory."""

from __future__ import annotations

import tracemalloc

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData, read_h5ad
from scipy import sparse

import normalisr_sc as nsc

from .._helpers import assert_close, assert_nested_equal, assert_unchanged, counts_adata

#: Bounds that remove some genes and cells of ``counts`` in more than one round.
QC = {"min_gene_cells": 60, "min_cell_counts": 150, "min_cell_genes": 15}
#: Cells per chunk of the dask X and per block of the streamed passes: neither divides
#: the number of cells, and they differ, so chunks are rechunked and blocks uneven.
DASK_CHUNK, CHUNK_SIZE = 23, 37
STREAMED = ("chunked", "dask", "backed")


@pytest.fixture
def counts(make_counts) -> np.ndarray:
    counts = make_counts(300, 80, seed=4, mean_total=300)
    counts[:, :5] = 0  # genes QC drops; rare genes elsewhere
    counts[:, 5] = np.arange(300) % 40 == 0
    return counts


def streamed_adata(counts: np.ndarray, how: str, tmp_path) -> AnnData:
    """The counts as CSR in memory (``chunked``), a dask X, or a backed h5ad."""
    adata = counts_adata(counts)
    if how == "dask":
        adata.X = da.from_array(adata.X, chunks=(DASK_CHUNK, -1), asarray=False)
    elif how == "backed":
        path = tmp_path / "counts.h5ad"
        adata.write_h5ad(path)
        adata = read_h5ad(path, backed="r")
    return adata


def stream_args(how: str) -> dict:
    """``chunked=True`` for in-memory counts; dask and backed stream by default."""
    return (
        {"chunked": True, "chunk_size": CHUNK_SIZE}
        if how == "chunked"
        else {"chunk_size": CHUNK_SIZE}
    )


def values(matrix) -> np.ndarray:
    if isinstance(matrix, da.Array):
        matrix = matrix.compute()
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


def assert_same_results(streamed: AnnData, reference: AnnData) -> None:
    """Same names, obs, var, obsm, uns and lcpm values (to 1e-10)."""
    assert streamed.shape == reference.shape
    pd.testing.assert_index_equal(streamed.obs_names, reference.obs_names)
    pd.testing.assert_index_equal(streamed.var_names, reference.var_names)
    pd.testing.assert_frame_equal(streamed.obs, reference.obs)
    pd.testing.assert_frame_equal(streamed.var, reference.var, check_exact=False, rtol=1e-10)
    pd.testing.assert_frame_equal(
        streamed.obsm["nsc_cov"], reference.obsm["nsc_cov"], check_exact=False, rtol=1e-10
    )
    # Parameters of every step; not the fingerprints of values equal only to 1e-10.
    keys = set(reference.uns) - {"nsc_written", "nsc_qc"}
    assert keys == set(streamed.uns) - {"nsc_written", "nsc_qc"}
    assert_nested_equal(
        {k: reference.uns[k]["params"] for k in keys}, {k: streamed.uns[k]["params"] for k in keys}
    )
    assert isinstance(streamed.layers["lcpm"], da.Array)
    assert_close(values(streamed.layers["lcpm"]), reference.layers["lcpm"], rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("how", STREAMED)
def test_qc_reads_masks_equal_in_memory(counts, how, tmp_path):
    expected = nsc.pp.qc_reads(counts_adata(counts), **QC, inplace=False)
    adata = streamed_adata(counts, how, tmp_path)
    cells, genes = nsc.pp.qc_reads(adata, **QC, inplace=False, **stream_args(how))
    np.testing.assert_array_equal(cells, expected[0])
    np.testing.assert_array_equal(genes, expected[1])
    assert 0 < cells.sum() < cells.size
    assert 0 < genes.sum() < genes.size


@pytest.mark.slow
@pytest.mark.parametrize("how", ["chunked", "dask"])
def test_qc_reads_and_lcpm_equal_in_memory(counts, how, tmp_path):
    reference = counts_adata(counts)
    nsc.pp.qc_reads(reference, **QC)
    nsc.pp.lcpm(reference)
    adata = streamed_adata(counts, how, tmp_path)
    nsc.pp.qc_reads(adata, **QC, **stream_args(how))
    nsc.pp.lcpm(adata, **stream_args(how))
    assert adata.uns["nsc_qc"]["params"]["rounds"] > 1
    assert_same_results(adata, reference)
    # A dask X is subset lazily; in-memory counts stay in memory.
    assert isinstance(adata.X, da.Array) == (how == "dask")
    np.testing.assert_array_equal(values(adata.X), reference.X.toarray())


@pytest.mark.slow
def test_lcpm_backed_equals_in_memory(counts, tmp_path):
    reference = counts_adata(counts)
    nsc.pp.qc_reads(reference, min_cell_counts=1)
    nsc.pp.lcpm(reference)
    adata = streamed_adata(reference.X.toarray(), "backed", tmp_path)
    nsc.pp.lcpm(adata, chunk_size=CHUNK_SIZE)
    assert adata.isbacked
    del reference.uns["nsc_qc"]
    assert_same_results(adata, reference)


def test_lazy_layer_is_chunked_by_cells(counts):
    adata = counts_adata(counts)
    nsc.pp.lcpm(adata, chunked=True, chunk_size=CHUNK_SIZE)
    layer = adata.layers["lcpm"]
    assert isinstance(layer, da.Array)
    assert layer.dtype == np.float64
    assert layer.chunks[1] == (adata.n_vars,)
    assert set(layer.chunks[0][:-1]) == {CHUNK_SIZE}
    block = layer.blocks[1].compute()
    assert isinstance(block, np.ndarray)
    assert block.dtype == np.float64
    assert block.shape == (CHUNK_SIZE, adata.n_vars)


@pytest.mark.slow
def test_chunked_lcpm_copies_no_counts():
    """Neither the passes nor the lazy layer hold a copy of in-memory counts."""
    rng = np.random.default_rng(0)
    counts = sparse.random(
        4000,
        500,
        density=0.3,
        format="csr",
        random_state=rng,
        data_rvs=lambda n: rng.integers(1, 20, n),
    ).astype(np.int64)
    adata = AnnData(X=counts)
    counts_bytes = counts.data.nbytes + counts.indices.nbytes
    # Warm up: the first streamed pass imports modules (dask.distributed, if installed).
    nsc.pp.lcpm(AnnData(X=counts[:10]), chunked=True)
    tracemalloc.start()
    try:
        nsc.pp.lcpm(adata, chunked=True, chunk_size=50)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * counts_bytes, peak / counts_bytes
    assert held < 0.25 * counts_bytes, held / counts_bytes
    assert isinstance(adata.layers["lcpm"], da.Array)


def test_lazy_layer_float32(counts):
    reference, adata = counts_adata(counts), counts_adata(counts)
    nsc.pp.lcpm(reference, dtype=np.float32)
    nsc.pp.lcpm(adata, dtype=np.float32, chunked=True, chunk_size=CHUNK_SIZE)
    assert adata.layers["lcpm"].dtype == np.float32
    computed = adata.layers["lcpm"].compute()
    assert computed.dtype == np.float32
    np.testing.assert_array_equal(computed, reference.layers["lcpm"])


@pytest.mark.slow
@pytest.mark.parametrize("how", STREAMED)
@pytest.mark.parametrize("variable", ["zero_fraction", "log_mean_cell_proportion"])
def test_scaling_factor_equals_in_memory(counts, how, variable, tmp_path):
    counts = counts[:, (counts > 0).any(axis=0)]  # so that every variable is finite
    expected = nsc.pp.scaling_factor(
        counts_adata(counts), variable=variable, zero_at="min", inplace=False
    )
    adata = streamed_adata(counts, how, tmp_path)
    result = nsc.pp.scaling_factor(
        adata, variable=variable, zero_at="min", inplace=False, **stream_args(how)
    )
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_lazy_layer_written_to_h5ad(counts, tmp_path):
    reference, adata = counts_adata(counts), counts_adata(counts)
    nsc.pp.lcpm(reference)
    nsc.pp.lcpm(adata, chunked=True, chunk_size=CHUNK_SIZE)
    adata.write_h5ad(tmp_path / "lazy.h5ad")
    read = read_h5ad(tmp_path / "lazy.h5ad")
    assert isinstance(read.layers["lcpm"], np.ndarray)
    assert_close(read.layers["lcpm"], reference.layers["lcpm"], rtol=1e-10)
    pd.testing.assert_frame_equal(read.obsm["nsc_cov"], reference.obsm["nsc_cov"])


# ---------------------------------------------------------------- refusals, nothing changed


def state(adata: AnnData) -> dict:
    """What a failed call must not change, for AnnData that cannot be copied (dask, backed)."""
    return {
        # A backed X is a new object at each access: the file stands for it.
        "X": adata.filename if adata.isbacked else adata.X,
        "shape": adata.shape,
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "layers": set(adata.layers),
        "obsm": set(adata.obsm),
        "uns": dict(adata.uns),
    }


def assert_same_state(before: dict, adata: AnnData) -> None:
    after = state(adata)
    assert after["X"] is before["X"] or after["X"] == before["X"]
    assert after["shape"] == before["shape"]
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    pd.testing.assert_frame_equal(after["var"], before["var"])
    assert after["layers"] == before["layers"]
    assert after["obsm"] == before["obsm"]
    assert_nested_equal(before["uns"], after["uns"])


def assert_fails_streamed(adata: AnnData, how: str, function, match: str, **kwargs) -> None:
    """``function`` raises ValueError matching ``match`` and leaves ``adata`` unchanged."""
    if how == "chunked":
        before = adata.copy()
        with pytest.raises(ValueError, match=match):
            function(adata, **kwargs, **stream_args(how))
        assert_unchanged(before, adata)
        return
    before = state(adata)
    with pytest.raises(ValueError, match=match):
        function(adata, **kwargs, **stream_args(how))
    assert_same_state(before, adata)


COUNT_READERS = {
    "qc_reads": nsc.pp.qc_reads,
    "lcpm": nsc.pp.lcpm,
    "scaling_factor": nsc.pp.scaling_factor,
}


def spoiled(counts: np.ndarray, value: float) -> np.ndarray:
    """Float counts with ``value`` in the last cell, so only the last block is bad."""
    counts = counts.astype(np.float64)
    counts[-1, 7] = value
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("how", STREAMED)
@pytest.mark.parametrize("step", list(COUNT_READERS))
@pytest.mark.parametrize(
    ("value", "match"),
    [
        (-3.0, r"adata.X contains negative values \(minimum -3\)"),
        (2.5, r"adata.X contains non-integer values \(e.g. 2.5\)"),
        (np.nan, "adata.X contains NaN or infinite values"),
    ],
)
def test_bad_counts_refused(counts, how, step, value, match, tmp_path):
    adata = streamed_adata(spoiled(counts, value), how, tmp_path)
    # A backed AnnData can only be filtered out of place.
    kwargs = {"inplace": False} if (step, how) == ("qc_reads", "backed") else {}
    assert_fails_streamed(adata, how, COUNT_READERS[step], match, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("how", STREAMED)
@pytest.mark.parametrize("step", ["lcpm", "scaling_factor"])
def test_empty_cells_refused(counts, how, step, tmp_path):
    counts = counts.copy()
    counts[[40, 299]] = 0
    adata = streamed_adata(counts, how, tmp_path)
    assert_fails_streamed(
        adata,
        how,
        COUNT_READERS[step],
        r"2 cell\(s\) have zero total count \(e.g. \['cell40', 'cell299'\]\)",
    )


@pytest.mark.parametrize("how", STREAMED)
def test_lcpm_resampling_refused(counts, how, tmp_path):
    adata = streamed_adata(counts, how, tmp_path)
    assert_fails_streamed(
        adata, how, nsc.pp.lcpm, r"varscale > 0 .* draw new noise", varscale=1.0, seed=0
    )


@pytest.mark.slow
def test_qc_reads_backed_not_in_place(counts, tmp_path):
    adata = streamed_adata(counts, "backed", tmp_path)
    assert_fails_streamed(
        adata,
        "backed",
        nsc.pp.qc_reads,
        r"backed on disk and cannot be subset in place.*inplace=False",
        **QC,
    )
    # The way out the message suggests.
    cells, genes = nsc.pp.qc_reads(adata, **QC, inplace=False)
    kept = adata[cells, genes].copy(filename=tmp_path / "kept.h5ad")
    assert kept.isbacked
    assert kept.shape == (cells.sum(), genes.sum())


def test_dask_x_refuses_chunked_false(counts, tmp_path):
    adata = streamed_adata(counts, "dask", tmp_path)
    assert_fails_streamed(adata, "dask", nsc.pp.lcpm, "drop `chunked=False`", chunked=False)


# ---------------------------------------------------------------- on a dask.distributed cluster


@pytest.mark.slow
def test_qc_reads_and_lcpm_on_local_cluster(counts, tmp_path, dask_client):
    distributed = pytest.importorskip("distributed")
    reference = counts_adata(counts)
    nsc.pp.qc_reads(reference, **QC)
    nsc.pp.lcpm(reference)
    adata = streamed_adata(counts, "dask", tmp_path)
    with distributed.get_task_stream(dask_client) as tasks:
        nsc.pp.qc_reads(adata, **QC, **stream_args("dask"))
        nsc.pp.lcpm(adata, **stream_args("dask"))
        computed = adata.layers["lcpm"].compute()
    assert {task["worker"] for task in tasks.data} == set(dask_client.scheduler_info()["workers"])
    assert_same_results(adata, reference)
    assert_close(computed, reference.layers["lcpm"], rtol=1e-10)
