"""q-values of a family of pairs (_core/_pair_qc.family_qvalues) computed a block of
families at a time, or over the members only, equal one Benjamini-Hochberg pass."""

from __future__ import annotations

import numpy as np
import pytest

from normalisr_sc._core import _pair_qc
from normalisr_sc._core._pvalues import bh_qvalues


@pytest.mark.parametrize("block", [1, 7, 1 << 22])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_blocks_of_families_equal_one_pass(block, axis, monkeypatch):
    monkeypatch.setattr(_pair_qc, "QVALUE_BLOCK", block)
    rng = np.random.default_rng(0)
    pvals = rng.random((40, 13)) ** 3
    pvals[rng.random(pvals.shape) < 0.05] = np.nan
    family = rng.random(pvals.shape) < 0.7
    got = _pair_qc.family_qvalues(pvals, family, axis=axis)
    expected = bh_qvalues(np.where(family, pvals, np.nan), axis=axis)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=0)
    assert np.isnan(got[~family]).all()
    np.testing.assert_allclose(
        _pair_qc.family_qvalues(pvals, axis=axis), bh_qvalues(pvals, axis=axis), rtol=0
    )


def test_one_family_over_its_members():
    rng = np.random.default_rng(1)
    pvals = rng.random((30, 9)) ** 2
    family = rng.random(pvals.shape) < 0.2
    got = _pair_qc.family_qvalues(pvals, family, axis=None)
    expected = bh_qvalues(np.where(family, pvals, np.nan).ravel()).reshape(pvals.shape)
    np.testing.assert_array_equal(np.isnan(got), ~family)
    np.testing.assert_allclose(got[family], expected[family], rtol=0)
