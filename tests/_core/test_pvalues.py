"""Exact association p-values in linear and log space, against mpmath."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from scipy import stats
from scipy.special import betaincinv

from normalisr_sc._core._pvalues import association_pvalues, bh_qvalues


@pytest.mark.slow
@pytest.mark.parametrize("df", [1, 4, 37, 1000, 20_000])
@pytest.mark.parametrize("one_minus_r2", [0.999, 0.9, 0.5, 1e-3, 1e-12, 1e-60])
def test_neg_log10_p_matches_high_precision(df, one_minus_r2):
    mpmath.mp.dps = 40
    exact = mpmath.betainc(df / 2, 0.5, 0, one_minus_r2, regularized=True)
    pvals, neg_log10 = association_pvalues(np.array([one_minus_r2]), df)
    assert neg_log10[0] == pytest.approx(float(-mpmath.log10(exact)), rel=1e-12)
    if exact > 1e-300:
        assert pvals[0] == pytest.approx(float(exact), rel=1e-11)
    elif exact > mpmath.mpf("1e-320"):  # subnormal: a few significant digits
        assert pvals[0] == pytest.approx(float(exact), rel=1e-3)
    else:
        assert pvals[0] == 0


def test_is_the_two_sided_t_test():
    rng = np.random.default_rng(0)
    t = rng.normal(0, 3, 200)
    df = 57
    r2 = t**2 / (t**2 + df)
    pvals, _ = association_pvalues(1 - r2, df)
    np.testing.assert_allclose(pvals, 2 * stats.t.sf(np.abs(t), df), rtol=1e-10)


def test_perfect_fit():
    pvals, neg_log10 = association_pvalues(np.array([0.0, 1.0]), 10)
    assert pvals[0] == 0
    assert neg_log10[0] == np.inf
    assert pvals[1] == 1
    assert neg_log10[1] == 0


@pytest.mark.slow
def test_bh_qvalues_match_scipy():
    rng = np.random.default_rng(1)
    pvals = rng.uniform(size=(5, 300)) ** 3
    expected = np.vstack([stats.false_discovery_control(row) for row in pvals])
    np.testing.assert_allclose(bh_qvalues(pvals, axis=1), expected, rtol=1e-12)
    with_nan = pvals[0].copy()
    with_nan[:10] = np.nan
    q = bh_qvalues(with_nan)
    assert np.isnan(q[:10]).all()
    np.testing.assert_allclose(q[10:], stats.false_discovery_control(with_nan[10:]), rtol=1e-12)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_bh_qvalues_with_mostly_missing_values():
    """Rows of mostly NaN (a genome-wide pair QC), all NaN, and NaN beside infinity."""
    rng = np.random.default_rng(5)
    pvals = rng.uniform(size=(4, 400))
    pvals[rng.random(pvals.shape) < 0.7] = np.nan
    pvals[1] = np.nan
    pvals[2, :5] = np.inf  # not a p-value, but kept apart from the missing values
    q = bh_qvalues(pvals, axis=1)
    assert np.isnan(q[1]).all()
    for row, qrow in zip(pvals[[0, 2, 3]], q[[0, 2, 3]], strict=True):
        kept = ~np.isnan(row)
        assert np.isnan(qrow[~kept]).all()
        finite = np.isfinite(row[kept])
        expected = stats.false_discovery_control(np.where(finite, row[kept], 1.0))
        np.testing.assert_allclose(qrow[kept][finite], expected[finite], rtol=1e-12)
    np.testing.assert_array_equal(q[2, :5], 1.0)


def test_bh_qvalues_do_not_depend_on_the_order_of_ties():
    """Tied p-values get one q-value, and permuting the input permutes the q-values
    bit for bit (the sort is not stable)."""
    rng = np.random.default_rng(4)
    pvals = np.round(rng.uniform(size=(6, 500)), 2)  # many ties
    pvals[:, :20] = 1.0
    pvals[:, 20:30] = 0.0
    pvals[rng.random(pvals.shape) < 0.05] = np.nan
    q = bh_qvalues(pvals, axis=1)
    for row, qrow in zip(pvals, q, strict=True):
        for value in np.unique(row[~np.isnan(row)]):
            assert np.unique(qrow[row == value]).size == 1
        assert np.isnan(qrow[np.isnan(row)]).all()
    perm = rng.permutation(pvals.shape[1])
    assert bh_qvalues(pvals[:, perm], axis=1).tobytes() == q[:, perm].tobytes()
    assert bh_qvalues(pvals.T, axis=0).tobytes() == q.T.tobytes()


def _exact_p(y, df: float) -> tuple[float, float]:
    """P-value and ``-log10 p`` of ``R^2 = y`` (an mpmath number) with ``df``, to 40 digits."""
    with mpmath.workdps(60):
        a = mpmath.mpf(df) / 2
        complement = mpmath.betainc(0.5, a, 0, y, regularized=True)
        p = 1 - complement
        if p > mpmath.mpf(10) ** -20:
            return float(p), float(-mpmath.log1p(-complement) / mpmath.log(10))
        p = mpmath.betainc(a, 0.5, 0, 1 - y, regularized=True)
        return float(p), float(-mpmath.log10(p))


#: Degrees of freedom of the high-precision tests: 1 to 1e6.
DE_DFS = [1, 2, 5, 30, 201, 4_999, 10**5, 10**6]


@pytest.mark.parametrize("df", DE_DFS)
@pytest.mark.parametrize("given", ["r2", "one_minus_r2"])
def test_association_pvalues_against_high_precision(df, given):
    """P-values of R^2 over (0, 1) against 40-digit mpmath of the same float input.

    scipy's ``betainc`` (the old path) is off by up to ~1e-8 of p here at small ``df``
    near ``p = 1``; the kernel stays within a few ulp of ``log p``.
    """
    rng = np.random.default_rng(df)
    # R^2 from the null range of df to where p = 1e-18 (mpmath's betainc does not
    # converge further at large df), down to 1e-14, and exact values at both ends
    largest = 1.0 - max(betaincinv(df / 2, 0.5, 1e-18 if df > 10**5 else 1e-250), 1e-15)
    r2 = np.concatenate(
        [
            10 ** rng.uniform(-14, np.log10(largest), 30),
            np.abs(rng.normal(scale=3 / np.sqrt(df), size=15)) ** 2,
            [0.0, 1e-300, 0.5, largest],
        ]
    ).clip(0.0, largest)
    if given == "r2":
        p, neg_log10 = association_pvalues(None, df, r2=r2)
        inputs = [mpmath.mpf(float(v)) for v in r2]
    else:
        one_minus = 1.0 - r2
        p, neg_log10 = association_pvalues(one_minus, df)
        inputs = [1 - mpmath.mpf(float(v)) for v in one_minus]
    for y, ours, ours_log in zip(inputs, p, neg_log10, strict=True):
        exact, exact_log = _exact_p(y, df)
        # a few ulp of log p (the rounding of the polynomials, of log x and of log p)
        tail = 4 * 2.0**-53 * exact_log * np.log(10)
        assert abs(ours - exact) <= (2e-13 + tail) * exact, (y, df)
        assert abs(ours_log - exact_log) <= 2e-13 * exact_log, (y, df)


def test_association_pvalues_rows_and_edge_cases():
    """One table per row; NaN stays NaN; R^2 = 1 and 0; out= is written into."""
    rng = np.random.default_rng(3)
    r2 = rng.uniform(0, 0.05, (4, 300))
    r2[0, :3] = [np.nan, 1.0, 0.0]
    df = np.array([[10], [57], [10], [20_000]])
    out = (np.empty((4, 300)), np.empty((4, 300)))
    p, neg_log10 = association_pvalues(None, df, r2=r2, out=out)
    assert p is out[0]
    assert neg_log10 is out[1]
    assert np.isnan(p[0, 0])
    assert np.isnan(neg_log10[0, 0])
    assert p[0, 1] == 0
    assert neg_log10[0, 1] == np.inf
    assert p[0, 2] == 1
    assert neg_log10[0, 2] == 0
    for row in range(4):
        alone = association_pvalues(None, float(df[row, 0]), r2=r2[row])
        np.testing.assert_array_equal(p[row], alone[0])
        np.testing.assert_array_equal(neg_log10[row], alone[1])
    # df varying along the last axis: one value a row, the same values
    varying = association_pvalues(None, df.T, r2=r2[:, :4].T.copy())
    np.testing.assert_array_equal(varying[0], p[:, :4].T)
    # threads do not change the values
    threaded = association_pvalues(None, df, r2=r2, n_jobs=2)
    np.testing.assert_array_equal(threaded[0], p)
    with pytest.raises(ValueError, match="exactly one"):
        association_pvalues(r2, 10, r2=r2)
