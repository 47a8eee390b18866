"""Exact association p-values in linear and log space, against mpmath."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from scipy import stats

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
