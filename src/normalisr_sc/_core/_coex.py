"""Co-expression of all gene pairs and its binary network (METHOD 8 and 9).

In METHOD 8, ``x`` and ``y`` are both genes here.

Everything rests on one Gram matrix of the expression, accumulated over blocks of cells
(:class:`GramSums`, run by :func:`~._reduce.accumulate` as a loop or a dask graph). The
covariates are removed from it in place, and the test statistics are then computed in
bands of genes, so that the only gene x gene matrices held are the Gram matrix and the
requested outputs.
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
from ._pvalues import association_pvalues
from ._reduce import accumulate, limit_threads, no_progress

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import ArrayLike, DTypeLike
    from scipy import sparse

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
        # Genes first: OpenBLAS threads C'Y badly.
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
    expression: ArrayLike,
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
    expression: ArrayLike,
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
) -> list:
    """``work(rows)`` for consecutive bands of ``band_rows`` genes, in ``n_jobs`` threads.

    ``n_jobs`` defaults to ``nsc.settings.n_jobs``; BLAS is limited to as many threads.
    """
    bands = [
        slice(start, min(start + band_rows, n_genes)) for start in range(0, n_genes, band_rows)
    ]
    with limit_threads(n_jobs) as threads, ThreadPoolExecutor(max_workers=threads) as pool:
        return list(progress(pool.map(work, bands), len(bands), desc))


def coex_matrices(
    stats: CoexStats,
    *,
    dtype: DTypeLike = np.float64,
    band_rows: int = 256,
    progress: Progress = no_progress,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P-values, ``-log10`` p-values and Pearson r of all gene pairs, ``(g, g)`` of ``dtype``.

    Each band of genes is computed once, for the upper triangle, and mirrored. Diagonal:
    ``p = 1``, ``r = 1``. In float64, ``r`` is written over ``stats.dot``, which is
    consumed: a band overwrites only entries that it or an earlier band has read.
    """
    n_genes = stats.inv_sd.size
    inv_sd = stats.inv_sd
    pvals = np.empty((n_genes, n_genes), dtype=dtype)
    neg_log10 = np.empty_like(pvals)
    # The transpose of the Fortran-order Gram matrix is C-contiguous; r is symmetric.
    r = stats.dot.T if pvals.dtype == np.float64 else np.empty_like(pvals)

    def band(rows: slice) -> None:
        start = rows.start
        band_r = _symmetric_rows(stats.dot, rows, start)
        band_r *= inv_sd[rows, None] * inv_sd[None, start:]
        band_p, band_log = association_pvalues(1.0 - band_r * band_r, stats.df)
        for out, values in ((r, band_r), (pvals, band_p), (neg_log10, band_log)):
            out[rows, start:] = values
            out[start:, rows] = values.T

    _in_bands(band, n_genes, band_rows, progress, "coex: tests")
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
    enough for ``p <= 2 qcut`` (``p`` increases with ``1 - r^2``).
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
            return association_pvalues(one_minus_r2[band_row, column], stats.df)[0]

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
        pieces.append(
            _band_edges(rows, candidates, lambda i, j, band=band: band[i, j], n_genes - 1, qcut)
        )
    return _joined(pieces)
