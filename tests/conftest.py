"""Shared fixtures: generated count matrices and the real data sets of ../shared/data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

import normalisr_sc as nsc

if TYPE_CHECKING:
    from anndata import AnnData

# anndata (and scipy.sparse) are imported in the fixtures, not here: pytest-xdist's
# controller process loads this file too, and never needs them.

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _quiet_progress():
    nsc.settings.progress = False
    yield
    nsc.settings.progress = None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def random_counts(
    n_cells: int = 300, n_genes: int = 80, *, seed: int = 0, mean_total: float = 2000.0
) -> np.ndarray:
    """Dense int64 negative-binomial counts, cells x genes, every cell non-empty."""
    rng = np.random.default_rng(seed)
    proportions = rng.dirichlet(np.full(n_genes, 0.5))
    depth = rng.lognormal(np.log(mean_total), 0.5, n_cells)
    rate = rng.gamma(5.0, np.outer(depth, proportions) / 5.0)
    counts = rng.poisson(rate)
    counts[counts.sum(axis=1) == 0, 0] = 1
    return counts


@pytest.fixture
def counts_adata() -> AnnData:
    """Small AnnData with CSR int counts and a categorical ``batch`` column."""
    from anndata import AnnData
    from scipy import sparse

    counts = random_counts()
    adata = AnnData(X=sparse.csr_matrix(counts))
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 3 == 0, "b1", "b2")
    adata.obs["batch"] = adata.obs["batch"].astype("category")
    return adata


@pytest.fixture(scope="session")
def make_counts():
    """:func:`random_counts` as a fixture, for test modules that cannot import conftest."""
    return random_counts


@pytest.fixture(scope="session")
def _local_cluster_client():
    """A client of a local ``dask.distributed`` cluster: 2 worker processes, 1 thread each.

    Started once per test session (per pytest-xdist worker) and not made the default
    client, so that tests which do not ask for :func:`dask_client` keep dask's local
    scheduler.
    """
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.fixture
def dask_client(_local_cluster_client):
    """The session's local-cluster client, active (the default client) during the test."""
    with _local_cluster_client.as_current():
        yield _local_cluster_client
