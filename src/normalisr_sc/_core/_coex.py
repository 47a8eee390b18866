"""Co-expression of all gene pairs and its binary network (METHOD 8 and 9).

In METHOD 8, ``x`` and ``y`` are both genes here.

Everything rests on one Gram matrix of the expression, accumulated over blocks of cells
(:class:`GramSums`, run by :func:`~._reduce.accumulate` as a loop or a dask graph). The
covariates are removed from it in place, and the test statistics are then computed in
bands of genes, so that the only gene x gene matrices held are the Gram matrix and the
requested outputs.

The p-values of the matrices come from a compiled kernel (numba, GIL released, threads
over bands of genes) that reads each pair once, in one triangle, and writes the three
outputs and their mirror images tile by tile. Both methods read ``r`` itself, never a
rounded ``1 - r^2``: where ``p >= FAST_P`` it sums the power series of the
complementary incomplete beta function in ``r^2`` (:func:`_complements`); below, in
log space, the asymptotic expansion for large ``df`` (:func:`_tail_asymptotic`), else
the continued fraction of the incomplete beta function (:func:`_tail_log`). The rare
pair where none converges quickly is computed by
:func:`~._pvalues.association_pvalues` (scipy's ``betainc``).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
from scipy.linalg.blas import dgemm, dsyrk
from scipy.special import betaincinv, gamma

from ._blocks import dense_block
from ._checks import ZERO_VARIANCE_RTOL, check_df, check_finite_sums
from ._linalg import pinv_psd
from ._pvalues import association_pvalues
from ._reduce import accumulate, is_dask, limit_threads, no_progress

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

#: P-values from this up are summed by the kernel's series (:func:`_complements`);
#: smaller ones by the asymptotic expansion (:func:`_tail_asymptotic`, ``df >= 2
#: BGRAT_MIN_A``) or the continued fraction (:func:`_tail_log`; it loses digits near
#: the cut at large ``df``, 1e-11 at ``df = 1e6``). ``p = 1 - S`` with ``S`` accurate
#: to a few ulp, so the relative error of ``p`` stays below ``2e-13`` here (largest
#: just above the cut, where ``S`` is largest). All read ``r``: the series ``r^2`` and
#: ``(1 - r^2)^a = exp(a log1p(-r^2))``, the tails ``log(1 - r^2)`` as ``log1p(-r^2)``,
#: or ``log((1 - |r|)(1 + |r|))`` where ``|r| >= 1/2``, so that no rounding of
#: ``1 - r^2`` enters (it cost up to 2e-10 of p at ``|r| = 6e-6``, ``df = 19,995``).
#: Against 40-digit mpmath of the same ``r`` (``|r|`` from 1e-8 to 0.99, ``df`` from 3
#: to 1e6): at most 2e-13 relative where ``p > 1e-20``, and a few ulp of ``log p``
#: below (the rounding of ``r^2``: 1.5e-13 at ``p = 1e-250``).
FAST_P = 0.01
#: Most terms of the series; where more would be needed (small ``df`` with large
#: ``|r|``), the pairs are handed to ``betainc``.
SERIES_TERMS = 400
#: The series stops once the bound of its remaining terms is below this fraction of its
#: sum (under the rounding of float64).
SERIES_RTOL = 1e-17
#: Genes per tile of the matrices kernel: the tile's mirror images of the three outputs
#: stay in the L1/L2 cache while a band is written.
COEX_TILE = 64
#: ``1 / log(10)``: ``-log10 p = -log1p(-(1 - p)) / log(10)``, exact where ``p`` is near 1.
INV_LN10 = 1.0 / np.log(10.0)
#: From this ``a = df / 2`` on, p-values below :data:`FAST_P` come from the asymptotic
#: expansion (:func:`_tail_asymptotic`), and where it fails, from the continued fraction.
BGRAT_MIN_A = 10.0
#: Most terms of the asymptotic expansion, and its relative tolerance.
BGRAT_TERMS = 30
BGRAT_EPS = 1e-16
#: Relative convergence tolerance, iteration cap and floor of the continued fraction.
CF_EPS = 1e-16
CF_MAX_ITER = 5_000
CF_TINY = 1e-300


class GramSums:
    """Sums over cells of the expression ``Y`` and the covariates ``C``.

    ``Y'Y`` (upper triangle valid, Fortran order), ``C'Y``, ``C'C`` and the number of cells.
    With ``serial``, the blocks are added one at a time by one thread (the in-memory
    loop), and ``C'Y`` is computed in one BLAS thread (see :meth:`add`).
    """

    def __init__(self, n_genes: int, n_covariates: int, *, serial: bool = False) -> None:
        self.gram = np.zeros((n_genes, n_genes), order="F")
        self.cy = np.zeros((n_covariates, n_genes))
        self.cc = np.zeros((n_covariates, n_covariates))
        self.n_cells = 0
        self.serial = serial

    def add(
        self, rows: slice, block: np.ndarray | sparse.csr_matrix, covariates: np.ndarray
    ) -> None:
        y = dense_block(block)
        self.gram = dsyrk(1.0, y.T, beta=1.0, c=self.gram, trans=0, lower=0, overwrite_c=1)
        # Genes first: OpenBLAS threads C'Y badly. Serially, in one BLAS thread: C'Y
        # reads the whole block again for few products, which OpenBLAS's threads slow
        # down (20,000 x 5,000 x 4 covariates, 2 cores: 0.2 s in one thread, 0.5 s in
        # two). The limit is process-wide: not while other threads add blocks (dask).
        with limit_threads(1) if self.serial else nullcontext():
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
        partial(GramSums, expression.shape[1], n_covariates, serial=not is_dask(expression)),
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
#
# ``p = I_x(df/2, 1/2)`` with ``x = 1 - r^2``, ``a = df / 2``, ``y = r^2``:
# ``p = 1 - I_y(1/2, a)`` and
# ``I_y(1/2, a) = y^(1/2) (1-y)^a / ((1/2) B(1/2, a)) * sum_k c_k``, ``c_0 = 1``,
# ``c_(k+1) = c_k (a + 1/2 + k) y / (3/2 + k)`` (the hypergeometric series
# ``2F1(a + 1/2, 1; 3/2; y)``), all terms positive. Its ratios tend to ``y`` (falling to
# it when ``a > 1``, rising otherwise), so after a term ``c`` with ratio ``q`` the
# remaining terms are below ``c * m / (1 - m)``, ``m = max(q, y)``. Every term grows
# with ``y``: the number of terms that is enough at the domain's largest ``y`` is enough
# for all (:func:`series_terms`). Every pair sums that many terms, so that its p-value
# depends on its ``x`` only, and the pairs of a tile row are summed together (SIMD).


def _complements(r, width, a, scale, y_cut, inverse, n_terms, y, term, total, out):
    """``1 - I_x(a, 1/2)``, ``x = 1 - r^2``, of ``r[:width]`` into ``out[:width]``.

    NaN outside the domain (``r^2 > y_cut`` or NaN). ``y``, ``term`` and ``total`` are
    scratch arrays of at least ``width`` values; the first ``n_terms`` of
    ``inverse[k] = 1 / (3/2 + k)`` are used. Returns the number of entries outside the
    domain.
    """
    missing = 0
    for q in range(width):
        value = r[q] * r[q]
        if value <= y_cut:
            y[q] = value
        else:
            y[q] = np.nan
            missing += 1
        term[q] = 1.0
        total[q] = 1.0
    alpha = a + 0.5
    for k in range(n_terms):
        factor = alpha + k
        inverse_k = inverse[k]
        for q in range(width):
            term[q] *= factor * y[q] * inverse_k
            total[q] += term[q]
    for q in range(width):
        out[q] = scale * np.sqrt(y[q]) * np.exp(a * np.log1p(-y[q])) * total[q]
    return missing


def _tail_log(r, a, log_front):
    """``log I_x(a, 1/2)``, ``x = 1 - r^2``, by the continued fraction; NaN if it fails.

    ``log_front = log(1 / (a B(a, 1/2)))``. The fraction (modified Lentz) converges
    where ``x < (a + 1) / (a + 3/2 + 1)``, which holds for small p-values; elsewhere, or
    without convergence in :data:`CF_MAX_ITER` steps, or for ``|r| > 1``, NaN.
    ``|r| = 1`` gives ``-inf``.
    """
    b = 0.5
    magnitude = abs(r)
    y = r * r
    # 1 - |r| is exact where |r| >= 1/2 (Sterbenz)
    x = (1.0 - magnitude) * (1.0 + magnitude) if magnitude >= 0.5 else 1.0 - y
    if not x < (a + 1.0) / (a + b + 2.0):
        return np.nan  # also |r| > 1 and NaN
    if x == 0.0:
        return -np.inf
    log_x = np.log(x) if magnitude >= 0.5 else np.log1p(-y)
    d = 1.0 - (a + b) * x / (a + 1.0)
    if abs(d) < CF_TINY:
        d = CF_TINY
    d = 1.0 / d
    c = 1.0
    fraction = d
    for m in range(1, CF_MAX_ITER):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + even * d
        d = 1.0 / (CF_TINY if abs(d) < CF_TINY else d)
        c = 1.0 + even / c
        c = CF_TINY if abs(c) < CF_TINY else c
        fraction *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + odd * d
        d = 1.0 / (CF_TINY if abs(d) < CF_TINY else d)
        c = 1.0 + odd / c
        c = CF_TINY if abs(c) < CF_TINY else c
        step = d * c
        fraction *= step
        if abs(step - 1.0) <= CF_EPS:
            return a * log_x + 0.5 * np.log(y) + log_front + np.log(fraction)
    return np.nan


def _tail_asymptotic(r, a, log_ratio, c, d):
    """``log I_x(a, 1/2)``, ``x = 1 - r^2``, for large ``a``; NaN if the expansion fails.

    The expansion in incomplete gamma functions of Didonato and Morris (1992, eq. 9.1),
    ``T = a - 1/4``, ``u = -T log x``, with ``Q(1/2, u) = erfc(sqrt(u))``, summed until
    a term is below :data:`BGRAT_EPS` of the sum. ``log_ratio = log(Gamma(a + 1/2) /
    Gamma(a))``; ``c`` and ``d`` are scratch arrays of :data:`BGRAT_TERMS` values.
    """
    b = 0.5
    magnitude = abs(r)
    y = r * r
    # 1 - |r| is exact where |r| >= 1/2 (Sterbenz)
    x = (1.0 - magnitude) * (1.0 + magnitude) if magnitude >= 0.5 else 1.0 - y
    if not (x > 0.0 and x < 1.0):
        return np.nan  # also NaN
    log_x = np.log(x) if magnitude >= 0.5 else np.log1p(-y)
    nu = a + 0.5 * (b - 1.0)
    u = -nu * log_x
    root = np.sqrt(u)
    if root < 5.0:
        erfc = math.erfc(root)
        log_q = np.log(erfc)
        # Q(b, u) / (exp(-u) u^b / Gamma(b)): only the corrections use it
        q_ratio = np.sqrt(np.pi) * erfc * np.exp(u) / root
    else:
        # erfc(s) = exp(-s^2) / sqrt(pi) / (s + (1/2) / (s + 1 / (s + (3/2) / (s + ...))))
        fraction = root
        for k in range(80, 0, -1):
            fraction = root + 0.5 * k / fraction
        log_q = -np.log(fraction) - 0.5 * np.log(np.pi) - u
        q_ratio = 1.0 / (fraction * root)
    v = 0.25 / (nu * nu)
    t2 = 0.25 * log_x * log_x
    j = q_ratio
    corrections = 0.0
    t = 1.0
    cn = 1.0
    n2 = 0.0
    for n in range(1, BGRAT_TERMS + 1):
        bp2n = b + n2
        j = (bp2n * (bp2n + 1.0) * j + (u + bp2n + 1.0) * t) * v
        n2 += 2.0
        t *= t2
        cn /= n2 * (n2 + 1.0)
        c[n - 1] = cn
        acc = 0.0
        coef = b - n
        for i in range(1, n):
            acc += coef * c[i - 1] * d[n - 1 - i]
            coef += b
        d[n - 1] = (b - 1.0) * cn + acc / n
        term = d[n - 1] * j
        corrections += term
        if q_ratio + corrections <= 0.0:
            return np.nan
        if abs(term) <= BGRAT_EPS * (q_ratio + corrections):
            return log_ratio - b * np.log(nu) + log_q + np.log1p(corrections / q_ratio)
    return np.nan


def _tail(r, a, log_front, log_ratio, c, d):
    """``log p`` of a pair below the series' domain (:func:`_tail_asymptotic`, else the fraction)."""
    log_p = _asymptotic_kernel(r, a, log_ratio, c, d) if a >= BGRAT_MIN_A else np.nan
    if np.isnan(log_p):
        log_p = _fraction_kernel(r, a, log_front)
    return log_p


# replaced by their compiled versions before the kernels
_complement_kernel = _complements
_fraction_kernel = _tail_log
_asymptotic_kernel = _tail_asymptotic
_tail_kernel = _tail


def _band_matrices(
    lower,
    inv_sd,
    r_out,
    p_out,
    log_out,
    lo,
    hi,
    a,
    scale,
    y_cut,
    inverse,
    n_terms,
    log_front,
    log_ratio,
    tile,
):
    """Write r, p and ``-log10 p`` of the pairs ``(j, i)``, ``lo <= j < hi``, ``i < j``.

    ``lower[j, i]`` (``i < j``) holds the covariate-removed inner products; each pair is
    written at ``(j, i)`` and ``(i, j)`` of the outputs, a tile of columns at a time.
    ``r_out`` may be ``lower`` itself (an entry is read before it is overwritten; the
    upper triangle of ``lower`` is never read). Pairs that neither the series nor the
    continued fraction computes get NaN p-values; returns how many.
    """
    missing = 0
    r = np.empty(tile)
    complement = np.empty(tile)
    y, term, total = np.empty(tile), np.empty(tile), np.empty(tile)
    c, d = np.empty(BGRAT_TERMS), np.empty(BGRAT_TERMS)
    for i0 in range(0, hi, tile):
        i1 = min(i0 + tile, hi)
        for j in range(max(lo, i0 + 1), hi):
            row = lower[j]
            inv_j = inv_sd[j]
            width = min(i1, j) - i0
            for q in range(width):
                r[q] = row[i0 + q] * (inv_j * inv_sd[i0 + q])
            _complement_kernel(
                r, width, a, scale, y_cut, inverse, n_terms, y, term, total, complement
            )
            for q in range(width):
                i = i0 + q
                if np.isnan(complement[q]):
                    log_p = _tail_kernel(r[q], a, log_front, log_ratio, c, d)
                    missing += np.isnan(log_p)
                    p = np.exp(log_p)
                    neg_log = -log_p * INV_LN10
                else:
                    p = 1.0 - complement[q]
                    neg_log = -np.log1p(-complement[q]) * INV_LN10
                r_out[j, i] = r[q]
                r_out[i, j] = r[q]
                p_out[j, i] = p
                p_out[i, j] = p
                log_out[j, i] = neg_log
                log_out[i, j] = neg_log
    return missing


def _values(r, a, scale, y_cut, inverse, n_terms, log_front, log_ratio, tile, p_out, log_out):
    """P-values and ``-log10`` p-values of the 1-d ``r`` as in :func:`_band_matrices`."""
    missing = 0
    complement = np.empty(tile)
    y, term, total = np.empty(tile), np.empty(tile), np.empty(tile)
    c, d = np.empty(BGRAT_TERMS), np.empty(BGRAT_TERMS)
    for start in range(0, r.size, tile):
        width = min(tile, r.size - start)
        _complement_kernel(
            r[start:], width, a, scale, y_cut, inverse, n_terms, y, term, total, complement
        )
        for q in range(width):
            if np.isnan(complement[q]):
                log_p = _tail_kernel(r[start + q], a, log_front, log_ratio, c, d)
                missing += np.isnan(log_p)
                p_out[start + q] = np.exp(log_p)
                log_out[start + q] = -log_p * INV_LN10
            else:
                p_out[start + q] = 1.0 - complement[q]
                log_out[start + q] = -np.log1p(-complement[q]) * INV_LN10
    return missing


_KERNELS: dict[str, Callable] = {}


def _kernel(name: str) -> Callable:
    """Return the compiled kernel ``name`` (numba, compiled on first use, cached on disk)."""
    if not _KERNELS:
        import numba

        # the kernels call them by these names
        global _complement_kernel, _fraction_kernel, _asymptotic_kernel, _tail_kernel
        jit = numba.njit(nogil=True, cache=True, boundscheck=False)
        _complement_kernel = jit(_complements)
        _fraction_kernel = jit(_tail_log)
        _asymptotic_kernel = jit(_tail_asymptotic)
        _tail_kernel = jit(_tail)
        _KERNELS.update(matrices=jit(_band_matrices), values=jit(_values))
    return _KERNELS[name]


#: From this ``a`` on, ``Gamma(a + 1/2) / Gamma(a)`` comes from its asymptotic series
#: (below, from ``gamma`` itself; both accurate to a few ulp, unlike ``betaln`` or
#: ``poch``, whose errors reach ``1e-10`` for ``a`` in the thousands).
GAMMA_RATIO_ASYMPTOTIC = 20.0
#: ``log(Gamma(a + 1/2) / Gamma(a)) - log(a) / 2 = sum_m c_m a^(1 - 2m)``:
#: ``c_m = (2^(1-2m) - 2) B_2m / (2m (2m - 1))`` (Bernoulli numbers ``B_2m``).
_GAMMA_RATIO_SERIES = (-1 / 8, 1 / 192, -1 / 640, 17 / 14336, -5115 / 3041280)


def half_gamma_ratio(a: float) -> float:
    """``Gamma(a + 1/2) / Gamma(a)`` for ``a > 0``, to a few ulp."""
    if a < GAMMA_RATIO_ASYMPTOTIC:
        return float(gamma(a + 0.5) / gamma(a))
    inverse = 1.0 / a
    correction = sum(c * inverse ** (2 * m + 1) for m, c in enumerate(_GAMMA_RATIO_SERIES))
    return float(np.sqrt(a) * np.exp(correction))


def series_terms(y: float, a: float, limit: int = SERIES_TERMS) -> int | None:
    """Terms of the series after which the rest is below ``SERIES_RTOL`` at ``y``.

    The same number is enough for every smaller ``y`` (each term grows with ``y``, and
    the sum is at least 1); None if more than ``limit`` would be needed.
    """
    alpha = a + 0.5
    term = 1.0
    for k in range(limit):
        ratio = (alpha + k) * y / (1.5 + k)
        term *= ratio
        bound = max(ratio, y)
        if bound < 1.0 and term * bound <= SERIES_RTOL * (1.0 - bound):
            return k + 1
    return None


@dataclass(frozen=True)
class SeriesDomain:
    """Constants of :func:`_complements` and :func:`_tail_log` for one ``df``.

    The series' domain is ``r^2 <= y_cut``: ``p >= fast_p`` and the series converged
    within :data:`SERIES_TERMS` terms (``n_terms``, enough at ``y_cut``).
    ``log_front = log(1 / (a B(a, 1/2)))`` and ``log_ratio = log(Gamma(a + 1/2) /
    Gamma(a))`` are the constants of the continued fraction and of the expansion.
    """

    a: float
    scale: float
    y_cut: float
    inverse: np.ndarray
    n_terms: int
    log_front: float
    log_ratio: float

    @classmethod
    def of(cls, df: float, fast_p: float = FAST_P) -> SeriesDomain:
        """Domain where ``p >= fast_p`` and the series is short (``fast_p = 1``: empty)."""
        a = float(df) / 2.0
        inverse = 1.0 / (1.5 + np.arange(SERIES_TERMS, dtype=np.float64))
        # 2 / B(1/2, a) = 2 Gamma(a + 1/2) / (Gamma(1/2) Gamma(a))
        ratio = half_gamma_ratio(a)
        scale = 2.0 / np.sqrt(np.pi) * ratio
        log_front, log_ratio = float(np.log(scale / (2.0 * a))), float(np.log(ratio))
        if fast_p >= 1:
            return cls(a, scale, -np.inf, inverse, 0, log_front, log_ratio)
        y_cut = 1.0 - float(betaincinv(a, 0.5, fast_p))
        n_terms = series_terms(y_cut, a)
        if n_terms is None:
            # Shrink the domain to where the series converges: bisect on y.
            low, high = 0.0, y_cut
            for _ in range(60):
                middle = 0.5 * (low + high)
                low, high = (middle, high) if series_terms(middle, a) else (low, middle)
            y_cut = low
            n_terms = series_terms(low, a) or 0
        return cls(a, scale, y_cut, inverse, n_terms, log_front, log_ratio)

    def args(self) -> tuple[float, float, float, np.ndarray, int, float, float]:
        return (
            self.a,
            self.scale,
            self.y_cut,
            self.inverse,
            self.n_terms,
            self.log_front,
            self.log_ratio,
        )


def coex_pvalues(
    r: np.ndarray, df: float, *, fast_p: float = FAST_P
) -> tuple[np.ndarray, np.ndarray]:
    """P-values and ``-log10`` p-values of Pearson correlations ``r`` with ``df``.

    The values of :func:`~._pvalues.association_pvalues` at ``R^2 = r^2``, computed from
    ``r`` by the kernel's series and continued fraction (the same arithmetic as the
    matrices of :func:`coex_matrices`), scipy's ``betainc`` for the rare rest.
    """
    values = np.ascontiguousarray(r, dtype=np.float64).ravel()
    p = np.empty_like(values)
    neg_log10 = np.empty_like(values)
    domain = SeriesDomain.of(df, fast_p)
    missing = _kernel("values")(values, *domain.args(), COEX_TILE, p, neg_log10)
    if missing:
        where = np.flatnonzero(np.isnan(p))
        p[where], neg_log10[where] = association_pvalues(1.0 - values[where] ** 2, df)
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
    ``n_jobs`` threads, the longest bands first), by the series where ``p >= fast_p`` and
    by the continued fraction below; the rare pairs neither computes are then computed
    by :func:`~._pvalues.association_pvalues`, in their band. Diagonal:
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
    domain = SeriesDomain.of(stats.df, fast_p)
    kernel = _kernel("matrices")

    def band(rows: slice) -> None:
        lo, hi = rows.start, rows.stop
        missing = kernel(lower, inv_sd, r, pvals, neg_log10, lo, hi, *domain.args(), COEX_TILE)
        if not missing:
            return
        row, column = np.nonzero(np.isnan(pvals[lo:hi, :hi]))
        row += lo
        pair = column < row
        row, column = row[pair], column[pair]
        dot = lower[row, column]
        values = dot if r is lower else dot * (inv_sd[row] * inv_sd[column])
        band_p, band_log = association_pvalues(1.0 - values * values, stats.df)
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
