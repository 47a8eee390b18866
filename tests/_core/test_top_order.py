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


@pytest.mark.parametrize("seed", range(3))
def test_lexsort_rows_equals_numpy_lexsort(seed):
    """One unstable sort and re-sorted runs of ties give np.lexsort exactly: signed
    zeros, NaN, infinities, boolean primary and minor keys, integer keys, F-ordered
    keys and rows that are all ties."""
    rng = np.random.default_rng(seed)
    for trial in range(120):
        shape = (int(rng.integers(1, 15)), int(rng.integers(1, 120)))

        def float_key(k: int, shape: tuple[int, int] = shape) -> np.ndarray:
            x = np.round(rng.normal(size=shape), int(rng.integers(0, 3)))
            x[rng.random(shape) < 0.1 * (k % 3)] = np.nan
            x[rng.random(shape) < 0.1] = -0.0 if k % 2 else 0.0
            x[rng.random(shape) < 0.05] = -np.inf if k % 2 else np.inf
            if k % 7 == 0:
                x[0] = 1.0  # a row of ties
            return x

        keys = [float_key(trial + i) for i in range(int(rng.integers(1, 4)))]
        if trial % 2:
            keys.append(rng.random(shape) < rng.choice([0.0, 0.2, 1.0]))
        if trial % 3 == 0:
            keys.insert(0, rng.random(shape) < 0.5)
        if trial % 5 == 0:
            keys.insert(0, rng.integers(-2, 3, shape))
        if trial % 4 == 0:
            keys = [np.asfortranarray(key) for key in keys]
        np.testing.assert_array_equal(
            _pair_qc.lexsort_rows(keys), np.lexsort(keys, axis=-1), err_msg=str(trial)
        )
