"""nsc.settings: n_jobs (threads of every step) and its helpers."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import normalisr_sc as nsc
from normalisr_sc._core._reduce import accumulate, limit_threads, thread_count
from normalisr_sc._settings import available_cores


@pytest.fixture
def restore_n_jobs():
    before = nsc.settings._n_jobs
    yield
    nsc.settings._n_jobs = before


def test_n_jobs_defaults_to_available_cores(restore_n_jobs):
    nsc.settings.n_jobs = None
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert nsc.settings.n_jobs == expected == available_cores()
    assert thread_count() == expected


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2", np.nan])
def test_n_jobs_refuses_bad_values(restore_n_jobs, bad):
    nsc.settings.n_jobs = 2
    with pytest.raises(ValueError, match=r"nsc\.settings\.n_jobs.*integer >= 1 or None"):
        nsc.settings.n_jobs = bad
    assert nsc.settings.n_jobs == 2  # unchanged by the refusal


def test_n_jobs_is_set_and_read(restore_n_jobs):
    nsc.settings.n_jobs = 3
    assert nsc.settings.n_jobs == 3
    assert thread_count() == 3
    assert thread_count(1) == 1  # an explicit argument wins
    with pytest.raises(ValueError, match="n_jobs must be a positive"):
        thread_count(0)


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_limit_threads_limits_blas_and_restores(restore_n_jobs):
    before = _blas_threads()
    nsc.settings.n_jobs = 1
    with limit_threads() as threads:
        assert threads == 1
        assert _blas_threads()
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before


class _Threads:
    """Sums recording which threads added blocks."""

    def __init__(self) -> None:
        self.total = 0.0
        self.threads: set[int] = set()

    def add(self, rows, block) -> None:
        self.threads.add(threading.get_ident())
        self.total += float(np.asarray(block).sum())

    def merge(self, other):
        self.total += other.total
        self.threads |= other.threads
        return self


def test_dask_pass_uses_n_jobs_threads(restore_n_jobs):
    da = pytest.importorskip("dask.array")
    values = np.arange(64 * 3, dtype=float).reshape(64, 3)
    matrix = da.from_array(values, chunks=(4, 3))
    nsc.settings.n_jobs = 1
    one = accumulate(_Threads, matrix, block_cells=4)
    assert len(one.threads) == 1
    assert one.total == values.sum()
