"""The compiled co-expression kernel: its series p-values against high-precision values and
scipy, and its matrices against an independent computation of every pair."""

from __future__ import annotations

import numpy as np
import pytest

from normalisr_sc._core import _coex
from normalisr_sc._core._pvalues import association_pvalues

DFS = [1, 2, 3, 7, 50, 999, 19_995, 10**6]


def _one_minus_r2(df: int, rng: np.random.Generator) -> np.ndarray:
    """Values of ``1 - r^2`` covering the null range of ``df`` and all of ``[0, 1]``."""
    r = np.concatenate(
        [
            rng.normal(scale=3 / np.sqrt(df + 2), size=20_000),
            rng.uniform(-1, 1, 2_000),
            [0.0, 1e-12, -1e-8, 1.0, -1.0],
        ]
    )
    return 1.0 - np.clip(r, -1, 1) ** 2


@pytest.mark.parametrize("df", DFS)
def test_series_pvalues_agree_with_scipy(df):
    x = _one_minus_r2(df, np.random.default_rng(df))
    p, neg_log10 = _coex.series_pvalues(x, df)
    expected_p, expected_log = association_pvalues(x, df)
    fast = x >= _coex.SeriesDomain.of(df).x_cut
    assert 0.2 < fast.mean() < 0.9  # both paths are exercised
    if df == 1:
        # scipy's betainc loses up to 1e-8 of p near 1 at df = 1 (against mpmath); the
        # closed form p = 1 - (2 / pi) asin(|r|) is the reference where p is not small
        closed = 1 - 2 / np.pi * np.arcsin(np.sqrt(1.0 - x))
        expected_p = np.where(fast, closed, expected_p)
        with np.errstate(divide="ignore"):
            expected_log = np.where(fast, -np.log10(closed), expected_log)
    np.testing.assert_allclose(p, expected_p, rtol=5e-13, atol=0)
    # outside the series' domain the values are scipy's, bit for bit
    np.testing.assert_array_equal(p[~fast], expected_p[~fast])
    np.testing.assert_array_equal(neg_log10[~fast], expected_log[~fast])
    finite = np.isfinite(expected_log)
    np.testing.assert_array_equal(np.isfinite(neg_log10), finite)
    # -log10 p of p near 1 is tiny; an absolute bound of a few ulp of p there
    np.testing.assert_allclose(neg_log10[finite], expected_log[finite], rtol=5e-13, atol=1e-15)


def test_series_pvalues_at_df_1_match_the_closed_form():
    # df = 1: p = 1 - (2 / pi) asin(|r|), |r| = sqrt(1 - x)
    r = np.abs(np.random.default_rng(0).normal(scale=0.3, size=5_000)).clip(max=0.99)
    r = np.concatenate([r, [1e-9, 1e-12]])
    x = 1.0 - r * r
    p, _ = _coex.series_pvalues(x, 1)
    np.testing.assert_allclose(p, 1 - 2 / np.pi * np.arcsin(np.sqrt(1.0 - x)), rtol=1e-13)


@pytest.mark.parametrize("df", [2, 3, 4, 50, 19_995, 10**6])
def test_series_against_high_precision(df):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    domain = _coex.SeriesDomain.of(df)
    rng = np.random.default_rng(df)
    # Uniform points, and points just above the cut, where the error of p = 1 - S peaks.
    above_cut = domain.x_cut * (1.0 + np.array([0.0, 1e-12, 1e-8, 1e-6, 1e-4]))
    x = np.concatenate([rng.uniform(domain.x_cut, 1.0, 40), above_cut[above_cut <= 1.0]])
    p, neg_log10 = _coex.series_pvalues(x, df)
    for value, ours, ours_log in zip(x, p, neg_log10, strict=True):
        exact = mpmath.betainc(mpmath.mpf(df) / 2, 0.5, 0, mpmath.mpf(value), regularized=True)
        assert abs(ours - float(exact)) <= 2e-13 * float(exact)
        assert abs(ours_log + float(mpmath.log10(exact))) <= 1e-13 * abs(float(mpmath.log10(exact)))


@pytest.mark.parametrize("a", [0.5, 1.0, 3.5, 19.9, 20.0, 20.5, 1e3, 5e5, 5e7])
def test_half_gamma_ratio(a):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    exact = mpmath.gamma(mpmath.mpf(a) + 0.5) / mpmath.gamma(mpmath.mpf(a))
    assert abs(_coex.half_gamma_ratio(a) - float(exact)) <= 4e-16 * float(exact)


def test_empty_series_domain_is_scipy():
    x = _one_minus_r2(100, np.random.default_rng(1))
    p, neg_log10 = _coex.series_pvalues(x, 100, fast_p=1.0)
    expected_p, expected_log = association_pvalues(x, 100)
    np.testing.assert_array_equal(p, expected_p)
    np.testing.assert_array_equal(neg_log10, expected_log)


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
    p, neg_log10 = association_pvalues(1.0 - r * r, stats.df)
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
    slow = expected_p < _coex.FAST_P
    assert slow.sum() > 500  # the module and the r = 1 pair go through scipy
    np.testing.assert_array_equal(p[slow], expected_p[slow].astype(dtype))
    np.testing.assert_array_equal(neg_log10[slow], expected_log[slow].astype(dtype))
    rtol = 5e-13 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(p, expected_p.astype(dtype), rtol=rtol, atol=0)
    np.testing.assert_allclose(neg_log10, expected_log.astype(dtype), rtol=rtol, atol=1e-15)
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
