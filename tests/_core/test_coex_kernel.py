"""The compiled co-expression kernel: its p-values against high-precision values and
scipy, and its matrices against an independent computation of every pair."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import betaincinv

from normalisr_sc._core import _coex, _pvalues
from normalisr_sc._core._pvalues import betainc_pvalues

DFS = [1, 2, 3, 7, 50, 999, 19_995, 10**6]


def _correlations(df: int, rng: np.random.Generator) -> np.ndarray:
    """Values of ``r`` covering the null range of ``df`` and all of ``[-1, 1]``."""
    r = np.concatenate(
        [
            rng.normal(scale=3 / np.sqrt(df + 2), size=20_000),
            rng.uniform(-1, 1, 2_000),
            [0.0, 1e-12, -1e-8, 1.0, -1.0],
        ]
    )
    return np.clip(r, -1, 1)


@pytest.mark.parametrize("df", DFS)
def test_coex_pvalues_agree_with_scipy(df):
    r = _correlations(df, np.random.default_rng(df))
    p, neg_log10 = _coex.coex_pvalues(r, df)
    # scipy's betainc of the rounded 1 - r^2: its rounding costs up to df * 2^-53 of p
    expected_p, expected_log = betainc_pvalues(1.0 - r * r, df)
    fast = r * r <= _pvalues.SeriesDomain.of(df).y_cut
    assert 0.2 < fast.mean() < 0.9  # both paths are exercised
    if df == 1:
        # scipy's betainc loses up to 1e-8 of p near 1 at df = 1 (against mpmath); the
        # closed form p = 1 - (2 / pi) asin(|r|) is the reference where p is not small
        closed = 1 - 2 / np.pi * np.arcsin(np.abs(r))
        expected_p = np.where(fast, closed, expected_p)
        with np.errstate(divide="ignore"):
            expected_log = np.where(fast, -np.log10(closed), expected_log)
    # scipy's betainc of the rounded 1 - r^2 is no reference (the mpmath test is): its
    # error grows as 2^-53 / r^2 of 1 - p for small |r|, as df * 2^-53 of p, and in log
    # space with the error of betaln (1e-11 at p = 1e-265, df = 19,995); this is a
    # consistency check of both paths and of the structure of the output
    finite = np.isfinite(expected_log)
    np.testing.assert_array_equal(np.isfinite(neg_log10), finite)
    np.testing.assert_array_equal(p == 0, expected_p == 0)
    small = r * r < 1e-2
    np.testing.assert_allclose(p[~small], expected_p[~small], rtol=5e-11, atol=1e-300)
    np.testing.assert_allclose(p[small], expected_p[small], rtol=1e-6, atol=0)
    np.testing.assert_allclose(neg_log10[finite], expected_log[finite], rtol=5e-11, atol=1e-6)


def test_coex_pvalues_at_df_1_match_the_closed_form():
    # df = 1: p = 1 - (2 / pi) asin(|r|)
    r = np.abs(np.random.default_rng(0).normal(scale=0.3, size=5_000)).clip(max=0.99)
    r = np.concatenate([r, [1e-9, 1e-12]])
    p, _ = _coex.coex_pvalues(r, 1)
    np.testing.assert_allclose(p, 1 - 2 / np.pi * np.arcsin(r), rtol=1e-13)


def _exact_p(mpmath, r: float, df: int):
    """P-value of the float ``r`` with ``df``, to 40 digits (60-digit arithmetic)."""
    with mpmath.workdps(60):
        y = mpmath.mpf(r) ** 2
        a = mpmath.mpf(df) / 2
        p = 1 - mpmath.betainc(0.5, a, 0, y, regularized=True)
        if p > mpmath.mpf(10) ** -20:
            return p
        return mpmath.betainc(a, 0.5, 0, 1 - y, regularized=True)


#: Largest relative error of p against mpmath, by df: a few ulp over the p-value just
#: above the cut of the series (``p = 1 - S``), far less in the tails.
HIGH_PRECISION_RTOL = {3: 2e-13, 4: 2e-13, 50: 1e-13, 999: 1e-13, 19_995: 1e-13, 10**6: 1e-13}


@pytest.mark.parametrize("df", sorted(HIGH_PRECISION_RTOL))
def test_coex_pvalues_against_high_precision(df):
    # |r| down to 1e-8: the old kernel, reading the rounded 1 - r^2, was off by up to
    # 1e-16 / r^2 of 1 - p there (2e-10 of p at |r| = 6e-6, df = 19,995)
    mpmath = pytest.importorskip("mpmath")
    domain = _pvalues.SeriesDomain.of(df)
    rng = np.random.default_rng(df)
    cut = np.sqrt(domain.y_cut)
    # tails, down to p = 1e-300 where r does not round to 1 (mpmath's betainc does not
    # converge there at df = 1e6: down to 1e-18 by the complement)
    tail_p = [1e-18] if df > 10**5 else [1e-18, 1e-30, 1e-100, 1e-300]
    tails = np.sqrt(1.0 - betaincinv(df / 2, 0.5, tail_p))
    largest = min(0.99, tails[0]) if df > 10**5 else 0.99
    r = np.concatenate(
        [
            10 ** rng.uniform(-8, np.log10(largest), 40),
            rng.normal(scale=3 / np.sqrt(df), size=40).clip(-largest, largest),
            cut * (1.0 + np.array([-1e-6, 0.0, 1e-12, 1e-6])),
            [v for v in (6e-6, 1e-4, 1e-3, 0.02, -0.5, 0.9, 0.99) if abs(v) <= largest],
            tails[tails < 1.0],
        ]
    )
    p, neg_log10 = _coex.coex_pvalues(r, df)
    rtol = HIGH_PRECISION_RTOL[df]
    for value, ours, ours_log in zip(r, p, neg_log10, strict=True):
        exact = _exact_p(mpmath, float(value), df)
        exact_log = -float(mpmath.log10(exact))
        # in the tail, the rounding of a log(1 - r^2) and of log p: a few ulp of log p
        tail = 4 * 2.0**-53 * exact_log * np.log(10)
        assert abs(ours - float(exact)) <= (rtol + tail) * float(exact), value
        assert abs(ours_log - exact_log) <= rtol * exact_log + 1e-16 * (1 - float(exact)) * 10, (
            value
        )


@pytest.mark.parametrize("a", [0.5, 1.0, 3.5, 19.9, 20.0, 20.5, 1e3, 5e5, 5e7])
def test_half_gamma_ratio(a):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    exact = mpmath.gamma(mpmath.mpf(a) + 0.5) / mpmath.gamma(mpmath.mpf(a))
    assert abs(_pvalues.half_gamma_ratio(a) - float(exact)) <= 4e-16 * float(exact)


def test_empty_series_domain_is_the_tails_or_scipy():
    r = _correlations(100, np.random.default_rng(1))
    p, neg_log10 = _coex.coex_pvalues(r, 100, fast_p=1.0, table=False)
    expected_p, expected_log = betainc_pvalues(1.0 - r * r, 100)
    params = _pvalues.table_params(100.0, 1.0, False)
    scratch = np.empty(_pvalues.BGRAT_TERMS), np.empty(_pvalues.BGRAT_TERMS)
    exact = _pvalues.kernel("exact")
    by_scipy = np.isnan(
        [exact(v, _pvalues.MODE_R, params, _pvalues.SERIES_INVERSE, *scratch)[0] for v in r]
    )
    assert by_scipy.mean() < 0.5  # most by the expansion at df = 100, even near p = 1
    np.testing.assert_array_equal(p[by_scipy], expected_p[by_scipy])
    np.testing.assert_array_equal(neg_log10[by_scipy], expected_log[by_scipy])
    # scipy's error: see test_coex_pvalues_agree_with_scipy
    small = r * r < 1e-2
    np.testing.assert_allclose(p[~small], expected_p[~small], rtol=5e-11, atol=0)
    np.testing.assert_allclose(p[small], expected_p[small], rtol=1e-6, atol=0)


def _stats(n_cells: int = 800, n_genes: int = 150, seed: int = 0) -> _coex.CoexStats:
    rng = np.random.default_rng(seed)
    expression = rng.standard_normal((n_cells, n_genes))
    expression[:, :20] += rng.standard_normal((n_cells, 1))  # a module: small p-values
    covariates = np.column_stack([rng.normal(size=(n_cells, 2)), np.ones(n_cells)])
    expression[:, 30] = 2.0  # removed by the intercept: no residual variance
    expression[:, 31] = covariates[:, 0] + 1.0  # likewise
    expression[:, 40] = expression[:, 41]  # r = 1 up to rounding: p underflows
    return _coex.coex_stats(expression, covariates, block_cells=300)


def _independent(stats: _coex.CoexStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs from the upper triangle of the Gram matrix, by numpy and scipy."""
    upper = np.triu(stats.dot)
    dot = upper + np.triu(upper, 1).T
    r = dot * np.outer(stats.inv_sd, stats.inv_sd)
    p, neg_log10 = betainc_pvalues(1.0 - r * r, stats.df)
    for out, diagonal in ((r, 1.0), (p, 1.0), (neg_log10, 0.0)):
        np.fill_diagonal(out, diagonal)
    return p, neg_log10, r


def _copy(stats: _coex.CoexStats) -> _coex.CoexStats:
    return _coex.CoexStats(
        stats.dot.copy(order="F"), stats.inv_sd, stats.var, stats.n_cells, stats.df
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matrices_match_an_independent_computation(dtype):
    stats = _stats()
    expected_p, expected_log, expected_r = _independent(stats)
    p, neg_log10, r = _coex.coex_matrices(_copy(stats), dtype=dtype, band_rows=32)
    for out in (p, neg_log10, r):
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, out.T)
    np.testing.assert_array_equal(r, expected_r.astype(dtype))
    slow = expected_p < _pvalues.FAST_P
    assert slow.sum() > 500  # the module and the r = 1 pair: the continued fraction
    # the kernel's own p-values of the same r, bit for bit
    pair_p, pair_log = _coex.coex_pvalues(expected_r, stats.df)
    np.fill_diagonal(pair_p, 1.0)
    np.fill_diagonal(pair_log, 0.0)
    np.testing.assert_array_equal(p, pair_p.astype(dtype))
    np.testing.assert_array_equal(neg_log10, pair_log.astype(dtype))
    # scipy's betainc of the rounded 1 - r^2: see test_coex_pvalues_agree_with_scipy
    rtol = 5e-11 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(p, expected_p.astype(dtype), rtol=rtol, atol=0)
    np.testing.assert_allclose(neg_log10, expected_log.astype(dtype), rtol=rtol, atol=5e-11)
    assert p[40, 41] == 0
    assert neg_log10[40, 41] > 1000
    others = np.arange(150) != 30
    assert (p[30, others] == 1).all()
    assert (r[30, others] == 0).all()


def test_matrices_do_not_depend_on_threads_or_bands():
    stats = _stats(seed=3)
    first = _coex.coex_matrices(_copy(stats), band_rows=256, n_jobs=1)
    for band_rows, n_jobs in ((7, 2), (64, 2), (150, 1)):
        other = _coex.coex_matrices(_copy(stats), band_rows=band_rows, n_jobs=n_jobs)
        for a, b in zip(first, other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_network_equals_the_network_of_the_matrices():
    stats = _stats(seed=5)
    for qcut in (0.01, 0.2, 0.6):
        rows, cols = _coex.coex_network(_copy(stats), qcut=qcut, band_rows=40)
        p, _, _ = _coex.coex_matrices(_copy(stats))
        expected_rows, expected_cols = _coex.pvalue_network(p, qcut=qcut)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(cols, expected_cols)
