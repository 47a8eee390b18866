"""The genomic inflation factor transforms only the middle p-values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from normalisr_sc._core._pvalues import CHI2_MEDIAN, genomic_inflation


@pytest.mark.parametrize("n", [1, 2, 5, 6, 999, 1000])
@pytest.mark.parametrize("inflated", [1.0, 1.5])
def test_equals_the_median_of_all_chi_square_values(n, inflated):
    rng = np.random.default_rng(n)
    p = stats.chi2.sf(inflated * stats.chi2.isf(rng.uniform(size=n), 1), 1)
    neg_log10_p = -np.log10(p)
    everything = np.median(stats.chi2.isf(p, 1)) / CHI2_MEDIAN
    assert genomic_inflation(neg_log10_p) == pytest.approx(everything, rel=1e-12)


def test_uniform_p_values_give_one_and_no_values_give_nan():
    p = (np.arange(1, 100_001) - 0.5) / 100_000
    assert genomic_inflation(-np.log10(p)) == pytest.approx(1.0, abs=1e-4)
    assert np.isnan(genomic_inflation(np.array([])))
