"""Kernels of Normalisr's mean and variance normalisation (METHOD 4-7).

Arrays are cells x genes for expression and cells x covariates for covariates. The
expression matrix is only ever read one block of cells at a time (any row-sliceable
matrix: numpy, h5py, dask), and statistics over cells are accumulated as sums (Gram
products) over blocks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from ._blocks import dense_block, float_block, row_block
from ._buffers import block_array
from ._checks import ZERO_VARIANCE_RTOL
from ._linalg import pinv_psd
from ._moments import ColumnMoments, run_parts
from ._reduce import PerCell, accumulate, alternating_scans, is_dask, no_progress, thread_count

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

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


# ---------------------------------------------------------------- compiled kernels
# Each kernel works on one tile: consecutive rows (cells) of a block, C-contiguous, and
# the genes ``g0:g1``. Per-gene results are sums over the rows in their order and never
# mix genes, so a part of the genes is computed exactly as within all of them (whatever
# the parts, hence the threads); sums over the rows of a tile add four rows at a time.
# Covariate fits are ``c[0] * b[0] + c[1] * b[1] + ...`` in that order.


def _fitted_row(c, coefficients, g0, g1, fit):
    """``fit[:] = c @ coefficients[:, g0:g1]``, summed in the order of the covariates.

    Four covariates per loop over the genes, added left to right: the same sums, bit for
    bit, as one covariate at a time, in fewer reads and writes of ``fit``.
    """
    n = g1 - g0
    n_cov = c.size
    if n_cov == 0:
        for g in range(n):
            fit[g] = 0.0
    k = 0
    while k < n_cov:
        if k + 4 <= n_cov:
            b0, b1 = coefficients[k, g0:g1], coefficients[k + 1, g0:g1]
            b2, b3 = coefficients[k + 2, g0:g1], coefficients[k + 3, g0:g1]
            c0, c1, c2, c3 = c[k], c[k + 1], c[k + 2], c[k + 3]
            if k == 0:
                for g in range(n):
                    fit[g] = c0 * b0[g] + c1 * b1[g] + c2 * b2[g] + c3 * b3[g]
            else:
                for g in range(n):
                    fit[g] = fit[g] + c0 * b0[g] + c1 * b1[g] + c2 * b2[g] + c3 * b3[g]
            k += 4
        else:
            b0 = coefficients[k, g0:g1]
            c0 = c[k]
            if k == 0:
                for g in range(n):
                    fit[g] = c0 * b0[g]
            else:
                for g in range(n):
                    fit[g] = fit[g] + c0 * b0[g]
            k += 1


def _add_rows(values, first, design, sums, g0, g1):
    """Add ``design.T @ values[:, first:first + g1 - g0]`` to ``sums[:, g0:g1]``.

    The rows are summed four at a time into a partial sum of their own, which is then
    added to ``sums``: the rounding error grows with the rows of one call (a tile), not
    with all the rows added to ``sums``.
    """
    n = g1 - g0
    last = first + n
    n_rows = values.shape[0]
    partial = np.zeros((design.shape[1], n))
    r = 0
    while r + 4 <= n_rows:
        v0, v1 = values[r, first:last], values[r + 1, first:last]
        v2, v3 = values[r + 2, first:last], values[r + 3, first:last]
        for k in range(design.shape[1]):
            d0, d1, d2, d3 = design[r, k], design[r + 1, k], design[r + 2, k], design[r + 3, k]
            out = partial[k]
            for g in range(n):
                out[g] += v0[g] * d0 + v1[g] * d1 + v2[g] * d2 + v3[g] * d3
        r += 4
    while r < n_rows:
        v0 = values[r, first:last]
        for k in range(design.shape[1]):
            d0 = design[r, k]
            out = partial[k]
            for g in range(n):
                out[g] += v0[g] * d0
        r += 1
    for k in range(design.shape[1]):
        out = sums[k, g0:g1]
        part = partial[k]
        for g in range(n):
            out[g] += part[g]


def _welford_row(x, count, mean, m2):
    """Add one row ``x`` to the running means and centred sums of squares (``count`` rows)."""
    inverse = 1.0 / count
    for g in range(x.size):
        delta = x[g] - mean[g]
        mean[g] += delta * inverse
        m2[g] += delta * (x[g] - mean[g])


def _log_weight_tile(log_weights, scale, g0, g1, out):
    """``out = log_weights[:, None] * scale[None, g0:g1]`` (``exp`` of it: the gene weights)."""
    n = g1 - g0
    factors = scale[g0:g1]
    for r in range(out.shape[0]):
        a = log_weights[r]
        row = out[r]
        for g in range(n):
            row[g] = a * factors[g]


def _weighted_tile(values, weights, fitted, g0, g1, count, squared, twice, mean, m2, squares):
    """Compute the weighted values of one tile, for the genes ``g0:g1``.

    ``weights`` (tile rows x genes) holds ``w ** scale`` and ``fitted`` the values ``c b0``
    of given coefficients; with ``d = y - c b0``, writes ``w^2`` into ``squared`` and
    ``w^2 d`` into ``twice`` (tile rows x genes), adds the rows of ``y w`` to the running
    moments ``mean``, ``m2`` of ``count`` rows before and the squares of ``w d`` to
    ``squares``.
    """
    n = g1 - g0
    weighted = np.empty(n)
    means, m2s = mean[g0:g1], m2[g0:g1]
    partial = np.zeros(n)
    for r in range(values.shape[0]):
        y, w, fit = values[r, g0:g1], weights[r], fitted[r]
        w2, w2d = squared[r], twice[r]
        for g in range(n):
            a = w[g]
            b = a * a
            d = y[g] - fit[g]
            w2[g] = b
            w2d[g] = b * d
            partial[g] += b * d * d
            weighted[g] = y[g] * a
        _welford_row(weighted, count + r + 1, means, m2s)
    sums = squares[g0:g1]
    for g in range(n):
        sums[g] += partial[g]


def _normalised_tile(values, weights, covariates, coefficients, factor, g0, g1, out, squares):
    """Weighted covariate residuals ``w * (y - c b)`` of one tile into ``out[:, g0:g1]``.

    ``squares[g0:g1]`` receives their sums of squares; with a non-empty ``factor`` the
    values written are then multiplied by it (the sums are of the values before).
    """
    n = g1 - g0
    fit = np.empty(n)
    partial = np.zeros(n)
    scaled = factor.size > 0
    for r in range(values.shape[0]):
        _fitted_row(covariates[r], coefficients, g0, g1, fit)
        y, w, o = values[r, g0:g1], weights[r], out[r, g0:g1]
        for g in range(n):
            v = w[g] * (y[g] - fit[g])
            partial[g] += v * v
            o[g] = v
        if scaled:
            f = factor[g0:g1]
            for g in range(n):
                o[g] *= f[g]
    sums = squares[g0:g1]
    for g in range(n):
        sums[g] += partial[g]


def _residual_moments_tile(values, covariates, coefficients, cell_scale, g0, g1, count, work):
    """Add the rows of ``(y - c b) / s`` to the running moments (``work``: mean, m2)."""
    mean, m2 = work
    n = g1 - g0
    fit = np.empty(n)
    means, m2s = mean[g0:g1], m2[g0:g1]
    divide = cell_scale.size > 0
    for r in range(values.shape[0]):
        _fitted_row(covariates[r], coefficients, g0, g1, fit)
        y = values[r, g0:g1]
        for g in range(n):
            fit[g] = y[g] - fit[g]
        if divide:
            s = cell_scale[r]
            for g in range(n):
                fit[g] /= s
        _welford_row(fit, count + r + 1, means, m2s)


def _square_sum(values):
    """Sum of squares in eight interleaved partial sums, added in a fixed order."""
    partial = np.zeros(8)
    n = values.size - values.size % 8
    for g in range(0, n, 8):
        for lane in range(8):
            partial[lane] += values[g + lane] * values[g + lane]
    total = ((partial[0] + partial[1]) + (partial[2] + partial[3])) + (
        (partial[4] + partial[5]) + (partial[6] + partial[7])
    )
    for g in range(n, values.size):
        total += values[g] * values[g]
    return total


def _standardized_square_tile(
    values, covariates, coefficients, cell_scale, mean, inverse_spread, out
):
    """Per row: sum over genes of ``(((y - c b) / s - mean) * inverse_spread) ** 2``."""
    n = values.shape[1]
    fit = np.empty(n)
    divide = cell_scale.size > 0
    for r in range(values.shape[0]):
        _fitted_row(covariates[r], coefficients, 0, n, fit)
        y = values[r]
        for g in range(n):
            fit[g] = y[g] - fit[g]
        if divide:
            s = cell_scale[r]
            for g in range(n):
                fit[g] /= s
        for g in range(n):
            fit[g] = (fit[g] - mean[g]) * inverse_spread[g]
        out[r] = _square_sum(fit)


_KERNELS: dict[str, Callable] = {}
_KERNEL_LOCK = threading.Lock()
_SOURCES: dict[str, Callable] = {
    "log_weights": _log_weight_tile,
    "weighted": _weighted_tile,
    "normalised": _normalised_tile,
    "moments": _residual_moments_tile,
    "standardized": _standardized_square_tile,
    "add_rows": _add_rows,
}
#: Helpers the kernels call, compiled with them.
_HELPERS = (_fitted_row, _add_rows, _welford_row, _square_sum)


def _kernel(name: str) -> Callable:
    """Return the compiled kernel ``name`` (numba, compiled on first use, cached on disk)."""
    if name not in _KERNELS:
        with _KERNEL_LOCK:  # dask threads may ask at once
            if name not in _KERNELS:
                import numba

                jit = numba.njit(nogil=True, cache=True, boundscheck=False)
                namespace = globals()
                # The kernels call the helpers as compiled functions of this module.
                for helper in _HELPERS:
                    if namespace[helper.__name__] is helper:
                        namespace[helper.__name__] = jit(helper)
                _KERNELS[name] = jit(_SOURCES[name])
    return _KERNELS[name]


#: Rows of a tile of the compiled kernels, and the widest part of the genes a thread
#: takes in one go: the tile's scratch arrays (a few of rows x part) stay in cache.
ROW_TILE = 64
GENE_PART = 1024
#: Tiles of the weighted regression, whose sums over cells are BLAS products: cells, and
#: genes (fixed parts, whatever the threads).
REGRESSION_ROWS = 256
REGRESSION_GENES = 256


def _gene_parts(n_genes: int, n_jobs: int) -> list[slice]:
    """Return slices of the genes, about :data:`GENE_PART` wide, a multiple of ``n_jobs`` of them.

    Results do not depend on the parts (see the kernels), only the balance of the threads.
    """
    n_parts = n_jobs * max(1, -(-n_genes // (n_jobs * GENE_PART)))
    bounds = np.linspace(0, n_genes, n_parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in pairwise(bounds) if b > a]


def _fixed_gene_parts(n_genes: int, size: int | None = None) -> list[slice]:
    """Consecutive slices of ``size`` (default :data:`REGRESSION_GENES`) genes."""
    size = REGRESSION_GENES if size is None else size
    return [slice(a, min(a + size, n_genes)) for a in range(0, n_genes, size)]


def _row_tiles(n_rows: int, size: int | None = None) -> list[slice]:
    """Consecutive tiles of ``size`` (default :data:`ROW_TILE`) rows of a block."""
    size = ROW_TILE if size is None else size
    return [slice(a, min(a + size, n_rows)) for a in range(0, n_rows, size)]


def _float_rows(block: RowSliceable | np.ndarray) -> np.ndarray:
    """Return a block as a C-contiguous float64 array (no copy if it already is one)."""
    return np.ascontiguousarray(dense_block(block))


def _gene_weights(
    log_weights: np.ndarray, scale: np.ndarray, part: slice, buffer: np.ndarray
) -> np.ndarray:
    """``w ** scale`` of a tile's cells (``log_weights``) and the genes ``part``, in ``buffer``."""
    weights = buffer[: log_weights.size, : part.stop - part.start]
    _kernel("log_weights")(log_weights, scale, part.start, part.stop, weights)
    return np.exp(weights, out=weights)


def _block_threads(expression: RowSliceable) -> int:
    """Threads sharing the work on one block: one when dask already runs blocks in parallel."""
    return 1 if is_dask(expression) else thread_count()


def _scale_or_empty(cell_scale: np.ndarray) -> np.ndarray:
    """``cell_scale``, or an empty array when it is all ones (the kernels then skip dividing)."""
    return np.empty(0) if (cell_scale == 1).all() else np.ascontiguousarray(cell_scale)


def _check_sums(sums: Sequence[np.ndarray], on_non_finite: Callable[[], object] | None) -> None:
    """Refuse the expression when sums over its cells are not finite.

    A NaN or an infinity anywhere in a gene makes its sums over cells (means and centred
    sums of squares: ``inf - inf`` is NaN and stays NaN) not finite, so the passes check
    their input through them. ``on_non_finite`` raises the step's own message (e.g. after
    counting the values); the error below is for values so large that the sums overflow.
    """
    if all(np.isfinite(values).all() for values in sums):
        return
    if on_non_finite is not None:
        on_non_finite()
    msg = (
        "the expression's sums over cells are not finite: it holds NaN or infinite values, "
        "or values so large that their squares overflow float64."
    )
    raise ValueError(msg)


class _ScaledSums:
    """Per gene, sums over the cells of ``Y / s``: products with a design, and moments.

    ``(Y / s)' D`` with a cells x k design ``D`` (stored k x genes), and the moments of
    ``(Y - C b0) / s``, the residuals of given coefficients ``prefit`` (``b0``, covariates
    x genes), in one pass (``s``: the cell scale).
    """

    def __init__(self, n_genes: int, n_columns: int, prefit: np.ndarray, n_jobs: int = 1) -> None:
        self.sums = np.zeros((n_columns, n_genes))
        self.prefit = np.ascontiguousarray(prefit)
        self.moments = ColumnMoments(n_genes)
        self.n_jobs = n_jobs

    @property
    def cross(self) -> np.ndarray:
        """Genes x k."""
        return self.sums.T

    def add(
        self,
        rows: slice,
        block: np.ndarray,
        design_over_scale: np.ndarray,
        covariates: np.ndarray,
        cell_scale: np.ndarray,
    ) -> None:
        # ``design_over_scale``: D / s, so that the sums of Y (D / s) are those of (Y / s) D.
        values = _float_rows(block)
        design = np.ascontiguousarray(design_over_scale)
        covariates = np.ascontiguousarray(covariates)
        scale = _scale_or_empty(cell_scale)
        n_rows, n_genes = values.shape
        sums = np.zeros_like(self.sums)
        work = (np.zeros(n_genes), np.zeros(n_genes))
        add_rows, moments = _kernel("add_rows"), _kernel("moments")

        def genes(part: slice) -> None:
            for tile in _row_tiles(n_rows):
                add_rows(values[tile], part.start, design[tile], sums, part.start, part.stop)
                moments(
                    values[tile],
                    covariates[tile],
                    self.prefit,
                    scale[tile] if scale.size else scale,
                    part.start,
                    part.stop,
                    tile.start,
                    work,
                )

        run_parts(genes, _gene_parts(n_genes, self.n_jobs), self.n_jobs)
        self.sums += sums
        self.moments.add_block(n_rows, *work)

    def merge(self, other: _ScaledSums) -> _ScaledSums:
        self.sums += other.sums
        self.moments.merge(other.moments)
        return self


def _residual_moments(
    moments: ColumnMoments,
    design_mean: np.ndarray,
    centred_cross: np.ndarray,
    centred_gram: np.ndarray,
    change: np.ndarray,
    raw: np.ndarray,
) -> ColumnMoments:
    """Per gene: the moments of the residuals ``r = r0 - c e`` from those of ``r0``.

    ``design_mean`` (k) is the mean of the design's rows ``c``; ``centred_cross`` (genes
    x k) and ``centred_gram`` (k x k) are the sums over the cells of ``r0 (c - mean c)``
    and ``(c - mean c) (c - mean c)'``; ``change`` (k x genes) holds the ``e``. With ``r0``
    the residuals of coefficients near the final ones, ``e`` is small and the rounding
    error is about the machine epsilon over the share of the variance left to the
    residuals, as in a pass over them. A centred sum of squares below
    ``ZERO_VARIANCE_RTOL`` of the gene's sum of squares ``raw`` counts as 0: the
    covariates explain the gene.
    """
    residual = ColumnMoments(change.shape[1])
    residual.count = moments.count
    residual.mean = moments.mean - design_mean @ change
    m2 = (
        moments.m2
        - 2 * np.einsum("kg,gk->g", change, centred_cross)
        + np.einsum("kg,kl,lg->g", change, centred_gram, change)
    )
    residual.m2 = np.where(m2 > ZERO_VARIANCE_RTOL * raw, m2, 0.0)
    return residual


class _LogRmsPerCell:
    """Per cell: log root-mean-square over genes of the standardised residuals."""

    def __init__(self, coefficients: np.ndarray, moments: ColumnMoments, n_jobs: int = 1) -> None:
        self.coefficients, self.n_jobs = np.ascontiguousarray(coefficients), n_jobs
        self.mean = np.ascontiguousarray(moments.mean)
        spread = moments.std
        informative = spread > 0
        # Genes without spread are left out: their standardised residual is set to 0.
        self.inverse_spread = np.divide(1.0, spread, out=np.zeros_like(spread), where=informative)
        self.n_informative = int(informative.sum())
        self.log_rms = PerCell()

    def add(
        self, rows: slice, block: np.ndarray, covariates: np.ndarray, cell_scale: np.ndarray
    ) -> None:
        values = _float_rows(block)
        covariates = np.ascontiguousarray(covariates)
        scale = _scale_or_empty(cell_scale)
        mean_square = np.empty(values.shape[0])
        kernel = _kernel("standardized")

        def cells(part: slice) -> None:
            kernel(
                values[part],
                covariates[part],
                self.coefficients,
                scale[part] if scale.size else scale,
                self.mean,
                self.inverse_spread,
                mean_square[part],
            )

        # Each cell's sum depends on its own row only: any parts of the cells will do.
        run_parts(cells, _row_parts(values.shape[0], self.n_jobs), self.n_jobs)
        mean_square /= self.n_informative
        self.log_rms.add(rows, 0.5 * np.log(mean_square))

    def merge(self, other: _LogRmsPerCell) -> _LogRmsPerCell:
        self.log_rms.merge(other.log_rms)
        return self


def _row_parts(n_rows: int, n_jobs: int) -> list[slice]:
    """Return ``n_jobs`` (or fewer) slices of about equal numbers of rows."""
    bounds = np.linspace(0, n_rows, min(n_jobs, max(n_rows, 1)) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in pairwise(bounds) if b > a]


@alternating_scans()
def _log_rms_standardized_residuals(
    expression: RowSliceable,
    covariates: np.ndarray,
    cell_scale: np.ndarray,
    *,
    first_fit: np.ndarray,
    block_cells: int,
    progress: Progress,
    on_non_finite: Callable[[], object] | None = None,
) -> np.ndarray:
    """Per cell: log root-mean-square over genes of standardised covariate residuals.

    Expression and covariates of each cell are divided by ``cell_scale`` first
    (weighted least squares when the scale is not uniform). Two passes over the cells:
    the regression and the residual spread per gene (from the same sums), then the
    spread per cell. The expression is refused after the first when sums over it are
    not finite (:func:`_check_sums`). ``first_fit``: the coefficients of :func:`prefit`,
    whose residuals the sums are taken of (the same whatever the cell scale).
    """
    n_genes = expression.shape[1]
    n_jobs = _block_threads(expression)
    scaled_cov = covariates / cell_scale[:, None]
    design_mean = scaled_cov.mean(axis=0)
    centred = scaled_cov - design_mean
    centred_gram = centred.T @ centred
    pinv, _ = pinv_psd(scaled_cov.T @ scaled_cov)
    stream = partial(accumulate, matrix=expression, block_cells=block_cells, progress=progress)
    # (Y / s)' (C / s - mean): the expression block is used as it is, divided by s with
    # the design. Sums over the centred design are those of the centred Y / s as well.
    sums = stream(
        partial(_ScaledSums, n_genes, covariates.shape[1], first_fit, n_jobs),
        row_data=(centred / cell_scale[:, None], covariates, cell_scale),
        desc="variance fit: regression",
    )
    centred_cross, first = sums.cross, sums.moments
    _check_sums((centred_cross, first.mean, first.m2), on_non_finite)
    # (C / s)' (Y / s) = centred cross + n mean(C / s) mean(Y / s)'
    scaled_mean = first.mean + design_mean @ first_fit
    coefficients = pinv @ (centred_cross + first.count * np.outer(scaled_mean, design_mean)).T
    # the same sums of the first fit's residuals (Y - C b0) / s
    first_cross = centred_cross - (centred_gram @ first_fit).T
    # the sum of squares of Y / s (about: only what counts as none of it is read off it)
    explained = np.einsum("kg,kl,lg->g", first_fit, centred_gram, first_fit)
    raw = first.m2 + explained + first.count * np.square(scaled_mean)
    moments = _residual_moments(
        first, design_mean, first_cross, centred_gram, coefficients - first_fit, raw
    )
    return stream(
        partial(_LogRmsPerCell, coefficients, moments, n_jobs),
        row_data=(covariates, cell_scale),
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
    on_non_finite: Callable[[], object] | None = None,
) -> tuple[np.ndarray, int, float]:
    """Cell variance weights from a log-linear fit of each cell's residual spread (METHOD 5).

    An expression whose sums over cells are not finite (NaN or infinite values) is
    refused by ``on_non_finite`` if given (it is meant to raise), else by a ValueError.

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
    first_fit = prefit(expression, covariates)  # read once for all the steps
    while steps < stepmax and best_change > eps:
        log_rms = _log_rms_standardized_residuals(
            expression,
            covariates,
            scale,
            first_fit=first_fit,
            block_cells=block_cells,
            progress=progress,
            on_non_finite=on_non_finite,
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


def _normalised_into(
    values: np.ndarray,
    covariates: np.ndarray,
    log_weights: np.ndarray,
    coefficients: np.ndarray,
    scale: np.ndarray,
    factor: np.ndarray,
    out: np.ndarray | None,
    squares: np.ndarray,
    n_jobs: int,
) -> None:
    """Write ``(Y - C B') * w ** scale`` (times ``factor`` if not empty) of a block into ``out``.

    ``coefficients`` is covariates x genes (C-contiguous); ``squares`` receives each gene's
    sum of squares of the values before ``factor``. Every value is computed the same way
    whatever the parts and threads. Without ``out`` only the sums are kept.
    """
    n_rows, n_genes = values.shape
    kernel = _kernel("normalised")
    _kernel("log_weights")  # compiled (or loaded) here, not by the threads at once
    tiles = _row_tiles(n_rows)
    # Each tile's sums of squares apart, added in the order of the tiles at the end: the
    # same sums whichever thread did which tile.
    partial = np.zeros((len(tiles), n_genes))
    genes = _fixed_gene_parts(n_genes, GENE_PART)

    def cells(chosen: slice) -> None:
        # A thread writes whole rows of ``out``: its own pages (first-touch faults of a
        # new array are costly when threads share pages).
        width = genes[0].stop if genes else 0
        buffer = np.empty((min(ROW_TILE, n_rows), width))
        scratch = np.empty((min(ROW_TILE, n_rows), n_genes))
        for t in range(chosen.start, chosen.stop):
            tile = tiles[t]
            target = scratch[: tile.stop - tile.start] if out is None else out[tile]
            for part in genes:
                weights = _gene_weights(log_weights[tile], scale, part, buffer)
                kernel(
                    values[tile],
                    weights,
                    covariates[tile],
                    coefficients,
                    factor,
                    part.start,
                    part.stop,
                    target,
                    partial[t],
                )

    run_parts(cells, _row_parts(len(tiles), n_jobs), n_jobs)
    for tile_squares in partial:
        squares += tile_squares


def normalised_block(
    block: np.ndarray,
    covariates: np.ndarray,
    log_weights: np.ndarray,
    coefficients: np.ndarray,
    scale: np.ndarray,
    factor: np.ndarray | None = None,
    *,
    n_jobs: int = 1,
) -> np.ndarray:
    """Normalised expression of one block of cells, ``(Y - C B') * w ** scale * factor``.

    The same values, bit for bit, as the in-memory pass of :func:`fit_normalisation`
    writes (then multiplied by ``factor``), on ``n_jobs`` threads.
    """
    values = _float_rows(block)
    out = block_array(values.shape)
    _normalised_into(
        values,
        np.ascontiguousarray(covariates, dtype=np.float64),
        np.ascontiguousarray(log_weights, dtype=np.float64),
        np.ascontiguousarray(coefficients.T),
        np.ascontiguousarray(scale, dtype=np.float64),
        np.empty(0) if factor is None else np.ascontiguousarray(factor, dtype=np.float64),
        out,
        np.zeros(values.shape[1]),
        n_jobs,
    )
    return out


#: Cells of the first fits of the variance fit and of normvar (:func:`prefit`).
PREFIT_CELLS = 1024


def prefit(expression: RowSliceable, covariates: np.ndarray) -> np.ndarray:
    """Least-squares coefficients (covariates x genes) of the genes on the first cells.

    Any coefficients serve :class:`_ScaledSums` and :class:`_WeightedRegression`, whose
    sums are taken of the residuals of these; these leave residuals about as small as
    the final fit's, so that the sums lose no digits to what the covariates explain.
    Values that are not finite give coefficients of 0 (the pass refuses them).
    """
    rows = slice(0, min(PREFIT_CELLS, expression.shape[0]))
    first = float_block(row_block(expression, rows))
    design = covariates[rows]
    pinv, _ = pinv_psd(design.T @ design)
    with np.errstate(invalid="ignore", over="ignore"):
        coefficients = pinv @ (design.T @ first)
    return np.ascontiguousarray(np.where(np.isfinite(coefficients), coefficients, 0.0))


class _WeightedRegression:
    """Per-gene weighted Gram matrices, cross products and moments of the weighted genes.

    The products with the genes are sums of those of ``d = y - c b0``, the residuals of
    given coefficients ``prefit`` (``b0``, covariates x genes; default 0), and of the
    squares of ``w d``: with ``b0`` near the final fit they are about the size of its
    residuals, and its residual sums of squares follow from them without losing the
    digits of what the covariates explain (:meth:`residual_squares`).
    """

    def __init__(
        self, scale: np.ndarray, n_cov: int, n_jobs: int = 1, prefit: np.ndarray | None = None
    ) -> None:
        n_genes = scale.size
        self.scale, self.n_jobs = np.ascontiguousarray(scale, dtype=np.float64), n_jobs
        self.prefit = np.zeros((n_cov, n_genes)) if prefit is None else np.ascontiguousarray(prefit)
        # Gram matrices are symmetric: only the upper triangle is accumulated.
        self.upper = np.triu_indices(n_cov)
        self.gram_sums = np.zeros((self.upper[0].size, n_genes))
        self.residual_cross = np.zeros((n_cov, n_genes))
        self.residual_sums = np.zeros(n_genes)
        self.before = ColumnMoments(n_genes)

    @property
    def gram_upper(self) -> np.ndarray:
        """Genes x upper-triangle entries of the weighted Gram matrices."""
        return self.gram_sums.T

    @property
    def cross(self) -> np.ndarray:
        """Genes x covariates weighted cross products ``sum w^2 c y``."""
        return self._cross(self._gram())

    def _cross(self, gram: np.ndarray) -> np.ndarray:
        # sum w^2 c y = sum w^2 c d + (sum w^2 c c') b0
        return self.residual_cross.T + np.einsum("gij,jg->gi", gram, self.prefit)

    def add(
        self, rows: slice, block: np.ndarray, covariates: np.ndarray, log_weights: np.ndarray
    ) -> None:
        values = _float_rows(block)
        covariates = np.ascontiguousarray(covariates, dtype=np.float64)
        log_weights = np.ascontiguousarray(log_weights, dtype=np.float64)
        products = covariates[:, self.upper[0]] * covariates[:, self.upper[1]]
        n_rows, n_genes = values.shape
        mean, m2, squares = np.zeros(n_genes), np.zeros(n_genes), np.zeros(n_genes)
        gram, cross = np.zeros_like(self.gram_sums), np.zeros_like(self.residual_cross)
        kernel = _kernel("weighted")
        _kernel("log_weights")  # compiled (or loaded) here, not by the threads at once
        n_tile = min(REGRESSION_ROWS, n_rows)

        def genes(part: slice) -> None:
            width = part.stop - part.start
            buffer = np.empty((n_tile, width))
            squared, twice = np.empty((n_tile, width)), np.empty((n_tile, width))
            fitted = np.empty((n_tile, width))
            tile_gram = np.empty((gram.shape[0], width))
            tile_cross = np.empty((cross.shape[0], width))
            for tile in _row_tiles(n_rows, REGRESSION_ROWS):
                size = tile.stop - tile.start
                weights = _gene_weights(log_weights[tile], self.scale, part, buffer)
                np.matmul(covariates[tile], self.prefit[:, part], out=fitted[:size])
                kernel(
                    values[tile],
                    weights,
                    fitted,
                    part.start,
                    part.stop,
                    tile.start,
                    squared,
                    twice,
                    mean,
                    m2,
                    squares,
                )
                # Sums over the tile's cells by BLAS, then over the tiles in their order.
                np.matmul(products[tile].T, squared[:size], out=tile_gram)
                gram[:, part] += tile_gram
                np.matmul(covariates[tile].T, twice[:size], out=tile_cross)
                cross[:, part] += tile_cross

        # Fixed parts of the genes: BLAS sums every gene the same way whatever the threads
        # (run_parts limits BLAS to one thread when the parts run in threads).
        run_parts(genes, _fixed_gene_parts(n_genes), self.n_jobs)
        self.gram_sums += gram
        self.residual_cross += cross
        self.residual_sums += squares
        self.before.add_block(n_rows, mean, m2)

    def merge(self, other: _WeightedRegression) -> _WeightedRegression:
        self.gram_sums += other.gram_sums
        self.residual_cross += other.residual_cross
        self.residual_sums += other.residual_sums
        self.before.merge(other.before)
        return self

    def _gram(self) -> np.ndarray:
        """Genes x covariates x covariates weighted Gram matrices."""
        n_genes, n_cov = self.gram_sums.shape[1], self.residual_cross.shape[0]
        gram = np.empty((n_genes, n_cov, n_cov))
        gram[:, self.upper[0], self.upper[1]] = gram[:, self.upper[1], self.upper[0]] = (
            self.gram_upper
        )
        return gram

    def coefficients(self) -> np.ndarray:
        gram = self._gram()
        pinv, _ = pinv_psd(gram)
        return np.einsum("gij,gj->gi", pinv, self._cross(gram))

    def residual_squares(self, coefficients: np.ndarray) -> np.ndarray:
        """Per gene: the sum over cells of the squared weighted residuals ``(w (y - c b))^2``.

        From this pass's sums, without a pass over the residuals: with ``e = b - b0``,
        ``y - c b = d - c e`` and the sum expands to ``sum (w d)^2 - 2 e' sum w^2 c d +
        e' (sum w^2 c c') e``. Its rounding error is about the machine epsilon times the
        first sum over the result, near 1 when ``b0`` fits about as well as ``b``. As in
        the association tests, a result below ``ZERO_VARIANCE_RTOL`` of the sum of
        ``(w y)^2`` counts as 0: the covariates explain the gene.
        """
        change = coefficients - self.prefit.T
        fitted = np.einsum("gi,gij,gj->g", change, self._gram(), change)
        squares = self.residual_sums - 2 * np.einsum("gi,ig->g", change, self.residual_cross)
        squares += fitted
        before = self.before
        raw = before.m2 + before.count * np.square(before.mean)
        return np.where(squares > ZERO_VARIANCE_RTOL * raw, squares, 0.0)


class _NormalisedWriter:
    """Writes the normalised expression, before the keepvar rescaling, into ``out``."""

    def __init__(
        self, coefficients: np.ndarray, scale: np.ndarray, out: np.ndarray, n_jobs: int = 1
    ) -> None:
        self.coefficients = np.ascontiguousarray(coefficients.T)  # covariates x genes
        self.scale = np.ascontiguousarray(scale, dtype=np.float64)
        self.out, self.n_jobs = out, n_jobs

    def add(
        self, rows: slice, block: np.ndarray, covariates: np.ndarray, log_weights: np.ndarray
    ) -> None:
        values = _float_rows(block)
        _normalised_into(
            values,
            np.ascontiguousarray(covariates, dtype=np.float64),
            np.ascontiguousarray(log_weights, dtype=np.float64),
            self.coefficients,
            self.scale,
            np.empty(0),
            self.out[rows],
            np.zeros(values.shape[1]),
            self.n_jobs,
        )

    def merge(self, other: _NormalisedWriter) -> _NormalisedWriter:
        return self


@alternating_scans()
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
    on_non_finite: Callable[[], object] | None = None,
) -> NormalisationFit:
    """Fit the mean and variance normalisation of expression (METHOD 7).

    Gene ``x`` is multiplied by ``weights ** scale[x]`` and its least-squares fit on
    the covariates, weighted the same way, is removed. With ``keepvar`` the residual
    is rescaled by ``(sd_before / rms_after) ** scale[x]``.

    One pass over the cells: per-gene weighted Gram matrices, cross products and
    moments, from which the coefficients and the residual sums of squares of the keepvar
    rescaling follow (:class:`_WeightedRegression`, after a first fit on the first
    cells). With ``out`` (in memory, float64, cells x genes) a second pass writes the
    normalised expression *before* the ``factor`` rescaling into it: multiply by
    ``factor`` to finish (the values of :func:`normalised_block`, bit for bit).
    Otherwise :func:`normalised_block` gives it block by block.

    An expression whose sums over cells are not finite (NaN or infinite values) is
    refused after the first pass, by ``on_non_finite`` if given (it is meant to raise),
    else by a ValueError.
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
    if out is not None and (out.dtype != np.float64 or not out.flags.c_contiguous):
        msg = "fit_normalisation: `out` must be a C-contiguous float64 array."
        raise ValueError(msg)
    regression = stream(
        partial(
            _WeightedRegression,
            scale,
            n_cov,
            n_jobs,
            # the same cells whatever the blocks: the sums' rounding does not depend on them
            prefit(expression, covariates),
        ),
        desc="normvar: weighted regression",
    )
    _check_sums(
        (regression.residual_sums, regression.before.mean, regression.before.m2), on_non_finite
    )
    coefficients = regression.coefficients()
    factor = np.ones_like(scale)
    if keepvar:
        rms_after = np.sqrt(regression.residual_squares(coefficients) / expression.shape[0])
        sd_before = regression.before.std
        ratio = np.divide(sd_before, rms_after, out=np.ones_like(rms_after), where=rms_after > 0)
        factor = ratio**scale
    if out is not None:
        stream(
            partial(_NormalisedWriter, coefficients, scale, out, n_jobs), desc="normvar: writing"
        )
    return NormalisationFit(coefficients, scale, factor)


def normalize_covariates(covariates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multiply continuous covariates and the intercept by the cell weights (METHOD 7)."""
    weighted = ~is_binary(covariates) | (covariates == 1).all(axis=0)
    normalized = covariates.copy()
    normalized[:, weighted] *= weights[:, None]
    return normalized
