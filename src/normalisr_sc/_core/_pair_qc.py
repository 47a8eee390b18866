"""Per-pair effective sample size of the association tests (issue 13, section 3).

A (group, gene) pair whose gene is detected in almost none of the cells carrying the
group, or of the cells it is compared with, cannot be tested reliably. The number of
cells with a nonzero count of every gene in every set of cells is ONE sparse product,
``indicators' @ (counts != 0)`` (sets x genes), of the cells x sets 0/1 indicator
matrix with the nonzero pattern of the raw counts, accumulated one block of cells at a
time by :func:`~._reduce.accumulate` (a loop in memory or on disk, a dask graph for a
dask array). The low-MOI design counts them per class of cells in the pass of its own
kernel instead (:func:`~._association.class_design` with ``counts``).

Also here, shared by every layer: the q-values of a family of pairs (the pairs passing
QC, optionally restricted to chosen pairs), the first genes of each group in ranking
order (:func:`top_order`) and the reading of a table of chosen pairs.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .._types import is_sparse
from ._blocks import materialize
from ._moments import run_parts
from ._pvalues import bh_qvalues
from ._reduce import accumulate, no_progress, thread_count

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._types import Block, RowSliceable, SparseMatrix
    from ._reduce import Progress

#: Column names of a table of pairs: ours first, then SCEPTRE's (``grna_group``,
#: ``response_id``, as in Papalexi's ``uns['pc_pairs']``).
PAIR_COLUMNS = (("group", "gene"), ("grna_group", "response_id"))
#: Names listed in an error message.
LISTED = 10
#: What a ``(group, gene)`` pair of a list of pairs may be.
_PAIR_TYPES = (tuple, list, np.ndarray)


def _pattern(block: Block, dtype: type) -> sparse.csr_matrix:
    """Return the nonzero pattern of a block: CSR ones (stored zeros count 0)."""
    if isinstance(block, sparse.csr_matrix):
        # Around the block's own index arrays, without the constructor's O(nnz) checks
        # (a canonical block from ``materialize`` or ``row_block``).
        pattern = sparse.csr_matrix(block.shape, dtype=dtype)
        pattern.data = (block.data != 0).astype(dtype)
        pattern.indices, pattern.indptr = block.indices, block.indptr
        return pattern
    return sparse.csr_matrix(np.asarray(block) != 0, dtype=dtype)


#: Float32 sums of ones are exact up to this many cells per block.
EXACT_FLOAT32 = 1 << 24
#: Sets x genes elements up to which a block's product is added as a dense array.
DENSE_ADD = 1 << 22


class _NonzeroSums:
    """Per set of cells and gene: the number of cells with a nonzero count.

    ``negative`` records whether any block held a negative value (not counts).
    """

    def __init__(self, n_sets: int, n_genes: int, total: bool = False) -> None:
        self.counts = np.zeros((n_sets + total, n_genes), dtype=np.int64)
        self.total = total
        self.negative = False

    def add(
        self, rows: slice, block: Block, indicators: sparse.csr_matrix, *cells: np.ndarray
    ) -> None:
        values = block.data if isinstance(block, sparse.csr_matrix) else np.asarray(block)
        if values.size and values.min() < 0:
            self.negative = True
        # Float32 products (faster than integer ones in scipy) are exact counts here.
        dtype = np.float32 if block.shape[0] < EXACT_FLOAT32 else np.float64
        pattern = _pattern(block, dtype)
        # Sets x cells as CSR: a CSC left factor would convert the (large) pattern to CSC.
        by_set = sparse.csr_matrix(indicators.T, dtype=dtype)
        product = by_set @ pattern
        n_sets = by_set.shape[0]
        if n_sets * pattern.shape[1] <= DENSE_ADD:
            self.counts[:n_sets] += np.rint(product.toarray()).astype(np.int64)
        else:
            # A canonical sparse product holds each (set, gene) once: no repeated index.
            product = product.tocoo()
            self.counts[product.row, product.col] += np.rint(product.data).astype(np.int64)
        if self.total:
            # The row of the set ``cells``: a count of the pattern's column indices.
            mask = np.asarray(cells[0], dtype=bool)
            kept = pattern if mask.all() else pattern[mask]
            self.counts[-1] += np.bincount(kept.indices[kept.data != 0], minlength=pattern.shape[1])

    def merge(self, other: _NonzeroSums) -> _NonzeroSums:
        self.counts += other.counts
        self.negative |= other.negative
        return self


def nonzero_counts(
    indicators: np.ndarray | SparseMatrix,
    counts: RowSliceable,
    *,
    block_cells: int,
    progress: Progress = no_progress,
    what: str = "the counts",
    cells: np.ndarray | None = None,
) -> np.ndarray:
    """Count the cells with a nonzero count of each gene in each set of cells.

    Parameters
    ----------
    indicators
        Cells x sets 0/1 matrix (dense or sparse): which cells belong to each set.
    counts
        Cells x genes raw counts (numpy, scipy sparse, h5py/backed or dask), read one
        block of ``block_cells`` cells at a time.
    block_cells
        Cells per block.
    progress
        Progress display (see :mod:`normalisr_sc._progress`).
    what
        Name of ``counts`` in the error raised when it holds negative values.
    cells
        Boolean mask of one more set of cells (e.g. all cells of a test), counted as a
        last row of the result: the product with one more indicator column, computed
        by a cheaper count.

    Returns
    -------
    Sets x genes int64 array: ``[indicators, cells]' @ (counts != 0)``.
    """
    sets = sparse.csr_matrix(indicators)
    n_cells, n_genes = counts.shape[0], counts.shape[1]
    if sets.shape[0] != n_cells:
        msg = (
            f"the indicators cover {sets.shape[0]} cells and the counts "
            f"{n_cells}; they must be the same cells."
        )
        raise ValueError(msg)
    if sets.nnz and not np.isin(sets.data, (0, 1)).all():
        msg = "the set indicators must be 0/1."
        raise ValueError(msg)
    extra: tuple[np.ndarray, ...] = ()
    if cells is not None:
        mask = np.asarray(cells, dtype=bool)
        if mask.shape != (n_cells,):
            msg = f"the cell mask has shape {mask.shape}, expected ({n_cells},)."
            raise ValueError(msg)
        extra = (mask,)
    sums = accumulate(
        partial(_NonzeroSums, sets.shape[1], n_genes, cells is not None),
        counts,
        (sets, *extra),
        block_cells=block_cells,
        progress=progress,
        desc="de: pair QC",
    )
    if sums.negative:
        msg = (
            f"{what} hold negative values, so they are not raw counts; the pair QC counts "
            "the cells with a nonzero count of each gene: name the layer of raw counts."
        )
        raise ValueError(msg)
    return sums.counts


def dense_nonzero_counts(
    indicators: np.ndarray | SparseMatrix, counts: RowSliceable | np.ndarray
) -> np.ndarray:
    """:func:`nonzero_counts` in one dense product (a reference for small data)."""
    block = materialize(counts)
    dense = block.toarray() if isinstance(block, sparse.csr_matrix) else np.asarray(block)
    groups = sparse.csr_matrix(indicators).toarray() if is_sparse(indicators) else indicators
    groups = np.asarray(groups)
    return (groups.T.astype(np.int64) @ (dense != 0).astype(np.int64)).astype(np.int64)


def qc_pass(n_group: np.ndarray, n_control: np.ndarray, min_nonzero: int) -> np.ndarray:
    """Pairs with at least ``min_nonzero`` expressing cells among both sets of cells."""
    return (np.asarray(n_group) >= min_nonzero) & (np.asarray(n_control) >= min_nonzero)


#: Elements of the p-values handled at once by :func:`family_qvalues` (each block's
#: temporaries: a few arrays of this many elements).
QVALUE_BLOCK = 1 << 22


def _bh_rows(pvals, family, out, lo, hi):  # pragma: no cover - compiled by numba
    """Write the Benjamini-Hochberg q-values of the members of each row ``lo:hi``.

    ``out`` holds NaN (left for the others). The members of row ``r`` are its entries
    where ``family[r]`` (every entry when ``family`` has no columns) and the p-value is
    not NaN. Their q-values are those of :func:`~._pvalues.bh_qvalues` bit for bit: the
    same products and quotients ``p * m / position``, the minimum from the end, at most
    1; the order of tied p-values does not change them.
    """
    n = pvals.shape[1]
    everyone = family.shape[1] == 0
    where = np.empty(n, dtype=np.int64)
    values = np.empty(n)
    for r in range(lo, hi):
        m = 0
        for j in range(n):
            if everyone or family[r, j]:
                value = pvals[r, j]
                if not np.isnan(value):
                    where[m] = j
                    values[m] = value
                    m += 1
        if m == 0:
            continue
        order = np.argsort(values[:m])
        running = np.inf
        for q in range(m - 1, -1, -1):
            k = order[q]
            adjusted = values[k] * m / (q + 1)
            if adjusted < running:
                running = adjusted
            out[r, where[k]] = running if running < 1.0 else 1.0


_BH_KERNEL: list = []
#: Rows per task of the q-value kernel's threads.
BH_TASK_ROWS = 256


def _bh_kernel():
    if not _BH_KERNEL:
        import numba

        _BH_KERNEL.append(numba.njit(nogil=True, cache=True, boundscheck=False)(_bh_rows))
    return _BH_KERNEL[0]


#: Largest fraction of the pairs in the family for which the compiled kernel (which sorts
#: the members only, but sorts about 4 times slower than numpy) is used.
SPARSE_FAMILY = 0.2


def _dense_family_qvalues(
    pvals: np.ndarray, family: np.ndarray | None, axis: int, out: np.ndarray, n_jobs: int = 1
) -> np.ndarray:
    """:func:`family_qvalues` of a 2-D array by numpy, a block of families at a time.

    The blocks go to ``n_jobs`` threads (numpy's sorts release the GIL), each block
    writing its own families: the q-values do not depend on how they are cut.
    """
    axis = axis % 2
    other = 1 - axis
    n_families = pvals.shape[other]
    step = max(1, QVALUE_BLOCK // max(1, pvals.shape[axis]))
    if n_jobs > 1:
        step = min(step, max(1, -(-n_families // n_jobs)))

    def adjust(families: slice) -> None:
        index: list[slice] = [slice(None), slice(None)]
        index[other] = families
        part = tuple(index)
        values = pvals[part] if family is None else np.where(family[part], pvals[part], np.nan)
        out[part] = bh_qvalues(values, axis=axis)

    blocks = [slice(start, min(start + step, n_families)) for start in range(0, n_families, step)]
    run_parts(adjust, blocks, n_jobs)
    return out


def family_qvalues(
    pvals: np.ndarray,
    family: np.ndarray | None = None,
    *,
    axis: int | None = 0,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Benjamini-Hochberg q-values over the pairs of ``family``; NaN outside it.

    ``axis`` is the axis of the hypotheses of one family (0: the genes of each group
    of a genes x groups array); ``None`` makes all entries one family. The families of
    a 2-D array are adjusted a block of them at a time, or, when at most
    ``SPARSE_FAMILY`` of the pairs are in the family (the pair QC excludes most pairs
    of a genome-wide screen), by a compiled kernel sorting only each family's members
    (``n_jobs`` threads, default ``nsc.settings.n_jobs``); one family over all entries
    only over its members; so the temporaries stay small beside the result. The q-values equal those of :func:`~._pvalues.bh_qvalues` on the p-values
    with NaN outside the family, bit for bit.
    """
    pvals = np.asarray(pvals, dtype=np.float64)
    out = np.full(pvals.shape, np.nan)
    if axis is None:
        if family is None:
            return bh_qvalues(pvals.ravel()).reshape(pvals.shape)
        members = np.nonzero(family)
        out[members] = bh_qvalues(pvals[members])
        return out
    if pvals.ndim != 2:
        masked = pvals if family is None else np.where(family, pvals, np.nan)
        return bh_qvalues(masked, axis=axis)
    if family is None or np.count_nonzero(family) > SPARSE_FAMILY * pvals.size:
        return _dense_family_qvalues(pvals, family, axis, out, thread_count(n_jobs))
    # Families as rows (views: the kernel reads strided arrays as they are).
    rows_first = axis % 2 == 1
    values = pvals if rows_first else pvals.T
    result = out if rows_first else out.T
    if family is None:
        mask = np.zeros((values.shape[0], 0), dtype=bool)  # no columns: every entry
    else:
        mask = np.asarray(family, dtype=bool)
        mask = mask if rows_first else mask.T
    kernel = _bh_kernel()
    n_rows = values.shape[0]
    tasks = [slice(lo, min(lo + BH_TASK_ROWS, n_rows)) for lo in range(0, n_rows, BH_TASK_ROWS)]
    run_parts(
        lambda rows: kernel(values, mask, result, rows.start, rows.stop),
        tasks,
        thread_count(n_jobs),
    )
    return out


def top_order(keys: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Return the first ``n`` positions of each row in the order of ``np.lexsort(keys)``.

    ``keys`` are 2-D arrays of the same shape (rows x positions; the last key is the
    primary one, as in :func:`numpy.lexsort`, ties kept in position order). Returns rows
    x ``min(n, positions)`` int64. When ``n`` is small beside the positions, only the
    candidates that can reach the first ``n`` are sorted: the positions below the n-th
    smallest primary key, and those at it whose second key is small enough (found by
    partitions, not sorts); the result is the same as sorting everything.
    """
    n_rows, n_positions = keys[0].shape
    n = min(n, n_positions)
    out = np.empty((n_rows, n), dtype=np.int64)
    if n == 0 or n_rows == 0:
        return out
    step = max(1, QVALUE_BLOCK // n_positions)
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        out[rows] = _top_order_block([np.asarray(key[rows]) for key in keys], n)
    return out


def _is_tied(ranked: np.ndarray) -> np.ndarray:
    """Whether each sorted entry equals the one before it (NaN equals NaN, as in sorts)."""
    tied = np.zeros(ranked.shape, dtype=bool)
    before, after = ranked[:, :-1], ranked[:, 1:]
    np.equal(after, before, out=tied[:, 1:])
    if ranked.dtype.kind in "fc":
        tied[:, 1:] |= np.isnan(after) & np.isnan(before)
    return tied


def lexsort_rows(keys: Sequence[np.ndarray]) -> np.ndarray:
    """Return ``np.lexsort(keys, axis=-1)`` of 2-D keys, from one unstable sort.

    The last key that is not boolean is sorted with :func:`numpy.argsort` (its default,
    faster kind); only the runs of entries tied on it are sorted again, all rows at
    once, on the earlier keys and the position (as ``lexsort`` breaks ties). Boolean
    keys after it (primary keys) are then applied as stable sorts, as ``lexsort``
    applies every key. The result is the same as ``np.lexsort``.
    """
    keys = [np.asarray(key) for key in keys]
    flags = [key.dtype == bool for key in keys]
    last = max((i for i, flag in enumerate(flags) if not flag), default=-1)
    if last < 0:
        return np.lexsort(keys, axis=-1)
    major = keys[last]
    n_positions = major.shape[1]
    order = np.ascontiguousarray(np.argsort(major, axis=-1))
    flat = order.reshape(-1)
    # Runs of entries tied on the major key (-0.0 equals 0.0, NaN equals NaN, as in
    # the sort): their order comes from the earlier keys, then the position.
    tied = _is_tied(np.take_along_axis(major, order, axis=-1))
    if tied.any():
        in_run = tied.copy()
        in_run[:, :-1] |= tied[:, 1:]  # the first entry of a run is in it too
        slots = np.flatnonzero(in_run)
        rows = slots // n_positions
        run = np.cumsum(~tied.reshape(-1))[slots]  # the runs, numbered over all rows
        members = flat[slots]
        minor = [key[rows, members] for key in keys[:last]]
        flat[slots] = members[np.lexsort([members, *minor, run])]
    for key in keys[last + 1 :]:
        flag = np.take_along_axis(key, order, axis=-1)
        if flag.any() and not flag.all():
            moved = np.flatnonzero(flag.any(axis=1) & ~flag.all(axis=1))
            shift = np.argsort(flag[moved], axis=-1, kind="stable")
            order[moved] = np.take_along_axis(order[moved], shift, axis=-1)
    return order


def _top_order_block(keys: list[np.ndarray], n: int) -> np.ndarray:
    n_rows, n_positions = keys[0].shape
    if 4 * n >= n_positions or len(keys) < 2:
        return lexsort_rows(keys)[:, :n]
    primary, second = keys[-1], keys[-2]
    level = np.partition(primary, n - 1, axis=1)[:, n - 1 : n]
    below = primary < level
    at = primary == level
    n_below = below.sum(axis=1)
    out = np.empty((n_rows, n), dtype=np.int64)

    def sort_candidates(row: int, candidate: np.ndarray) -> None:
        columns = np.flatnonzero(candidate)
        out[row] = columns[np.lexsort([key[row, columns] for key in keys])[:n]]

    # Rows whose first n all share the n-th primary key: one threshold on the second.
    common = np.flatnonzero(n_below == 0)
    if common.size:
        second_at = np.where(at[common], second[common], np.nan)
        threshold = np.partition(second_at, n - 1, axis=1)[:, n - 1 : n]
        mask = at[common] & (second[common] <= threshold)
        counts = mask.sum(axis=1)
        exact = np.flatnonzero(counts == n)
        if exact.size:
            columns = np.nonzero(mask[exact])[1].reshape(exact.size, n)
            gathered = [np.take_along_axis(key[common[exact]], columns, axis=1) for key in keys]
            order = np.lexsort(gathered, axis=-1)
            out[common[exact]] = np.take_along_axis(columns, order, axis=1)
        for i in np.flatnonzero(counts != n):
            tied = int(common[i])
            # more candidates (ties at the threshold), or a NaN threshold: all at the level
            sort_candidates(tied, mask[i] if counts[i] > n else at[tied] | np.isnan(level[tied]))
    # (A NaN level makes no primary key below it, so these rows have a number level.)
    for mixed in np.flatnonzero(n_below > 0):
        row = int(mixed)
        wanted = n - int(n_below[row])
        values = second[row, at[row]]
        threshold = np.partition(values, wanted - 1)[wanted - 1]
        chosen = at[row] & (second[row] <= threshold) if not np.isnan(threshold) else at[row]
        sort_candidates(row, below[row] | chosen)
    return out


def read_pairs(name: str, value: object) -> tuple[np.ndarray, np.ndarray]:
    """Return the groups and genes (object arrays of str) of a table of pairs.

    ``value`` is a DataFrame with columns ``group`` and ``gene`` (or SCEPTRE's
    ``grna_group`` and ``response_id``), or a sequence of ``(group, gene)`` pairs.
    Missing, empty or repeated pairs are refused with a ValueError naming ``name``.
    """
    columns = getattr(value, "columns", None)
    if columns is not None:
        present = [str(c) for c in columns]
        chosen = next((c for c in PAIR_COLUMNS if set(c) <= set(present)), None)
        if chosen is None:
            msg = (
                f"`{name}` must have columns {list(PAIR_COLUMNS[0])} (or SCEPTRE's "
                f"{list(PAIR_COLUMNS[1])}); it has {present[:LISTED]}."
            )
            raise ValueError(msg)
        table: Any = value  # a DataFrame-like table (it has columns)
        groups, genes = (np.asarray(table[c], dtype=object) for c in chosen)
    else:
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            msg = (
                f"`{name}` must be a DataFrame with columns 'group' and 'gene' or a list "
                f"of (group, gene) pairs, got {type(value).__name__}."
            )
            raise ValueError(msg)
        rows = list(value)
        if not all(
            isinstance(r, _PAIR_TYPES) and not isinstance(r, str) and len(r) == 2 for r in rows
        ):
            msg = f"`{name}`: every pair must be a (group, gene) tuple of two names."
            raise ValueError(msg)
        groups = np.array([r[0] for r in rows], dtype=object)
        genes = np.array([r[1] for r in rows], dtype=object)
    for values, what in ((groups, "group"), (genes, "gene")):
        bad = [v for v in values if not _is_name(v)]
        if bad:
            msg = f"`{name}` has {len(bad)} missing or non-name {what}(s), e.g. {bad[0]!r}."
            raise ValueError(msg)
    groups = np.array([str(g) for g in groups], dtype=object)
    genes = np.array([str(g) for g in genes], dtype=object)
    if not groups.size:
        msg = f"`{name}` holds no pair."
        raise ValueError(msg)
    keys = [(g, n) for g, n in zip(groups, genes, strict=True)]
    seen: set[tuple[str, str]] = set()
    repeated = []
    for key in keys:
        if key in seen:
            repeated.append(key)
        seen.add(key)
    if repeated:
        msg = f"`{name}` lists the pair(s) {repeated[:LISTED]} more than once; give each once."
        raise ValueError(msg)
    return groups, genes


def _is_name(value: object) -> bool:
    if isinstance(value, str):
        return bool(value)
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | np.integer):
        return True
    return isinstance(value, float | np.floating) and np.isfinite(value) and value == int(value)


def locate_pairs(
    name: str,
    groups: np.ndarray,
    genes: np.ndarray,
    group_names: Sequence[str],
    gene_names: Sequence[str],
    *,
    reference: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the pairs' groups in ``group_names`` and genes in ``gene_names``.

    Unknown groups or genes (and reference groups, which are not tested) are refused
    with a ValueError naming them.
    """
    group_index = {g: i for i, g in enumerate(group_names)}
    gene_index = {g: i for i, g in enumerate(gene_names)}
    in_reference = sorted({g for g in groups if g in set(reference)})
    if in_reference:
        msg = (
            f"`{name}` names the reference group(s) {in_reference[:LISTED]}, which are not "
            "tested; pair genes with tested groups only."
        )
        raise ValueError(msg)
    unknown_groups = sorted({g for g in groups if g not in group_index})
    unknown_genes = sorted({g for g in genes if g not in gene_index})
    if unknown_groups or unknown_genes:
        parts = []
        if unknown_groups:
            parts.append(
                f"{len(unknown_groups)} unknown group(s) {unknown_groups[:LISTED]} (groups: "
                f"{list(group_names)[:LISTED]}{' ...' if len(group_names) > LISTED else ''})"
            )
        if unknown_genes:
            parts.append(
                f"{len(unknown_genes)} gene(s) {unknown_genes[:LISTED]} not in adata.var_names"
            )
        msg = f"`{name}` names {' and '.join(parts)}."
        raise ValueError(msg)
    return (
        np.array([group_index[g] for g in groups], dtype=np.int64),
        np.array([gene_index[g] for g in genes], dtype=np.int64),
    )
