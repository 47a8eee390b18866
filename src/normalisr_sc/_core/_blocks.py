"""Iteration over blocks of cells (rows) of in-memory, sparse, backed or dask matrices."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Iterator

    from numpy.typing import ArrayLike, DTypeLike


def row_slices(n_rows: int, block_rows: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n_rows)`` in steps of ``block_rows``."""
    if block_rows < 1:
        msg = f"block size must be a positive number of cells, got {block_rows}."
        raise ValueError(msg)
    for start in range(0, n_rows, block_rows):
        yield slice(start, min(start + block_rows, n_rows))


def n_blocks(n_rows: int, block_rows: int) -> int:
    return -(-n_rows // block_rows)


def materialize(block: ArrayLike) -> np.ndarray | sparse.csr_matrix:
    """Bring one block into memory: compute dask blocks, keep sparse blocks sparse (CSR)."""
    if hasattr(block, "compute"):
        block = block.compute()
    if sparse.issparse(block):
        return sparse.csr_matrix(block)
    return np.asarray(block)


def row_block(matrix: ArrayLike, rows: slice) -> np.ndarray | sparse.csr_matrix:
    """Rows ``rows`` of ``matrix`` in memory, like ``materialize(matrix[rows])``.

    A block of an in-memory CSR matrix shares its ``data`` and ``indices`` instead of
    copying them (slicing a CSR matrix copies).
    """
    if not (isinstance(matrix, sparse.csr_matrix | sparse.csr_array) and rows.step in (None, 1)):
        return materialize(matrix[rows])
    first, last, _ = rows.indices(matrix.shape[0])
    last = max(first, last)
    start, stop = matrix.indptr[first], matrix.indptr[last]
    block = sparse.csr_matrix((last - first, matrix.shape[1]), dtype=matrix.dtype)
    # Assigned, not passed to the constructor, which copies views of much larger arrays.
    block.data, block.indices = matrix.data[start:stop], matrix.indices[start:stop]
    block.indptr = matrix.indptr[first:last + 1] - start
    return block


def dense_block(block: ArrayLike, dtype: DTypeLike = np.float64) -> np.ndarray:
    """One block of rows as a dense array of ``dtype`` (no copy if it already is one)."""
    block = materialize(block)
    if sparse.issparse(block):
        return block.toarray().astype(dtype, copy=False)
    return np.asarray(block, dtype=dtype)


def compact_rows(array: np.ndarray, keep: np.ndarray, block_rows: int) -> np.ndarray:
    """The rows of ``array`` where ``keep`` is True, moved to its front in place.

    Returns a view of the first ``keep.sum()`` rows. Unlike ``array[keep]``, no second
    copy of the array is made; the memory of the dropped rows stays allocated.
    """
    kept = np.flatnonzero(keep)
    moved = kept != np.arange(kept.size)
    first = int(moved.argmax()) if moved.any() else kept.size
    for rows in row_slices(kept.size - first, block_rows):
        rows = slice(first + rows.start, first + rows.stop)
        # Every destination row precedes its source, which no earlier block overwrote.
        array[rows] = array[kept[rows]]
    return array[: kept.size]
