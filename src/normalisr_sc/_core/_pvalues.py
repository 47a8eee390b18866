"""Exact p-values of the association test (METHOD 8), in linear and log space.

The p-value of ``gamma = 0`` with ``df`` residual degrees of freedom and proportion of
variance explained ``R^2`` is ``I_{1-R^2}(df / 2, 1 / 2)`` (regularised incomplete
beta), the two-sided t-test with ``df`` degrees of freedom. Strong associations have
p-values far below the smallest float64, so the logarithm is evaluated directly from
the continued fraction of the incomplete beta function wherever the linear value is
tiny: ``-log10 p`` stays exact (e.g. 1500 for p = 1e-1500) and ``p`` itself only
reaches 0 when it is below the smallest subnormal float.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import betainc, betaln

#: Linear p-values below this are recomputed in log space.
LOG_SPACE_BELOW = 1e-250
#: Relative convergence tolerance and iteration cap of the continued fraction.
_CF_EPS = 1e-15
_CF_MAX_ITER = 100_000
_CF_TINY = 1e-300


def _log_betainc_cf(a: np.ndarray, b: float, x: np.ndarray) -> np.ndarray:
    """``log I_x(a, b)`` for ``0 < x < (a + 1) / (a + b + 2)`` by its continued fraction.

    ``I_x(a, b) = x^a (1-x)^b / (a B(a, b)) / (1 + d_1 / (1 + d_2 / (1 + ...)))`` with
    ``d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1))`` and
    ``d_{2m} = m (b-m) x / ((a+2m-1)(a+2m))``, evaluated with the modified Lentz method.
    """
    front = a * np.log(x) + b * np.log1p(-x) - np.log(a) - betaln(a, b)

    def clamp(values: np.ndarray) -> np.ndarray:
        return np.where(np.abs(values) < _CF_TINY, _CF_TINY, values)

    c = np.ones_like(x)
    d = 1.0 / clamp(1.0 - (a + b) * x / (a + 1.0))
    fraction = d.copy()
    active = np.ones(x.shape, dtype=bool)
    for m in range(1, _CF_MAX_ITER):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 / clamp(1.0 + even * d)
        c = clamp(1.0 + even / c)
        fraction = np.where(active, fraction * d * c, fraction)
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 / clamp(1.0 + odd * d)
        c = clamp(1.0 + odd / c)
        step = d * c
        fraction = np.where(active, fraction * step, fraction)
        active &= np.abs(step - 1.0) > _CF_EPS
        if not active.any():
            break
    return front + np.log(fraction)


def association_pvalues(
    one_minus_r2: np.ndarray, df: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """P-values and ``-log10`` p-values of the association test.

    Parameters
    ----------
    one_minus_r2
        ``1 - R^2``, clipped to ``[0, 1]``.
    df
        Residual degrees of freedom ``n - 1 - r - dimreduce`` (positive), broadcastable.

    Returns
    -------
    ``p`` and ``-log10 p``, both of the broadcast shape. ``R^2 = 1`` exactly gives
    ``p = 0`` and ``-log10 p = inf``.
    """
    x = np.clip(np.asarray(one_minus_r2, dtype=np.float64), 0.0, 1.0)
    a = np.broadcast_to(np.asarray(df, dtype=np.float64) / 2.0, x.shape)
    p = betainc(a, 0.5, x)
    with np.errstate(divide="ignore"):
        neg_log10 = -np.log10(p)
    tiny = p < LOG_SPACE_BELOW
    if tiny.any():
        positive = tiny & (x > 0)
        log_p = _log_betainc_cf(a[positive], 0.5, x[positive])
        p[positive] = np.exp(log_p)
        neg_log10[positive] = -log_p / np.log(10.0)
        neg_log10[tiny & (x == 0)] = np.inf
    return p, neg_log10


def bh_qvalues(pvals: np.ndarray, axis: int = -1) -> np.ndarray:
    """Benjamini-Hochberg q-values along ``axis`` (NaN entries are ignored)."""
    pvals = np.moveaxis(np.asarray(pvals, dtype=np.float64), axis, -1)
    # The sorted values come from a sort (cheaper than gathering them through the
    # order), and the order need not be stable: tied p-values get the same q-value
    # whatever their order (the minimum from the last of them on), so the result is
    # the same as with a stable order.
    order = np.argsort(pvals, axis=-1)
    ranked = np.sort(pvals, axis=-1)
    n_valid = (~np.isnan(ranked)).sum(axis=-1, keepdims=True)
    position = np.arange(1, ranked.shape[-1] + 1)
    adjusted = ranked * n_valid / position
    adjusted = np.minimum.accumulate(np.nan_to_num(adjusted, nan=np.inf)[..., ::-1], axis=-1)[
        ..., ::-1
    ]
    adjusted = np.where(np.isnan(ranked), np.nan, np.minimum(adjusted, 1.0))
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return np.moveaxis(out, -1, axis)


#: Median of the chi-square distribution with 1 degree of freedom.
CHI2_MEDIAN = float(stats.chi2.ppf(0.5, 1))


def genomic_inflation(neg_log10_p: np.ndarray) -> float:
    """Genomic inflation: median chi-square (1 df) of the p-values over its null median.

    The chi-square quantile is monotone in p, so only the one or two middle values are
    transformed: the median of millions of tests costs a partition, not millions of
    quantiles.
    """
    values = np.asarray(neg_log10_p, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        return float("nan")
    middle = np.partition(values, [(n - 1) // 2, n // 2])[[(n - 1) // 2, n // 2]]
    chi2 = stats.chi2.isf(10.0**-middle, 1)
    return float(chi2.mean() / CHI2_MEDIAN)
