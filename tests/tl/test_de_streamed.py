"""``nsc.tl.de`` streamed -- a dask layer, ``chunked=True``, a ``dask.distributed`` cluster --
equals the in-memory path; the kernels' range-wise finishing and the large-Gram inverse."""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np
import pytest

import normalisr_sc as nsc
from normalisr_sc._core import _association
from normalisr_sc._core._association import Effect, case_control, high_moi, low_moi
from normalisr_sc._core._linalg import pinv_gram, pinv_psd

from .._helpers import assert_unchanged
from ._data import normalised_adata, normalised_arrays, random_guides

#: Guides per cell of the designs: mostly none or one at low MOI, several at high MOI.
PER_CELL = {"case_control": 1.0, "low_moi": 0.6, "high_moi": 4.0}
KERNELS = {"case_control": case_control, "low_moi": low_moi, "high_moi": high_moi}
RESULTS = ("pvals", "log10p", "logfc", "gamma", "var")
CHUNK = 97  # not a divisor of the number of cells: the last block is short


def _adata(design: str):
    expression, covariates = normalised_arrays(450, 30, seed=4)
    adata = normalised_adata(expression, covariates)
    guides = random_guides(adata.n_obs, 6, PER_CELL[design], seed=5)
    adata.obsm["guides"] = guides
    adata.layers["normalisr"] += 0.8 * guides[:, :1].toarray() * (np.arange(30) < 4)
    return adata


def _assert_same_de(streamed, expected, key="nsc_de"):
    for suffix in RESULTS:
        got, want = streamed.varm[f"{key}_{suffix}"], expected.varm[f"{key}_{suffix}"]
        assert list(got.columns) == list(want.columns)
        np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-10, atol=1e-14)
    for entry in ("df", "n_cells", "n_cells_test"):
        np.testing.assert_array_equal(streamed.uns[key][entry], expected.uns[key][entry])
    np.testing.assert_allclose(
        streamed.uns[key]["var_group"], expected.uns[key]["var_group"], rtol=1e-10
    )


@pytest.fixture(scope="module", params=list(KERNELS))
def case(request):
    """(design, AnnData with the in-memory results)."""
    design = request.param
    adata = _adata(design)
    nsc.tl.de(adata, "guides", design=design)
    assert (adata.varm["nsc_de_pvals"].iloc[:4, 0] < 1e-3).all()  # the planted effect
    return design, adata


@pytest.mark.slow
def test_dask_layer_is_streamed(case):
    design, expected = case
    adata = _adata(design)
    adata.layers["normalisr"] = da.from_array(adata.layers["normalisr"], chunks=(CHUNK, -1))
    nsc.tl.de(adata, "guides", design=design, chunk_size=CHUNK)
    assert isinstance(adata.layers["normalisr"], da.Array)
    _assert_same_de(adata, expected)


def test_chunked_in_memory_layer(case):
    design, expected = case
    adata = _adata(design)
    nsc.tl.de(adata, "guides", design=design, chunked=True, chunk_size=CHUNK)
    assert isinstance(adata.layers["normalisr"], np.ndarray)
    _assert_same_de(adata, expected)


@pytest.mark.slow
def test_on_local_cluster(case, dask_client):
    distributed = pytest.importorskip("distributed")
    design, expected = case
    adata = _adata(design)
    with distributed.get_task_stream(dask_client) as tasks:
        nsc.tl.de(adata, "guides", design=design, chunked=True, chunk_size=CHUNK)
    # The blocks were summed on the cluster's workers, not in this process.
    assert {task["worker"] for task in tasks.data} == set(dask_client.scheduler_info()["workers"])
    _assert_same_de(adata, expected)


def test_dask_layer_refuses_chunked_false():
    adata = _adata("case_control")
    adata.layers["normalisr"] = da.from_array(adata.layers["normalisr"], chunks=(CHUNK, -1))
    before = adata.copy()
    with pytest.raises(ValueError, match="drop `chunked=False`"):
        nsc.tl.de(adata, "guides", chunked=False)
    assert_unchanged(before, adata)


@pytest.mark.parametrize("chunk_size", [0, 2.5])
def test_bad_chunk_size(chunk_size):
    adata = _adata("case_control")
    before = adata.copy()
    with pytest.raises(ValueError, match="chunk_size"):
        nsc.tl.de(adata, "guides", chunk_size=chunk_size)
    assert_unchanged(before, adata)


@pytest.mark.parametrize("design", list(KERNELS))
def test_results_do_not_depend_on_step_size(design, monkeypatch):
    expression, covariates = normalised_arrays(300, 25, seed=6)
    groups = random_guides(300, 9, PER_CELL[design], seed=7).toarray()
    groups[:, 4] = 0  # an untested group among tested ones
    effect = Effect(expression[::-1] * 0.5 + 1.0, covariates[:, :2])  # any log CPM
    whole = KERNELS[design](groups, expression, covariates, block_cells=128, effect=effect)
    # A few elements a step: products, coefficients and statistics over many small ranges.
    monkeypatch.setattr(_association, "CHUNK_ELEMENTS", 50)
    ranged = KERNELS[design](groups, expression, covariates, block_cells=128, effect=effect)
    assert not whole.tested[4]
    for name in ("neg_log10_pvals", "gamma", "var_y", "var_x", "logfc"):
        np.testing.assert_allclose(
            getattr(ranged, name), getattr(whole, name), rtol=1e-10, atol=1e-14
        )


def _gram(eigenvalues: np.ndarray, seed: int) -> np.ndarray:
    basis, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(eigenvalues.size,) * 2))
    return (basis * eigenvalues) @ basis.T


@pytest.mark.parametrize(
    ("eigenvalues", "rank"),
    [
        (np.linspace(0.5, 3.0, 40), 40),  # well conditioned: the Cholesky inverse
        (np.r_[np.zeros(3), np.linspace(0.5, 3.0, 37)], 37),  # singular
        (np.r_[1e-11, np.linspace(0.5, 3.0, 39)], 39),  # invertible, but below the rank cutoff
    ],
)
def test_large_gram_inverse_is_the_pseudo_inverse(eigenvalues, rank):
    gram = _gram(eigenvalues, seed=rank)
    pinv, found = pinv_gram(gram)
    expected, expected_rank = pinv_psd(gram)
    assert found == expected_rank == rank
    np.testing.assert_allclose(pinv, expected, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.nan, r"contains NaN or infinite values \(1 of them\)"),
        (1e300, r"holds values so large that their sums of squares overflow"),
    ],
)
@pytest.mark.parametrize("how", ["dask", "chunked"])
@pytest.mark.parametrize("design", [*KERNELS, "coex"])
def test_streamed_layer_refused_through_the_sums(design, how, bad, message):
    """Streamed, the kernels' sums find what the layer holds, before anything changes.

    The layer's blocks are not read once more to check them first; the refusal reads the
    layer again to tell NaN and infinity from finite values whose squares overflow.
    """
    adata = _adata("low_moi" if design == "coex" else design)
    layer = np.array(adata.layers["normalisr"])
    layer[200, 7] = bad
    adata.layers["normalisr"] = da.from_array(layer, chunks=(CHUNK, -1)) if how == "dask" else layer
    before = adata.copy()
    if design == "coex":
        run = partial(nsc.tl.coex, adata, chunked=True, chunk_size=CHUNK)
    else:
        run = partial(nsc.tl.de, adata, "guides", design=design, chunked=True, chunk_size=CHUNK)
    with pytest.raises(ValueError, match=r"adata.layers\['normalisr'\] " + message):
        run()
    assert_unchanged(before, adata)
