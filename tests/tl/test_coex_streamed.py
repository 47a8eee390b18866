"""``nsc.tl.coex`` streamed over a dask layer, float32 storage and network-only storage."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import sparse

import normalisr_sc as nsc
from normalisr_sc._core._coex import pvalue_network
from normalisr_sc._core._pvalues import bh_qvalues

from .._helpers import assert_unchanged, dense
from ._data import normalised_adata, normalised_arrays

MATRICES = ("pvals", "log10p", "r")
STREAMED_RTOL = 1e-10


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    expression, covariates = normalised_arrays(500, 40, seed=11)
    # Two co-expression modules, so that the network has edges of varied strength.
    rng = np.random.default_rng(12)
    expression[:, :8] += 0.7 * rng.normal(size=500)[:, None]
    expression[:, 20:26] += 0.3 * rng.normal(size=500)[:, None]
    return expression, covariates


@pytest.fixture
def adata(arrays):
    return normalised_adata(*arrays)


@pytest.fixture
def dask_adata(arrays):
    adata = normalised_adata(*arrays)
    adata.layers["normalisr"] = da.from_array(adata.layers["normalisr"], chunks=(90, -1))
    return adata


def assert_results_close(ours, reference, key: str = "nsc_coex", rtol: float = STREAMED_RTOL):
    for name in MATRICES:
        np.testing.assert_allclose(
            dense(ours.varp[f"{key}_{name}"]),
            dense(reference.varp[f"{key}_{name}"]),
            rtol=rtol,
            atol=rtol * 1e-2,
            err_msg=name,
        )
    np.testing.assert_allclose(ours.var[f"{key}_var"], reference.var[f"{key}_var"], rtol=rtol)
    assert ours.uns[key]["df"] == reference.uns[key]["df"]
    assert ours.uns[key]["n_cells"] == reference.uns[key]["n_cells"]


def test_dask_layer_matches_in_memory(adata, dask_adata):
    nsc.tl.coex(adata)
    nsc.tl.coex(dask_adata)
    assert_results_close(dask_adata, adata)
    nsc.tl.binnet(adata, qcut=0.1)
    nsc.tl.binnet(dask_adata, qcut=0.1)
    net = dask_adata.varp["nsc_coex_net"]
    assert net.nnz > 30
    np.testing.assert_array_equal(net.toarray(), adata.varp["nsc_coex_net"].toarray())
    # The layer stays a lazy dask array.
    assert isinstance(dask_adata.layers["normalisr"], da.Array)


def test_chunked_in_memory_layer_matches(adata):
    nsc.tl.coex(adata)
    reference = adata.copy()
    nsc.tl.coex(adata, chunked=True, chunk_size=70)
    assert_results_close(adata, reference)


def test_gene_subset_of_a_dask_layer(adata, dask_adata):
    genes = list(adata.var_names[[30, 3, 21, 7, 22]])
    nsc.tl.coex(adata, genes=genes)
    nsc.tl.coex(dask_adata, genes=genes, chunk_size=200)
    assert sparse.issparse(dask_adata.varp["nsc_coex_r"])
    assert list(dask_adata.uns["nsc_coex"]["genes"]) == list(adata.uns["nsc_coex"]["genes"])
    assert_results_close(dask_adata, adata)


@pytest.mark.slow
def test_dask_cluster_matches_in_memory(adata, dask_adata, dask_client):
    distributed = pytest.importorskip("distributed")
    nsc.tl.coex(adata)
    nsc.tl.binnet(adata)
    network = dask_adata.copy()
    with distributed.get_task_stream(dask_client) as tasks:
        nsc.tl.coex(dask_adata)
        nsc.tl.coex(network, store="network")
    # The Gram matrices were accumulated on the cluster's workers, not in this process.
    assert {task["worker"] for task in tasks.data} == set(dask_client.scheduler_info()["workers"])
    assert_results_close(dask_adata, adata)
    assert network.varp["nsc_coex_net"].nnz > 30
    assert (network.varp["nsc_coex_net"] != adata.varp["nsc_coex_net"]).nnz == 0


def test_float32_matches_float64(adata):
    nsc.tl.coex(adata)
    reference = {name: adata.varp[f"nsc_coex_{name}"].copy() for name in MATRICES}
    nsc.tl.coex(adata, dtype="float32")
    assert adata.uns["nsc_coex"]["params"]["dtype"] == "float32"
    for name in MATRICES:
        stored = adata.varp[f"nsc_coex_{name}"]
        assert stored.dtype == np.float32
        np.testing.assert_allclose(stored, reference[name], rtol=1e-6, atol=1e-30, err_msg=name)
    nsc.tl.binnet(adata)
    assert adata.varp["nsc_coex_net"].nnz > 30


def test_float32_keeps_the_strength_of_underflowing_pairs():
    expression, covariates = normalised_arrays(3000, 3, seed=2)
    expression[:, 1] = expression[:, 0] + 0.05 * expression[:, 1]
    adata = normalised_adata(expression, covariates)
    nsc.tl.coex(adata, dtype=np.float32)
    log10p = adata.varp["nsc_coex_log10p"][0, 1]
    assert adata.varp["nsc_coex_pvals"][0, 1] == 0  # below the smallest float32
    assert np.isfinite(log10p)
    assert log10p > 100


@pytest.mark.parametrize("genes", [None, [f"gene{j}" for j in (0, 2, 4, 6, 9, 20, 21, 22, 39)]])
@pytest.mark.parametrize("qcut", [0.01, 0.2])
def test_network_only_equals_binnet_of_the_full_result(adata, genes, qcut):
    nsc.tl.coex(adata, genes=genes)
    nsc.tl.binnet(adata, qcut=qcut)
    expected = adata.varp["nsc_coex_net"].copy()
    variance = adata.var["nsc_coex_var"].copy()
    nsc.tl.coex(adata, genes=genes, store="network", qcut=qcut)
    net = adata.varp["nsc_coex_net"]
    assert net.dtype == bool
    assert net.nnz > 0
    assert (net != expected).nnz == 0
    assert adata.uns["nsc_coex"]["binnet"] == {"qcut": qcut, "n_edges": expected.nnz}
    assert adata.uns["nsc_coex"]["store"] == "network"
    np.testing.assert_array_equal(adata.var["nsc_coex_var"], variance)
    # The matrices of the earlier run under the same key are gone.
    assert not {f"nsc_coex_{name}" for name in MATRICES} & set(adata.varp)


def test_network_only_on_a_dask_layer(adata, dask_adata):
    nsc.tl.coex(adata)
    nsc.tl.binnet(adata)
    nsc.tl.coex(dask_adata, store="network")
    assert dask_adata.uns["nsc_coex"]["binnet"]["qcut"] == 0.05
    assert (dask_adata.varp["nsc_coex_net"] != adata.varp["nsc_coex_net"]).nnz == 0


def test_full_run_after_network_only_drops_the_stale_network(adata):
    nsc.tl.coex(adata, store="network")
    nsc.tl.coex(adata)
    assert "nsc_coex_net" not in adata.varp
    assert "binnet" not in adata.uns["nsc_coex"]
    assert adata.varp["nsc_coex_pvals"].shape == (adata.n_vars, adata.n_vars)


def test_results_that_need_p_values_explain_network_only(adata):
    nsc.tl.coex(adata, store="network", qcut=0.05)
    nsc.tl.binnet(adata, qcut=0.05)  # the same network: nothing to do
    before = adata.copy()
    with pytest.raises(ValueError, match=r"kept only the network at qcut=0\.05.*qcut=0\.01"):
        nsc.tl.binnet(adata, qcut=0.01)
    for call in (nsc.get.coex_df, lambda a: nsc.pl.qq(a, "nsc_coex", show=False)):
        with pytest.raises(ValueError, match=r"store='network'.*store='all'"):
            call(adata)
    assert_unchanged(before, adata)


def test_pvalue_network_is_per_row_benjamini_hochberg():
    rng = np.random.default_rng(3)
    # Rounded p-values: many ties, some exactly at the cutoffs.
    pvals = np.round(rng.uniform(0, 0.3, (60, 60)) ** 2, 3)
    pvals = np.triu(pvals, 1) + np.triu(pvals, 1).T
    for qcut in (0.01, 0.05, 0.09):
        expected = bh_qvalues(np.where(np.eye(60, dtype=bool), np.nan, pvals), axis=1) <= qcut
        rows, cols = pvalue_network(pvals, qcut=qcut, band_rows=7)
        net = np.zeros_like(expected)
        net[rows, cols] = True
        assert expected.sum() > 0
        np.testing.assert_array_equal(net, expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"store": "edges"}, "store must be one of"),
        ({"dtype": np.int32}, "float32 or float64"),
        ({"dtype": "float16"}, "float32 or float64"),
        ({"dtype": "no such type"}, "float32 or float64"),
        ({"qcut": 0.01}, "store='network' only"),
        ({"store": "network", "qcut": 1.0}, "qcut"),
        ({"store": "network", "qcut": 0.0}, "qcut"),
        ({"store": "network", "qcut": 1e-300}, "empty"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_input_leaves_adata_unchanged(adata, kwargs, match):
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        nsc.tl.coex(adata, **kwargs)
    assert_unchanged(before, adata)


def test_chunked_false_on_a_dask_layer_is_an_error(dask_adata):
    before = dask_adata.copy()
    with pytest.raises(ValueError, match="chunked=False"):
        nsc.tl.coex(dask_adata, chunked=False)
    assert_unchanged(before, dask_adata)
