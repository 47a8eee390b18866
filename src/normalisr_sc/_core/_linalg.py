"""Linear algebra of the kernels: pseudo-inverses of Gram matrices, products with blocks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from scipy.linalg import blas, lapack

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: Eigenvalues below this fraction of the largest are treated as zero (METHOD 7-8).
PINV_RTOL = 1e-8


def pinv_psd(gram: np.ndarray, rtol: float = PINV_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Moore-Penrose pseudo-inverse and rank of one or a stack of PSD matrices.

    Parameters
    ----------
    gram
        Array of shape ``(..., k, k)``, symmetric positive semi-definite.
    rtol
        Eigenvalues smaller than ``rtol`` times the largest eigenvalue of the same
        matrix are discarded.

    Returns
    -------
    The pseudo-inverses, shape ``(..., k, k)``, and the ranks, shape ``(...)``.
    """
    gram = np.asarray(gram, dtype=np.float64)
    eigval, eigvec = np.linalg.eigh(gram)
    top = eigval[..., -1:]
    keep = (eigval >= rtol * top) & (top > 0)
    inv_eigval = np.divide(1.0, eigval, out=np.zeros_like(eigval), where=keep)
    pinv = (eigvec * inv_eigval[..., None, :]) @ np.swapaxes(eigvec, -1, -2)
    return pinv, keep.sum(axis=-1)


def pinv_gram(gram: np.ndarray) -> tuple[np.ndarray, int]:
    """Pseudo-inverse and rank of a large Gram matrix, as :func:`pinv_psd`.

    When ``gram`` is positive definite with a 1-norm condition number of at most
    ``1 / PINV_RTOL`` (which bounds the 2-norm one), ``pinv_psd`` keeps every eigenvalue
    and its pseudo-inverse is the inverse: computed from a Cholesky factorisation, many
    times faster than an eigendecomposition for thousands of groups. Otherwise the
    eigendecomposition decides the rank.
    """
    factor, failed = lapack.dpotrf(gram, lower=0, clean=1)
    if not failed:
        inverse, failed = lapack.dpotri(factor, lower=0, overwrite_c=1)
        del factor
    if not failed:
        inverse = np.triu(inverse)
        inverse += np.triu(inverse, 1).T
        condition = np.abs(gram).sum(axis=0).max() * np.abs(inverse).sum(axis=0).max()
        if condition * PINV_RTOL <= 1.0:
            return inverse, gram.shape[0]
    pinv, rank = pinv_psd(gram)
    return pinv, int(rank)


# ------------------------------------------------------------ products with blocks of cells
#
# ``out += A' y`` for a block ``y`` of cells x genes and a cells x rows matrix ``A``
# (group indicators, per-class covariates), accumulated in place into ``out`` (rows x
# genes): no temporary of the size of ``out``, no copy of ``y``. A sparse ``A`` goes
# through a compiled kernel (numba, GIL released), threads splitting the genes: each
# thread updates its own columns of ``out``, reading ``y`` in the order it is stored.
# A dense ``A`` with few columns per stored entry goes through BLAS (``dgemm``, beta=1).

#: A dense BLAS product counts as this many times cheaper per multiply-add than the
#: sparse kernel; ``A`` is multiplied densely when ``columns < DENSE_SPEEDUP * nnz / cells``.
DENSE_SPEEDUP = 16.0
#: Ranges of genes per thread of the kernels (load balance on a shared machine).
TASKS_PER_THREAD = 4
#: Genes of the narrowest range of genes given to a thread (unless there are fewer).
MIN_RANGE = 512

_KERNELS: dict[str, object] = {}


def _sparse_rows(
    out, col_ptr, col_cells, col_values, y, squares, square_rows, square_weights, lo, hi, tile
):
    """``out[:, lo:hi] += A' y[:, lo:hi]`` and the weighted squares, a tile of genes at a time.

    ``A`` is given by columns (``A.T`` in CSR: the cells ``col_cells`` and values of column
    ``j`` between ``col_ptr[j]`` and ``col_ptr[j + 1]``); the sum of a column over one
    tile is held in a small buffer, then added into ``out[j]``. Then
    ``squares[square_rows[i]] += square_weights[i] * y[i] ** 2`` over the tile when
    ``squares`` has rows. ``y`` is C-ordered (cells x genes).
    """
    acc = np.empty(tile)
    with_squares = squares.shape[0] > 0
    for t0 in range(lo, hi, tile):
        width = min(t0 + tile, hi) - t0
        for j in range(col_ptr.size - 1):
            a, b = col_ptr[j], col_ptr[j + 1]
            if a == b:
                continue
            acc[:width] = 0.0
            for q in range(a, b):
                weight = col_values[q]
                row = y[col_cells[q], t0 : t0 + width]
                for g in range(width):
                    acc[g] += weight * row[g]
            target = out[j]
            for g in range(width):
                target[t0 + g] += acc[g]
        if with_squares:
            for i in range(y.shape[0]):
                weight = square_weights[i]
                row = y[i, t0 : t0 + width]
                target = squares[square_rows[i]]
                for g in range(width):
                    value = np.float64(row[g])  # float64 squares of float32 blocks
                    target[t0 + g] += weight * (value * value)


def _sparse_columns(out, indptr, indices, data, y_t, squares, square_rows, square_weights, lo, hi):
    """:func:`_sparse_rows` for an F-ordered block, given as ``y_t = y.T`` (C-ordered)."""
    with_squares = squares.shape[0] > 0
    for g in range(lo, hi):
        column = y_t[g]
        for i in range(column.shape[0]):
            value = np.float64(column[i])
            for p in range(indptr[i], indptr[i + 1]):
                out[indices[p], g] += data[p] * value
            if with_squares:
                squares[square_rows[i], g] += square_weights[i] * (value * value)


#: Genes per tile of the kernels: the sums of a class (or column) over one tile and the
#: tile of a cell's row stay in the L1 or L2 cache (the class kernel cuts each range of
#: genes into tiles of equal width, at most this many: no narrow last tile).
CLASS_TILE = 640
#: Classes with fewer cells in a block add straight into their sums (no buffer).
SMALL_CLASS = 4
SPARSE_TILE = 1024


def _class_rows(cross, squares, square_row, order, starts, ext, y, small, lo, hi, tile):
    """Add the sums of each class of cells over genes ``lo:hi``, a tile at a time.

    Per class ``j``: ``cross[j*k1:(j+1)*k1] += ext_j' y_j`` and
    ``squares[square_row[j]] += 1' y_j**2``. The cells of class ``j`` are
    ``order[starts[j]:starts[j + 1]]``; ``ext`` holds each cell's ``k1`` weights.
    Classes past ``cross.shape[0] // k1`` only add squares. The genes are cut into
    tiles of equal width, at most ``tile`` each.

    A class of fewer than ``small`` cells adds straight into ``cross`` (with thousands
    of classes most have a cell or two per block). A larger class's sums of one tile are
    held in a small buffer while its cells are read four at a time, then added into
    ``cross`` and ``squares``: one sweep over the four row tiles adds their squares and
    the products with the first three weights, the next sweeps two weights each (each
    buffer element updated once per four cells, always by the same expression).
    """
    k1 = ext.shape[1]
    n_cross = cross.shape[0] // k1
    n_tiles = max(1, -(-(hi - lo) // tile))
    tile = -(-(hi - lo) // n_tiles)
    acc = np.empty((k1 + 1, max(tile, 1)))
    for t0 in range(lo, hi, tile):
        width = min(t0 + tile, hi) - t0
        t1 = t0 + width
        for j in range(starts.size - 1):
            a, b = starts[j], starts[j + 1]
            if a == b:
                continue
            with_cross = j < n_cross
            target = squares[square_row[j]]
            if b - a < small:
                for q in range(a, b):
                    i = order[q]
                    row = y[i, t0:t1]
                    for g in range(width):
                        value = np.float64(row[g])
                        target[t0 + g] += value * value
                    if with_cross:
                        for r in range(k1):
                            weight = ext[i, r]
                            out = cross[j * k1 + r]
                            for g in range(width):
                                out[t0 + g] += weight * row[g]
                continue
            acc[:, :width] = 0.0
            sq = acc[k1]
            n_weights = k1 if with_cross else 0
            q = a
            while q + 4 <= b:
                i0, i1, i2, i3 = order[q], order[q + 1], order[q + 2], order[q + 3]
                r0, r1, r2, r3 = y[i0, t0:t1], y[i1, t0:t1], y[i2, t0:t1], y[i3, t0:t1]
                # the squares with up to three weights (unused ones: weight 0, dropped)
                first = min(n_weights, 3)
                a0, a1, a2 = acc[0], acc[min(1, k1)], acc[min(2, k1)]
                w00, w01, w02, w03 = 0.0, 0.0, 0.0, 0.0
                w10, w11, w12, w13 = 0.0, 0.0, 0.0, 0.0
                w20, w21, w22, w23 = 0.0, 0.0, 0.0, 0.0
                if first >= 1:
                    w00, w01, w02, w03 = ext[i0, 0], ext[i1, 0], ext[i2, 0], ext[i3, 0]
                if first >= 2:
                    w10, w11, w12, w13 = ext[i0, 1], ext[i1, 1], ext[i2, 1], ext[i3, 1]
                if first == 3:
                    w20, w21, w22, w23 = ext[i0, 2], ext[i1, 2], ext[i2, 2], ext[i3, 2]
                    for g in range(width):
                        v0, v1 = np.float64(r0[g]), np.float64(r1[g])
                        v2, v3 = np.float64(r2[g]), np.float64(r3[g])
                        sq[g] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
                        a0[g] += (w00 * r0[g] + w01 * r1[g]) + (w02 * r2[g] + w03 * r3[g])
                        a1[g] += (w10 * r0[g] + w11 * r1[g]) + (w12 * r2[g] + w13 * r3[g])
                        a2[g] += (w20 * r0[g] + w21 * r1[g]) + (w22 * r2[g] + w23 * r3[g])
                elif first == 2:
                    for g in range(width):
                        v0, v1 = np.float64(r0[g]), np.float64(r1[g])
                        v2, v3 = np.float64(r2[g]), np.float64(r3[g])
                        sq[g] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
                        a0[g] += (w00 * r0[g] + w01 * r1[g]) + (w02 * r2[g] + w03 * r3[g])
                        a1[g] += (w10 * r0[g] + w11 * r1[g]) + (w12 * r2[g] + w13 * r3[g])
                elif first == 1:
                    for g in range(width):
                        v0, v1 = np.float64(r0[g]), np.float64(r1[g])
                        v2, v3 = np.float64(r2[g]), np.float64(r3[g])
                        sq[g] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
                        a0[g] += (w00 * r0[g] + w01 * r1[g]) + (w02 * r2[g] + w03 * r3[g])
                else:
                    for g in range(width):
                        v0, v1 = np.float64(r0[g]), np.float64(r1[g])
                        v2, v3 = np.float64(r2[g]), np.float64(r3[g])
                        sq[g] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)
                r = first
                while r + 2 <= n_weights:
                    a0, a1 = acc[r], acc[r + 1]
                    w00, w01, w02, w03 = ext[i0, r], ext[i1, r], ext[i2, r], ext[i3, r]
                    w10, w11 = ext[i0, r + 1], ext[i1, r + 1]
                    w12, w13 = ext[i2, r + 1], ext[i3, r + 1]
                    for g in range(width):
                        a0[g] += (w00 * r0[g] + w01 * r1[g]) + (w02 * r2[g] + w03 * r3[g])
                        a1[g] += (w10 * r0[g] + w11 * r1[g]) + (w12 * r2[g] + w13 * r3[g])
                    r += 2
                if r < n_weights:
                    a0 = acc[r]
                    w00, w01, w02, w03 = ext[i0, r], ext[i1, r], ext[i2, r], ext[i3, r]
                    for g in range(width):
                        a0[g] += (w00 * r0[g] + w01 * r1[g]) + (w02 * r2[g] + w03 * r3[g])
                q += 4
            while q < b:
                i = order[q]
                row = y[i, t0:t1]
                for g in range(width):
                    value = np.float64(row[g])
                    sq[g] += value * value
                if with_cross:
                    for r in range(k1):
                        weight = ext[i, r]
                        part = acc[r]
                        for g in range(width):
                            part[g] += weight * row[g]
                q += 1
            if with_cross:
                for r in range(k1):
                    out = cross[j * k1 + r]
                    part = acc[r]
                    for g in range(width):
                        out[t0 + g] += part[g]
            for g in range(width):
                target[t0 + g] += sq[g]


def _class_nonzero(counts, order, starts, indptr, indices, data):
    """``counts[j, gene] += 1`` for every stored nonzero of every cell of class ``j``.

    The cells of class ``j`` are ``order[starts[j]:starts[j + 1]]``; the block is given
    by its CSR arrays (stored zeros count 0).
    """
    for j in range(starts.size - 1):
        row = counts[j]
        for q in range(starts[j], starts[j + 1]):
            i = order[q]
            for p in range(indptr[i], indptr[i + 1]):
                if data[p] != 0:
                    row[indices[p]] += 1


def _csr_arrays(matrix: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.asarray(matrix.indptr, dtype=np.int64),
        np.asarray(matrix.indices, dtype=np.int64),
        np.asarray(matrix.data, dtype=np.float64),
    )


def _kernel(name: str):
    """Return the compiled kernel ``name`` (numba, compiled on first use, cached on disk)."""
    if name not in _KERNELS:
        import numba

        # numba's stubs type njit's argument as a typed function; these are plain ones.
        source: Any = {
            "rows": _sparse_rows,
            "columns": _sparse_columns,
            "classes": _class_rows,
            "nonzero": _class_nonzero,
        }[name]
        _KERNELS[name] = numba.njit(nogil=True, cache=True, boundscheck=False)(source)
    return _KERNELS[name]


def _gene_ranges(n_genes: int, n_jobs: int) -> list[tuple[int, int]]:
    """Return ranges of genes for ``n_jobs`` threads, a few per thread.

    A thread held up by other jobs leaves its later ranges to the others; each range is
    at least a tile long.
    """
    tasks = max(1, min(TASKS_PER_THREAD * n_jobs, n_genes // MIN_RANGE))
    if n_jobs == 1:
        tasks = 1
    edges = np.linspace(0, n_genes, tasks + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in pairwise(edges) if hi > lo]


def _run_ranges(
    run: Callable[[tuple[int, int]], None],
    n_genes: int,
    n_jobs: int,
    pool: ThreadPoolExecutor | None = None,
) -> None:
    """``run((lo, hi))`` over the ranges of genes, in ``pool`` or a new one of ``n_jobs`` threads."""
    ranges = _gene_ranges(n_genes, n_jobs)
    if n_jobs == 1 or len(ranges) == 1:
        for genes in ranges:
            run(genes)
        return
    if pool is not None:
        list(pool.map(run, ranges))
        return
    with ThreadPoolExecutor(max_workers=min(n_jobs, len(ranges))) as new_pool:
        list(new_pool.map(run, ranges))


def dense_is_cheaper(n_cells: int, n_columns: int, nnz: int) -> bool:
    """Whether ``A' y`` costs less as a dense BLAS product than with the sparse kernel.

    Dense: ``n_cells * n_columns`` multiply-adds per gene; sparse: ``nnz``, each
    :data:`DENSE_SPEEDUP` times dearer.
    """
    return n_cells * n_columns < DENSE_SPEEDUP * nnz


def add_products(
    out: np.ndarray,
    weights,
    y: np.ndarray,
    *,
    squares: np.ndarray | None = None,
    square_rows: np.ndarray | None = None,
    square_weights: np.ndarray | None = None,
    n_jobs: int = 1,
    dense: bool | None = None,
) -> None:
    """``out += weights' y`` in place, and optionally the weighted squares of ``y``.

    Parameters
    ----------
    out
        Float64, C-ordered, rows x genes: the sums added into.
    weights
        Cells x rows: a scipy CSR matrix or a dense array.
    y
        Cells x genes block (float32 or float64, C- or F-ordered; never copied unless it
        is neither).
    squares, square_rows, square_weights
        With ``squares`` (float64, C-ordered, any rows x genes): add
        ``square_weights[i] * y[i] ** 2`` into row ``square_rows[i]`` for every cell
        ``i``. A weight of 0 leaves finite values out but still carries NaN or infinity
        into the sums (``0 * inf`` is NaN), so that the sums show any non-finite value.
    n_jobs
        Threads.
    dense
        Force the dense (True) or sparse (False) product; None chooses by
        :func:`dense_is_cheaper` (the dense product needs float64 ``y``).
    """
    n_cells, n_genes = y.shape
    if not (y.flags.c_contiguous or y.flags.f_contiguous):
        y = np.ascontiguousarray(y)
    is_sparse = sparse.issparse(weights)
    nnz = weights.nnz if is_sparse else int(np.count_nonzero(weights))
    if dense is None:
        dense = y.dtype == np.float64 and dense_is_cheaper(n_cells, weights.shape[1], nnz)
    if dense and weights.shape[1]:
        matrix = weights.toarray() if is_sparse else np.asarray(weights, dtype=np.float64)
        _add_dense(out, matrix, y)
        weights = sparse.csr_matrix((n_cells, 0))
    elif not is_sparse:
        weights = sparse.csr_matrix(np.asarray(weights, dtype=np.float64))
    if weights.nnz == 0 and squares is None:
        return
    weights = sparse.csr_matrix(weights)
    if squares is None:
        squares = np.zeros((0, n_genes))
        square_rows = np.zeros(n_cells, dtype=np.int64)
        square_weights = np.zeros(n_cells)
    square_rows = np.asarray(square_rows, dtype=np.int64)
    square_weights = np.asarray(square_weights, dtype=np.float64)
    if y.flags.c_contiguous:
        by_column = sparse.csr_matrix(weights.T)  # the cells of each column, in order
        kernel = _kernel("rows")
        arguments = (*_csr_arrays(by_column), y, squares, square_rows, square_weights)
        tail: tuple[int, ...] = (SPARSE_TILE,)
    else:
        kernel = _kernel("columns")
        arguments = (*_csr_arrays(weights), y.T, squares, square_rows, square_weights)
        tail = ()

    def run(genes: tuple[int, int]) -> None:
        kernel(out, *arguments, *genes, *tail)

    _run_ranges(run, n_genes, n_jobs)


def add_class_sums(
    cross: np.ndarray,
    squares: np.ndarray,
    label: np.ndarray,
    ext: np.ndarray,
    y: np.ndarray,
    *,
    square_row: np.ndarray,
    n_jobs: int = 1,
) -> None:
    """Per class of cells, ``ext' y`` and the sum of squares of ``y``, added in place.

    Parameters
    ----------
    cross
        Float64, C-ordered, ``(n_class * k1, genes)``: rows ``j * k1`` to ``(j + 1) * k1``
        receive ``ext_j' y_j`` of the cells of class ``j``.
    squares
        Float64, C-ordered: row ``square_row[j]`` receives ``1' y_j**2``.
    label
        Class of each cell, ``0 <= label < square_row.size``; classes from ``n_class``
        on add squares only (e.g. the cells used by no test: their NaN or infinity still
        shows in the sums).
    ext
        Cells x ``k1`` float64 weights (e.g. covariates and a column of ones).
    y
        Cells x genes block, float32 or float64; C-ordered blocks are read by class
        through an index (no copy), others go through :func:`add_products`.
    n_jobs
        Threads, each over its own genes.
    """
    n_cells, n_genes = y.shape
    n_total = square_row.size
    label = np.asarray(label, dtype=np.int64)
    ext = np.ascontiguousarray(ext, dtype=np.float64)
    if not y.flags.c_contiguous:
        k1 = ext.shape[1]
        n_cross = cross.shape[0] // k1
        with_cross = label < n_cross
        starts = np.concatenate([[0], np.cumsum(with_cross)])
        columns = (label[with_cross, None] * k1 + np.arange(k1)).ravel()
        weights = sparse.csr_matrix(
            (ext[with_cross].ravel(), columns, starts * k1), shape=(n_cells, cross.shape[0])
        )
        add_products(
            cross,
            weights,
            y,
            squares=squares,
            square_rows=np.asarray(square_row, dtype=np.int64)[label],
            square_weights=np.ones(n_cells),
            n_jobs=n_jobs,
            dense=False,
        )
        return
    order = np.argsort(label, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(label, minlength=n_total))])
    kernel = _kernel("classes")
    square_row = np.asarray(square_row, dtype=np.int64)

    def run(genes: tuple[int, int]) -> None:
        kernel(cross, squares, square_row, order, starts, ext, y, SMALL_CLASS, *genes, CLASS_TILE)

    _run_ranges(run, n_genes, n_jobs)


def class_order(classes: np.ndarray, n_total: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the cells sorted by class and where each class starts (``n_total + 1`` offsets).

    ``classes`` are in ``[0, n_total)``; the cells of class ``j`` are
    ``order[starts[j]:starts[j + 1]]``, in their original order.
    """
    order = np.argsort(classes, kind="stable")
    starts = np.zeros(n_total + 1, dtype=np.int64)
    np.cumsum(np.bincount(classes, minlength=n_total), out=starts[1:])
    return order, starts


def add_class_chunks(
    chunks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, int]],
    order: np.ndarray,
    starts: np.ndarray,
    ext: np.ndarray,
    y: np.ndarray,
    *,
    n_jobs: int = 1,
    pool: ThreadPoolExecutor | None = None,
    more: Sequence[
        tuple[Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, int]], np.ndarray, Any]
    ] = (),
) -> None:
    """:func:`add_class_sums` into sums held in chunks of consecutive classes.

    Parameters
    ----------
    chunks
        ``(cross, squares, square_row, first)`` per chunk of ``m`` classes, ``first`` to
        ``first + m``: their sums as :func:`add_class_sums` lays them out (``cross`` may
        have no rows: squares only); the squares of class ``first + j`` go to row
        ``square_row[j]`` of ``squares`` (None: row ``j``, and ``m`` is the number of rows
        of ``squares``).
    order, starts
        The cells sorted by class (:func:`class_order`).
    ext
        Cells x ``k1`` float64 weights.
    y
        Cells x genes block, float32 or float64 (made C-ordered if it is not).
    n_jobs, pool
        Threads, each over its own genes; ``pool`` (of ``n_jobs`` threads) is used
        instead of starting new threads.
    more
        Further passes ``(chunks, ext, y)`` over other blocks of the same cells (e.g. the
        log CPM beside the normalised expression), into sums of their own: the ranges
        of genes of every pass are handed to the threads together (one wait, not one
        per pass). Each sum is added to exactly as in a pass of its own.
    """
    passes = []
    for pass_chunks, pass_ext, pass_y in [(chunks, ext, y), *more]:
        parts = []
        for cross, squares, square_row, first in pass_chunks:
            rows = np.arange(squares.shape[0]) if square_row is None else square_row
            parts.append((cross, squares, rows, starts[first : first + rows.size + 1]))
        passes.append(
            (
                parts,
                np.ascontiguousarray(pass_ext, dtype=np.float64),
                np.ascontiguousarray(pass_y),
            )
        )
    kernel = _kernel("classes")

    def run(task: tuple[int, tuple[int, int]]) -> None:
        parts, weights, values = passes[task[0]]
        for cross, squares, rows, bounds in parts:
            kernel(
                cross,
                squares,
                rows,
                order,
                bounds,
                weights,
                values,
                SMALL_CLASS,
                *task[1],
                CLASS_TILE,
            )

    tasks = [
        (index, genes)
        for index, (_, _, values) in enumerate(passes)
        for genes in _gene_ranges(values.shape[1], n_jobs)
    ]
    if n_jobs == 1 or len(tasks) == 1:
        for task in tasks:
            run(task)
    elif pool is not None:
        list(pool.map(run, tasks))
    else:
        with ThreadPoolExecutor(max_workers=min(n_jobs, len(tasks))) as new_pool:
            list(new_pool.map(run, tasks))


def add_class_nonzero(
    chunks: Sequence[tuple[np.ndarray, int]],
    order: np.ndarray,
    starts: np.ndarray,
    block: sparse.csr_matrix,
) -> None:
    """Per class of cells and gene, add the number of cells with a nonzero value.

    ``chunks`` holds ``(counts, first)``: the integer counts of classes ``first`` to
    ``first + counts.shape[0]`` (classes x genes, C-ordered); ``order`` and ``starts``
    sort the cells of the CSR ``block`` by class (:func:`class_order`). O(nnz).
    """
    kernel = _kernel("nonzero")
    indptr = np.asarray(block.indptr, dtype=np.int64)
    for counts, first in chunks:
        kernel(
            counts,
            order,
            starts[first : first + counts.shape[0] + 1],
            indptr,
            block.indices,
            block.data,
        )


def _add_dense(out: np.ndarray, matrix: np.ndarray, y: np.ndarray) -> None:
    """``out += matrix' y`` in place through BLAS (``out`` C-ordered float64)."""
    y = np.asarray(y, dtype=np.float64)
    # out' (genes x rows, F-ordered view) += y' matrix.
    if y.flags.c_contiguous:
        a, trans_a = y.T, 0
    else:
        a, trans_a = y, 1
    result = blas.dgemm(
        1.0, a, np.asfortranarray(matrix), beta=1.0, c=out.T, trans_a=trans_a, overwrite_c=1
    )
    if not np.shares_memory(result, out):  # BLAS worked on a copy of a strided ``out``
        out[...] = result.T
