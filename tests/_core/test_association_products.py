"""The in-place products of the association kernels (_core/_linalg.add_products) and the
finiteness of their inputs checked from the sums (_core/_checks.check_finite_sums)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from normalisr_sc._core._association import Effect, case_control, high_moi, low_moi
from normalisr_sc._core._checks import check_finite_sums, name_source
from normalisr_sc._core._linalg import add_products, dense_is_cheaper


def _weights(rng, n_cells, n_columns, per_cell):
    rows = np.repeat(np.arange(n_cells), per_cell)
    columns = rng.integers(0, n_columns, rows.size)
    values = rng.normal(size=rows.size)
    return sparse.csr_matrix((values, (rows, columns)), shape=(n_cells, n_columns))


@pytest.mark.slow
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_jobs", [1, 3])
def test_sparse_and_dense_products_agree(order, dtype, n_jobs):
    rng = np.random.default_rng(0)
    y = np.asarray(rng.normal(size=(300, 257)), dtype=dtype, order=order)
    weights = _weights(rng, 300, 17, 3)
    expected = weights.T.toarray() @ y.astype(np.float64)
    start = rng.normal(size=(17, 257))
    results = {}
    for dense in (False, True):
        out = start.copy()
        add_products(out, weights, y, n_jobs=n_jobs, dense=dense)
        results[dense] = out
        np.testing.assert_allclose(out, start + expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results[True], results[False], rtol=1e-12, atol=1e-12)
    assert y.flags.writeable  # the block itself is not touched
    # a dense array of weights goes the same two ways
    out = start.copy()
    add_products(out, weights.toarray(), y, n_jobs=n_jobs, dense=False)
    np.testing.assert_allclose(out, start + expected, rtol=1e-12, atol=1e-12)


def test_products_into_a_row_range_and_squares():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(120, 90))
    weights = _weights(rng, 120, 6, 2)
    out = np.zeros((10, 90))
    squares = np.zeros((3, 90))
    rows = rng.integers(0, 3, 120)
    scale = rng.uniform(0, 2, 120)
    add_products(
        out[2:8], weights, y, squares=squares, square_rows=rows, square_weights=scale, n_jobs=2
    )
    np.testing.assert_allclose(out[2:8], weights.T @ y, rtol=1e-12, atol=1e-13)
    assert not out[:2].any()
    assert not out[8:].any()
    for row in range(3):
        expected = (scale[rows == row, None] * y[rows == row] ** 2).sum(axis=0)
        np.testing.assert_allclose(squares[row], expected, rtol=1e-12)


def test_cost_rule_picks_dense_for_many_entries_per_column():
    assert dense_is_cheaper(n_cells=1000, n_columns=5, nnz=5000)  # covariates: all dense
    assert not dense_is_cheaper(n_cells=1000, n_columns=500, nnz=1000)  # one group per cell
    assert not dense_is_cheaper(n_cells=1000, n_columns=10_000, nnz=5000)


@pytest.mark.parametrize(
    "values",
    [[np.nan], [np.inf], [-np.inf], [np.inf, -np.inf], [np.inf, np.nan], [-np.inf, -np.inf]],
    ids=["nan", "inf", "-inf", "inf-inf", "inf+nan", "-inf-inf"],
)
def test_non_finite_values_cannot_cancel_in_the_squares(values):
    """An inf and a -inf in the same group, or weight-0 cells, still give non-finite sums."""
    rng = np.random.default_rng(2)
    y = rng.normal(size=(40, 5))
    for k, value in enumerate(values):
        y[3 + k, 2] = value
    weights = sparse.csr_matrix((np.ones(40), (np.arange(40), np.zeros(40, int))), shape=(40, 1))
    for square_weights in (np.ones(40), np.zeros(40)):  # used cells, and cells left out
        out = np.zeros((1, 5))
        squares = np.zeros((1, 5))
        add_products(
            out,
            weights,
            y,
            squares=squares,
            square_rows=np.zeros(40, dtype=np.int64),
            square_weights=square_weights,
        )
        assert not np.isfinite(squares[0, 2])
        assert np.isfinite(np.delete(squares[0], 2)).all()
        name_source(y, "adata.layers['x']")
        with pytest.raises(ValueError, match=r"adata.layers\['x'\] contains NaN or infinite"):
            check_finite_sums(squares, matrix=y)


def test_overflowing_squares_are_told_apart_from_infinity():
    y = np.ones((10, 3))
    y[4, 1] = 1e200  # finite, but its square overflows
    name_source(y, "adata.layers['big']")
    with pytest.raises(ValueError, match=r"adata.layers\['big'\] holds values so large"):
        check_finite_sums(np.array([10.0, np.inf, 10.0]), matrix=y)


def _screen(rng, n_cells=400, n_genes=30, n_groups=6):
    label = rng.integers(-1, n_groups, n_cells)  # -1: no group
    groups = sparse.csr_matrix(
        (np.ones((label >= 0).sum()), (np.flatnonzero(label >= 0), label[label >= 0])),
        shape=(n_cells, n_groups),
    )
    # some cells with two groups (never used by the low-MOI tests)
    twice = rng.choice(n_cells, 20, replace=False)
    groups = groups + sparse.csr_matrix(
        (np.ones(20), (twice, (np.maximum(label[twice], 0) + 1) % n_groups)),
        shape=(n_cells, n_groups),
    )
    groups.data[:] = 1.0
    covariates = np.column_stack([rng.normal(size=(n_cells, 2)), np.ones(n_cells)])
    y = rng.normal(size=(n_cells, n_genes)) + covariates @ rng.normal(size=(3, n_genes))
    log_cpm = y * 0.5 + 1.0
    return groups, y, log_cpm, covariates


@pytest.mark.parametrize("kernel", [case_control, low_moi, high_moi])
def test_kernels_find_non_finite_values_anywhere(kernel):
    rng = np.random.default_rng(3)
    groups, y, log_cpm, covariates = _screen(rng)
    unused = np.flatnonzero(np.asarray(groups.sum(axis=1)).ravel() > 1)[0]  # several groups
    cells = np.ones(y.shape[0], dtype=bool)
    cells[7] = False
    for matrix, where, name in ((y, "expression", "norm"), (log_cpm, "effect", "lcpm")):
        for cell in (unused, 7, 11):
            bad_y, bad_l = y.copy(), log_cpm.copy()
            spoiled = bad_y if where == "expression" else bad_l
            spoiled[cell, 4] = np.inf
            spoiled[(cell + 1) % y.shape[0], 4] = -np.inf
            name_source(bad_y, "adata.layers['norm']")
            name_source(bad_l, "adata.layers['lcpm']")
            with pytest.raises(ValueError, match=rf"adata.layers\['{name}'\].*NaN or infinite"):
                kernel(
                    groups,
                    bad_y,
                    covariates,
                    block_cells=64,
                    cells=cells,
                    effect=Effect(bad_l, covariates),
                )
        assert np.isfinite(matrix).all()


@pytest.mark.slow
@pytest.mark.parametrize("kernel", [case_control, low_moi, high_moi])
def test_kernels_agree_across_threads_dense_rule_and_blocks(kernel, monkeypatch):
    rng = np.random.default_rng(4)
    groups, y, log_cpm, covariates = _screen(rng)
    effect = Effect(log_cpm, covariates)
    reference = kernel(groups, y, covariates, block_cells=10_000, effect=effect, n_jobs=1)
    runs = [kernel(groups, y, covariates, block_cells=37, effect=effect, n_jobs=3)]
    # every product of a block through BLAS, then every one through the sparse kernel
    for speedup in (1e9, 0.0):
        monkeypatch.setattr("normalisr_sc._core._linalg.DENSE_SPEEDUP", speedup)
        runs.append(kernel(groups, y, covariates, block_cells=50, effect=effect, n_jobs=2))
    y32 = y.astype(np.float32)
    expected32 = kernel(groups, y32.astype(np.float64), covariates, block_cells=64, effect=effect)
    got32 = kernel(groups, y32, covariates, block_cells=64, effect=effect)
    for name in ("pvals", "gamma", "var_y", "logfc"):
        for run in runs:
            np.testing.assert_allclose(
                getattr(run, name), getattr(reference, name), rtol=1e-10, atol=1e-12
            )
        # float32 blocks are summed in float64 without a converted copy: same sums
        np.testing.assert_allclose(
            getattr(got32, name), getattr(expected32, name), rtol=1e-10, atol=1e-12
        )


def test_n_jobs_one_is_identical_and_single_threaded(monkeypatch):
    import threading

    from normalisr_sc._core import _linalg

    rng = np.random.default_rng(5)
    groups, y, _, covariates = _screen(rng, n_genes=2048)
    compiled = _linalg._kernel
    seen: set[int] = set()
    ranges: set[tuple[int, int]] = set()

    def recording(name):
        kernel = compiled(name)

        def run(*args):
            seen.add(threading.get_ident())
            ranges.add(tuple(args[-3:-1]))
            return kernel(*args)

        return run

    first = low_moi(groups, y, covariates, block_cells=100, n_jobs=1)
    monkeypatch.setattr(_linalg, "_kernel", recording)
    for kernel in (low_moi, case_control):
        seen.clear()
        again = kernel(groups, y, covariates, block_cells=100, n_jobs=1)
        assert seen == {threading.get_ident()}  # the calling thread only
        seen.clear()
        ranges.clear()
        threaded = kernel(groups, y, covariates, block_cells=100, n_jobs=2)
        # several ranges of genes (a few per thread), run by the pool's threads
        assert ranges == set(_linalg._gene_ranges(2048, 2))
        assert len(ranges) > 2
        assert threading.get_ident() not in seen
        if kernel is low_moi:  # each gene summed in the same order whatever the threads
            np.testing.assert_array_equal(threaded.pvals, again.pvals)
    again = low_moi(groups, y, covariates, block_cells=100, n_jobs=1)
    np.testing.assert_array_equal(first.pvals, again.pvals)
    np.testing.assert_array_equal(first.gamma, again.gamma)
