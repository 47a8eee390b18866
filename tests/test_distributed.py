"""The whole pipeline on a 2-worker ``dask.distributed`` cluster equals the in-memory path."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import sparse

import normalisr_sc as nsc

distributed = pytest.importorskip("distributed")
get_task_stream = distributed.get_task_stream


@pytest.fixture(scope="module")
def screen():
    adata = nsc.datasets.simulate(n_cells=900, n_genes=150, n_targets=5, moi=3.0, seed=11)
    adata.X = sparse.csr_matrix(adata.X)
    nsc.tl.assign_guides(adata, "grna_counts", mode="threshold", threshold=1, groups="grna_group")
    return adata


def _pipeline(adata, **chunking):
    nsc.pp.normalize(adata, covariates=["batch"], **chunking)
    nsc.tl.de(adata, "nsc_guides", design="high_moi", **chunking)
    nsc.tl.coex(adata, **chunking)
    return adata


@pytest.mark.slow  # starts a local cluster of 2 worker processes
def test_pipeline_on_local_cluster_equals_in_memory(screen, dask_client):
    expected = _pipeline(screen.copy())
    with get_task_stream(dask_client) as tasks:
        on_cluster = _pipeline(screen.copy(), chunked=True, chunk_size=200)
    assert isinstance(on_cluster.layers["normalisr"], da.Array)
    # The passes ran on the cluster's workers, not in this process.
    workers = {task["worker"] for task in tasks.data}
    assert workers == set(dask_client.scheduler_info()["workers"])
    np.testing.assert_allclose(on_cluster.obs["nsc_weight"], expected.obs["nsc_weight"], rtol=1e-10)
    np.testing.assert_allclose(
        on_cluster.layers["normalisr"].compute(),
        expected.layers["normalisr"],
        rtol=1e-8,
        atol=1e-10,
    )
    for key in ("nsc_de_log10p", "nsc_de_logfc"):
        np.testing.assert_allclose(on_cluster.varm[key], expected.varm[key], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(
        on_cluster.varp["nsc_coex_r"], expected.varp["nsc_coex_r"], rtol=1e-8, atol=1e-10
    )
