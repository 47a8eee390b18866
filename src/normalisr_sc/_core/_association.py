"""Association tests of METHOD 8: differential expression in three designs, co-expression.

Arrays are cells x genes (expression), cells x covariates and cells x groups (0/1,
dense or CSR). Every statistic is computed from sums over cells (Gram products), which
are accumulated one block of cells at a time, so expression matrices are only ever
read block by block.

For one predictor ``x`` and one response ``y`` with the covariates ``C`` removed by
least squares (pseudo-inverse, rank ``r``), the residual sums of squares and products
are ``x'x' = x.x - (C x)' (C'C)^+ (C x)`` and alike; then
``gamma = x'y' / x'x'``, ``R^2 = (x'y')^2 / (x'x' y'y')`` and the p-value is
``I_{1-R^2}(df / 2, 1 / 2)`` with ``df = n - 1 - r - dimreduce``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._blocks import dense_block, row_slices
from ._linalg import pinv_psd
from ._pvalues import association_pvalues

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from numpy.typing import ArrayLike

    Progress = Callable[[Iterable, int, str], Iterable]

#: A residual sum of squares below this fraction of the raw sum of squares is zero.
ZERO_VARIANCE_RTOL = 1e-9
#: A group is estimable in the joint regression when the projector onto the range of
#: the Gram matrix keeps its unit vector up to this tolerance.
ESTIMABLE_TOL = 1e-6


def _no_progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    return iterable


def _expression_blocks(
    expression: ArrayLike, block_cells: int, progress: Progress, desc: str
) -> Iterator[tuple[slice, np.ndarray]]:
    """Row slices of consecutive blocks of cells and the float64 expression of each."""
    blocks = list(row_slices(expression.shape[0], block_cells))
    for rows in progress(blocks, len(blocks), desc):
        yield rows, dense_block(expression[rows])


@dataclass
class AssociationResult:
    """Results of testing ``m`` predictors against ``g`` responses.

    Attributes
    ----------
    pvals, neg_log10_pvals, gamma
        Shape ``(m, g)``: p-value, ``-log10`` p-value and effect size ``gamma``.
    var_x
        Shape ``(m,)``: residual variance (mean square over the cells used) of each
        predictor; 1 when it is zero; NaN for predictors that were not tested.
    var_y
        Shape ``(m, g)``: residual variance of each response in the test of each predictor.
    n_cells, df
        Shape ``(m,)``: number of cells used and residual degrees of freedom of each test.
    tested
        Shape ``(m,)``: False for predictors taking a single value on their cells
        (reported as p = 1, gamma = 0).
    """

    pvals: np.ndarray
    neg_log10_pvals: np.ndarray
    gamma: np.ndarray
    var_x: np.ndarray
    var_y: np.ndarray
    n_cells: np.ndarray
    df: np.ndarray
    tested: np.ndarray


def _check_df(df: np.ndarray, tested: np.ndarray) -> None:
    if (df[tested] < 1).any():
        worst = int(df[tested].min())
        msg = (
            f"too few cells for the degrees of freedom: a test has {worst} residual degrees "
            "of freedom (cells - 1 - covariate rank - dimreduce); at least 1 is needed. Use "
            "more cells, fewer covariates or a smaller `dimreduce`."
        )
        raise ValueError(msg)


def _finish(
    xx: np.ndarray,
    yy: np.ndarray,
    xy: np.ndarray,
    raw_xx: np.ndarray,
    raw_yy: np.ndarray,
    n_cells: np.ndarray,
    df: np.ndarray,
    tested: np.ndarray,
) -> AssociationResult:
    """Test statistics from residual sums of squares ``xx`` (m, 1), ``yy`` and ``xy`` (m, g).

    ``raw_xx`` and ``raw_yy`` are the sums of squares before covariate removal, the scale
    against which a residual counts as zero.
    """
    _check_df(df, tested)
    zero_x = xx <= ZERO_VARIANCE_RTOL * raw_xx
    zero_y = yy <= ZERO_VARIANCE_RTOL * raw_yy
    cells = n_cells[:, None].astype(np.float64)
    xx = np.where(zero_x, cells, xx)
    yy = np.where(zero_y, cells, yy)
    xy = np.where(zero_x | zero_y | ~tested[:, None], 0.0, xy)
    gamma = xy / xx
    one_minus_r2 = 1.0 - gamma * xy / yy
    pvals, neg_log10 = association_pvalues(one_minus_r2, np.maximum(df, 1)[:, None])
    var_x = np.where(tested, xx[:, 0] / n_cells, np.nan)
    var_y = np.where(tested[:, None], yy / cells, np.nan)
    return AssociationResult(pvals, neg_log10, gamma, var_x, var_y, n_cells, df, tested)


def _as_csr(groups: ArrayLike) -> sparse.csr_matrix:
    return sparse.csr_matrix(groups, dtype=np.float64)


def _residualize(
    pinv: np.ndarray, cx: np.ndarray, cy: np.ndarray
) -> np.ndarray:
    """``cx' P cy`` batched over the leading axis of ``pinv`` (k, k) or (m, k, k)."""
    return np.einsum("...ki,...kl,...lj->...ij", cx, pinv, cy, optimize=True)


def case_control(
    groups: ArrayLike,
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = _no_progress,
) -> AssociationResult:
    """Each group indicator against each gene on all cells (METHOD 8, ``single=0``).

    Parameters
    ----------
    groups
        Cells x groups 0/1 matrix (dense or sparse).
    expression
        Cells x genes normalised expression, read one block of cells at a time.
    covariates
        Cells x covariates normalised covariate matrix.
    """
    groups = _as_csr(groups)
    n_cells, n_genes = expression.shape
    n_cov = covariates.shape[1]
    cc = np.zeros((n_cov, n_cov))
    cy = np.zeros((n_cov, n_genes))
    yy = np.zeros(n_genes)
    xy = np.zeros((groups.shape[1], n_genes))
    for rows, y in _expression_blocks(expression, block_cells, progress, "de: accumulating"):
        c = covariates[rows]
        cc += c.T @ c
        cy += (y.T @ c).T
        yy += np.einsum("ij,ij->j", y, y)
        xy += groups[rows].T @ y
    _check_finite(yy)
    cx = np.asarray(groups.T @ covariates).T
    raw_xx = np.asarray(groups.multiply(groups).sum(axis=0)).ravel()
    n_in = np.asarray((groups != 0).sum(axis=0)).ravel()
    tested = (n_in > 0) & (n_in < n_cells)
    pinv, rank = pinv_psd(cc)
    xx = raw_xx - np.einsum("ki,kl,li->i", cx, pinv, cx)
    res_yy = yy - np.einsum("ki,kl,li->i", cy, pinv, cy)
    res_xy = xy - _residualize(pinv, cx, cy)
    m = groups.shape[1]
    cells = np.full(m, n_cells)
    return _finish(
        xx[:, None], np.broadcast_to(res_yy, (m, n_genes)), res_xy, raw_xx[:, None], yy,
        cells, cells - 1 - int(rank) - dimreduce, tested,
    )


def _check_finite(sum_squares: np.ndarray) -> None:
    if not np.isfinite(sum_squares).all():
        msg = (
            "the expression matrix contains NaN or infinite values; association tests need "
            "finite normalised expression (rerun `nsc.pp.normvar`)."
        )
        raise ValueError(msg)


def exclusive_class(groups: sparse.csr_matrix) -> np.ndarray:
    """Per cell: 0 if it carries no group, ``j + 1`` if only group ``j``, -1 if several."""
    carried = sparse.csr_matrix(groups != 0)
    carried.eliminate_zeros()
    count = np.diff(carried.indptr)
    label = np.zeros(groups.shape[0], dtype=np.int64)
    single = count == 1
    label[single] = carried.indices[carried.indptr[:-1][single]] + 1
    label[count > 1] = -1
    return label


def low_moi(
    groups: ArrayLike,
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = _no_progress,
) -> AssociationResult:
    """Low-MOI design (METHOD 8, ``single=1``).

    The test of group ``x`` uses only the cells carrying ``x`` alone or no group at all,
    and removes the covariates on that subset. Sums over cells are accumulated per
    class of cells (no group, exactly group ``j``; cells with several groups are never
    used), so each group's statistics are sums over two classes.
    """
    groups = _as_csr(groups)
    n_genes = expression.shape[1]
    n_groups = groups.shape[1]
    n_cov = covariates.shape[1]
    n_class = n_groups + 1
    label = exclusive_class(groups)
    # With a column of ones appended to the covariates, one product per class of cells
    # gives the Gram matrix, the covariate sums and the class size (``ext_gram``), and
    # the expression-covariate products and expression sums (``ext_cross``).
    ext_gram = np.zeros((n_class, n_cov + 1, n_cov + 1))
    ext_cross = np.zeros((n_class, n_genes, n_cov + 1))
    yy = np.zeros((n_class, n_genes))

    def accumulate(j: int, ys: np.ndarray, cs: np.ndarray) -> None:
        ext_gram[j] += cs.T @ cs
        # einsum: BLAS is slow on these skinny products (few covariates, few cells).
        ext_cross[j] += np.einsum("ik,ig->gk", cs, ys)
        yy[j] += np.einsum("ij,ij->j", ys, ys)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for rows, y in _expression_blocks(expression, block_cells, progress, "de: accumulating"):
            # Sort the block's used cells by class: each class is one contiguous segment,
            # and classes are summed in parallel threads (each writes only its own sums).
            cls = label[rows]
            order = np.argsort(cls, kind="stable")
            order = order[cls[order] >= 0]
            cls, y = cls[order], y[order]
            c = np.column_stack([covariates[rows][order], np.ones(order.size)])
            present, starts = np.unique(cls, return_index=True)
            ends = np.append(starts[1:], cls.size)
            list(pool.map(accumulate, present,
                          [y[lo:hi] for lo, hi in zip(starts, ends, strict=True)],
                          [c[lo:hi] for lo, hi in zip(starts, ends, strict=True)]))
    _check_finite(yy.sum(axis=0))
    cc = ext_gram[:, :n_cov, :n_cov]
    c_sum = ext_gram[:, n_cov, :n_cov]
    class_size = ext_gram[:, n_cov, n_cov]
    cy = np.swapaxes(ext_cross[:, :, :n_cov], 1, 2)
    y_sum = ext_cross[:, :, n_cov]

    # Group j combines the no-group class 0 and its own class j + 1.
    pinv, rank = pinv_psd(cc[0] + cc[1:])
    group_cy = cy[0] + cy[1:]
    group_yy = yy[0] + yy[1:]
    cx = c_sum[1:, :, None]
    xx = class_size[1:] - _residualize(pinv, cx, cx)[:, 0, 0]
    res_yy = group_yy - np.einsum("mkg,mkl,mlg->mg", group_cy, pinv, group_cy, optimize=True)
    res_xy = y_sum[1:] - _residualize(pinv, cx, group_cy)[:, 0, :]
    size = (class_size[0] + class_size[1:]).astype(np.int64)
    tested = (class_size[1:] > 0) & (class_size[0] > 0)
    return _finish(
        xx[:, None], res_yy, res_xy, class_size[1:, None], group_yy,
        size, size - 1 - rank - dimreduce, tested,
    )


def high_moi(
    groups: ArrayLike,
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = _no_progress,
) -> AssociationResult:
    """High-MOI, competition-aware design (METHOD 8, ``single=4``).

    Every other group is a covariate of the test of group ``x``. This equals the t-test
    of the coefficient of ``x`` in ONE multiple regression of each gene on
    ``A = [groups, covariates]``: with ``G = A'A`` (one pseudo-inverse for all groups),
    ``b = G^+ A'y``, ``RSS = y'y - b'A'y`` and ``df = n - rank(A) - dimreduce``, the
    residual sums of group ``x`` after removing all other columns are
    ``x'x' = 1 / G^+_xx``, ``x'y' = b_x x'x'`` and ``y'y' = RSS + b_x^2 x'x'``. A group
    in the span of the other columns (e.g. identical to another group, or collinear with
    the covariates) has zero residual variance: p = 1, gamma = 0. Groups taking a single
    value on all cells are left out of the regression altogether.
    """
    groups = _as_csr(groups)
    n_cells, n_genes = expression.shape
    n_groups = groups.shape[1]
    n_in = np.asarray((groups != 0).sum(axis=0)).ravel()
    tested = (n_in > 0) & (n_in < n_cells)
    active = groups[:, np.flatnonzero(tested)]
    n_active = active.shape[1]
    n_cov = covariates.shape[1]
    cy = np.zeros((n_cov, n_genes))
    xy = np.zeros((n_active, n_genes))
    yy = np.zeros(n_genes)
    for rows, y in _expression_blocks(expression, block_cells, progress, "de: accumulating"):
        cy += (y.T @ covariates[rows]).T
        xy += active[rows].T @ y
        yy += np.einsum("ij,ij->j", y, y)
    _check_finite(yy)
    xc = np.asarray(active.T @ covariates)
    gram = np.block([
        [(active.T @ active).toarray(), xc],
        [xc.T, covariates.T @ covariates],
    ])
    # Equilibrate so that rank decisions do not depend on the scale of the columns.
    diag = np.diag(gram)
    scale = np.divide(1.0, np.sqrt(diag), out=np.zeros_like(diag), where=diag > 0)
    scaled = gram * scale[:, None] * scale[None, :]
    scaled_pinv, rank = pinv_psd(scaled)
    projector_diag = np.einsum("ij,ji->i", scaled_pinv, scaled)[:n_active]
    estimable = projector_diag > 1.0 - ESTIMABLE_TOL
    pinv_diag = np.diag(scaled_pinv)[:n_active] * scale[:n_active] ** 2
    cross = np.vstack([xy, cy])
    coef = (scale[:, None] * (scaled_pinv @ (scale[:, None] * cross)))
    rss = yy - np.einsum("ig,ig->g", coef, cross)
    b = coef[:n_active]

    raw_xx = n_in[tested].astype(np.float64)
    xx = np.where(estimable, 1.0 / np.where(estimable, pinv_diag, 1.0), 0.0)
    xx_full = np.zeros(n_groups)
    xx_full[tested] = xx
    b_full = np.zeros((n_groups, n_genes))
    b_full[tested] = np.where(estimable[:, None], b, 0.0)
    raw_full = np.ones(n_groups)
    raw_full[tested] = raw_xx
    res_xy = b_full * xx_full[:, None]
    res_yy = rss + b_full * res_xy
    cells = np.full(n_groups, n_cells)
    df = np.full(n_groups, n_cells - int(rank) - dimreduce)
    return _finish(xx_full[:, None], res_yy, res_xy, raw_full[:, None], yy, cells, df, tested)


def bh_qvalues(pvals: np.ndarray, axis: int = -1) -> np.ndarray:
    """Benjamini-Hochberg q-values along ``axis`` (NaN entries are ignored)."""
    pvals = np.moveaxis(np.asarray(pvals, dtype=np.float64), axis, -1)
    order = np.argsort(pvals, axis=-1, kind="stable")
    ranked = np.take_along_axis(pvals, order, axis=-1)
    n_valid = (~np.isnan(ranked)).sum(axis=-1, keepdims=True)
    position = np.arange(1, ranked.shape[-1] + 1)
    adjusted = ranked * n_valid / position
    adjusted = np.minimum.accumulate(np.nan_to_num(adjusted, nan=np.inf)[..., ::-1],
                                     axis=-1)[..., ::-1]
    adjusted = np.where(np.isnan(ranked), np.nan, np.minimum(adjusted, 1.0))
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return np.moveaxis(out, -1, axis)
