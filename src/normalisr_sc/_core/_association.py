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

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial, wraps
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._blocks import float_block, row_slices
from ._checks import ZERO_VARIANCE_RTOL, check_df, check_finite_sums
from ._linalg import add_class_sums, add_products, pinv_gram, pinv_psd
from ._pvalues import association_pvalues
from ._reduce import accumulate, limit_threads, no_progress

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ._reduce import Progress

    #: ``terms(rows)``: residual sums of the predictors ``rows`` (see :func:`_finish`).
    Terms = Callable[[slice], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]

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
    logfc
        Shape ``(m, g)`` when the fold change's inputs were given (:class:`Effect`): the
        predictor's coefficient in the same design fitted to the log CPM with the
        un-normalised covariates (0 where it is not estimable); else None.
    """

    pvals: np.ndarray
    neg_log10_pvals: np.ndarray
    gamma: np.ndarray
    var_x: np.ndarray
    var_y: np.ndarray
    n_cells: np.ndarray
    df: np.ndarray
    tested: np.ndarray
    logfc: np.ndarray | None = None


def _with_threads(kernel: Callable) -> Callable:
    """Run ``kernel`` with ``n_jobs`` threads (default ``nsc.settings.n_jobs``).

    Its own thread pools get ``n_jobs`` threads and the BLAS and OpenMP pools are
    limited to as many while it runs (:func:`~._reduce.limit_threads`).
    """

    @wraps(kernel)
    def run(*args, n_jobs: int | None = None, **kwargs) -> AssociationResult:
        with limit_threads(n_jobs) as threads:
            return kernel(*args, n_jobs=threads, **kwargs)

    return run


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
    n_jobs: int = 1,
) -> AssociationResult:
    """Test statistics of every predictor and gene, a range of predictors at a time.

    ``terms(rows)`` gives, for the predictors ``rows``, the residual sums of squares
    ``xx`` (r, 1) and their raw sums of squares before covariate removal ``raw_xx``
    (r, 1), the same of the genes ``yy`` and ``raw_yy`` (broadcastable to (r, g)), and
    the residual sums of products ``xy`` (r, g). A residual sum of squares counts as
    zero against its raw one.
    """
    check_df(df, tested)
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
            one_minus_r2, np.maximum(df[rows], 1)[:, None]
        )
        var_x[rows] = np.where(tested[rows], xx[:, 0] / n_cells[rows], np.nan)
        var_y[rows] = np.where(tested[rows, None], yy / cells, np.nan)

    # Ranges of predictors in parallel threads (the p-values dominate; numpy and scipy
    # release the GIL), each writing its own rows of the results. All threads together
    # hold about ``CHUNK_ELEMENTS`` elements per temporary, and every thread gets work.
    threads = n_jobs
    step = max(1, min(_step(n_genes) // threads, -(-n_predictors // threads)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(finish_rows, row_slices(n_predictors, step)))
    return AssociationResult(pvals, neg_log10, gamma, var_x, var_y, n_cells, df, tested)


def _as_csr(groups: ArrayLike) -> sparse.csr_matrix:
    return sparse.csr_matrix(groups, dtype=np.float64)


def _used_cells(cells: ArrayLike | None, n_cells: int) -> np.ndarray:
    if cells is None:
        return np.ones(n_cells, dtype=bool)
    used = np.asarray(cells, dtype=bool)
    if used.shape != (n_cells,):
        msg = f"the cell mask has shape {used.shape}, expected ({n_cells},)."
        raise ValueError(msg)
    return used


def _with_intercept(covariates: np.ndarray) -> np.ndarray:
    """Return the covariates with a column of ones, unless one of them already is constant."""
    constant = (covariates == covariates[:1]).all(axis=0) & (covariates[:1] != 0).ravel()
    return covariates if constant.any() else _with_ones(covariates)


def _residualize(pinv: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """``cx' P cy`` batched over the leading axis of ``pinv`` (k, k) or (m, k, k)."""
    return np.einsum("...ki,...kl,...lj->...ij", cx, pinv, cy, optimize=True)


def _masked(used: np.ndarray, groups: sparse.csr_matrix) -> sparse.csr_matrix:
    """Return the groups with the rows of unused cells zeroed (``groups`` itself if all used)."""
    if used.all():
        return groups
    return sparse.csr_matrix(groups.multiply(used.astype(np.float64)[:, None]))


def _add_cross(
    out: np.ndarray,
    squares: np.ndarray,
    groups: sparse.csr_matrix,
    covariates: np.ndarray,
    y: np.ndarray,
    used: np.ndarray,
    n_jobs: int,
) -> None:
    """``out += [groups, covariates]' y`` over the used cells and their squares, in place.

    The rows of unused cells are zero in ``groups`` (:func:`_masked`). ``squares[0]``
    receives the squares of the used cells, ``squares[1]`` those of the others (kept out
    of the statistics; their NaN or infinity still shows, see
    :func:`~._checks.check_finite_sums`).
    """
    n_groups = groups.shape[1]
    add_products(out[:n_groups], groups, y, n_jobs=n_jobs)
    # The covariates as one class of cells (the used ones), the others a class of
    # squares only: C'y and the squares in one read of the block.
    add_class_sums(
        out[n_groups:],
        squares,
        (~used).astype(np.int64),
        covariates,
        y,
        square_row=np.arange(2),
        n_jobs=n_jobs,
    )


class _ProductSums:
    """``A'y`` for the columns of ``A = [groups, covariates]``, and ``y'y``, per gene.

    With the fold change's inputs, also ``[groups, raw covariates]'l`` of the log CPM
    ``l``, read in the same pass. Only the cells of the mask ``used`` are summed (the
    group rows of the others are zero); ``yy[1]`` and ``lsq`` hold the squares of the
    others and of ``l``, which show NaN and infinity anywhere. One accumulator per
    pass: adds go into it in place.
    """

    shared = True

    def __init__(
        self, n_groups: int, n_cov: int, n_genes: int, n_raw: int = 0, n_jobs: int = 1
    ) -> None:
        self.cross = np.zeros((n_groups + n_cov, n_genes))
        self.yy = np.zeros((2, n_genes))
        self.raw_cross = np.zeros((n_groups + n_raw, n_genes)) if n_raw else None
        self.lsq = np.zeros((2, n_genes)) if n_raw else None
        self.n_jobs = n_jobs

    def add(
        self,
        rows: slice,
        block: np.ndarray,
        groups: sparse.csr_matrix,
        covariates: np.ndarray,
        used: np.ndarray,
        *effect: np.ndarray,
    ) -> None:
        y = float_block(block)
        _add_cross(self.cross, self.yy, groups, covariates, y, used, self.n_jobs)
        if effect:
            raw_covariates, log_cpm = effect
            log_cpm = float_block(log_cpm)
            _add_cross(self.raw_cross, self.lsq, groups, raw_covariates, log_cpm, used, self.n_jobs)

    def merge(self, other: _ProductSums) -> _ProductSums:
        self.cross += other.cross
        self.yy += other.yy
        if self.raw_cross is not None:
            self.raw_cross += other.raw_cross
            self.lsq += other.lsq
        return self


@dataclass
class Effect:
    """Inputs of the fold change ``logfc`` (METHOD 8, effect size for users).

    Attributes
    ----------
    expression
        Cells x genes Bayesian log CPM, read block by block beside the normalised
        expression (both dask arrays or neither).
    covariates
        Cells x covariates un-normalised covariates; an intercept is added when none
        of them is constant.
    """

    expression: ArrayLike
    covariates: np.ndarray


def _product_sums(
    groups: sparse.csr_matrix,
    expression: ArrayLike,
    covariates: np.ndarray,
    used: np.ndarray,
    block_cells: int,
    progress: Progress,
    effect: Effect | None = None,
    n_jobs: int = 1,
) -> _ProductSums:
    n_raw = 0 if effect is None else effect.covariates.shape[1]
    new_sums = partial(
        _ProductSums, groups.shape[1], covariates.shape[1], expression.shape[1], n_raw, n_jobs
    )
    row_data = (_masked(used, groups), covariates, used)
    if effect is not None:
        row_data += (effect.covariates,)
    beside = () if effect is None else (effect.expression,)
    sums = accumulate(
        new_sums,
        expression,
        row_data,
        block_cells=block_cells,
        progress=progress,
        desc="de: accumulating",
        beside=beside,
        n_jobs=n_jobs,
    )
    check_finite_sums(sums.yy, matrix=expression)
    if sums.raw_cross is not None:
        check_finite_sums(sums.lsq, "log CPM", effect.expression)
    sums.yy = sums.yy[0]
    return sums


def _coefficients_on_all(
    groups: sparse.csr_matrix, covariates: np.ndarray, cross: np.ndarray, tested: np.ndarray
) -> np.ndarray:
    """Coefficient of each group, tested alone with the covariates, from ``[groups, C]'y``."""
    n_groups = groups.shape[1]
    pinv, _ = pinv_psd(covariates.T @ covariates)
    cx = np.asarray(groups.T @ covariates).T
    fitted = pinv @ cross[n_groups:]
    raw_xx = np.asarray(groups.multiply(groups).sum(axis=0)).ravel()
    xx = raw_xx - np.einsum("ki,kl,li->i", cx, pinv, cx)
    ok = tested & (xx > ZERO_VARIANCE_RTOL * raw_xx)
    out = np.zeros((n_groups, cross.shape[1]))
    for rows in row_slices(n_groups, _step(cross.shape[1])):
        xy = cross[rows] - cx[:, rows].T @ fitted
        out[rows] = np.where(ok[rows, None], xy / np.where(ok[rows], xx[rows], 1.0)[:, None], 0.0)
    return out


@_with_threads
def case_control(
    groups: ArrayLike,
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
    cells: ArrayLike | None = None,
    effect: Effect | None = None,
    n_jobs: int = 1,
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
    cells
        Boolean mask of the cells used (default all); the others are left out.
    effect
        Inputs of the fold change; ``result.logfc`` is then the group coefficient of the
        same regression fitted to the log CPM with the un-normalised covariates.
    """
    groups = _as_csr(groups)
    n_genes = expression.shape[1]
    n_groups = groups.shape[1]
    used = _used_cells(cells, expression.shape[0])
    if effect is not None:
        effect = Effect(effect.expression, _with_intercept(effect.covariates))
    sums = _product_sums(
        groups, expression, covariates, used, block_cells, progress, effect, n_jobs
    )
    groups, covariates = groups[used], covariates[used]
    n_cells = int(used.sum())
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
    cells_used = np.full(n_groups, n_cells)
    result = _finish(
        terms,
        n_groups,
        n_genes,
        cells_used,
        cells_used - 1 - int(rank) - dimreduce,
        tested,
        n_jobs,
    )
    if effect is not None:
        result.logfc = _coefficients_on_all(groups, effect.covariates[used], sums.raw_cross, tested)
    return result


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
    ``cross`` (``k`` covariates and the ones) and row ``j`` of ``yy``; with the fold
    change's inputs, ``raw_cross`` holds ``[C_raw, 1]'l`` of the log CPM ``l`` alike.
    The squares of the cells of no class (-1) go to the last row of ``yy`` and those of
    ``l`` to ``lsq``: they show NaN and infinity anywhere in the matrices. One
    accumulator per pass: adds go into it in place.
    """

    shared = True

    def __init__(
        self, n_class: int, n_cov: int, n_genes: int, n_raw: int = 0, n_jobs: int = 1
    ) -> None:
        self.cross = np.zeros((n_class * (n_cov + 1), n_genes))
        self.yy = np.zeros((n_class + 1, n_genes))
        self.raw_cross = np.zeros((n_class * (n_raw + 1), n_genes)) if n_raw else None
        self.lsq = np.zeros((1, n_genes)) if n_raw else None
        self.n_jobs = n_jobs

    def add(
        self,
        rows: slice,
        block: np.ndarray,
        label: np.ndarray,
        covariates: np.ndarray,
        *effect: np.ndarray,
    ) -> None:
        # In place, per class: the sums of a class's cells read through an index into
        # the block (no copy), a tile of genes at a time (``add_class_sums``). Cells of
        # no class (-1) form one more class that only adds squares.
        y = float_block(block)
        n_class = self.yy.shape[0] - 1
        classes = np.where(label >= 0, label, n_class)
        add_class_sums(
            self.cross,
            self.yy,
            classes,
            _with_ones(covariates),
            y,
            square_row=np.arange(n_class + 1),
            n_jobs=self.n_jobs,
        )
        if effect:
            raw_covariates, log_cpm = effect
            add_class_sums(
                self.raw_cross,
                self.lsq,
                classes,
                _with_ones(raw_covariates),
                float_block(log_cpm),
                square_row=np.zeros(n_class + 1, dtype=np.int64),
                n_jobs=self.n_jobs,
            )

    def merge(self, other: _ClassSums) -> _ClassSums:
        self.cross += other.cross
        self.yy += other.yy
        if self.raw_cross is not None:
            self.raw_cross += other.raw_cross
            self.lsq += other.lsq
        return self


def _class_grams(
    label: np.ndarray, covariates: np.ndarray, n_class: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: ``C'C`` (n_class, k, k), the covariate sums ``1'C`` and the size."""
    # With a column of ones appended to the covariates, the Gram matrix of each class
    # holds the covariate sums and the class size too.
    n_cov = covariates.shape[1]
    used = np.flatnonzero(label >= 0)
    ext = _with_ones(covariates[used])
    members = sparse.csr_matrix(
        (np.ones(used.size), (label[used], np.arange(used.size))), shape=(n_class, used.size)
    )
    ext_gram = (members @ (ext[:, :, None] * ext[:, None, :]).reshape(used.size, -1)).reshape(
        n_class, n_cov + 1, n_cov + 1
    )
    return ext_gram[:, :n_cov, :n_cov], ext_gram[:, n_cov, :n_cov], ext_gram[:, n_cov, n_cov]


def _class_coefficients(
    label: np.ndarray, covariates: np.ndarray, raw_cross: np.ndarray, tested: np.ndarray
) -> np.ndarray:
    """Coefficient of class ``j`` (against class 0, with the covariates) from class sums."""
    n_class = tested.size + 1
    n_cov = covariates.shape[1]
    n_genes = raw_cross.shape[1]
    cc, c_sum, class_size = _class_grams(label, covariates, n_class)
    ones = np.ones((n_class, 1, 1))
    # The model of group j on classes 0 and j: [x, C, 1] (the ones as a covariate).
    ext_cc = np.block(
        [[cc, c_sum[:, :, None]], [c_sum[:, None, :], class_size[:, None, None] * ones]]
    )
    pinv, _ = pinv_psd(ext_cc[0] + ext_cc[1:])
    cx = np.concatenate([c_sum[1:], class_size[1:, None]], axis=1)[:, :, None]
    raw_xx = class_size[1:]
    xx = raw_xx - _residualize(pinv, cx, cx)[:, 0, 0]
    ok = tested & (xx > ZERO_VARIANCE_RTOL * np.maximum(raw_xx, 1.0))
    cross = raw_cross.reshape(n_class, n_cov + 1, n_genes)
    out = np.zeros((tested.size, n_genes))
    for rows in row_slices(tested.size, _step(n_genes * (n_cov + 1))):
        group_cy = cross[0] + cross[1:][rows]
        xy = cross[1:][rows, n_cov] - _residualize(pinv[rows], cx[rows], group_cy)[:, 0, :]
        out[rows] = np.where(ok[rows, None], xy / np.where(ok[rows], xx[rows], 1.0)[:, None], 0.0)
    return out


@_with_threads
def class_design(
    label: np.ndarray,
    n_groups: int,
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
    effect: Effect | None = None,
    n_jobs: int = 1,
) -> AssociationResult:
    """Each class of cells against class 0, on the cells of the two classes only.

    ``label`` gives each cell's class: 0 (the baseline), ``j + 1`` (group ``j``) or -1
    (not used by any test). The test of group ``j`` uses the cells of classes 0 and
    ``j + 1`` and removes the covariates on that subset. Sums over cells are
    accumulated per class, so each group's statistics are sums over two classes.
    """
    label = np.asarray(label, dtype=np.int64)
    if label.shape != (expression.shape[0],) or label.max(initial=0) > n_groups:
        msg = f"class labels must be one per cell in [-1, {n_groups}]."
        raise ValueError(msg)
    n_genes = expression.shape[1]
    n_cov = covariates.shape[1]
    n_class = n_groups + 1
    n_raw = 0 if effect is None else effect.covariates.shape[1]
    row_data = (label, covariates) + (() if effect is None else (effect.covariates,))
    sums = accumulate(
        partial(_ClassSums, n_class, n_cov, n_genes, n_raw, n_jobs),
        expression,
        row_data,
        block_cells=block_cells,
        progress=progress,
        desc="de: accumulating",
        beside=() if effect is None else (effect.expression,),
        n_jobs=n_jobs,
    )
    check_finite_sums(sums.yy, matrix=expression)
    if sums.raw_cross is not None:
        check_finite_sums(sums.lsq, "log CPM", effect.expression)
    sums.yy = sums.yy[:n_class]
    # The expression-covariate products with the ones hold the expression sums.
    cc, c_sum, class_size = _class_grams(label, covariates, n_class)
    cross = sums.cross.reshape(n_class, n_cov + 1, n_genes)
    cy = cross[:, :n_cov]
    y_sum = cross[:, n_cov]

    # Group j combines the baseline class 0 and its own class j + 1.
    pinv, rank = pinv_psd(cc[0] + cc[1:])
    cx = c_sum[1:, :, None]
    raw_xx = class_size[1:]
    xx = raw_xx - _residualize(pinv, cx, cx)[:, 0, 0]

    def terms(rows: slice) -> tuple[np.ndarray, ...]:
        group_cy = cy[0] + cy[1:][rows]
        group_yy = sums.yy[0] + sums.yy[1:][rows]
        res_yy = group_yy - np.einsum(
            "mkg,mkl,mlg->mg", group_cy, pinv[rows], group_cy, optimize=True
        )
        res_xy = y_sum[1:][rows] - _residualize(pinv[rows], cx[rows], group_cy)[:, 0, :]
        return xx[rows, None], raw_xx[rows, None], res_yy, group_yy, res_xy

    size = (class_size[0] + class_size[1:]).astype(np.int64)
    tested = (class_size[1:] > 0) & (class_size[0] > 0)
    result = _finish(terms, n_groups, n_genes, size, size - 1 - rank - dimreduce, tested, n_jobs)
    if effect is not None:
        result.logfc = _class_coefficients(label, effect.covariates, sums.raw_cross, tested)
    return result


@_with_threads
def low_moi(
    groups: ArrayLike,
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
    cells: ArrayLike | None = None,
    effect: Effect | None = None,
    n_jobs: int = 1,
) -> AssociationResult:
    """Low-MOI design (METHOD 8, ``single=1``).

    The test of group ``x`` uses only the cells carrying ``x`` alone or no group at all,
    and removes the covariates on that subset (:func:`class_design` with the classes of
    :func:`exclusive_class`; cells with several groups are never used, nor the cells
    outside the mask ``cells``).
    """
    groups = _as_csr(groups)
    label = exclusive_class(groups)
    label[~_used_cells(cells, groups.shape[0])] = -1
    return class_design(
        label,
        groups.shape[1],
        expression,
        covariates,
        dimreduce=dimreduce,
        block_cells=block_cells,
        progress=progress,
        effect=effect,
        n_jobs=n_jobs,
    )


def _joint_fit(
    active: sparse.csr_matrix,
    covariates: np.ndarray,
    cross: np.ndarray,
    yy: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Return the multiple regression of each gene on ``A = [active groups, covariates]``.

    From the sums ``A'y`` (``cross``, scaled in place) returns the groups' coefficients
    (zero for groups not estimable), which groups are estimable, the groups' diagonal of
    ``(A'A)^+``, the residual sums of squares when ``yy`` is given, and ``rank(A)``.
    """
    n_active = active.shape[1]
    n_genes = cross.shape[1]
    xc = np.asarray(active.T @ covariates)
    gram = np.block(
        [
            [(active.T @ active).toarray(), xc],
            [xc.T, covariates.T @ covariates],
        ]
    )
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
    z = cross
    z *= scale[:, None]
    rss = None if yy is None else yy.copy()
    coef = np.zeros((n_active, n_genes))
    for rows in row_slices(z.shape[0] if yy is not None else n_active, _step(n_genes)):
        part = scaled_pinv[rows] @ z
        if rss is not None:
            rss -= np.einsum("ig,ig->g", part, z[rows])
        own = slice(rows.start, min(rows.stop, n_active))
        if own.start < own.stop:
            coef[own] = part[: own.stop - own.start] * scale[own, None]
    coef[~estimable] = 0.0
    return coef, estimable, pinv_diag, rss, int(rank)


@_with_threads
def high_moi(
    groups: ArrayLike,
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
    cells: ArrayLike | None = None,
    effect: Effect | None = None,
    n_jobs: int = 1,
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
    value on all cells are left out of the regression altogether. With ``effect``,
    ``result.logfc`` holds the coefficients of the same joint regression fitted to the
    log CPM with the un-normalised covariates. Only the cells of the mask ``cells``
    are used.

    Working memory besides the results: ``A'y`` and ``b`` (columns x genes each) and a
    few columns x columns matrices for the pseudo-inverse.
    """
    groups = _as_csr(groups)
    n_genes = expression.shape[1]
    n_groups = groups.shape[1]
    used = _used_cells(cells, expression.shape[0])
    n_cells = int(used.sum())
    n_in = np.asarray((groups[used] != 0).sum(axis=0)).ravel()
    tested = (n_in > 0) & (n_in < n_cells)
    in_model = np.flatnonzero(tested)
    active = groups[:, in_model]
    if effect is not None:
        effect = Effect(effect.expression, _with_intercept(effect.covariates))
    sums = _product_sums(
        active, expression, covariates, used, block_cells, progress, effect, n_jobs
    )
    yy = sums.yy
    active_used = active[used]
    fit, estimable, pinv_diag, rss, rank = _joint_fit(active_used, covariates[used], sums.cross, yy)
    coef = np.zeros((n_groups, n_genes))
    coef[in_model] = fit
    del fit
    logfc = None
    if effect is not None:
        logfc = np.zeros((n_groups, n_genes))
        logfc[in_model] = _joint_fit(active_used, effect.covariates[used], sums.raw_cross)[0]
    del sums
    xx = np.zeros(n_groups)
    xx[in_model] = np.where(estimable, 1.0 / np.where(estimable, pinv_diag, 1.0), 0.0)
    raw_xx = np.ones(n_groups)
    raw_xx[tested] = n_in[tested]

    def terms(rows: slice) -> tuple[np.ndarray, ...]:
        b = coef[rows]
        res_xy = b * xx[rows, None]
        return xx[rows, None], raw_xx[rows, None], rss + b * res_xy, yy, res_xy

    cells_used = np.full(n_groups, n_cells)
    df = np.full(n_groups, n_cells - rank - dimreduce)
    result = _finish(terms, n_groups, n_genes, cells_used, df, tested, n_jobs)
    result.logfc = logfc
    return result
