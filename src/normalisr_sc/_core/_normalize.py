"""Kernels of Normalisr's mean and variance normalisation (METHOD 4-7).

Arrays are cells x genes for expression and cells x covariates for covariates. The
expression matrix is only ever read one block of cells at a time (any row-sliceable
matrix: numpy, h5py, dask), and statistics over cells are accumulated as sums (Gram
products) over blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from ._blocks import dense_block, row_slices
from ._linalg import pinv_psd
from ._moments import ColumnMoments

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from numpy.typing import ArrayLike

    Progress = Callable[[Iterable, int, str], Iterable]


def _no_progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    return iterable


def is_binary(covariates: np.ndarray) -> np.ndarray:
    """Which columns hold only the values 0 and 1."""
    return ((covariates == 0) | (covariates == 1)).all(axis=0)


def standardize_covariates(
    covariates: np.ndarray, names: Sequence[str], *, intercept: bool = True
) -> np.ndarray:
    """Centre and scale continuous covariates, keep 0/1 ones, append an intercept (METHOD 4).

    Raises ``ValueError`` naming any constant column.
    """
    covariates = np.array(covariates, dtype=np.float64)
    constant = [name for name, column in zip(names, covariates.T, strict=True)
                if (column == column[0]).all()]
    if constant:
        msg = (
            f"covariate(s) {constant} are constant across cells and carry no information; "
            "drop them (the intercept is added by `intercept=True`)."
        )
        raise ValueError(msg)
    continuous = ~is_binary(covariates)
    block = covariates[:, continuous]
    covariates[:, continuous] = (block - block.mean(axis=0)) / block.std(axis=0)
    if intercept:
        covariates = np.column_stack([covariates, np.ones(covariates.shape[0])])
    return covariates


def _ls_fit(design: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Least-squares fitted values of ``response`` (n,) or (n, m) on ``design`` (n, k)."""
    pinv, _ = pinv_psd(design.T @ design)
    return design @ (pinv @ (design.T @ response))


def _block_buffer(n_cells: int, n_genes: int, block_cells: int) -> np.ndarray:
    """Working array for one block of cells, reused by every block."""
    return np.empty((min(block_cells, n_cells), n_genes))


def _log_rms_standardized_residuals(
    expression: ArrayLike,
    covariates: np.ndarray,
    cell_scale: np.ndarray,
    *,
    block_cells: int,
    progress: Progress,
) -> np.ndarray:
    """Per cell: log root-mean-square over genes of standardised covariate residuals.

    Expression and covariates of each cell are divided by ``cell_scale`` first
    (weighted least squares when the scale is not uniform).
    """
    n_cells, n_genes = expression.shape
    scaled_cov = covariates / cell_scale[:, None]
    pinv, _ = pinv_psd(scaled_cov.T @ scaled_cov)
    blocks = list(row_slices(n_cells, block_cells))
    uniform = bool((cell_scale == 1).all())

    # (Y / s)' (C / s) = Y' (C / s^2): the expression block is used as it is. Written with
    # the genes first: OpenBLAS threads ``C' Y`` (few rows, long inner dimension) badly.
    cov_twice_scaled = scaled_cov / cell_scale[:, None]
    cross = np.zeros((n_genes, covariates.shape[1]))
    for rows in progress(blocks, len(blocks), "variance fit: regression"):
        cross += dense_block(expression[rows]).T @ cov_twice_scaled[rows]
    coefficients = pinv @ cross.T

    buffer = _block_buffer(n_cells, n_genes, block_cells)

    def residual(rows: slice) -> np.ndarray:
        """(Y - C B) / s of one block, in ``buffer``."""
        out = np.matmul(covariates[rows], coefficients, out=buffer[: rows.stop - rows.start])
        np.subtract(dense_block(expression[rows]), out, out=out)
        if not uniform:
            out /= cell_scale[rows, None]
        return out

    moments = ColumnMoments(n_genes)
    for rows in progress(blocks, len(blocks), "variance fit: residual spread"):
        moments.update(residual(rows), overwrite=True)
    spread = moments.std
    informative = spread > 0
    # Genes without spread are left out: their standardised residual is set to 0.
    inverse_spread = np.divide(1.0, spread, out=np.zeros_like(spread), where=informative)

    log_rms = np.empty(n_cells)
    for rows in progress(blocks, len(blocks), "variance fit: per-cell spread"):
        standardized = residual(rows)
        standardized -= moments.mean
        standardized *= inverse_spread
        mean_square = np.einsum("ij,ij->i", standardized, standardized) / informative.sum()
        log_rms[rows] = 0.5 * np.log(mean_square)
    return log_rms


def cell_weights(
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    stepmax: int = 1,
    eps: float = 1e-6,
    block_cells: int,
    progress: Progress = _no_progress,
) -> tuple[np.ndarray, int, float]:
    """Cell variance weights from a log-linear fit of each cell's residual spread (METHOD 5).

    Returns
    -------
    The weights (minimum 1), the number of steps run and the largest relative change
    of the cell scale at the chosen step.
    """
    n_cells = expression.shape[0]
    design = np.column_stack([covariates, np.ones(n_cells)])
    scale = np.ones(n_cells)
    best_scale, best_change = scale, np.inf
    steps = 0
    while steps < stepmax and best_change > eps:
        log_rms = _log_rms_standardized_residuals(
            expression, covariates, scale, block_cells=block_cells, progress=progress
        )
        new_scale = np.exp(_ls_fit(design, log_rms)) * scale
        new_scale /= new_scale.min()
        change = float(np.abs((new_scale - scale) / scale).max())
        scale = new_scale
        steps += 1
        if change < best_change:
            best_scale, best_change = scale, change
    weights = 1.0 / best_scale
    return weights / weights.min(), steps, best_change


def variance_outliers(
    weights: np.ndarray, *, pcut: float = 1e-10, outrate: float = 0.02
) -> tuple[np.ndarray, int]:
    """Cells whose weight is an outlier of a Normal fitted to the inliers (METHOD 6).

    The fit starts from the cells between the ``outrate`` and ``1 - outrate``
    quantiles and alternates fit and Bonferroni-corrected two-sided test. The
    sequence of inlier sets is recorded (starting with all cells); it stops once the
    newest set has occurred at least 3 times and in at least 10% of the record.

    Returns
    -------
    Boolean mask of outliers and the number of iterations.
    """
    n_cells = weights.size
    threshold = pcut / n_cells
    low, high = int(np.ceil(outrate * n_cells)), int(np.floor((1 - outrate) * n_cells))
    ordered = np.partition(weights, [low, high])
    fit_set = (weights >= ordered[low]) & (weights <= ordered[high])
    record = [np.ones(n_cells, dtype=bool)]
    while True:
        spread = weights[fit_set].std()
        if spread == 0:
            msg = "cell weights do not vary among the inlier cells; outliers are undefined."
            raise ValueError(msg)
        z = (weights - weights[fit_set].mean()) / spread
        inliers = 2 * stats.norm.sf(np.abs(z)) >= threshold
        seen = sum(bool((past == inliers).all()) for past in record)
        if seen >= 3 and seen >= 0.1 * len(record):
            return ~inliers, len(record)
        record.append(inliers)
        fit_set = inliers


def normalize_expression(
    expression: ArrayLike,
    covariates: np.ndarray,
    weights: np.ndarray,
    scale: np.ndarray,
    out: np.ndarray,
    *,
    keepvar: bool = True,
    block_cells: int,
    progress: Progress = _no_progress,
) -> None:
    """Mean and variance normalisation of expression, written into ``out`` (METHOD 7).

    Gene ``x`` is multiplied by ``weights ** scale[x]`` and its least-squares fit on
    the covariates, weighted the same way, is removed. With ``keepvar`` the residual
    is rescaled by ``(sd_before / rms_after) ** scale[x]``.

    Two passes over the cells: the first accumulates per-gene weighted Gram matrices,
    cross products and moments; the second writes the weighted residuals. A float64
    ``out`` holds the gene weights ``weights ** scale`` between the passes, so they are
    computed once.
    """
    n_cells, n_genes = expression.shape
    n_cov = covariates.shape[1]
    log_weights = np.log(weights)
    blocks = list(row_slices(n_cells, block_cells))
    keep_gene_weights = out.dtype == np.float64
    weighted = _block_buffer(n_cells, n_genes, block_cells)
    scratch = _block_buffer(n_cells, n_genes, block_cells)
    own_buffer = None if keep_gene_weights else _block_buffer(n_cells, n_genes, block_cells)

    def gene_weights(rows: slice) -> np.ndarray:
        """``exp(log_weights[rows] x scale)``, in ``out`` or its own buffer."""
        target = out[rows] if keep_gene_weights else own_buffer[: rows.stop - rows.start]
        np.multiply.outer(log_weights[rows], scale, out=target)
        return np.exp(target, out=target)

    # Gram matrices are symmetric: only the upper triangle is accumulated.
    upper = np.triu_indices(n_cov)
    gram_upper = np.zeros((n_genes, upper[0].size))
    cross = np.zeros((n_genes, n_cov))
    before = ColumnMoments(n_genes)
    for rows in progress(blocks, len(blocks), "normvar: weighted regression"):
        n_block = rows.stop - rows.start
        cov = covariates[rows]
        gene_weight = gene_weights(rows)
        expression_weighted = np.multiply(
            dense_block(expression[rows]), gene_weight, out=weighted[:n_block]
        )
        twice_weighted = np.multiply(expression_weighted, gene_weight, out=scratch[:n_block])
        cross += twice_weighted.T @ cov
        before.update(expression_weighted, overwrite=True)
        squared_weight = np.multiply(gene_weight, gene_weight, out=scratch[:n_block])
        gram_upper += squared_weight.T @ (cov[:, upper[0]] * cov[:, upper[1]])
    gram = np.empty((n_genes, n_cov, n_cov))
    gram[:, upper[0], upper[1]] = gram[:, upper[1], upper[0]] = gram_upper
    pinv, _ = pinv_psd(gram)
    coefficients = np.einsum("gij,gj->gi", pinv, cross)
    del gram, scratch

    sum_squares = np.zeros(n_genes)
    for rows in progress(blocks, len(blocks), "normvar: residuals"):
        residual = np.matmul(
            covariates[rows], coefficients.T, out=weighted[: rows.stop - rows.start]
        )
        np.subtract(dense_block(expression[rows]), residual, out=residual)
        if keep_gene_weights:
            # ``out[rows]`` holds the gene weights: weight them into the residual in place.
            target = out[rows]
            target *= residual
        else:
            residual *= gene_weights(rows)
            target = residual
        sum_squares += np.einsum("ij,ij->j", target, target)
        if not keep_gene_weights:
            out[rows] = residual
    if not keepvar:
        return
    rms_after = np.sqrt(sum_squares / n_cells)
    ratio = np.divide(before.std, rms_after, out=np.ones_like(rms_after), where=rms_after > 0)
    factor = (ratio**scale).astype(out.dtype)
    for rows in row_slices(n_cells, block_cells):
        out[rows] *= factor


def normalize_covariates(covariates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multiply continuous covariates and the intercept by the cell weights (METHOD 7)."""
    weighted = ~is_binary(covariates) | (covariates == 1).all(axis=0)
    normalized = covariates.copy()
    normalized[:, weighted] *= weights[:, None]
    return normalized

