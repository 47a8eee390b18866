"""Linear algebra of the kernels: pseudo-inverses of Gram matrices, products with blocks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
from scipy import sparse
from scipy.linalg import blas, lapack

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
DENSE_SPEEDUP = 8.0
#: Genes per task of the sparse kernel's threads (enough for every thread to get work).
_MIN_GENES_PER_TASK = 64

_KERNELS: dict[str, object] = {}


def _sparse_rows(out, indptr, indices, data, y, squares, square_rows, square_weights, lo, hi):
    """``out[:, lo:hi] += A' y[:, lo:hi]`` for CSR ``A``, and the weighted squares.

    ``squares[square_rows[i], lo:hi] += square_weights[i] * y[i, lo:hi] ** 2`` when
    ``squares`` has rows. ``y`` is C-ordered (cells x genes).
    """
    with_squares = squares.shape[0] > 0
    for i in range(y.shape[0]):
        row = y[i]
        for p in range(indptr[i], indptr[i + 1]):
            target = out[indices[p]]
            weight = data[p]
            for g in range(lo, hi):
                target[g] += weight * row[g]
        if with_squares:
            target = squares[square_rows[i]]
            weight = square_weights[i]
            for g in range(lo, hi):
                value = np.float64(row[g])  # float64 squares of float32 blocks
                target[g] += weight * (value * value)


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


def _kernel(name: str):
    """The compiled kernel ``name`` (numba, compiled on first use and cached on disk)."""
    if name not in _KERNELS:
        import numba

        source = {"rows": _sparse_rows, "columns": _sparse_columns}[name]
        _KERNELS[name] = numba.njit(nogil=True, cache=True, boundscheck=False)(source)
    return _KERNELS[name]


def _gene_ranges(n_genes: int, n_jobs: int) -> list[tuple[int, int]]:
    tasks = max(1, min(n_jobs, n_genes // _MIN_GENES_PER_TASK))
    edges = np.linspace(0, n_genes, tasks + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in pairwise(edges) if hi > lo]


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
    weights = weights.tocsr()
    if squares is None:
        squares = np.zeros((0, n_genes))
        square_rows = np.zeros(n_cells, dtype=np.int64)
        square_weights = np.zeros(n_cells)
    arguments = (
        np.asarray(weights.indptr, dtype=np.int64),
        np.asarray(weights.indices, dtype=np.int64),
        np.asarray(weights.data, dtype=np.float64),
    )
    rows_first = y.flags.c_contiguous
    kernel = _kernel("rows" if rows_first else "columns")
    block = y if rows_first else y.T
    square_rows = np.asarray(square_rows, dtype=np.int64)
    square_weights = np.asarray(square_weights, dtype=np.float64)

    def run(genes: tuple[int, int]) -> None:
        kernel(out, *arguments, block, squares, square_rows, square_weights, *genes)

    ranges = _gene_ranges(n_genes, n_jobs)
    if len(ranges) == 1:
        run(ranges[0])
        return
    with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
        list(pool.map(run, ranges))


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
