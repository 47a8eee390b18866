"""Column means and variances accumulated over blocks of rows; a block's work in parts.

A block of cells is the unit the streaming kernels read. In memory, the elementwise work
on a block (numpy releases the GIL) is shared by threads, each taking a part of its genes
(:func:`in_parts`) -- or of its cells, for per-cell results -- so that every value is
computed exactly as by one thread: the parts never add into each other.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from ._reduce import limit_threads

if TYPE_CHECKING:
    from collections.abc import Callable

#: Bytes of float64 values in a part: small enough for the C allocator to reuse freed
#: temporaries (large ones are fresh memory maps, and their page faults cost as much as
#: the arithmetic), large enough for the numpy loops.
PART_BYTES = 8 * 2**20


def parts(n_items: int, item_values: int) -> list[slice]:
    """Return contiguous slices covering ``range(n_items)``, of about :data:`PART_BYTES`.

    ``item_values`` is the number of values of one item (the other axis of the block).
    The parts depend on the shape only, so that every result is the same whatever the
    number of threads.
    """
    size = max(16, PART_BYTES // (8 * max(item_values, 1)))
    n_parts = max(1, round(n_items / size))
    bounds = np.linspace(0, n_items, n_parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in pairwise(bounds)]


def in_parts(
    function: Callable[[slice], object], n_items: int, item_values: int, n_jobs: int
) -> None:
    """Call ``function(part)`` for each of the :func:`parts` of ``range(n_items)``.

    The parts run on up to ``n_jobs`` threads; BLAS and OpenMP pools are then limited to
    one thread (the parts are the parallelism). Exceptions of a part are raised.
    """
    run_parts(function, parts(n_items, item_values), n_jobs)


def run_parts(function: Callable[[slice], object], pieces: list[slice], n_jobs: int) -> None:
    """Call ``function(piece)`` for each of ``pieces`` on up to ``n_jobs`` threads.

    BLAS and OpenMP pools are limited to one thread meanwhile (the pieces are the
    parallelism). Exceptions of a piece are raised.
    """
    threads = min(n_jobs, len(pieces))
    if threads <= 1:
        for piece in pieces:
            function(piece)
        return
    with limit_threads(1), ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(function, pieces):
            pass


class ColumnMoments:
    """Running count, mean and centred sum of squares of each column.

    Blocks are merged with the pairwise update of Chan, Golub and LeVeque, which
    stays accurate when the mean is large compared with the spread.
    """

    def __init__(self, n_columns: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_columns)
        self.m2 = np.zeros(n_columns)

    def update(self, block: np.ndarray, *, overwrite: bool = False) -> None:
        """Add the rows of ``block``; ``overwrite`` lets it serve as scratch space."""
        n_block = block.shape[0]
        if n_block == 0:
            return
        self.add_block(n_block, *block_moments(block, overwrite=overwrite))

    def add_block(self, n_rows: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Add a block of ``n_rows`` rows given its column means and centred sums of squares."""
        if n_rows:
            self._combine(n_rows, mean, m2)

    def merge(self, other: ColumnMoments) -> ColumnMoments:
        """Add the rows summarised by ``other``; returns ``self``."""
        if other.count:
            self._combine(other.count, other.mean, other.m2)
        return self

    def _combine(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * (count / total)
        self.m2 += m2 + delta**2 * (self.count * count / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        """Population variance (divisor n)."""
        return self.m2 / self.count

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (divisor n)."""
        return np.sqrt(self.variance)


def block_moments(
    block: np.ndarray,
    *,
    overwrite: bool = False,
    mean: np.ndarray | None = None,
    m2: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Column means and centred sums of squares of one block (written to ``mean``, ``m2``).

    ``overwrite`` lets ``block`` serve as scratch space. A column's figures depend on that
    column only, so a block may be done in parts of its columns.
    """
    block_mean = np.mean(block, axis=0, out=mean)
    centred = np.subtract(block, block_mean, out=block if overwrite else None)
    return block_mean, np.einsum("ij,ij->j", centred, centred, out=m2)
