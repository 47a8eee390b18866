"""Kernels of Normalisr's mean and variance normalisation (METHOD 4-7).

Arrays are cells x genes for expression and cells x covariates for covariates. The
expression matrix is only ever read one block of cells at a time (any row-sliceable
matrix: numpy, h5py, dask), and statistics over cells are accumulated as sums (Gram
products) over blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from ._blocks import dense_block
from ._linalg import pinv_psd
from ._moments import ColumnMoments, block_moments, in_parts
from ._reduce import PerCell, accumulate, is_dask, no_progress, thread_count

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._types import RowSliceable
    from ._reduce import Progress


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
    constant = [
        name
        for name, column in zip(names, covariates.T, strict=True)
        if (column == column[0]).all()
    ]
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


def _scaled_residual(
    block: np.ndarray, covariates: np.ndarray, coefficients: np.ndarray, cell_scale: np.ndarray
) -> np.ndarray:
    """``(Y - C B) / s`` of one block of cells, in a new array."""
    residual = covariates @ coefficients
    np.subtract(dense_block(block), residual, out=residual)
    if not (cell_scale == 1).all():
        residual /= cell_scale[:, None]
    return residual


class _CrossProducts:
    """``Y' D`` of the expression with a cells x k design ``D``."""

    def __init__(self, n_genes: int, n_columns: int) -> None:
        self.cross = np.zeros((n_genes, n_columns))

    def add(self, rows: slice, block: np.ndarray, design: np.ndarray) -> None:
        # Genes first: OpenBLAS threads ``D' Y`` (few rows, long inner dimension) badly.
        self.cross += dense_block(block).T @ design

    def merge(self, other: _CrossProducts) -> _CrossProducts:
        self.cross += other.cross
        return self


def _block_threads(expression: RowSliceable) -> int:
    """Threads sharing the work on one block: one when dask already runs blocks in parallel."""
    return 1 if is_dask(expression) else thread_count()


class _ResidualMoments:
    """Per-gene mean and spread of the scaled covariate residuals."""

    def __init__(self, coefficients: np.ndarray, n_jobs: int = 1) -> None:
        self.coefficients, self.n_jobs = coefficients, n_jobs
        self.moments = ColumnMoments(coefficients.shape[1])

    def add(
        self, rows: slice, block: np.ndarray, covariates: np.ndarray, cell_scale: np.ndarray
    ) -> None:
        block = dense_block(block)
        n_genes = block.shape[1]
        mean, m2 = np.empty(n_genes), np.empty(n_genes)

        def genes(part: slice) -> None:
            residual = _scaled_residual(
                block[:, part], covariates, self.coefficients[:, part], cell_scale
            )
            block_moments(residual, overwrite=True, mean=mean[part], m2=m2[part])

        in_parts(genes, n_genes, block.shape[0], self.n_jobs)
        self.moments.add_block(block.shape[0], mean, m2)

    def merge(self, other: _ResidualMoments) -> _ResidualMoments:
        self.moments.merge(other.moments)
        return self


class _LogRmsPerCell:
    """Per cell: log root-mean-square over genes of the standardised residuals."""

    def __init__(self, coefficients: np.ndarray, moments: ColumnMoments, n_jobs: int = 1) -> None:
        self.coefficients, self.n_jobs = coefficients, n_jobs
        self.mean = moments.mean
        spread = moments.std
        informative = spread > 0
        # Genes without spread are left out: their standardised residual is set to 0.
        self.inverse_spread = np.divide(1.0, spread, out=np.zeros_like(spread), where=informative)
        self.n_informative = int(informative.sum())
        self.log_rms = PerCell()

    def add(
        self, rows: slice, block: np.ndarray, covariates: np.ndarray, cell_scale: np.ndarray
    ) -> None:
        block = dense_block(block)
        mean_square = np.empty(block.shape[0])

        def cells(part: slice) -> None:
            standardized = _scaled_residual(
                block[part], covariates[part], self.coefficients, cell_scale[part]
            )
            standardized -= self.mean
            standardized *= self.inverse_spread
            np.einsum("ij,ij->i", standardized, standardized, out=mean_square[part])

        in_parts(cells, block.shape[0], block.shape[1], self.n_jobs)
        mean_square /= self.n_informative
        self.log_rms.add(rows, 0.5 * np.log(mean_square))

    def merge(self, other: _LogRmsPerCell) -> _LogRmsPerCell:
        self.log_rms.merge(other.log_rms)
        return self


def _log_rms_standardized_residuals(
    expression: RowSliceable,
    covariates: np.ndarray,
    cell_scale: np.ndarray,
    *,
    block_cells: int,
    progress: Progress,
) -> np.ndarray:
    """Per cell: log root-mean-square over genes of standardised covariate residuals.

    Expression and covariates of each cell are divided by ``cell_scale`` first
    (weighted least squares when the scale is not uniform). Three passes over the
    cells: regression, residual spread per gene, spread per cell.
    """
    n_genes = expression.shape[1]
    n_jobs = _block_threads(expression)
    scaled_cov = covariates / cell_scale[:, None]
    pinv, _ = pinv_psd(scaled_cov.T @ scaled_cov)
    stream = partial(accumulate, matrix=expression, block_cells=block_cells, progress=progress)
    # (Y / s)' (C / s) = Y' (C / s^2): the expression block is used as it is.
    cross = stream(
        partial(_CrossProducts, n_genes, covariates.shape[1]),
        row_data=(scaled_cov / cell_scale[:, None],),
        desc="variance fit: regression",
    ).cross
    coefficients = pinv @ cross.T
    side = (covariates, cell_scale)
    moments = stream(
        partial(_ResidualMoments, coefficients, n_jobs),
        row_data=side,
        desc="variance fit: residual spread",
    ).moments
    return stream(
        partial(_LogRmsPerCell, coefficients, moments, n_jobs),
        row_data=side,
        desc="variance fit: per-cell spread",
    ).log_rms.values()


def cell_weights(
    expression: RowSliceable,
    covariates: np.ndarray,
    *,
    stepmax: int = 1,
    eps: float = 1e-6,
    block_cells: int,
    progress: Progress = no_progress,
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


@dataclass
class NormalisationFit:
    """Per-gene parameters of the mean and variance normalisation (METHOD 7).

    Attributes
    ----------
    coefficients
        Genes x covariates weighted least-squares coefficients.
    scale
        Gene scaling factors: gene ``x`` is weighted by ``weights ** scale[x]``.
    factor
        Per-gene rescaling of the weighted residuals (all ones without ``keepvar``).
    """

    coefficients: np.ndarray
    scale: np.ndarray
    factor: np.ndarray


def normalised_block(
    block: np.ndarray,
    covariates: np.ndarray,
    log_weights: np.ndarray,
    coefficients: np.ndarray,
    scale: np.ndarray,
    factor: np.ndarray | None = None,
) -> np.ndarray:
    """Normalised expression of one block of cells, ``(Y - C B') * w ** scale * factor``."""
    residual = covariates @ coefficients.T
    np.subtract(dense_block(block), residual, out=residual)
    gene_weight = np.multiply.outer(log_weights, scale)
    residual *= np.exp(gene_weight, out=gene_weight)
    if factor is not None:
        residual *= factor
    return residual


class _WeightedRegression:
    """Per-gene weighted Gram matrices, cross products and moments of the weighted genes.

    With ``weights_out`` (in memory, float64, cells x genes), the gene weights
    ``w ** scale`` are kept there for the second pass, which then needs no ``exp``.
    """

    def __init__(
        self,
        scale: np.ndarray,
        n_cov: int,
        weights_out: np.ndarray | None = None,
        n_jobs: int = 1,
    ) -> None:
        n_genes = scale.size
        self.scale, self.weights_out, self.n_jobs = scale, weights_out, n_jobs
        # Gram matrices are symmetric: only the upper triangle is accumulated.
        self.upper = np.triu_indices(n_cov)
        self.gram_upper = np.zeros((n_genes, self.upper[0].size))
        self.cross = np.zeros((n_genes, n_cov))
        self.before = ColumnMoments(n_genes)

    def add(
        self, rows: slice, block: np.ndarray, covariates: np.ndarray, log_weights: np.ndarray
    ) -> None:
        block = dense_block(block)
        kept = self.weights_out is not None
        products = covariates[:, self.upper[0]] * covariates[:, self.upper[1]]
        n_genes = block.shape[1]
        mean, m2 = np.empty(n_genes), np.empty(n_genes)

        def genes(part: slice) -> None:
            values = block[:, part]
            kept_part = None if self.weights_out is None else self.weights_out[rows, part]
            weight = np.multiply.outer(log_weights, self.scale[part], out=kept_part)
            np.exp(weight, out=weight)
            weighted = values * weight
            # Unless kept, ``weight`` is reused for w^2 and then y w^2: one array fewer.
            squared_weight = np.multiply(weight, weight, out=None if kept else weight)
            self.gram_upper[part] += squared_weight.T @ products
            twice_weighted = np.multiply(squared_weight, values, out=squared_weight)
            self.cross[part] += twice_weighted.T @ covariates
            block_moments(weighted, overwrite=True, mean=mean[part], m2=m2[part])

        in_parts(genes, n_genes, block.shape[0], self.n_jobs)
        self.before.add_block(block.shape[0], mean, m2)

    def merge(self, other: _WeightedRegression) -> _WeightedRegression:
        self.gram_upper += other.gram_upper
        self.cross += other.cross
        self.before.merge(other.before)
        return self

    def coefficients(self) -> np.ndarray:
        n_genes, n_cov = self.cross.shape
        gram = np.empty((n_genes, n_cov, n_cov))
        gram[:, self.upper[0], self.upper[1]] = gram[:, self.upper[1], self.upper[0]] = (
            self.gram_upper
        )
        pinv, _ = pinv_psd(gram)
        return np.einsum("gij,gj->gi", pinv, self.cross)


class _NormalisedSquares:
    """Per-gene sums of squares of the normalised expression before the keepvar rescaling.

    With ``out`` (an in-memory array), the values are also written there; if
    ``weights_in_out``, ``out`` holds the gene weights of :class:`_WeightedRegression`.
    """

    def __init__(
        self,
        coefficients: np.ndarray,
        scale: np.ndarray,
        out: np.ndarray | None = None,
        weights_in_out: bool = False,
        n_jobs: int = 1,
    ) -> None:
        self.coefficients, self.scale = coefficients, scale
        self.out, self.weights_in_out, self.n_jobs = out, weights_in_out, n_jobs
        self.sum_squares = np.zeros(scale.size)

    def add(
        self, rows: slice, block: np.ndarray, covariates: np.ndarray, log_weights: np.ndarray
    ) -> None:
        block = dense_block(block)
        squares = np.empty(block.shape[1])

        def genes(part: slice) -> None:
            if self.weights_in_out:
                assert self.out is not None  # weights_in_out: the weights are in ``out``
                residual = covariates @ self.coefficients[part].T
                np.subtract(block[:, part], residual, out=residual)
                out = self.out[rows, part]
                values = np.multiply(out, residual, out=out)
            else:
                values = normalised_block(
                    block[:, part],
                    covariates,
                    log_weights,
                    self.coefficients[part],
                    self.scale[part],
                )
            np.einsum("ij,ij->j", values, values, out=squares[part])
            if self.out is not None and not self.weights_in_out:
                self.out[rows, part] = values

        in_parts(genes, block.shape[1], block.shape[0], self.n_jobs)
        self.sum_squares += squares

    def merge(self, other: _NormalisedSquares) -> _NormalisedSquares:
        self.sum_squares += other.sum_squares
        return self


def fit_normalisation(
    expression: RowSliceable,
    covariates: np.ndarray,
    weights: np.ndarray,
    scale: np.ndarray,
    *,
    keepvar: bool = True,
    block_cells: int,
    progress: Progress = no_progress,
    out: np.ndarray | None = None,
) -> NormalisationFit:
    """Fit the mean and variance normalisation of expression (METHOD 7).

    Gene ``x`` is multiplied by ``weights ** scale[x]`` and its least-squares fit on
    the covariates, weighted the same way, is removed. With ``keepvar`` the residual
    is rescaled by ``(sd_before / rms_after) ** scale[x]``.

    Two passes over the cells (the second only with ``keepvar`` or ``out``): per-gene
    weighted Gram matrices, cross products and moments; then the sums of squares of
    the weighted residuals. With ``out`` (in memory, cells x genes) the second pass
    also writes the normalised expression *before* the ``factor`` rescaling into it:
    multiply by ``factor`` to finish. Otherwise :func:`normalised_block` gives it
    block by block.
    """
    n_cov = covariates.shape[1]
    n_jobs = _block_threads(expression)
    log_weights = np.log(weights)
    stream = partial(
        accumulate,
        matrix=expression,
        row_data=(covariates, log_weights),
        block_cells=block_cells,
        progress=progress,
    )
    # In memory, the float64 output holds the gene weights between the two passes.
    keep_weights = out is not None and out.dtype == np.float64
    regression = stream(
        partial(_WeightedRegression, scale, n_cov, out if keep_weights else None, n_jobs),
        desc="normvar: weighted regression",
    )
    coefficients = regression.coefficients()
    factor = np.ones_like(scale)
    if keepvar or out is not None:
        squares = stream(
            partial(_NormalisedSquares, coefficients, scale, out, keep_weights, n_jobs),
            desc="normvar: residuals",
        )
        if keepvar:
            rms_after = np.sqrt(squares.sum_squares / expression.shape[0])
            sd_before = regression.before.std
            ratio = np.divide(
                sd_before, rms_after, out=np.ones_like(rms_after), where=rms_after > 0
            )
            factor = ratio**scale
    return NormalisationFit(coefficients, scale, factor)


def normalize_covariates(covariates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multiply continuous covariates and the intercept by the cell weights (METHOD 7)."""
    weighted = ~is_binary(covariates) | (covariates == 1).all(axis=0)
    normalized = covariates.copy()
    normalized[:, weighted] *= weights[:, None]
    return normalized
