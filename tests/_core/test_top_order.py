"""The first n genes of each group in lexsort order (_core/_pair_qc.top_order), from
partitions of candidates, equal a full lexsort: ties, NaN and infinite keys."""

from __future__ import annotations

import numpy as np
import pytest

from normalisr_sc._core import _pair_qc
from normalisr_sc._core._pair_qc import top_order


@pytest.mark.parametrize("seed", range(4))
def test_top_order_equals_a_full_lexsort(seed, monkeypatch):
    monkeypatch.setattr(_pair_qc, "QVALUE_BLOCK", 97)  # several blocks of rows
    rng = np.random.default_rng(seed)
    for trial in range(150):
        n_rows, n_positions = int(rng.integers(1, 12)), int(rng.integers(1, 80))
        n = int(rng.integers(0, n_positions + 3))
        primary = rng.random((n_rows, n_positions)) < rng.random()
        second = np.round(rng.normal(size=(n_rows, n_positions)), int(rng.integers(0, 3)))
        second[rng.random(second.shape) < 0.05] = np.nan
        second[rng.random(second.shape) < 0.05] = np.inf
        third = np.round(rng.normal(size=(n_rows, n_positions)), 1)
        if trial % 3 == 0:  # a float primary key with NaN and ties
            primary = np.where(rng.random(second.shape) < 0.1, np.nan, np.round(second, 0))
        keys = [third, second, primary]
        expected = np.lexsort(keys, axis=-1)[:, :n]
        np.testing.assert_array_equal(top_order(keys, n), expected)
