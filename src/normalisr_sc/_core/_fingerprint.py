"""Exact row and column sums of a matrix's float64 bit patterns, for fingerprints.

Each value is taken as the 64-bit pattern of its float64 value, with ``-0.0`` as ``0.0``
and every NaN as numpy's NaN, and the patterns are summed as integers modulo ``2**64``.
The sums are exact, so they do not depend on the order of summation (a sparse and a
dense copy of a matrix agree), and changing any single entry changes its row's and its
column's sum. One pass over the matrix, in a compiled kernel, without copying it when
its float64 values are contiguous along rows or columns; a large one is read by
``nsc.settings.n_jobs`` threads, each summing its own rows (integer sums: the same
however the rows are shared out).
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from ._moments import run_parts
from ._reduce import thread_count

if TYPE_CHECKING:
    from collections.abc import Callable

#: Bit pattern of numpy's NaN, the one every NaN counts as.
NAN_BITS = np.array(np.nan).view(np.uint64)[()]
#: Entries converted to float64 at a time for a matrix of another dtype or layout.
CHUNK_ENTRIES = 1 << 20
#: Entries of a contiguous float64 matrix from which its rows are shared out to threads.
THREADED_ENTRIES = 1 << 22


def _dense_sums(  # pragma: no cover - compiled
    values: np.ndarray, bits: np.ndarray, nan_bits: np.uint64, rows: np.ndarray, columns: np.ndarray
) -> None:
    for i in range(values.shape[0]):
        row = nan_bits - nan_bits  # a uint64 zero
        for j in range(values.shape[1]):
            value = values[i, j]
            if value == 0.0:
                continue
            pattern = bits[i, j] if value == value else nan_bits
            row += pattern
            columns[j] += pattern
        rows[i] += row


def _entry_sums(  # pragma: no cover - compiled
    row_of: np.ndarray,
    column_of: np.ndarray,
    values: np.ndarray,
    bits: np.ndarray,
    nan_bits: np.uint64,
    rows: np.ndarray,
    columns: np.ndarray,
) -> None:
    for p in range(values.size):
        value = values[p]
        if value == 0.0:
            continue
        pattern = bits[p] if value == value else nan_bits
        rows[row_of[p]] += pattern
        columns[column_of[p]] += pattern


_KERNELS: dict[str, Callable] = {}


def _kernel(name: str) -> Callable:
    """Return the compiled kernel ``name`` (numba, compiled on first use, cached on disk)."""
    if name not in _KERNELS:
        import numba

        # numba's stubs type njit's argument as a typed function; these are plain ones.
        source: Any = {"dense": _dense_sums, "entries": _entry_sums}[name]
        _KERNELS[name] = numba.njit(nogil=True, cache=True, boundscheck=False)(source)
    return _KERNELS[name]


def _add_rows(block: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> None:
    kernel = _kernel("dense")
    n_jobs = thread_count()
    if block.size < THREADED_ENTRIES or n_jobs == 1 or block.shape[0] < 2 * n_jobs:
        kernel(block, block.view(np.uint64), NAN_BITS, rows, columns)
        return
    bounds = np.linspace(0, block.shape[0], n_jobs + 1).astype(int)
    pieces = [slice(int(a), int(b)) for a, b in pairwise(bounds)]
    # Each thread adds into its own column sums; added up at the end (modulo 2**64, exact).
    column_parts = np.zeros((len(pieces), columns.size), dtype=np.uint64)

    def add(piece: slice) -> None:
        part = block[piece]
        index = pieces.index(piece)
        kernel(part, part.view(np.uint64), NAN_BITS, rows[piece], column_parts[index])

    run_parts(add, pieces, n_jobs)
    columns += column_parts.sum(axis=0, dtype=np.uint64)


def dense_bit_sums(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the row and column sums (``uint64``) of a 2-D numeric array's bit patterns."""
    n_rows, n_columns = matrix.shape
    rows = np.zeros(n_rows, dtype=np.uint64)
    columns = np.zeros(n_columns, dtype=np.uint64)
    # float64 values in contiguous rows (or columns), such as a DataFrame's block of
    # columns, are read where they are
    if matrix.dtype == np.float64 and matrix.strides[1] == matrix.itemsize:
        _add_rows(matrix, rows, columns)
    elif matrix.dtype == np.float64 and matrix.strides[0] == matrix.itemsize:
        _add_rows(matrix.T, columns, rows)
    else:
        step = max(1, CHUNK_ENTRIES // max(1, n_columns))
        for start in range(0, n_rows, step):
            block = np.ascontiguousarray(matrix[start : start + step], dtype=np.float64)
            _add_rows(block, rows[start : start + step], columns)
    return rows, columns


def entry_bit_sums(
    row_of: np.ndarray, column_of: np.ndarray, values: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Return the sums of :func:`dense_bit_sums` of a matrix given by its stored entries."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    rows = np.zeros(shape[0], dtype=np.uint64)
    columns = np.zeros(shape[1], dtype=np.uint64)
    _kernel("entries")(
        np.asarray(row_of, dtype=np.int64),
        np.asarray(column_of, dtype=np.int64),
        values,
        values.view(np.uint64),
        NAN_BITS,
        rows,
        columns,
    )
    return rows, columns
