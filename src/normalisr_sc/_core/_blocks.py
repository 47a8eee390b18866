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


def dense_block(block: ArrayLike, dtype: DTypeLike = np.float64) -> np.ndarray:
    """One block of rows as a dense array of ``dtype`` (no copy if it already is one)."""
    block = materialize(block)
    if sparse.issparse(block):
        return block.toarray().astype(dtype, copy=False)
    return np.asarray(block, dtype=dtype)
