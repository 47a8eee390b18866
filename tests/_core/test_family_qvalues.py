"""q-values of a family of pairs (_core/_pair_qc.family_qvalues) computed a block of
families at a time, or over the members only, equal one Benjamini-Hochberg pass."""

from __future__ import annotations

import numpy as np
import pytest

from normalisr_sc._core import _pair_qc
from normalisr_sc._core._pvalues import bh_qvalues


@pytest.mark.parametrize("block", [1, 7, 256])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("compiled", [True, False])
def test_blocks_of_families_equal_one_pass(block, axis, n_jobs, compiled, monkeypatch):
    """The compiled kernel (tasks of rows in threads) and numpy's blocks of families
    equal bh_qvalues bit for bit."""
    monkeypatch.setattr(_pair_qc, "BH_TASK_ROWS", block)
    monkeypatch.setattr(_pair_qc, "QVALUE_BLOCK", block * 13)
    monkeypatch.setattr(_pair_qc, "SPARSE_FAMILY", 1.0 if compiled else 0.0)
    rng = np.random.default_rng(0)
    pvals = rng.random((40, 13)) ** 3
    pvals[rng.random(pvals.shape) < 0.05] = np.nan
    pvals[:, :3] = np.round(pvals[:, :3], 1)  # ties
    pvals[0] = 1.0
    family = rng.random(pvals.shape) < 0.7
    family[1] = False
    got = _pair_qc.family_qvalues(pvals, family, axis=axis, n_jobs=n_jobs)
    expected = bh_qvalues(np.where(family, pvals, np.nan), axis=axis)
    assert got.tobytes() == expected.tobytes()
    assert np.isnan(got[~family]).all()
    alone = _pair_qc.family_qvalues(pvals, axis=axis, n_jobs=n_jobs)
    assert alone.tobytes() == bh_qvalues(pvals, axis=axis).tobytes()
    strided = _pair_qc.family_qvalues(np.asfortranarray(pvals), family.T.T, axis=axis)
    assert strided.tobytes() == expected.tobytes()


def test_one_family_over_its_members():
    rng = np.random.default_rng(1)
    pvals = rng.random((30, 9)) ** 2
    family = rng.random(pvals.shape) < 0.2
    got = _pair_qc.family_qvalues(pvals, family, axis=None)
    expected = bh_qvalues(np.where(family, pvals, np.nan).ravel()).reshape(pvals.shape)
    np.testing.assert_array_equal(np.isnan(got), ~family)
    np.testing.assert_allclose(got[family], expected[family], rtol=0)
