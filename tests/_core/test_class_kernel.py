"""The per-class sums kernel of the low-MOI pass and its threaded dispatch (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

from normalisr_sc._core import _linalg
from normalisr_sc._core._linalg import add_class_chunks, class_order
from normalisr_sc._core._pair_qc import family_qvalues


def _case(seed: int, n_cells: int, n_genes: int, k1: int, n_class: int):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, n_class + 1, n_cells)  # class n_class: squares only
    ext = rng.standard_normal((n_cells, k1))
    y = rng.standard_normal((n_cells, n_genes))
    return label, ext, y


def _sums(label, ext, y, n_class, *, tile=None, n_jobs=1):
    k1 = ext.shape[1]
    order, starts = class_order(label, n_class + 1)
    cross = np.zeros((n_class * k1, y.shape[1]))
    squares = np.zeros((n_class + 1, y.shape[1]))
    saved = _linalg.CLASS_TILE
    if tile is not None:
        _linalg.CLASS_TILE = tile
    try:
        add_class_chunks([(cross, squares, None, 0)], order, starts, ext, y, n_jobs=n_jobs)
    finally:
        _linalg.CLASS_TILE = saved
    return cross, squares


@pytest.mark.parametrize("k1", [1, 2, 3, 4, 5, 6, 7])
def test_class_sums_match_numpy(k1):
    n_class = 5
    label, ext, y = _case(k1, 203, 37, k1, n_class)
    cross, squares = _sums(label, ext, y, n_class)
    for j in range(n_class + 1):
        cells = label == j
        np.testing.assert_allclose(squares[j], (y[cells] ** 2).sum(axis=0), rtol=1e-12)
        if j < n_class:
            expected = ext[cells].T @ y[cells]
            np.testing.assert_allclose(
                cross[j * k1 : (j + 1) * k1], expected, rtol=1e-10, atol=1e-12
            )


@pytest.mark.parametrize("k1", [2, 5])
def test_class_sums_do_not_depend_on_tiles_or_threads(k1):
    # The tiles and ranges only cut the genes: every sum is the same, bit for bit.
    label, ext, y = _case(10 + k1, 157, 1300, k1, 4)
    first = _sums(label, ext, y, 4, tile=640, n_jobs=1)
    for tile, n_jobs in ((7, 1), (100, 2), (512, 2), (5000, 3)):
        other = _sums(label, ext, y, 4, tile=tile, n_jobs=n_jobs)
        assert all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_float32_blocks_are_summed_in_float64():
    label, ext, y = _case(3, 120, 20, 3, 2)
    y32 = y.astype(np.float32)
    cross, squares = _sums(label, ext, y32, 2)
    cells = label == 0
    np.testing.assert_allclose(squares[0], (y32[cells].astype(np.float64) ** 2).sum(axis=0))
    np.testing.assert_allclose(cross[:3], ext[cells].T @ y32[cells].astype(np.float64))


def test_passes_dispatched_together_equal_passes_alone():
    label, ext, y = _case(4, 300, 900, 5, 6)
    raw_ext = np.random.default_rng(5).standard_normal((300, 4))
    raw_y = np.random.default_rng(6).standard_normal((300, 900))
    order, starts = class_order(label, 7)

    def fresh():
        return (np.zeros((6 * 5, 900)), np.zeros((7, 900))), (
            np.zeros((6 * 4, 900)),
            np.zeros((1, 900)),
        )

    (c1, s1), (r1, l1) = fresh()
    add_class_chunks([(c1, s1, None, 0)], order, starts, ext, y, n_jobs=2)
    add_class_chunks([(r1, l1, np.zeros(7, np.int64), 0)], order, starts, raw_ext, raw_y, n_jobs=2)
    (c2, s2), (r2, l2) = fresh()
    add_class_chunks(
        [(c2, s2, None, 0)],
        order,
        starts,
        ext,
        y,
        n_jobs=2,
        more=[([(r2, l2, np.zeros(7, np.int64), 0)], raw_ext, raw_y)],
    )
    for a, b in ((c1, c2), (s1, s2), (r1, r2), (l1, l2)):
        assert np.array_equal(a, b)
    assert np.abs(r2).sum() > 0


def test_family_qvalues_in_threads_equal_one_thread():
    rng = np.random.default_rng(7)
    pvals = rng.random((40, 301))
    pvals[rng.random(pvals.shape) < 0.05] = np.nan
    family = rng.random(pvals.shape) < 0.7
    for fam in (None, family):
        one = family_qvalues(pvals, fam, axis=1, n_jobs=1)
        two = family_qvalues(pvals, fam, axis=1, n_jobs=2)
        assert np.array_equal(one, two, equal_nan=True)
        assert np.isfinite(one).any()
