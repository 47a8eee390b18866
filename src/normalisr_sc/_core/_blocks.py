"""Iteration over blocks of cells (rows) of in-memory, sparse, backed or dask matrices."""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from .._types import COMPRESSED, is_sparse

if TYPE_CHECKING:
    from collections.abc import Iterator

    import dask.array as da
    from numpy.typing import ArrayLike, DTypeLike

    from .._types import Block, Compressed, RowSliceable, SparseMatrix


def row_slices(n_rows: int, block_rows: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n_rows)`` in steps of ``block_rows``."""
    if block_rows < 1:
        msg = f"block size must be a positive number of cells, got {block_rows}."
        raise ValueError(msg)
    for start in range(0, n_rows, block_rows):
        yield slice(start, min(start + block_rows, n_rows))


def n_blocks(n_rows: int, block_rows: int) -> int:
    """Return the number of slices :func:`row_slices` makes."""
    return -(-n_rows // block_rows)


def count_non_finite(values: ArrayLike | SparseMatrix) -> int:
    """Count the NaN or infinite values of an array (of the stored values if sparse)."""
    if is_sparse(values):
        # The stored values, never a copy of them (DOK and LIL keep no array of them).
        stored = values if isinstance(values, COMPRESSED) else sparse.coo_matrix(values)
        array = np.asarray(stored.data)
    else:
        array = np.asarray(values)
    return _count_non_finite(array)


def count_non_finite_in(matrix: object, block_rows: int = 4096) -> int | None:
    """Count the NaN or infinite values of a cells x genes matrix without copying it whole.

    In memory, a dense array is read ``block_rows`` rows at a time (sparse: its stored
    values); a dask array is computed block by block. Returns None for anything else
    (e.g. a dataset on disk), whose values are not counted here.
    """
    if getattr(matrix, "ndim", 0) != 2:
        return None
    if is_sparse(matrix):
        return count_non_finite(matrix)
    if isinstance(matrix, np.ndarray):
        return sum(count_non_finite(matrix[rows]) for rows in row_slices(len(matrix), block_rows))
    numblocks = getattr(matrix, "numblocks", None)
    if numblocks is not None and hasattr(matrix, "compute"):
        blocks = matrix.blocks  # type: ignore[attr-defined]
        return sum(count_non_finite(blocks[index].compute()) for index in np.ndindex(*numblocks))
    return None


def _count_non_finite(values: np.ndarray) -> int:
    if values.dtype.kind not in "fc" or values.size == 0:
        return 0
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(values.sum()):  # NaN and infinity propagate into a sum
            return 0
    finite = np.isfinite(values)
    return 0 if finite.all() else int(finite.size - np.count_nonzero(finite))


def is_canonical(matrix: SparseMatrix) -> bool:
    """Whether a CSR/CSC matrix has sorted indices and no duplicate entries.

    Checked on the index arrays, not on scipy's cached flag, which may predate a change.
    """
    if not isinstance(matrix, COMPRESSED):
        return False
    for flag in ("_has_canonical_format", "_has_sorted_indices"):
        if flag in vars(matrix):
            delattr(matrix, flag)
    return bool(matrix.has_canonical_format)


def canonical(matrix: Compressed) -> Compressed:
    """``matrix`` (CSR/CSC) if it is in canonical form, else a canonical copy of it.

    Duplicate entries are summed and indices sorted on the copy, never in ``matrix``.
    """
    if is_canonical(matrix):
        return matrix
    fixed = matrix.copy()
    fixed.sum_duplicates()
    return fixed


def _read_only(array: np.ndarray) -> np.ndarray:
    """Return a read-only view of ``array``: a step writing into a shared block fails loudly."""
    view = array.view()
    view.flags.writeable = False
    return view


#: Attribute marking a block made here and found canonical: its index arrays are
#: read-only views, so that the rows of it are canonical too and need no new check.
_CHECKED = "_nsc_checked_canonical"


def _shared_csr(
    data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]
) -> sparse.csr_matrix:
    """Return a CSR block around read-only views of ``data`` and ``indices``."""
    block = sparse.csr_matrix(shape, dtype=data.dtype)
    # Assigned, not passed to the constructor, which copies views of much larger arrays.
    block.data, block.indices, block.indptr = _read_only(data), _read_only(indices), indptr
    return block


def _checked(block: sparse.csr_matrix) -> sparse.csr_matrix:
    """Mark ``block`` (made by :func:`_shared_csr`, canonical) as checked; return it."""
    block.has_canonical_format = True
    setattr(block, _CHECKED, True)
    return block


def materialize(block: RowSliceable | ArrayLike) -> Block:
    """Bring one block into memory in canonical form, never writable into its source.

    Dask blocks are computed; sparse blocks become CSR with sorted indices and no
    duplicate entries (summed on a copy when needed); arrays that may be shared with the
    source (the user's data) are returned as read-only views.
    """
    compute = getattr(block, "compute", None)
    value: object = compute() if compute is not None else block
    if is_sparse(value):
        # A conversion to CSR makes new arrays; a CSR array's are shared, not copied.
        if getattr(value, _CHECKED, False):
            return value  # type: ignore[return-value]  # a block made (and checked) here
        fixed = canonical(sparse.csr_matrix(value))
        return _checked(_shared_csr(fixed.data, fixed.indices, fixed.indptr, fixed.shape))
    return _read_only(np.asarray(value))


def row_block(matrix: RowSliceable, rows: slice) -> Block:
    """Rows ``rows`` of ``matrix`` in memory, like ``materialize(matrix[rows])``.

    A block of an in-memory CSR matrix shares its ``data`` and ``indices`` (as read-only
    views) instead of copying them (slicing a CSR matrix copies); a non-canonical block
    is made canonical on a copy. Rows of a block made here are not checked again: its
    read-only index arrays were found canonical when it was made.
    """
    if not (isinstance(matrix, sparse.csr_matrix | sparse.csr_array) and rows.step in (None, 1)):
        return materialize(matrix[rows])
    n_rows, n_columns = matrix.shape
    first, last, _ = rows.indices(n_rows)
    last = max(first, last)
    start, stop = matrix.indptr[first], matrix.indptr[last]
    block = _shared_csr(
        matrix.data[start:stop],
        matrix.indices[start:stop],
        matrix.indptr[first : last + 1] - start,
        (last - first, n_columns),
    )
    if getattr(matrix, _CHECKED, False) or is_canonical(block):
        return _checked(block)
    return materialize(canonical(block))


def dense_block(block: RowSliceable | ArrayLike, dtype: DTypeLike = np.float64) -> np.ndarray:
    """One block of rows as a dense array of ``dtype`` (no copy if it already is one)."""
    loaded = materialize(block)
    if isinstance(loaded, sparse.csr_matrix):
        return loaded.toarray().astype(dtype, copy=False)
    return np.asarray(loaded, dtype=dtype)


def float_block(block: RowSliceable | ArrayLike) -> np.ndarray:
    """One block of rows as a dense float array: float32 stays float32, else float64.

    The kernels sum float32 blocks in float64 without converting them first (no copy).
    """
    loaded = materialize(block)
    dtype = np.float32 if loaded.dtype == np.float32 else np.float64
    return dense_block(loaded, dtype)


def compact_rows(array: np.ndarray, keep: np.ndarray, block_rows: int) -> np.ndarray:
    """Return the rows of ``array`` where ``keep`` is True, moved to its front in place.

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


def _kept_block(block: Block, keep: np.ndarray, genes: np.ndarray | None) -> Block:
    """Rows ``keep[:, 0]`` (and columns ``genes``) of one block; the block itself if all.

    Most blocks keep every cell: they are passed on as they are, not copied into fresh
    memory on every pass. A CSR block loses its rows and columns in one compiled copy.
    """
    from ._counts import subset_counts  # it imports this module

    rows = keep[:, 0]
    every_row = bool(rows.all())
    if every_row and genes is None:
        return block
    if type(block) is sparse.csr_matrix:
        columns = np.ones(block.shape[1], dtype=bool) if genes is None else genes
        return subset_counts(block, rows, columns)
    kept = block if every_row else block[rows]
    return kept if genes is None else kept[:, genes]


def keep_rows_lazily(
    matrix: da.Array, keep: np.ndarray, genes: np.ndarray | None = None
) -> da.Array:
    """Return the rows of the dask ``matrix`` where ``keep`` is True, each in its chunk.

    With ``genes`` (a boolean mask of the columns), only those columns. Unlike
    ``matrix[keep]``, whose rows dask regroups into chunks of its own size: these
    straddle the blocks of every later pass, each block then joined from two chunks in
    fresh memory (on a 1M-cell screen, ten times the memory traffic of a pass). A chunk
    that keeps every row and column is the chunk itself (no copy per pass).
    """
    import dask.array as da

    keep = np.asarray(keep, dtype=bool)
    if genes is not None:
        genes = np.asarray(genes, dtype=bool)
        if genes.all():
            genes = None
        elif matrix.numblocks[1] > 1:  # the mask would be split per chunk of columns
            return keep_rows_lazily(matrix, keep)[:, genes]
    if keep.all() and genes is None:
        return matrix
    starts = np.cumsum((0, *matrix.chunks[0]))
    kept = tuple(int(keep[start:stop].sum()) for start, stop in pairwise(starts))
    columns = matrix.chunks[1] if genes is None else (int(genes.sum()),)
    mask = da.from_array(keep[:, None], chunks=(matrix.chunks[0], 1))
    return da.map_blocks(
        _kept_block,
        matrix,
        mask,
        genes=genes,
        chunks=(kept, columns),
        dtype=matrix.dtype,
        meta=matrix._meta,
    )
