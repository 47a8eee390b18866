"""Kernels of the normalisation: the compiled sparse log CPM (bit for bit the arithmetic of
fill, scatter and subtract) and the weighted regression pass of normvar (against plain
numpy), independent of the number of threads."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from scipy.special import digamma

import normalisr_sc as nsc
from normalisr_sc._core import _counts, _normalize
from normalisr_sc._core._reduce import no_progress


def _counts_matrix(n_cells: int = 300, n_genes: int = 120, seed: int = 0) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.poisson(rng.gamma(0.4, 2.0, size=(n_cells, n_genes)))
    dense[0, :] = 0
    dense[0, 3] = 7  # a cell with one detected gene
    dense[1, :] = rng.integers(1, 50, n_genes)  # a cell without zeros
    matrix = sparse.csr_matrix(dense)
    # explicit zeros are stored entries with the value of a zero count
    matrix.data[::17] = 0
    return matrix


def _lcpm_reference(block: sparse.csr_matrix, total: float) -> np.ndarray:
    """Fill with the zero value, scatter the stored values, subtract each cell's log mass."""
    digamma_total = digamma(total + 2.0)
    n_cells, n_genes = block.shape
    zero_value = float(digamma(1.0) - digamma_total)
    stored = digamma(block.data.astype(np.float64) + 1.0) - digamma_total
    rows = np.repeat(np.arange(n_cells), np.diff(block.indptr))
    out = np.full((n_cells, n_genes), zero_value)
    out[rows, block.indices] = stored
    mass = np.bincount(rows, weights=np.exp(stored), minlength=n_cells)
    n_stored = np.diff(block.indptr)
    log_mass = np.log(mass + (n_genes - n_stored) * np.exp(zero_value))
    return out - (log_mass - np.log(_counts.CPM_SCALE))[:, None]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_sparse_lcpm_is_the_dense_arithmetic_bit_for_bit(dtype):
    matrix = _counts_matrix().astype(dtype)
    total = float(matrix.sum())
    out = _counts.lcpm_block(matrix, total)
    np.testing.assert_array_equal(out, _lcpm_reference(matrix, total))
    assert np.isfinite(out).all()
    # each cell's proportions sum to one million
    np.testing.assert_allclose(np.exp(out).sum(axis=1), _counts.CPM_SCALE, rtol=1e-12)


def test_sparse_lcpm_with_large_counts_uses_the_distinct_values():
    matrix = _counts_matrix(seed=2)
    matrix.data[5] = 10**7  # beyond the direct table: np.unique path
    total = float(matrix.sum())
    np.testing.assert_array_equal(_counts.lcpm_block(matrix, total), _lcpm_reference(matrix, total))


def test_sparse_lcpm_agrees_with_dense_input():
    matrix = _counts_matrix(seed=3)
    total = float(matrix.sum())
    sparse_out = _counts.lcpm_block(matrix, total)
    dense_out = _counts.lcpm_block(matrix.toarray(), total)
    # the dense route sums each cell's mass pairwise: rounding only
    np.testing.assert_allclose(sparse_out, dense_out, rtol=1e-13, atol=0)


def test_sparse_lcpm_writes_into_out_and_returns_it():
    matrix = _counts_matrix(seed=4)
    out = np.full(matrix.shape, np.nan)
    result = _counts.lcpm_block(matrix, float(matrix.sum()), out=out)
    assert result is out
    np.testing.assert_array_equal(out, _lcpm_reference(matrix, float(matrix.sum())))


def _regression_inputs(n_cells: int = 700, n_genes: int = 90, seed: int = 0):
    rng = np.random.default_rng(seed)
    expression = rng.normal(size=(n_cells, n_genes)) + rng.uniform(-3, 3, n_genes)
    covariates = np.column_stack([rng.normal(size=(n_cells, 3)), np.ones(n_cells)])
    weights = rng.uniform(1.0, 3.0, n_cells)
    scale = rng.uniform(0.0, 1.0, n_genes)
    scale[:3] = 0.0
    return expression, covariates, weights, scale


def _regression_reference(expression, covariates, weights, scale):
    """Per-gene weighted Gram matrices, cross products, moments: plain numpy."""
    w = weights[:, None] ** scale[None, :]
    gram = np.einsum("cg,ci,cj->gij", w**2, covariates, covariates)
    cross = np.einsum("cg,cg,ci->gi", w**2, expression, covariates)
    weighted = expression * w
    return gram, cross, weighted.mean(axis=0), weighted.var(axis=0)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_weighted_regression_matches_numpy(n_jobs):
    expression, covariates, weights, scale = _regression_inputs()
    gram, cross, mean, variance = _regression_reference(expression, covariates, weights, scale)
    sums = _normalize._WeightedRegression(scale, covariates.shape[1], n_jobs=n_jobs)
    # blocks of 256 cells (tiles of 64 rows) and a last block of 700 - 512 = 188 rows
    for start in range(0, expression.shape[0], 256):
        rows = slice(start, min(start + 256, expression.shape[0]))
        sums.add(rows, expression[rows], covariates[rows], np.log(weights[rows]))
    upper = np.triu_indices(covariates.shape[1])
    np.testing.assert_allclose(sums.gram_upper, gram[:, upper[0], upper[1]], rtol=1e-12)
    np.testing.assert_allclose(sums.cross, cross, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(sums.before.mean, mean, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(sums.before.variance, variance, rtol=1e-12)


def _expressed_genes(n_cells: int = 700, seed: int = 6):
    """Log-count-like genes on a replicate and a depth covariate with an intercept.

    Gene 0 is constant (its residuals are rounding errors), gene 1 is entirely explained
    by the covariates, and the last genes are highly expressed (a mean of about 8 log
    units over a spread of about 0.05: most of their sum of squares is the mean's).
    """
    rng = np.random.default_rng(seed)
    depth = rng.normal(size=n_cells)
    replicate = rng.integers(0, 2, n_cells).astype(np.float64)
    covariates = np.column_stack([depth, replicate, np.ones(n_cells)])
    mu = np.exp(rng.normal(0.0, 2.0, 40))
    mu[-5:] = 3000.0
    expression = np.log1p(rng.poisson(mu * np.exp(0.2 * depth)[:, None]).astype(np.float64))
    expression[:, 0] = 3.0
    expression[:, 1] = 1.5 + 0.3 * depth - 0.2 * replicate
    return expression, covariates


def test_residual_sums_of_normvar_without_a_pass_over_them():
    """The keepvar rescaling's residual sums of squares, from the regression's sums."""
    expression, covariates = _expressed_genes()
    rng = np.random.default_rng(7)
    weights = rng.uniform(1.0, 3.0, expression.shape[0])
    scale = rng.uniform(0.0, 1.0, expression.shape[1])
    prefit = _normalize.prefit(expression[:200], covariates[:200])
    sums = _normalize._WeightedRegression(scale, covariates.shape[1], prefit=prefit)
    for start in range(0, expression.shape[0], 256):
        rows = slice(start, min(start + 256, expression.shape[0]))
        sums.add(rows, expression[rows], covariates[rows], np.log(weights[rows]))
    coefficients = sums.coefficients()
    w = weights[:, None] ** scale[None, :]
    explicit = ((w * (expression - covariates @ coefficients.T)) ** 2).sum(axis=0)
    squares = sums.residual_squares(coefficients)
    # rounding, not a spread to rescale by: the constant gene, the gene fully explained
    np.testing.assert_array_equal(squares[:2], 0.0)
    np.testing.assert_allclose(squares[2:], explicit[2:], rtol=1e-12)


@pytest.mark.parametrize("uniform", [True, False])
def test_residual_moments_of_the_variance_fit_without_a_pass_over_them(uniform, monkeypatch):
    """Means and spreads of the scaled residuals from one pass's sums (METHOD 5)."""
    expression, covariates = _expressed_genes()
    n_cells = expression.shape[0]
    rng = np.random.default_rng(8)
    cell_scale = np.ones(n_cells) if uniform else rng.uniform(1.0, 2.0, n_cells)
    captured = {}

    def keep(coefficients, moments, n_jobs):
        captured["coefficients"], captured["moments"] = coefficients, moments
        return original(coefficients, moments, n_jobs)

    original = _normalize._LogRmsPerCell
    monkeypatch.setattr(_normalize, "_LogRmsPerCell", keep)
    _normalize._log_rms_standardized_residuals(
        expression,
        covariates,
        cell_scale,
        first_fit=_normalize.prefit(expression, covariates),
        block_cells=256,
        progress=no_progress,
    )
    scaled_y, scaled_c = expression / cell_scale[:, None], covariates / cell_scale[:, None]
    coefficients = np.linalg.lstsq(scaled_c, scaled_y, rcond=None)[0]
    residual = scaled_y - scaled_c @ coefficients
    moments = captured["moments"]
    np.testing.assert_allclose(captured["coefficients"], coefficients, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(moments.mean, residual.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(moments.std[2:], residual.std(axis=0)[2:], rtol=1e-9)
    # no spread: the constant gene, and the gene the covariates explain
    np.testing.assert_array_equal(moments.std[:2], 0.0)


@pytest.mark.parametrize("n_rows", [1, 3, 64, 67, 301])
def test_normalised_block_is_the_fit_pass_bit_for_bit(n_rows):
    """The values the in-memory fit writes (times the factor) are normalised_block's.

    normvar's in-memory, float32 and streamed layers then agree exactly; also on tiles of
    fewer than four rows and on block ends that cut a tile.
    """
    expression, covariates, weights, scale = _regression_inputs(n_cells=n_rows, seed=4)
    out = np.empty(expression.shape)
    fit = _normalize.fit_normalisation(
        expression, covariates, weights, scale, block_cells=97, out=out
    )
    expected = out * fit.factor
    for n_jobs in (1, 2):
        block = _normalize.normalised_block(
            expression,
            covariates,
            np.log(weights),
            fit.coefficients,
            scale,
            fit.factor,
            n_jobs=n_jobs,
        )
        np.testing.assert_array_equal(block, expected)
    if n_rows > 10 * covariates.shape[1]:
        # the values of the formula (with fewer cells the residuals are rounding errors)
        w = weights[:, None] ** scale[None, :]
        formula = (expression - covariates @ fit.coefficients.T) * w * fit.factor
        np.testing.assert_allclose(expected, formula, rtol=1e-12, atol=1e-12)


def test_fit_normalisation_does_not_depend_on_threads(monkeypatch):
    expression, covariates, weights, scale = _regression_inputs(seed=1)
    # several parts of the genes for the BLAS sums of the regression
    monkeypatch.setattr(_normalize, "REGRESSION_GENES", 16)
    results = []
    for n_jobs in (1, 2):
        monkeypatch.setattr(nsc.settings, "n_jobs", n_jobs)
        out = np.empty(expression.shape)
        fit = _normalize.fit_normalisation(
            expression, covariates, weights, scale, block_cells=200, out=out
        )
        results.append((fit.coefficients, fit.factor, out))
    for first, second in zip(*results, strict=True):
        np.testing.assert_array_equal(first, second)


def test_compiled_passes_do_not_depend_on_the_parts_of_the_genes(monkeypatch):
    """Each gene's sums never mix with another's: parts of 7 genes give the same bits."""
    expression, covariates, weights, scale = _regression_inputs(seed=3)
    monkeypatch.setattr(nsc.settings, "n_jobs", 2)
    results = []
    for width in (_normalize.GENE_PART, 7):
        monkeypatch.setattr(_normalize, "GENE_PART", width)
        cell, _, _ = _normalize.cell_weights(expression, covariates, stepmax=2, block_cells=150)
        out = np.empty(expression.shape)
        fit = _normalize.fit_normalisation(
            expression, covariates, weights, scale, block_cells=150, out=out
        )
        results.append((cell, fit.coefficients, fit.factor, out))
    for first, second in zip(*results, strict=True):
        np.testing.assert_array_equal(first, second)


def test_cell_weights_match_numpy():
    """The compiled variance-fit passes give the weights of the formula (METHOD 5)."""
    expression, covariates, _, _ = _regression_inputs(seed=5)
    weights, steps, _ = _normalize.cell_weights(expression, covariates, block_cells=256)
    coefficients = np.linalg.lstsq(covariates, expression, rcond=None)[0]
    residual = expression - covariates @ coefficients
    standardized = (residual - residual.mean(axis=0)) / residual.std(axis=0)
    log_rms = 0.5 * np.log((standardized**2).mean(axis=1))
    design = np.column_stack([covariates, np.ones(expression.shape[0])])
    fitted = design @ np.linalg.lstsq(design, log_rms, rcond=None)[0]
    expected = np.exp(-fitted)
    np.testing.assert_allclose(weights, expected / expected.min(), rtol=1e-10)
    assert steps == 1


def test_fit_normalisation_removes_the_weighted_fit():
    # the normalised expression is orthogonal to the weighted covariates, gene by gene
    expression, covariates, weights, scale = _regression_inputs(seed=2)
    out = np.empty(expression.shape)
    fit = _normalize.fit_normalisation(
        expression, covariates, weights, scale, keepvar=False, block_cells=300, out=out
    )
    w = weights[:, None] ** scale[None, :]
    projections = np.einsum("cg,ci->gi", out * w, covariates)
    assert np.abs(projections).max() < 1e-9 * np.abs(expression * w).sum(axis=0).max()
    np.testing.assert_array_equal(fit.factor, np.ones_like(scale))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_count_summaries_of_csr_blocks_are_scipys_sums_bit_for_bit(dtype):
    matrix = _counts_matrix(seed=6).astype(dtype)
    matrix.data[::11] = 0  # explicit zeros: stored, not detected
    sums = _counts.CountSummaries(matrix.shape[1])
    expected_cells, expected = [], _counts.GeneStatistics(matrix.shape[1])
    for start in range(0, matrix.shape[0], 70):
        rows = slice(start, min(start + 70, matrix.shape[0]))
        block = matrix[rows]
        sums.add(rows, block)
        totals, zeros = _counts.cell_summaries(block)
        expected_cells.append(np.column_stack([totals, zeros]))
        expected.update(block, totals)
    np.testing.assert_array_equal(sums.cells.values(), np.concatenate(expected_cells))
    assert sums.genes.n_cells == expected.n_cells == matrix.shape[0]
    for name in ("detected", "total", "proportion_sum"):
        np.testing.assert_array_equal(getattr(sums.genes, name), getattr(expected, name))
    # and the dense route agrees up to the order of its sums
    dense = _counts.CountSummaries(matrix.shape[1])
    dense.add(slice(0, matrix.shape[0]), matrix.toarray())
    np.testing.assert_allclose(dense.genes.proportion_sum, sums.genes.proportion_sum, rtol=1e-13)
    np.testing.assert_array_equal(dense.cells.values(), sums.cells.values())
    np.testing.assert_array_equal(dense.genes.detected, sums.genes.detected)


@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float64, bool])
def test_read_sums_of_csr_blocks_equal_the_dense_route(dtype):
    """The compiled QC sums of a CSR block are the sparse/dense products' (integers)."""
    matrix = _counts_matrix(seed=7).astype(dtype)
    matrix.data[::13] = 0  # explicit zeros: stored, not detected
    rng = np.random.default_rng(7)
    keep_genes = rng.random(matrix.shape[1]) > 0.2
    cell_weights = (rng.random(matrix.shape[0]) > 0.2).astype(np.float64)
    compiled, dense = _counts.ReadSums(keep_genes), _counts.ReadSums(keep_genes)
    for start in range(0, matrix.shape[0], 64):
        rows = slice(start, min(start + 64, matrix.shape[0]))
        compiled.add(rows, matrix[rows], cell_weights[rows])
        dense.add(rows, matrix[rows].toarray(), cell_weights[rows])
    np.testing.assert_array_equal(compiled.gene_counts, dense.gene_counts)
    np.testing.assert_array_equal(compiled.gene_cells, dense.gene_cells)
    np.testing.assert_array_equal(compiled.cells.values(), dense.cells.values())
    values = matrix.toarray().astype(np.float64)
    np.testing.assert_array_equal(compiled.gene_counts, cell_weights @ values)
    detected = (values != 0).astype(np.float64)
    np.testing.assert_array_equal(
        compiled.cells.values()[:, 1], detected @ keep_genes.astype(float)
    )


@pytest.mark.parametrize("n_cov", [0, 1, 6])
def test_fit_normalisation_with_few_or_many_covariates(n_cov):
    """No covariate (nothing removed), the intercept alone, and more than four at once."""
    rng = np.random.default_rng(n_cov)
    expression = rng.normal(size=(260, 40)) + 2.0
    covariates = np.column_stack([rng.normal(size=(260, max(n_cov - 1, 0))), np.ones(260)])
    covariates = covariates[:, :n_cov]
    weights, scale = rng.uniform(1.0, 2.0, 260), rng.uniform(0.0, 1.0, 40)
    out = np.empty(expression.shape)
    fit = _normalize.fit_normalisation(
        expression, covariates, weights, scale, keepvar=False, block_cells=100, out=out
    )
    w = weights[:, None] ** scale[None, :]
    if n_cov == 0:
        np.testing.assert_allclose(out, expression * w, rtol=1e-14)
    else:
        coefficients = np.stack(
            [
                np.linalg.lstsq(covariates * w[:, [g]], expression[:, g] * w[:, g])[0]
                for g in range(40)
            ]
        )
        np.testing.assert_allclose(fit.coefficients, coefficients, rtol=1e-9, atol=1e-11)
        expected = (expression - covariates @ coefficients.T) * w
        np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-11)
