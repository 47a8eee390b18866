"""The drivers of ``accumulate``: blocks computed once per pass, in the order of the pass."""

from __future__ import annotations

import threading
from collections import Counter

import dask.array as da
import numpy as np
import pytest

from normalisr_sc._core._reduce import accumulate, alternating_scans


class _Totals:
    """Sums of the block and of each matrix read beside it."""

    def __init__(self) -> None:
        self.totals = np.zeros(3)

    def add(self, rows: slice, block: np.ndarray, *beside: np.ndarray) -> None:
        self.totals += [block.sum(), *(other.sum() for other in beside)]

    def merge(self, other: _Totals) -> _Totals:
        self.totals += other.totals
        return self


def test_matrices_read_beside_share_the_blocks_they_derive_from():
    """Each block of a common source is computed once, not once per derived matrix."""
    values = np.arange(60.0).reshape(12, 5)
    calls: Counter = Counter()
    lock = threading.Lock()

    def read(block: np.ndarray, block_info=None) -> np.ndarray:
        with lock:
            calls[block_info[0]["chunk-location"][0]] += 1
        return block.copy()

    source = da.from_array(values, chunks=(4, 5)).map_blocks(read, dtype=float)
    derived = (source + 1.0, source * 2.0)
    sums = accumulate(_Totals, source, block_cells=4, beside=derived, n_jobs=2)
    np.testing.assert_array_equal(
        sums.totals, [values.sum(), (values + 1).sum(), (values * 2).sum()]
    )
    assert calls == {0: 1, 1: 1, 2: 1}


class _Order:
    """The first row of each block, in the order the blocks were added."""

    shared = False
    seen: list[int]

    def __init__(self) -> None:
        self.starts: list[int] = []

    def add(self, rows: slice, block: np.ndarray) -> None:
        self.starts.append(int(rows.start))
        _Order.seen.append(int(rows.start))

    def merge(self, other: _Order) -> _Order:
        self.starts += other.starts
        return self


class _SharedOrder(_Order):
    shared = True


@pytest.mark.parametrize(("sums", "lazy"), [(_Order, False), (_Order, True), (_SharedOrder, True)])
def test_passes_alternate_direction_inside_alternating_scans(sums: type, lazy: bool):
    """Forward outside; inside, forward then backward, restarting with each outer block."""
    values = np.arange(40.0).reshape(20, 2)
    matrix = da.from_array(values, chunks=(4, 2)) if lazy else values
    forward = list(range(0, 20, 4))

    def read_order() -> list[int]:
        """The order of the additions: in the shared accumulator, that of the reads."""
        _Order.seen = []
        # One thread: blocks in flight together are added in the order they finish.
        result = accumulate(sums, matrix, block_cells=4, n_jobs=1)
        return _Order.seen if sums.shared else result.starts

    assert read_order() == forward
    for _ in range(2):
        with alternating_scans():
            assert read_order() == forward
            with alternating_scans():
                assert read_order() == forward[::-1]
            assert read_order() == forward
    assert read_order() == forward


def test_reversed_pass_gives_the_same_sums():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(30, 3))
    matrix = da.from_array(values, chunks=(7, 3))
    with alternating_scans():
        first = accumulate(_Totals, matrix, block_cells=7).totals
        second = accumulate(_Totals, matrix, block_cells=7).totals
    np.testing.assert_allclose(second, first, rtol=1e-14)
    np.testing.assert_allclose(first[0], values.sum(), rtol=1e-14)


class _Total:
    shared = True

    def __init__(self) -> None:
        self.total = 0.0

    def add(self, rows: slice, block: np.ndarray) -> None:
        self.total += float(block.sum())


def test_shared_passes_never_reuse_a_task_key():
    """A key seen in an earlier graph would let a key-based cache skip a pass's additions."""
    from dask.callbacks import Callback

    keys: list[set] = []

    class Keys(Callback):
        def _start(self, dsk) -> None:
            keys.append(set(dsk))

    values = np.arange(40.0).reshape(20, 2)
    matrix = da.from_array(values, chunks=(4, 2))
    with Keys():
        totals = [accumulate(_Total, matrix, block_cells=4, n_jobs=1).total for _ in range(10)]
    assert totals == [values.sum()] * 10
    shared_keys = [{key for key in graph if isinstance(key, str)} for graph in keys]
    assert all(shared_keys)
    assert len(set.union(*shared_keys)) == sum(len(graph) for graph in shared_keys)


def test_alternating_scans_turn_only_the_calling_threads_passes():
    values = np.arange(40.0).reshape(20, 2)
    forward = list(range(0, 20, 4))
    orders: list[list[int]] = []

    def other_thread() -> None:
        for _ in range(2):
            orders.append(accumulate(_Order, values, block_cells=4).starts)

    with alternating_scans():
        accumulate(_Order, values, block_cells=4)
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert accumulate(_Order, values, block_cells=4).starts == forward[::-1]
    assert orders == [forward, forward]


def test_chunks_about_the_block_size_are_passes_blocks():
    """Chunks a few rows short (cells dropped chunk by chunk) are not rechunked across."""
    from normalisr_sc._core._reduce import _block_rows

    assert _block_rows((4096, 4090, 4095, 100), 4096) == (4096, 4090, 4095, 100)
    assert _block_rows((100,) * 50, 4096) == 4096
    assert _block_rows((8192, 8192), 4096) == 4096
    values = np.arange(40.0).reshape(20, 2)
    matrix = da.from_array(values, chunks=((4, 3, 4, 4, 5), (2,)))
    assert accumulate(_Order, matrix, block_cells=5, n_jobs=1).starts == [0, 4, 7, 11, 15]
