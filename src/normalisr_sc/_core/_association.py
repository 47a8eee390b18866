"""Association tests of METHOD 8: differential expression in three designs.

Arrays are cells x genes (expression), cells x covariates and cells x groups (0/1,
dense or CSR). Every statistic is computed from sums over cells (Gram products). The
sums involving the expression are accumulated one block of cells at a time by
:func:`~._reduce.accumulate` -- a loop in memory, a dask graph for a dask array -- so
the expression is only ever read block by block; covariates and groups are in memory.

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
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._blocks import dense_block, row_slices
from ._linalg import pinv_gram, pinv_psd
from ._pvalues import association_pvalues
from ._reduce import accumulate, no_progress

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import ArrayLike

    from ._reduce import Progress

    #: ``terms(rows)``: residual sums of the predictors ``rows`` (see :func:`_finish`).
    Terms = Callable[[slice], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]

#: A residual sum of squares below this fraction of the raw sum of squares is zero.
ZERO_VARIANCE_RTOL = 1e-9
#: A group is estimable in the joint regression when the projector onto the range of
#: the Gram matrix keeps its unit vector up to this tolerance.
ESTIMABLE_TOL = 1e-6
#: Float64 elements of each temporary of one step: products with the group indicators
#: and the test statistics are computed over ranges of genes or groups this large, so
#: that no temporary reaches the size of a groups x genes result.
CHUNK_ELEMENTS = 1 << 20


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


def _check_finite(sum_squares: np.ndarray) -> None:
    if not np.isfinite(sum_squares).all():
        msg = (
            "the expression matrix contains NaN or infinite values; association tests need "
            "finite normalised expression (rerun `nsc.pp.normvar`)."
        )
        raise ValueError(msg)


def _step(n_columns: int) -> int:
    """Rows per step over a matrix of ``n_columns`` columns (``CHUNK_ELEMENTS`` a step)."""
    return max(1, CHUNK_ELEMENTS // max(1, n_columns))


def _finish(
    terms: Terms,
    n_predictors: int,
    n_genes: int,
    n_cells: np.ndarray,
    df: np.ndarray,
    tested: np.ndarray,
) -> AssociationResult:
    """Test statistics of every predictor and gene, a range of predictors at a time.

    ``terms(rows)`` gives, for the predictors ``rows``, the residual sums of squares
    ``xx`` (r, 1) and their raw sums of squares before covariate removal ``raw_xx``
    (r, 1), the same of the genes ``yy`` and ``raw_yy`` (broadcastable to (r, g)), and
    the residual sums of products ``xy`` (r, g). A residual sum of squares counts as
    zero against its raw one.
    """
    _check_df(df, tested)
    shape = (n_predictors, n_genes)
    pvals, neg_log10, gamma, var_y = (np.empty(shape) for _ in range(4))
    var_x = np.empty(n_predictors)

    def finish_rows(rows: slice) -> None:
        xx, raw_xx, yy, raw_yy, xy = terms(rows)
        zero_x = xx <= ZERO_VARIANCE_RTOL * raw_xx
        zero_y = yy <= ZERO_VARIANCE_RTOL * raw_yy
        cells = n_cells[rows, None].astype(np.float64)
        xx = np.where(zero_x, cells, xx)
        yy = np.where(zero_y, cells, yy)
        xy = np.where(zero_x | zero_y | ~tested[rows, None], 0.0, xy)
        gamma[rows] = xy / xx
        one_minus_r2 = 1.0 - gamma[rows] * xy / yy
        pvals[rows], neg_log10[rows] = association_pvalues(
            one_minus_r2, np.maximum(df[rows], 1)[:, None])
        var_x[rows] = np.where(tested[rows], xx[:, 0] / n_cells[rows], np.nan)
        var_y[rows] = np.where(tested[rows, None], yy / cells, np.nan)

    # Ranges of predictors in parallel threads (the p-values dominate; numpy and scipy
    # release the GIL), each writing its own rows of the results. All threads together
    # hold about ``CHUNK_ELEMENTS`` elements per temporary, and every thread gets work.
    threads = os.cpu_count() or 1
    step = max(1, min(_step(n_genes) // threads, -(-n_predictors // threads)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(finish_rows, row_slices(n_predictors, step)))
    return AssociationResult(pvals, neg_log10, gamma, var_x, var_y, n_cells, df, tested)


def _as_csr(groups: ArrayLike) -> sparse.csr_matrix:
    return sparse.csr_matrix(groups, dtype=np.float64)


def _residualize(
    pinv: np.ndarray, cx: np.ndarray, cy: np.ndarray
) -> np.ndarray:
    """``cx' P cy`` batched over the leading axis of ``pinv`` (k, k) or (m, k, k)."""
    return np.einsum("...ki,...kl,...lj->...ij", cx, pinv, cy, optimize=True)


def _add_group_products(out: np.ndarray, groups: sparse.csr_matrix, y: np.ndarray) -> None:
    """``out += groups' y``, a range of genes at a time (no groups x genes temporary)."""
    by_cell = groups.T
    for genes in row_slices(y.shape[1], _step(groups.shape[1])):
        out[:, genes] += by_cell @ y[:, genes]


class _ProductSums:
    """``A'y`` for the columns of ``A = [groups, covariates]``, and ``y'y``, per gene."""

    def __init__(self, n_groups: int, n_cov: int, n_genes: int) -> None:
        self.cross = np.zeros((n_groups + n_cov, n_genes))
        self.yy = np.zeros(n_genes)

    def add(self, rows: slice, block: np.ndarray, groups: sparse.csr_matrix,
            covariates: np.ndarray) -> None:
        y = dense_block(block)
        n_groups = groups.shape[1]
        _add_group_products(self.cross[:n_groups], groups, y)
        # Genes first: OpenBLAS threads ``C'Y`` (few rows, long inner dimension) badly.
        self.cross[n_groups:] += (y.T @ covariates).T
        self.yy += np.einsum("ij,ij->j", y, y)

    def merge(self, other: _ProductSums) -> _ProductSums:
        self.cross += other.cross
        self.yy += other.yy
        return self


def _product_sums(
    groups: sparse.csr_matrix,
    expression: ArrayLike,
    covariates: np.ndarray,
    block_cells: int,
    progress: Progress,
) -> _ProductSums:
    new_sums = partial(_ProductSums, groups.shape[1], covariates.shape[1], expression.shape[1])
    sums = accumulate(new_sums, expression, (groups, covariates), block_cells=block_cells,
                      progress=progress, desc="de: accumulating")
    _check_finite(sums.yy)
    return sums


def case_control(
    groups: ArrayLike,
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
) -> AssociationResult:
    """Each group indicator against each gene on all cells (METHOD 8, ``single=0``).

    Parameters
    ----------
    groups
        Cells x groups 0/1 matrix (dense or sparse).
    expression
        Cells x genes normalised expression (in memory, backed or dask), read one block
        of cells at a time.
    covariates
        Cells x covariates normalised covariate matrix.
    """
    groups = _as_csr(groups)
    n_cells, n_genes = expression.shape
    n_groups = groups.shape[1]
    sums = _product_sums(groups, expression, covariates, block_cells, progress)
    pinv, rank = pinv_psd(covariates.T @ covariates)
    cx = np.asarray(groups.T @ covariates).T
    cy = sums.cross[n_groups:]
    fitted = pinv @ cy
    raw_xx = np.asarray(groups.multiply(groups).sum(axis=0)).ravel()
    xx = raw_xx - np.einsum("ki,kl,li->i", cx, pinv, cx)
    res_yy = sums.yy - np.einsum("kg,kg->g", cy, fitted)

    def terms(rows: slice) -> tuple[np.ndarray, ...]:
        res_xy = sums.cross[rows] - cx[:, rows].T @ fitted
        return xx[rows, None], raw_xx[rows, None], res_yy, sums.yy, res_xy

    n_in = np.asarray((groups != 0).sum(axis=0)).ravel()
    tested = (n_in > 0) & (n_in < n_cells)
    cells = np.full(n_groups, n_cells)
    return _finish(terms, n_groups, n_genes, cells, cells - 1 - int(rank) - dimreduce, tested)


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


def _with_ones(covariates: np.ndarray) -> np.ndarray:
    return np.column_stack([covariates, np.ones(covariates.shape[0])])


class _ClassSums:
    """Per class of cells (:func:`exclusive_class`): ``[C, 1]'y`` and ``y'y`` per gene.

    The sums of class ``j`` are rows ``j * (k + 1)`` to ``(j + 1) * (k + 1)`` of
    ``cross`` (``k`` covariates and the ones) and row ``j`` of ``yy``.
    """

    def __init__(self, n_class: int, n_cov: int, n_genes: int) -> None:
        self.cross = np.zeros((n_class * (n_cov + 1), n_genes))
        self.yy = np.zeros((n_class, n_genes))

    def add(self, rows: slice, block: np.ndarray, label: np.ndarray,
            covariates: np.ndarray) -> None:
        # Sparse products whose rows are the cells: a cell's covariates and 1 (or just 1)
        # sit in the columns of its class, none for cells with several groups. No BLAS:
        # thousands of tiny per-class products thread badly on a busy machine.
        y = dense_block(block)
        n_cells = y.shape[0]
        used = label >= 0
        n_ext = covariates.shape[1] + 1
        starts = np.concatenate([[0], np.cumsum(used)])
        columns = (label[used, None] * n_ext + np.arange(n_ext)).ravel()
        weights = sparse.csr_matrix(
            (_with_ones(covariates[used]).ravel(), columns, starts * n_ext),
            shape=(n_cells, self.cross.shape[0]))
        _add_group_products(self.cross, weights, y)
        members = sparse.csr_matrix((np.ones(starts[-1]), label[used], starts),
                                    shape=(n_cells, self.yy.shape[0]))
        for cells in row_slices(n_cells, _step(y.shape[1])):
            _add_group_products(self.yy, members[cells], np.square(y[cells]))

    def merge(self, other: _ClassSums) -> _ClassSums:
        self.cross += other.cross
        self.yy += other.yy
        return self


def low_moi(
    groups: ArrayLike,
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
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
    sums = accumulate(partial(_ClassSums, n_class, n_cov, n_genes), expression,
                      (label, covariates), block_cells=block_cells, progress=progress,
                      desc="de: accumulating")
    _check_finite(sums.yy.sum(axis=0))
    # With a column of ones appended to the covariates, the Gram matrix of each class
    # holds the covariate sums and the class size too, and the expression-covariate
    # products the expression sums.
    used = np.flatnonzero(label >= 0)
    ext = _with_ones(covariates[used])
    members = sparse.csr_matrix((np.ones(used.size), (label[used], np.arange(used.size))),
                                shape=(n_class, used.size))
    ext_gram = (members @ (ext[:, :, None] * ext[:, None, :]).reshape(used.size, -1)
                ).reshape(n_class, n_cov + 1, n_cov + 1)
    cc = ext_gram[:, :n_cov, :n_cov]
    c_sum = ext_gram[:, n_cov, :n_cov]
    class_size = ext_gram[:, n_cov, n_cov]
    cross = sums.cross.reshape(n_class, n_cov + 1, n_genes)
    cy = cross[:, :n_cov]
    y_sum = cross[:, n_cov]

    # Group j combines the no-group class 0 and its own class j + 1.
    pinv, rank = pinv_psd(cc[0] + cc[1:])
    cx = c_sum[1:, :, None]
    raw_xx = class_size[1:]
    xx = raw_xx - _residualize(pinv, cx, cx)[:, 0, 0]

    def terms(rows: slice) -> tuple[np.ndarray, ...]:
        group_cy = cy[0] + cy[1:][rows]
        group_yy = sums.yy[0] + sums.yy[1:][rows]
        res_yy = group_yy - np.einsum("mkg,mkl,mlg->mg", group_cy, pinv[rows], group_cy,
                                      optimize=True)
        res_xy = y_sum[1:][rows] - _residualize(pinv[rows], cx[rows], group_cy)[:, 0, :]
        return xx[rows, None], raw_xx[rows, None], res_yy, group_yy, res_xy

    size = (class_size[0] + class_size[1:]).astype(np.int64)
    tested = (class_size[1:] > 0) & (class_size[0] > 0)
    return _finish(terms, n_groups, n_genes, size, size - 1 - rank - dimreduce, tested)


def high_moi(
    groups: ArrayLike,
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
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

    Working memory besides the results: ``A'y`` and ``b`` (columns x genes each) and a
    few columns x columns matrices for the pseudo-inverse.
    """
    groups = _as_csr(groups)
    n_cells, n_genes = expression.shape
    n_groups = groups.shape[1]
    n_in = np.asarray((groups != 0).sum(axis=0)).ravel()
    tested = (n_in > 0) & (n_in < n_cells)
    in_model = np.flatnonzero(tested)
    active = groups[:, in_model]
    n_active = in_model.size
    sums = _product_sums(active, expression, covariates, block_cells, progress)
    yy = sums.yy
    xc = np.asarray(active.T @ covariates)
    gram = np.block([
        [(active.T @ active).toarray(), xc],
        [xc.T, covariates.T @ covariates],
    ])
    # Equilibrate so that rank decisions do not depend on the scale of the columns.
    diag = np.diag(gram).copy()
    scale = np.divide(1.0, np.sqrt(diag), out=np.zeros_like(diag), where=diag > 0)
    gram *= scale[:, None]
    gram *= scale[None, :]
    scaled_pinv, rank = pinv_gram(gram)
    projector_diag = np.einsum("ij,ji->i", scaled_pinv[:n_active], gram[:, :n_active])
    del gram
    estimable = projector_diag > 1.0 - ESTIMABLE_TOL
    pinv_diag = np.diag(scaled_pinv)[:n_active] * scale[:n_active] ** 2

    # With the equilibrated ``S = s G s`` and ``z = s A'y``: b = s S^+ z and
    # b'A'y = (S^+ z)'z, computed a range of rows of S^+ at a time.
    z = sums.cross
    z *= scale[:, None]
    del sums
    rss = yy.copy()
    coef = np.zeros((n_groups, n_genes))
    for rows in row_slices(z.shape[0], _step(n_genes)):
        part = scaled_pinv[rows] @ z
        rss -= np.einsum("ig,ig->g", part, z[rows])
        own = slice(rows.start, min(rows.stop, n_active))
        if own.start < own.stop:
            coef[in_model[own]] = part[: own.stop - own.start] * scale[own, None]
    del z, scaled_pinv
    coef[in_model[~estimable]] = 0.0
    xx = np.zeros(n_groups)
    xx[in_model] = np.where(estimable, 1.0 / np.where(estimable, pinv_diag, 1.0), 0.0)
    raw_xx = np.ones(n_groups)
    raw_xx[tested] = n_in[tested]

    def terms(rows: slice) -> tuple[np.ndarray, ...]:
        b = coef[rows]
        res_xy = b * xx[rows, None]
        return xx[rows, None], raw_xx[rows, None], rss + b * res_xy, yy, res_xy

    cells = np.full(n_groups, n_cells)
    df = np.full(n_groups, n_cells - rank - dimreduce)
    return _finish(terms, n_groups, n_genes, cells, df, tested)


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
