"""Co-expression of all gene pairs and its binary network (METHOD 8 and 9).

In METHOD 8, ``x`` and ``y`` are both genes here.

Everything rests on one Gram matrix of the expression, accumulated over blocks of cells
(:class:`GramSums`, run by :func:`~._reduce.accumulate` as a loop or a dask graph). The
covariates are removed from it in place, and the test statistics are then computed in
bands of genes, so that the only gene x gene matrices held are the Gram matrix and the
requested outputs.

The p-values of the matrices come from a compiled kernel (numba, GIL released, threads
over bands of genes) that reads each pair once, in one triangle, and writes the three
outputs and their mirror images tile by tile. Its p-values are those of
:func:`~._pvalues.association_pvalues`, computed from ``r`` itself (never a rounded
``1 - r^2``) by the same arithmetic (:func:`~._pvalues._tile`): for the one ``df`` of
all pairs, polynomials in ``|r|`` where ``p >= FAST_P`` (a tile of pairs together), a
table of ``-log(p) / |r|`` down to ``p = 1e-30``, and the exact series and tails beyond;
so a pair's values depend on its ``r`` only. The rare pair where no method converges is
computed by scipy's ``betainc`` (:func:`~._pvalues.betainc_pvalues`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
from scipy.linalg.blas import dgemm, dsyrk
from scipy.special import betaincinv

from ._blocks import dense_block
from ._checks import ZERO_VARIANCE_RTOL, check_df, check_finite_sums
from ._linalg import pinv_psd
from ._pvalues import (
    FAST_P,
    MODE_R,
    SERIES_INVERSE,
    TILE,
    betainc_pvalues,
    kernel,
    table_params,
)
from ._reduce import accumulate, limit_threads, no_progress

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import DTypeLike
    from scipy import sparse

    from .._types import RowSliceable
    from ._reduce import Progress

#: Candidate edges of the per-row Benjamini-Hochberg network: p-values up to
#: ``qcut * (1 + BH_SLACK)``, which covers every entry whose adjusted p-value can round
#: to ``qcut`` or below (the rounding of ``p * m / rank`` is far smaller).
BH_SLACK = 1e-9


class GramSums:
    """Sums over cells of the expression ``Y`` and the covariates ``C``.

    ``Y'Y`` (upper triangle valid, Fortran order), ``C'Y``, ``C'C`` and the number of cells.
    """

    def __init__(self, n_genes: int, n_covariates: int) -> None:
        self.gram = np.zeros((n_genes, n_genes), order="F")
        self.cy = np.zeros((n_covariates, n_genes))
        self.cc = np.zeros((n_covariates, n_covariates))
        self.n_cells = 0

    def add(
        self, rows: slice, block: np.ndarray | sparse.csr_matrix, covariates: np.ndarray
    ) -> None:
        y = dense_block(block)
        self.gram = dsyrk(1.0, y.T, beta=1.0, c=self.gram, trans=0, lower=0, overwrite_c=1)
        # As (Y'C)': right after the rank update OpenBLAS takes 40-70 ms per block for
        # the wide C'Y and 16-20 ms for this (4,096 cells x 5,000 genes x 4 covariates,
        # 2 cores), the same numbers up to rounding.
        self.cy += (y.T @ covariates).T
        self.cc += covariates.T @ covariates
        self.n_cells += y.shape[0]

    def merge(self, other: GramSums) -> GramSums:
        self.gram += other.gram
        self.cy += other.cy
        self.cc += other.cc
        self.n_cells += other.n_cells
        return self


@dataclass
class CoexStats:
    """What every co-expression test of ``g`` genes is computed from.

    Attributes
    ----------
    dot
        ``(g, g)``: covariate-removed inner products of the genes; only the upper
        triangle is valid.
    inv_sd
        ``(g,)``: inverse square root of each gene's residual sum of squares; 0 for genes
        without residual variance, whose tests then have ``r = 0`` and ``p = 1``.
    var
        ``(g,)``: residual variance (mean square over cells) of each gene.
    n_cells, df
        Number of cells and residual degrees of freedom of every test.
    """

    dot: np.ndarray
    inv_sd: np.ndarray
    var: np.ndarray
    n_cells: int
    df: int


def coex_stats(
    expression: RowSliceable,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
    n_jobs: int | None = None,
) -> CoexStats:
    """Accumulate the Gram matrix of ``expression`` and remove the ``covariates`` from it.

    ``expression`` is cells x genes (in memory, row-sliceable or dask); ``n_jobs`` threads
    (default ``nsc.settings.n_jobs``).

    NaN or infinity anywhere in ``expression`` makes the diagonal of the Gram matrix
    (each gene's sum of squares) non-finite: it is refused from there
    (:func:`~._checks.check_finite_sums`).
    """
    with limit_threads(n_jobs) as threads:
        return _coex_stats(expression, covariates, dimreduce, block_cells, progress, threads)


def _coex_stats(
    expression: RowSliceable,
    covariates: np.ndarray,
    dimreduce: int,
    block_cells: int,
    progress: Progress,
    n_jobs: int,
) -> CoexStats:
    n_covariates = covariates.shape[1]
    sums = accumulate(
        partial(GramSums, expression.shape[1], n_covariates),
        expression,
        (covariates,),
        block_cells=block_cells,
        progress=progress,
        desc="coex: Gram matrix",
        n_jobs=n_jobs,
    )
    pinv, rank = pinv_psd(sums.cc)
    df = sums.n_cells - 1 - int(rank) - dimreduce
    check_df(np.array([df]), np.array([True]))
    raw = np.diag(sums.gram).copy()
    check_finite_sums(raw, matrix=expression)
    # In place: dot = Y'Y - (C'Y)' (C'C)^+ C'Y; only its upper triangle is read later.
    dot = dgemm(-1.0, sums.cy, pinv @ sums.cy, beta=1.0, c=sums.gram, trans_a=1, overwrite_c=1)
    res = np.diag(dot).copy()
    zero = res <= ZERO_VARIANCE_RTOL * raw
    res[zero] = sums.n_cells
    inv_sd = np.where(zero, 0.0, 1.0 / np.sqrt(res))
    return CoexStats(dot, inv_sd, res / sums.n_cells, sums.n_cells, df)


def _symmetric_rows(upper: np.ndarray, rows: slice, first_column: int) -> np.ndarray:
    """Return rows ``rows`` of the symmetric matrix whose upper triangle is ``upper``.

    Columns from ``first_column`` (at most ``rows.start``) on.

    The entries ``(i, j)`` and ``(j, i)`` are both read from ``upper[min, max]``, so the
    statistics computed from them are bitwise equal.
    """
    start, stop = rows.start, rows.stop
    out = np.empty((stop - start, upper.shape[1] - first_column))
    out[:, : start - first_column] = upper[first_column:start, rows].T
    diagonal = upper[rows, rows]
    out[:, start - first_column : stop - first_column] = np.triu(diagonal) + np.triu(diagonal, 1).T
    out[:, stop - first_column :] = upper[rows, stop:]
    return out


def _in_bands(
    work: Callable[[slice], object],
    n_genes: int,
    band_rows: int,
    progress: Progress,
    desc: str,
    n_jobs: int | None = None,
    *,
    longest_first: bool = False,
) -> list:
    """``work(rows)`` for consecutive bands of ``band_rows`` genes, in ``n_jobs`` threads.

    ``n_jobs`` defaults to ``nsc.settings.n_jobs``; BLAS is limited to as many threads.
    With ``longest_first``, the bands go from the last (in a triangle, the longest) to
    the first, so that the threads finish together; the results follow that order.
    """
    bands = [
        slice(start, min(start + band_rows, n_genes)) for start in range(0, n_genes, band_rows)
    ]
    if longest_first:
        bands.reverse()
    with limit_threads(n_jobs) as threads, ThreadPoolExecutor(max_workers=threads) as pool:
        return list(progress(pool.map(work, bands), len(bands), desc))


# ------------------------------------------------------------------ compiled p-values


def _band_matrices(lower, inv_sd, r_out, p_out, log_out, lo, hi, params, inverse):
    """Write r, p and ``-log10 p`` of the pairs ``(j, i)``, ``lo <= j < hi``, ``i < j``.

    ``lower[j, i]`` (``i < j``) holds the covariate-removed inner products; each pair is
    written at ``(j, i)`` and ``(i, j)`` of the outputs, a tile of :data:`TILE` columns
    at a time. ``r_out`` may be ``lower`` itself (an entry is read before it is
    overwritten; the upper triangle of ``lower`` is never read). ``params`` are those of
    :func:`~._pvalues.table_params`; a tile of a row is computed together
    (:func:`~._pvalues._tile`). Pairs that no method computes get NaN p-values; returns
    how many.
    """
    missing = 0
    scratch = _scratch_kernel()
    r = np.empty(TILE)
    p = np.empty(TILE)
    neg_log = np.empty(TILE)
    for i0 in range(0, hi, TILE):
        i1 = min(i0 + TILE, hi)
        for j in range(max(lo, i0 + 1), hi):
            row = lower[j]
            inv_j = inv_sd[j]
            width = min(i1, j) - i0
            for q in range(width):
                r[q] = row[i0 + q] * (inv_j * inv_sd[i0 + q])
            missing += _tile_kernel(r, 0, width, MODE_R, params, inverse, scratch, p, neg_log, 0)
            for q in range(width):
                i = i0 + q
                r_out[j, i] = r[q]
                r_out[i, j] = r[q]
                p_out[j, i] = p[q]
                p_out[i, j] = p[q]
                log_out[j, i] = neg_log[q]
                log_out[i, j] = neg_log[q]
    return missing


# replaced by their compiled versions before the kernel is compiled
_tile_kernel: Callable | None = None
_scratch_kernel: Callable | None = None
_MATRICES: list[Callable] = []


def _matrices_kernel() -> Callable:
    """Return the compiled :func:`_band_matrices` (numba, compiled on first use, cached)."""
    if not _MATRICES:
        import numba

        global _tile_kernel, _scratch_kernel
        _tile_kernel, _scratch_kernel = kernel("tile"), kernel("scratch")
        _MATRICES.append(numba.njit(nogil=True, cache=True, boundscheck=False)(_band_matrices))
    return _MATRICES[0]


def coex_pvalues(
    r: np.ndarray, df: float, *, fast_p: float = FAST_P, table: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """P-values and ``-log10`` p-values of Pearson correlations ``r`` with ``df``.

    The values of :func:`~._pvalues.association_pvalues` at ``R^2 = r^2``, computed from
    ``r`` by the same arithmetic as the matrices of :func:`coex_matrices` (the table of
    ``df``, else the exact evaluations, scipy's ``betainc`` for the rare rest).
    ``fast_p`` and ``table`` are for tests: the series from ``fast_p`` on (1: never),
    the table or not.
    """
    values = np.ascontiguousarray(r, dtype=np.float64).ravel()
    p = np.empty_like(values)
    neg_log10 = np.empty_like(values)
    params = table_params(float(df), fast_p, table)
    missing = kernel("values")(values, MODE_R, params, SERIES_INVERSE, p, neg_log10)
    if missing:
        where = np.flatnonzero(np.isnan(p) & ~np.isnan(values))
        p[where], neg_log10[where] = betainc_pvalues(1.0 - values[where] ** 2, df)
    shape = np.shape(r)
    return p.reshape(shape), neg_log10.reshape(shape)


def coex_matrices(
    stats: CoexStats,
    *,
    dtype: DTypeLike = np.float64,
    band_rows: int = 256,
    progress: Progress = no_progress,
    fast_p: float = FAST_P,
    n_jobs: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P-values, ``-log10`` p-values and Pearson r of all gene pairs, ``(g, g)`` of ``dtype``.

    Each pair is computed once, in the lower triangle of ``stats.dot.T``, and written at
    both of its places (:func:`_band_matrices`, in bands of ``band_rows`` genes over
    ``n_jobs`` threads, the longest bands first), by the kernel of
    :func:`~._pvalues.association_pvalues` for ``df = stats.df`` (``fast_p``: where the
    exact series starts); the rare pairs no method computes are then computed by
    :func:`~._pvalues.betainc_pvalues`, in their band. Diagonal:
    ``p = 1``, ``r = 1``. In float64, ``r`` is written over ``stats.dot``, which is
    consumed: a pair's entry is overwritten only after it has been read.
    """
    n_genes = stats.inv_sd.size
    inv_sd = np.ascontiguousarray(stats.inv_sd, dtype=np.float64)
    pvals = np.empty((n_genes, n_genes), dtype=dtype)
    neg_log10 = np.empty_like(pvals)
    # The transpose of the Fortran-order Gram matrix is C-contiguous, its lower triangle
    # valid; r is symmetric.
    lower = stats.dot.T
    r = lower if pvals.dtype == np.float64 else np.empty_like(pvals)
    params = table_params(float(stats.df), fast_p)
    matrices = _matrices_kernel()

    def band(rows: slice) -> None:
        lo, hi = rows.start, rows.stop
        missing = matrices(lower, inv_sd, r, pvals, neg_log10, lo, hi, params, SERIES_INVERSE)
        if not missing:
            return
        row, column = np.nonzero(np.isnan(pvals[lo:hi, :hi]))
        row += lo
        pair = column < row
        row, column = row[pair], column[pair]
        dot = lower[row, column]
        values = dot if r is lower else dot * (inv_sd[row] * inv_sd[column])
        band_p, band_log = betainc_pvalues(1.0 - values * values, stats.df)
        for out, value in ((pvals, band_p), (neg_log10, band_log)):
            out[row, column] = value
            out[column, row] = value

    _in_bands(band, n_genes, band_rows, progress, "coex: tests", n_jobs, longest_first=True)
    for out, diagonal in ((r, 1.0), (pvals, 1.0), (neg_log10, 0.0)):
        np.fill_diagonal(out, diagonal)
    return pvals, neg_log10, r


def bh_edges(rows: np.ndarray, pvals: np.ndarray, n_tests: int, qcut: float) -> np.ndarray:
    """Which candidate entries are edges of the per-row Benjamini-Hochberg network.

    ``rows`` and ``pvals`` list the candidate entries of some rows of a p-value matrix
    with ``n_tests`` tests per row, row by row and in column order within each row. The
    candidates of a row must include every entry with ``p <= qcut * (1 + BH_SLACK)``.
    An entry is an edge where its BH q-value over its whole row is at most ``qcut``: by
    the step-up rule, where it ranks at or before the last entry of its row with
    ``p * n_tests / rank <= qcut`` -- the arithmetic of :func:`~._pvalues.bh_qvalues`,
    so that the two agree exactly.
    """
    edges = np.zeros(rows.size, dtype=bool)
    bounds = np.append(np.flatnonzero(np.diff(rows, prepend=-1)), rows.size)
    for start, stop in pairwise(bounds):
        row_p = pvals[start:stop]
        # Stable: ties keep column order, as in a sort of the whole row.
        order = np.argsort(row_p, kind="stable")
        rank = np.arange(1, order.size + 1)
        passing = np.flatnonzero(row_p[order] * n_tests / rank <= qcut)
        if passing.size:
            edges[start + order[: passing[-1] + 1]] = True
    return edges


def _band_edges(
    rows: slice,
    candidates: np.ndarray,
    pvals: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_tests: int,
    qcut: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the edges ``(row, column)`` of one band of rows.

    From a mask of candidates (diagonal excluded) and the p-values of the candidates at
    given positions in the band.
    """
    band_row, column = np.nonzero(candidates)
    edges = bh_edges(band_row, pvals(band_row, column), n_tests, qcut)
    return band_row[edges] + rows.start, column[edges]


def _joined(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not pieces:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, columns = zip(*pieces, strict=True)
    return np.concatenate(rows), np.concatenate(columns)


def coex_network(
    stats: CoexStats, *, qcut: float, band_rows: int = 256, progress: Progress = no_progress
) -> tuple[np.ndarray, np.ndarray]:
    """Edges ``(row, column)``, row-major, of the per-row BH network at ``qcut``.

    Equal to :func:`pvalue_network` of the p-values of :func:`coex_matrices`, without
    them: each band computes r over whole rows, then p-values only where ``r^2`` is large
    enough for ``p <= 2 qcut`` (``p`` increases with ``1 - r^2``), by the arithmetic of the
    matrices (:func:`coex_pvalues`).
    """
    n_genes = stats.inv_sd.size
    inv_sd = stats.inv_sd
    one_minus_r2_limit = betaincinv(stats.df / 2.0, 0.5, min(1.0, 2.0 * qcut))

    def band(rows: slice) -> tuple[np.ndarray, np.ndarray]:
        r = _symmetric_rows(stats.dot, rows, 0)
        r *= inv_sd[rows, None] * inv_sd[None, :]
        one_minus_r2 = 1.0 - r * r
        candidates = one_minus_r2 <= one_minus_r2_limit
        candidates[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = False

        def pvals(band_row: np.ndarray, column: np.ndarray) -> np.ndarray:
            return coex_pvalues(r[band_row, column], stats.df)[0]

        return _band_edges(rows, candidates, pvals, n_genes - 1, qcut)

    return _joined(_in_bands(band, n_genes, band_rows, progress, "coex: network"))


def pvalue_network(
    pvals: np.ndarray, *, qcut: float, band_rows: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Return the edges ``(row, column)`` of the per-row BH network of a p-value matrix.

    Row-major, diagonal excluded; the square matrix is read in bands of rows.
    """
    n_genes = pvals.shape[0]
    limit = qcut * (1.0 + BH_SLACK)
    pieces = []
    for start in range(0, n_genes, band_rows):
        rows = slice(start, min(start + band_rows, n_genes))
        band = np.asarray(pvals[rows], dtype=np.float64)
        candidates = band <= limit
        candidates[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = False

        def entries(i: np.ndarray, j: np.ndarray, band: np.ndarray = band) -> np.ndarray:
            return band[i, j]

        pieces.append(_band_edges(rows, candidates, entries, n_genes - 1, qcut))
    return _joined(pieces)
