"""The dask driver of ``accumulate``: shared blocks are computed once per pass."""

from __future__ import annotations

import threading
from collections import Counter

import dask.array as da
import numpy as np

from normalisr_sc._core._reduce import accumulate


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
