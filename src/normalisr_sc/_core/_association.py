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
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._blocks import float_block, row_slices
from ._checks import ZERO_VARIANCE_RTOL, check_df, check_finite_sums, raise_non_finite
from ._linalg import (
    add_class_chunks,
    add_class_nonzero,
    add_class_sums,
    add_products,
    class_order,
    pinv_gram,
    pinv_psd,
)
from ._pvalues import association_pvalues
from ._reduce import accumulate, limit_threads, no_progress

if TYPE_CHECKING:
    from .._types import Block, RowSliceable, SparseMatrix

    #: Cells x groups 0/1 indicators as the kernels take them.
    Indicators = np.ndarray | SparseMatrix
    from ._reduce import Progress

    #: Residual sums of a range of predictors (see :func:`_finish`).
    TermArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    #: ``terms(rows)``: residual sums of the predictors ``rows`` (see :func:`_finish`).
    Terms = Callable[[slice], TermArrays]

#: A group is estimable in the joint regression when the projector onto the range of
#: the Gram matrix keeps its unit vector up to this tolerance.
ESTIMABLE_TOL = 1e-6
#: Float64 elements of each temporary of one step: products with the group indicators
#: and the test statistics are computed over ranges of genes or groups this large, so
#: that no temporary reaches the size of a groups x genes result.
CHUNK_ELEMENTS = 1 << 20
#: Float64 elements of each temporary of one thread's range of predictors when the test
#: statistics are filled in: small enough to stay in the cache.
FILL_ELEMENTS = 1 << 17


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
    n_nonzero, n_nonzero_base
        :func:`class_design` with ``counts``: shape ``(m, g)`` int32, the cells of each
        predictor's class with a nonzero count of each gene, and shape ``(g,)``, those
        of the baseline class; else None.
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
    n_nonzero: np.ndarray | None = None
    n_nonzero_base: np.ndarray | None = None


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


class _Results:
    """The test statistics of ``n_predictors`` predictors and ``n_genes`` genes, filled by ranges.

    Arrays are allocated once, at their final size; :meth:`fill` writes the rows of a
    range of predictors from their residual sums (no temporary of the results' size).
    """

    def __init__(
        self,
        n_predictors: int,
        n_genes: int,
        n_cells: np.ndarray,
        df: np.ndarray,
        tested: np.ndarray,
    ) -> None:
        check_df(df, tested)
        shape = (n_predictors, n_genes)
        self.pvals, self.neg_log10, self.gamma, self.var_y = (np.empty(shape) for _ in range(4))
        self.var_x = np.empty(n_predictors)
        self.n_cells, self.df, self.tested = n_cells, df, tested

    def fill_rows(self, terms: Terms, rows: slice) -> None:
        """Write the statistics of the predictors ``rows`` (see :func:`_finish`)."""
        n_cells, tested = self.n_cells, self.tested
        xx, raw_xx, yy, raw_yy, xy = terms(rows)
        zero_x = xx <= ZERO_VARIANCE_RTOL * raw_xx
        zero_y = yy <= ZERO_VARIANCE_RTOL * raw_yy
        cells = n_cells[rows, None].astype(np.float64)
        xx = np.where(zero_x, cells, xx)
        yy = np.where(zero_y, cells, yy)
        xy = np.where(zero_x | zero_y | ~tested[rows, None], 0.0, xy)
        gamma = self.gamma[rows]
        np.divide(xy, xx, out=gamma)
        # R^2 itself, not a rounded 1 - R^2: exact where R^2 is small (most tests)
        r2 = gamma * xy / yy
        association_pvalues(
            None,
            np.maximum(self.df[rows], 1)[:, None],
            r2=r2,
            n_jobs=1,  # fill_rows runs in the threads of fill
            out=(self.pvals[rows], self.neg_log10[rows]),
        )
        self.var_x[rows] = np.where(tested[rows], xx[:, 0] / n_cells[rows], np.nan)
        self.var_y[rows] = np.where(tested[rows, None], yy / cells, np.nan)

    def fill(
        self, terms: Terms, start: int, stop: int, n_jobs: int, pool: ThreadPoolExecutor
    ) -> None:
        """Write the rows ``start:stop``, ranges of them in parallel threads of ``pool``.

        The p-values dominate; numpy and scipy release the GIL. All threads together
        hold about ``CHUNK_ELEMENTS`` elements per temporary, and every thread gets work.
        """
        n_genes = self.pvals.shape[1]
        count = stop - start
        step = max(1, min(FILL_ELEMENTS // max(1, n_genes), -(-count // n_jobs)))
        ranges = [slice(start + r.start, start + r.stop) for r in row_slices(count, step)]
        list(pool.map(partial(self.fill_rows, terms), ranges))

    def result(self) -> AssociationResult:
        return AssociationResult(
            self.pvals,
            self.neg_log10,
            self.gamma,
            self.var_x,
            self.var_y,
            self.n_cells,
            self.df,
            self.tested,
        )


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
    results = _Results(n_predictors, n_genes, n_cells, df, tested)
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        results.fill(terms, 0, n_predictors, n_jobs, pool)
    return results.result()


def _as_csr(groups: Indicators) -> sparse.csr_matrix:
    return sparse.csr_matrix(groups, dtype=np.float64)


def _used_cells(cells: np.ndarray | None, n_cells: int) -> np.ndarray:
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
        if effect and self.raw_cross is not None and self.lsq is not None:
            raw_covariates, log_cpm = effect
            values = float_block(log_cpm)
            _add_cross(self.raw_cross, self.lsq, groups, raw_covariates, values, used, self.n_jobs)

    def merge(self, other: _ProductSums) -> _ProductSums:
        self.cross += other.cross
        self.yy += other.yy
        if self.raw_cross is not None and self.lsq is not None:
            assert other.raw_cross is not None  # same kind of accumulator
            assert other.lsq is not None
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

    expression: RowSliceable
    covariates: np.ndarray


def _product_sums(
    groups: sparse.csr_matrix,
    expression: RowSliceable,
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
    row_data: tuple[RowSliceable, ...] = (_masked(used, groups), covariates, used)
    if effect is not None:
        row_data += (effect.covariates,)
    beside: tuple[RowSliceable, ...] = () if effect is None else (effect.expression,)
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
    if effect is not None and sums.lsq is not None:
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
    groups: Indicators,
    expression: RowSliceable,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
    cells: np.ndarray | None = None,
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
    matrix = _as_csr(groups)
    n_genes = expression.shape[1]
    n_groups = matrix.shape[1]
    used = _used_cells(cells, expression.shape[0])
    if effect is not None:
        effect = Effect(effect.expression, _with_intercept(effect.covariates))
    sums = _product_sums(
        matrix, expression, covariates, used, block_cells, progress, effect, n_jobs
    )
    indicators, covariates = matrix[used], covariates[used]
    n_cells = int(used.sum())
    pinv, rank = pinv_psd(covariates.T @ covariates)
    cx = np.asarray(indicators.T @ covariates).T
    cy = sums.cross[n_groups:]
    fitted = pinv @ cy
    raw_xx = np.asarray(indicators.multiply(indicators).sum(axis=0)).ravel()
    xx = raw_xx - np.einsum("ki,kl,li->i", cx, pinv, cx)
    res_yy = sums.yy - np.einsum("kg,kg->g", cy, fitted)

    def terms(rows: slice) -> TermArrays:
        res_xy = sums.cross[rows] - cx[:, rows].T @ fitted
        return xx[rows, None], raw_xx[rows, None], res_yy, sums.yy, res_xy

    n_in = _carried(indicators)
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
        assert sums.raw_cross is not None  # read with the fold change's inputs
        result.logfc = _coefficients_on_all(
            indicators, effect.covariates[used], sums.raw_cross, tested
        )
    return result


def _carried(groups: sparse.csr_matrix) -> np.ndarray:
    """Return the number of cells with a nonzero value in each column."""
    stored = groups.copy()
    stored.eliminate_zeros()
    return np.bincount(stored.indices, minlength=groups.shape[1])


def exclusive_class(groups: sparse.csr_matrix) -> np.ndarray:
    """Per cell: 0 if it carries no group, ``j + 1`` if only group ``j``, -1 if several."""
    carried = groups.copy()
    carried.eliminate_zeros()
    count = np.diff(carried.indptr)
    label = np.zeros(groups.shape[0], dtype=np.int64)
    single = count == 1
    label[single] = carried.indices[carried.indptr[:-1][single]] + 1
    label[count > 1] = -1
    return label


def _with_ones(covariates: np.ndarray) -> np.ndarray:
    return np.column_stack([covariates, np.ones(covariates.shape[0])])


def _sum_weights(covariates: np.ndarray) -> tuple[bool, int, float]:
    """How the class sums of a matrix are read off its covariate products.

    Returns whether a column of ones must be appended to the covariates, the column of
    the (extended) covariates whose products hold the sums, and its constant value: a
    covariate constant on all cells (an intercept) gives the sums without a column of
    ones, one row fewer per class.
    """
    constant = np.flatnonzero(
        (covariates == covariates[:1]).all(axis=0) & (covariates[:1] != 0).ravel()
    )
    if constant.size:
        return False, int(constant[0]), float(covariates[0, constant[0]])
    return True, covariates.shape[1], 1.0


class _PoolHolder:
    """A thread pool passed to accumulators, left behind when they are pickled.

    On a ``dask.distributed`` cluster the accumulators travel to the workers, which
    start their own threads (``pool`` is None there).
    """

    def __init__(self, pool: ThreadPoolExecutor | None = None) -> None:
        self.pool = pool

    def __reduce__(self) -> tuple[type, tuple]:
        return (_PoolHolder, ())


#: Float64 elements of one chunk of the per-class sums: they are held in chunks of
#: consecutive classes, and each chunk is freed as soon as its groups are finished.
CLASS_CHUNK_ELEMENTS = 1 << 25


class _ClassChunk:
    """The sums of the classes ``first`` to ``first + size`` (see :class:`_ClassSums`)."""

    def __init__(
        self, first: int, size: int, k1: int, n_genes: int, raw_k1: int, counts: bool
    ) -> None:
        self.first, self.size = first, size
        self.cross = np.zeros((size * k1, n_genes))
        self.yy = np.zeros((size, n_genes))
        self.raw_cross = np.zeros((size * raw_k1, n_genes)) if raw_k1 else None
        self.nonzero = np.zeros((size, n_genes), dtype=np.int32) if counts else None


class _ClassSums:
    """Per class of cells (:func:`exclusive_class`): ``[C, 1]'y`` and ``y'y`` per gene.

    The sums of class ``j`` are rows ``j * k1`` to ``(j + 1) * k1`` of the ``cross`` of
    its chunk (``k`` covariates, and the ones unless a covariate is constant) and a row
    of its ``yy``; with the fold change's inputs, ``raw_cross`` holds ``[C_raw, 1]'l``
    of the log CPM ``l`` alike; with the raw counts, ``nonzero`` the number of cells of
    the class with a nonzero count of each gene (pair QC). Class 0 (the baseline) is a
    chunk of its own; the others come in chunks of about ``CLASS_CHUNK_ELEMENTS``, freed
    one at a time once used. The squares of the cells of no class (-1) go to ``none_yy``,
    and those of ``l`` to ``lsq`` (one row): they show NaN and infinity anywhere in the
    matrices. One
    accumulator per pass: adds go into it in place.
    """

    shared = True

    def __init__(
        self,
        n_class: int,
        n_cov: int,
        n_genes: int,
        ones: bool,
        n_raw: int = 0,
        raw_ones: bool = False,
        counts: bool = False,
        n_jobs: int = 1,
        pool: _PoolHolder | None = None,
    ) -> None:
        self.n_class, self.ones, self.raw_ones = n_class, ones, raw_ones
        k1 = n_cov + ones
        raw_k1 = n_raw + raw_ones if n_raw else 0
        size = max(1, CLASS_CHUNK_ELEMENTS // max(1, (k1 + raw_k1 + 2) * n_genes))
        edges = [0, *range(1, n_class, size), n_class] if n_class > 1 else [0, n_class]
        self.chunks = [
            _ClassChunk(lo, hi - lo, k1, n_genes, raw_k1, counts) for lo, hi in pairwise(edges)
        ]
        self.none_yy = np.zeros((1, n_genes))
        self.lsq = np.zeros((1, n_genes))
        self.with_effect, self.with_counts = bool(n_raw), counts
        self.negative = False
        self.n_jobs, self.pool = n_jobs, pool

    def add(
        self,
        rows: slice,
        block: Block,
        label: np.ndarray,
        covariates: np.ndarray,
        *more: Block,
    ) -> None:
        # ``more``: the raw covariates (with the fold change), then the blocks read
        # beside: the log CPM (with the fold change) and the raw counts (pair QC).
        n_class = self.n_class
        classes = np.where(label >= 0, label, n_class)
        order, starts = class_order(classes, n_class + 1)
        none = (np.zeros((0, self.none_yy.shape[1])), self.none_yy, None, n_class)
        n_jobs, pool = self.n_jobs, None if self.pool is None else self.pool.pool
        ext = _with_ones(covariates) if self.ones else covariates
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, int]]
        parts = [(c.cross, c.yy, None, c.first) for c in self.chunks]
        y = float_block(block)
        # The log CPM's pass (with the fold change) goes to the threads with this one.
        beside = []
        if self.with_effect:
            raw_covariates, log_cpm = np.asarray(more[0]), more[1]
            raw_ext = _with_ones(raw_covariates) if self.raw_ones else raw_covariates
            # The squares of the log CPM, only to show NaN and infinity: one row for all.
            lsq = self.lsq
            raw_parts = [
                (c.raw_cross, lsq, np.zeros(c.size, np.int64), c.first)
                for c in self.chunks
                if c.raw_cross is not None
            ]
            raw_none = (none[0], lsq, None, n_class)
            beside.append(([*raw_parts, raw_none], raw_ext, float_block(log_cpm)))
        add_class_chunks(
            [*parts, none], order, starts, ext, y, n_jobs=n_jobs, pool=pool, more=beside
        )
        if self.with_counts:
            self._add_nonzero(order, starts, more[-1])

    def _add_nonzero(self, order: np.ndarray, starts: np.ndarray, counts: Block) -> None:
        """Add the cells with a nonzero count per class (the pair QC)."""
        if isinstance(counts, sparse.csr_matrix):
            pattern, values = counts, np.asarray(counts.data)
        else:
            values = np.asarray(counts)
            pattern = sparse.csr_matrix(values)
        if values.size and values.min() < 0:
            self.negative = True
        chunks = [(c.nonzero, c.first) for c in self.chunks if c.nonzero is not None]
        add_class_nonzero(chunks, order, starts, pattern)

    def merge(self, other: _ClassSums) -> _ClassSums:
        for mine, theirs in zip(self.chunks, other.chunks, strict=True):
            for name in ("cross", "yy", "raw_cross", "nonzero"):
                if getattr(mine, name) is not None:
                    getattr(mine, name)[...] += getattr(theirs, name)
        self.none_yy += other.none_yy
        self.lsq += other.lsq
        self.negative |= other.negative
        return self

    def finite(self, raw: bool = False) -> bool:
        """Whether all sums of squares (of the log CPM with ``raw``) are finite."""
        if raw:
            return bool(np.isfinite(self.lsq).all())
        return bool(np.isfinite(self.none_yy).all()) and all(
            np.isfinite(c.yy).all() for c in self.chunks
        )


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
    # The products of each cell's pairs of columns, a column at a time (one broadcast
    # over all cells x k x k takes several times longer for so few columns).
    k1 = n_cov + 1
    products = np.empty((used.size, k1, k1))
    for column in range(k1):
        np.multiply(ext[:, column, None], ext, out=products[:, column])
    ext_gram = (members @ products.reshape(used.size, -1)).reshape(n_class, k1, k1)
    return ext_gram[:, :n_cov, :n_cov], ext_gram[:, n_cov, :n_cov], ext_gram[:, n_cov, n_cov]


class _ClassCoefficients:
    """Coefficient of class ``j`` (against class 0, with the covariates) from class sums.

    The model of group ``j`` on classes 0 and ``j``: ``[x, C, 1]`` (the ones as a
    covariate; left out when a covariate is constant, which spans the same columns).
    """

    def __init__(
        self, label: np.ndarray, covariates: np.ndarray, tested: np.ndarray, ones: bool
    ) -> None:
        n_class = tested.size + 1
        ext = _with_ones(covariates) if ones else covariates
        cc, c_sum, class_size = _class_grams(label, ext, n_class)
        self.pinv, _ = pinv_psd(cc[0] + cc[1:])
        self.cx = c_sum[1:, :, None]
        raw_xx = class_size[1:]
        xx = raw_xx - _residualize(self.pinv, self.cx, self.cx)[:, 0, 0]
        self.ok = tested & (xx > ZERO_VARIANCE_RTOL * np.maximum(raw_xx, 1.0))
        self.xx = np.where(self.ok, xx, 1.0)
        self.k1 = ext.shape[1]

    def fill(
        self,
        out: np.ndarray,
        base: np.ndarray,
        cross: np.ndarray,
        first: int,
        sum_row: int,
        sum_value: float,
    ) -> None:
        """Write the coefficients of the groups of the classes of ``cross`` into ``out``.

        ``base`` and ``cross``: the raw products of class 0 and of the classes ``first``
        on ((classes x k1) x genes); row ``sum_row`` of each class's products holds
        ``sum_value`` times the class sums.
        """
        n_genes = cross.shape[1]
        cross = cross.reshape(-1, self.k1, n_genes)
        step = _step(n_genes * self.k1)
        for rows in row_slices(cross.shape[0], step):
            groups = slice(first - 1 + rows.start, first - 1 + rows.stop)
            group_cy = base + cross[rows]
            xy = cross[rows, sum_row] / sum_value
            xy -= _residualize(self.pinv[groups], self.cx[groups], group_cy)[:, 0, :]
            ok = self.ok[groups, None]
            out[groups] = np.where(ok, xy / self.xx[groups, None], 0.0)


@_with_threads
def class_design(
    label: np.ndarray,
    n_groups: int,
    expression: RowSliceable,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
    effect: Effect | None = None,
    counts: RowSliceable | None = None,
    n_jobs: int = 1,
) -> AssociationResult:
    """Each class of cells against class 0, on the cells of the two classes only.

    ``label`` gives each cell's class: 0 (the baseline), ``j + 1`` (group ``j``) or -1
    (not used by any test). The test of group ``j`` uses the cells of classes 0 and
    ``j + 1`` and removes the covariates on that subset. Sums over cells are
    accumulated per class, so each group's statistics are sums over two classes.

    With ``counts`` (cells x genes raw counts, read in the same pass: both dask arrays
    or neither), ``result.n_nonzero`` and ``result.n_nonzero_base`` count the cells
    with a nonzero count per class (the pair QC). Memory: the per-class sums, ``k + 2``
    float64 per class and gene (``k`` covariates, the sums unless a covariate is
    constant, the squares), ``k_raw + 1`` more with the fold change and an int32 with
    the counts, held in chunks of classes that are freed as the results (allocated
    once, at their final size) are filled.
    """
    label = np.asarray(label, dtype=np.int64)
    if label.shape != (expression.shape[0],) or label.max(initial=0) > n_groups:
        msg = f"class labels must be one per cell in [-1, {n_groups}]."
        raise ValueError(msg)
    n_genes = expression.shape[1]
    n_cov = covariates.shape[1]
    n_class = n_groups + 1
    ones, sum_row, sum_value = _sum_weights(covariates)
    n_raw, raw_ones, raw_row, raw_value = 0, False, 0, 1.0
    row_data: tuple[RowSliceable, ...] = (label, covariates)
    beside: tuple[RowSliceable, ...] = ()
    if effect is not None:
        n_raw = effect.covariates.shape[1]
        raw_ones, raw_row, raw_value = _sum_weights(effect.covariates)
        row_data += (effect.covariates,)
        beside += (effect.expression,)
    if counts is not None:
        beside += (counts,)
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        sums = accumulate(
            partial(
                _ClassSums,
                n_class,
                n_cov,
                n_genes,
                ones,
                n_raw,
                raw_ones,
                counts is not None,
                n_jobs,
                _PoolHolder(pool),
            ),
            expression,
            row_data,
            block_cells=block_cells,
            progress=progress,
            desc="de: accumulating",
            beside=beside,
            n_jobs=n_jobs,
        )
        if not sums.finite():
            raise_non_finite(matrix=expression)
        if effect is not None and not sums.finite(raw=True):
            raise_non_finite("log CPM", effect.expression)
        if sums.negative:
            msg = (
                "the counts layer holds negative values, so they are not raw counts; the "
                "pair QC counts the cells with a nonzero count of each gene: name the "
                "layer of raw counts."
            )
            raise ValueError(msg)
        return _class_results(
            sums,
            label,
            covariates,
            effect,
            dimreduce,
            (sum_row, sum_value),
            (raw_row, raw_value),
            n_jobs,
            pool,
        )


def _class_results(
    sums: _ClassSums,
    label: np.ndarray,
    covariates: np.ndarray,
    effect: Effect | None,
    dimreduce: int,
    sum_at: tuple[int, float],
    raw_sum_at: tuple[int, float],
    n_jobs: int,
    pool: ThreadPoolExecutor,
) -> AssociationResult:
    """Finish :func:`class_design` a chunk of classes at a time, freeing each chunk."""
    n_class = sums.n_class
    n_groups = n_class - 1
    n_cov = covariates.shape[1]
    n_genes = sums.none_yy.shape[1]
    cc, c_sum, class_size = _class_grams(label, covariates, n_class)
    # Group j combines the baseline class 0 and its own class j + 1.
    pinv, rank = pinv_psd(cc[0] + cc[1:])
    cx = c_sum[1:, :, None]
    raw_xx = class_size[1:]
    xx = raw_xx - _residualize(pinv, cx, cx)[:, 0, 0]
    size = (class_size[0] + class_size[1:]).astype(np.int64)
    tested = (class_size[1:] > 0) & (class_size[0] > 0)
    results = _Results(n_groups, n_genes, size, size - 1 - rank - dimreduce, tested)
    coefficients = None
    logfc = None
    if effect is not None:
        coefficients = _ClassCoefficients(label, effect.covariates, tested, sums.raw_ones)
        logfc = np.empty((n_groups, n_genes))
    n_nonzero = np.empty((n_groups, n_genes), dtype=np.int32) if sums.with_counts else None
    base = sums.chunks.pop(0)
    k1 = base.cross.shape[0]
    base_cy = base.cross[:n_cov]
    base_yy = base.yy[0]
    sum_row, sum_value = sum_at

    def chunk_terms(chunk: _ClassChunk) -> Terms:
        """Return the residual sums of the groups of the classes of ``chunk``."""
        cross = chunk.cross.reshape(chunk.size, k1, n_genes)
        offset = chunk.first - 1

        def terms(rows: slice) -> TermArrays:
            own = slice(rows.start - offset, rows.stop - offset)
            group_cy = base_cy + cross[own, :n_cov]
            group_yy = base_yy + chunk.yy[own]
            res_yy = group_yy - np.einsum(
                "mkg,mkl,mlg->mg", group_cy, pinv[rows], group_cy, optimize=True
            )
            res_xy = cross[own, sum_row] / sum_value
            res_xy -= _residualize(pinv[rows], cx[rows], group_cy)[:, 0, :]
            return xx[rows, None], raw_xx[rows, None], res_yy, group_yy, res_xy

        return terms

    while sums.chunks:
        chunk = sums.chunks.pop(0)
        offset = chunk.first - 1
        # The fold changes of the chunk's groups in one thread of the pool while the
        # others start on the test statistics (they write other arrays).
        fold = None
        if (
            coefficients is not None
            and logfc is not None
            and chunk.raw_cross is not None
            and base.raw_cross is not None
        ):
            raw_k1 = coefficients.k1
            fold = pool.submit(
                coefficients.fill,
                logfc,
                base.raw_cross[:raw_k1],
                chunk.raw_cross,
                chunk.first,
                *raw_sum_at,
            )
        results.fill(chunk_terms(chunk), offset, offset + chunk.size, n_jobs, pool)
        if fold is not None:
            fold.result()
        if n_nonzero is not None and chunk.nonzero is not None:
            n_nonzero[offset : offset + chunk.size] = chunk.nonzero
        del chunk  # its sums are freed
    result = results.result()
    result.logfc = logfc
    if n_nonzero is not None and base.nonzero is not None:
        result.n_nonzero, result.n_nonzero_base = n_nonzero, base.nonzero[0]
    return result


@_with_threads
def low_moi(
    groups: Indicators,
    expression: RowSliceable,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
    cells: np.ndarray | None = None,
    effect: Effect | None = None,
    n_jobs: int = 1,
) -> AssociationResult:
    """Low-MOI design (METHOD 8, ``single=1``).

    The test of group ``x`` uses only the cells carrying ``x`` alone or no group at all,
    and removes the covariates on that subset (:func:`class_design` with the classes of
    :func:`exclusive_class`; cells with several groups are never used, nor the cells
    outside the mask ``cells``).
    """
    matrix = _as_csr(groups)
    label = exclusive_class(matrix)
    label[~_used_cells(cells, matrix.shape[0])] = -1
    return class_design(
        label,
        matrix.shape[1],
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
    groups: Indicators,
    expression: RowSliceable,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
    cells: np.ndarray | None = None,
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
    matrix = _as_csr(groups)
    n_genes = expression.shape[1]
    n_groups = matrix.shape[1]
    used = _used_cells(cells, expression.shape[0])
    n_cells = int(used.sum())
    n_in = _carried(matrix[used])
    tested = (n_in > 0) & (n_in < n_cells)
    in_model = np.flatnonzero(tested)
    active = matrix[:, in_model]
    if effect is not None:
        effect = Effect(effect.expression, _with_intercept(effect.covariates))
    sums = _product_sums(
        active, expression, covariates, used, block_cells, progress, effect, n_jobs
    )
    yy = sums.yy
    active_used = active[used]
    fit, estimable, pinv_diag, rss, rank = _joint_fit(active_used, covariates[used], sums.cross, yy)
    assert rss is not None  # with ``yy``
    coef = np.zeros((n_groups, n_genes))
    coef[in_model] = fit
    del fit
    logfc = None
    if effect is not None:
        logfc = np.zeros((n_groups, n_genes))
        assert sums.raw_cross is not None  # read with the fold change's inputs
        logfc[in_model] = _joint_fit(active_used, effect.covariates[used], sums.raw_cross)[0]
    del sums
    xx = np.zeros(n_groups)
    xx[in_model] = np.where(estimable, 1.0 / np.where(estimable, pinv_diag, 1.0), 0.0)
    raw_xx = np.ones(n_groups)
    raw_xx[tested] = n_in[tested]

    def terms(rows: slice) -> TermArrays:
        b = coef[rows]
        res_xy = b * xx[rows, None]
        return xx[rows, None], raw_xx[rows, None], rss + b * res_xy, yy, res_xy

    cells_used = np.full(n_groups, n_cells)
    df = np.full(n_groups, n_cells - rank - dimreduce)
    result = _finish(terms, n_groups, n_genes, cells_used, df, tested, n_jobs)
    result.logfc = logfc
    return result
