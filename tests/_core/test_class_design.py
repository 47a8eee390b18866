"""The low-MOI class design (_core/_association.class_design): chunked class sums, the
sums read off a constant covariate, and the nonzero counts of the pair QC in the same
pass, against an independent least-squares fit of every group."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse, stats

from normalisr_sc._core import _association
from normalisr_sc._core._association import Effect, class_design
from normalisr_sc._core._pair_qc import dense_nonzero_counts


def _screen(seed: int = 0, n_cells: int = 600, n_genes: int = 37, n_groups: int = 9):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, n_groups + 1, n_cells)
    label[rng.random(n_cells) < 0.1] = -1  # cells of no test
    weights = rng.uniform(0.5, 2.0, n_cells)
    covariates = np.column_stack([rng.normal(size=(n_cells, 2)) * weights[:, None], weights])
    raw = np.column_stack([rng.normal(size=(n_cells, 2)), np.ones(n_cells)])  # an intercept
    y = rng.normal(size=(n_cells, n_genes)) + covariates @ rng.normal(size=(3, n_genes))
    y[label == 1, :5] += 1.5  # a planted effect of group 0
    log_cpm = rng.normal(size=(n_cells, n_genes)) + 2.0
    counts = rng.poisson(0.4, (n_cells, n_genes)).astype(np.float32)
    return label, n_groups, y, covariates, raw, log_cpm, counts


def _ols(label, group, y, design_of):
    """Coefficient, p-value and residual variance of group ``group`` by least squares."""
    cells = (label == 0) | (label == group + 1)
    x = (label[cells] == group + 1).astype(np.float64)
    design = np.column_stack([x, design_of(cells)])
    coef, *_ = np.linalg.lstsq(design, y[cells], rcond=None)
    rank = np.linalg.matrix_rank(design_of(cells))
    df = cells.sum() - 1 - rank
    residual = y[cells] - design @ coef
    rss = (residual**2).sum(axis=0)
    xtx_inv = np.linalg.pinv(design.T @ design)[0, 0]
    t = coef[0] / np.sqrt(rss / df * xtx_inv)
    return coef[0], 2 * stats.t.sf(np.abs(t), df), rss + coef[0] ** 2 / xtx_inv, cells.sum()


@pytest.mark.parametrize("chunk", [None, 1, 700])
def test_class_design_equals_least_squares(chunk, monkeypatch):
    label, n_groups, y, covariates, raw, log_cpm, counts = _screen()
    if chunk is not None:  # many chunks of classes, each freed once finished
        monkeypatch.setattr(_association, "CLASS_CHUNK_ELEMENTS", chunk)
    result = class_design(
        label,
        n_groups,
        y,
        covariates,
        block_cells=128,
        effect=Effect(log_cpm, raw),
        counts=sparse.csr_matrix(counts),
        n_jobs=2,
    )
    for group in range(n_groups):
        gamma, pvals, res_yy, n = _ols(label, group, y, lambda c: covariates[c])
        np.testing.assert_allclose(result.gamma[group], gamma, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(result.pvals[group], pvals, rtol=1e-8, atol=1e-300)
        np.testing.assert_allclose(result.var_y[group], res_yy / n, rtol=1e-9)
        assert result.n_cells[group] == n
        logfc, *_ = _ols(label, group, log_cpm, lambda c: raw[c])
        np.testing.assert_allclose(result.logfc[group], logfc, rtol=1e-9, atol=1e-12)
    assert (result.pvals[0, :5] < 1e-4).all()  # the planted effect is found
    # the pair QC counts: cells with a nonzero count per class
    classes = np.vstack([label == j for j in range(n_groups + 1)]).T
    expected = dense_nonzero_counts(classes, counts)
    assert result.n_nonzero is not None
    assert result.n_nonzero_base is not None
    assert result.n_nonzero.dtype == np.int32
    np.testing.assert_array_equal(result.n_nonzero, expected[1:])
    np.testing.assert_array_equal(result.n_nonzero_base, expected[0])


def test_chunks_do_not_change_the_results(monkeypatch):
    label, n_groups, y, covariates, raw, log_cpm, _ = _screen(seed=1)
    runs = []
    for chunk in (None, 1, 300):
        if chunk is not None:
            monkeypatch.setattr(_association, "CLASS_CHUNK_ELEMENTS", chunk)
        result = class_design(
            label, n_groups, y, covariates, block_cells=97, effect=Effect(log_cpm, raw)
        )
        runs.append(result)
        assert result.n_nonzero is None
    for other in runs[1:]:
        for name in ("pvals", "neg_log10_pvals", "gamma", "var_y", "logfc"):
            np.testing.assert_allclose(
                getattr(other, name), getattr(runs[0], name), rtol=1e-12, atol=1e-14
            )


def test_a_constant_covariate_gives_the_sums():
    # An intercept among the covariates: the class sums come from its products, no
    # column of ones is added; the same statistics as with a scaled copy of it.
    label, n_groups, y, covariates, _, _, _ = _screen(seed=2)
    with_intercept = np.column_stack([covariates, np.full(len(label), 2.5)])
    first = class_design(label, n_groups, y, with_intercept, block_cells=200)
    second = class_design(label, n_groups, y, with_intercept * [1, 1, 1, 4.0], block_cells=200)
    for group in range(n_groups):
        gamma, pvals, *_ = _ols(label, group, y, lambda c: with_intercept[c])
        np.testing.assert_allclose(first.gamma[group], gamma, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(first.pvals[group], pvals, rtol=1e-8)
    np.testing.assert_allclose(second.pvals, first.pvals, rtol=1e-10)


def test_negative_counts_are_refused():
    label, n_groups, y, covariates, _, _, counts = _screen(seed=3)
    counts[5, 3] = -1.0
    with pytest.raises(ValueError, match="negative values"):
        class_design(label, n_groups, y, covariates, block_cells=100, counts=counts)
