"""Kernels on raw UMI counts: validation, read-count QC and Bayesian log CPM.

Every pass over the counts is an accumulator of statistics over blocks of cells (see
:mod:`normalisr_sc._core._reduce`), so that in-memory, backed and dask inputs share the
same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from scipy.special import digamma, polygamma

from ._blocks import count_non_finite, materialize
from ._buffers import block_array
from ._moments import run_parts
from ._reduce import PerCell, accumulate, alternating_scans, is_dask, no_progress, thread_count

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import ArrayLike, DTypeLike

    from .._types import InputMatrix
    from ._reduce import Progress

#: Counts are scaled to this many per cell before the log (log CPM).
CPM_SCALE = 1e6
#: Counts are looked up as 64-bit integers: larger ones are refused.
MAX_COUNT = 2.0**63


def _stored_values(block: np.ndarray | sparse.csr_matrix) -> np.ndarray:
    return block.data if sparse.issparse(block) else block


def check_count_dtype(dtype: DTypeLike, *, source: str) -> None:
    """Raise ``ValueError`` unless ``dtype`` can hold counts (bool, integer or float)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        msg = f"{source} has dtype {dtype}; raw UMI counts must be numeric."
        raise ValueError(msg)


class CountCheck:
    """Whether all counts are finite, non-negative integers, over blocks of cells."""

    def __init__(self) -> None:
        self.minimum = np.inf
        self.maximum = -np.inf
        self.non_finite = False
        #: One non-integer value, if any was seen.
        self.fractional: float | None = None

    def add(self, rows: slice, block: np.ndarray | sparse.csr_matrix) -> None:
        values = _stored_values(block)
        if values.size == 0 or self.non_finite:
            return
        if count_non_finite(values):
            # The first thing reported, so the other checks are moot.
            self.non_finite = True
            return
        self.minimum = min(self.minimum, values.min())
        self.maximum = max(self.maximum, float(values.max()))
        if values.dtype.kind == "f" and self.fractional is None:
            fractional = values != np.floor(values)
            if fractional.any():
                self.fractional = float(values[fractional][0])

    def merge(self, other: CountCheck) -> CountCheck:
        self.non_finite |= other.non_finite
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        if self.fractional is None:
            self.fractional = other.fractional
        return self

    def raise_if_invalid(self, source: str) -> None:
        """Raise ``ValueError`` naming the first problem (``source`` names the matrix)."""
        if self.non_finite:
            msg = (
                f"{source} contains NaN or infinite values; raw UMI counts must be finite. "
                "Remove or repair those entries before normalisation."
            )
            raise ValueError(msg)
        if self.minimum < 0:
            msg = (
                f"{source} contains negative values (minimum {self.minimum:g}); raw UMI "
                "counts are expected. Pass the layer holding raw counts via `layer=`."
            )
            raise ValueError(msg)
        if self.maximum >= MAX_COUNT:
            msg = (
                f"{source} contains a count of {self.maximum:g}, at least 2**63: counts this "
                "large are not supported (nor plausible UMI counts). Pass the layer holding "
                "raw counts via `layer=`."
            )
            raise ValueError(msg)
        if self.fractional is not None:
            msg = (
                f"{source} contains non-integer values (e.g. {self.fractional:g}); Normalisr "
                "needs raw UMI counts, not normalised or log-transformed data. Pass the layer "
                "holding raw counts via `layer=`."
            )
            raise ValueError(msg)


def validate_counts(
    counts: InputMatrix, *, source: str, block_cells: int, progress: Progress = no_progress
) -> None:
    """Raise ``ValueError`` unless every entry is a finite, non-negative integer.

    ``source`` names the matrix in the message (e.g. ``"adata.X"``).
    """
    check_count_dtype(counts.dtype, source=source)
    accumulate(
        CountCheck, counts, block_cells=block_cells, progress=progress, desc="checking counts"
    ).raise_if_invalid(source)


def _block_rows(block: sparse.csr_matrix) -> np.ndarray:
    """Row index of every stored entry of a CSR block."""
    return np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))


def _nonzero_per_row(block: np.ndarray | sparse.csr_matrix) -> np.ndarray:
    if sparse.issparse(block):
        stored = np.diff(block.indptr)
        explicit_zeros = block.data == 0
        if explicit_zeros.any():
            rows = _block_rows(block)[explicit_zeros]
            stored = stored - np.bincount(rows, minlength=block.shape[0])
        return stored
    return np.count_nonzero(block, axis=1)


@dataclass(frozen=True)
class ReadBounds:
    """Lower bounds of read-count QC; 0 switches a bound off (METHOD 1)."""

    min_gene_counts: float = 0
    min_gene_cells: float = 0
    min_gene_cell_fraction: float = 0.0
    min_cell_counts: float = 0
    min_cell_genes: float = 0
    min_cell_gene_fraction: float = 0.0


def _row_pieces(n_rows: int, n_jobs: int) -> list[slice]:
    """Return ``min(n_jobs, n_rows)`` (at least one) slices of about equal numbers of rows."""
    bounds = np.linspace(0, n_rows, max(1, min(n_jobs, n_rows)) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in pairwise(bounds)]


def _gene_sums_in_parts(
    n_rows: int,
    n_genes: int,
    n_jobs: int,
    add_rows: Callable[[slice, np.ndarray, np.ndarray], None],
) -> np.ndarray:
    """Return two per-gene sums over ``n_rows`` rows, made in ``n_jobs`` parts on threads.

    ``add_rows(rows, first, second)`` adds the rows' sums into the two arrays; each part
    adds into sums of its own, added up at the end. For sums of integers (exact in any
    order), so that they do not depend on the number of parts.
    """
    pieces = _row_pieces(n_rows, n_jobs)
    sums = np.zeros((len(pieces), 2, n_genes))
    order = {piece.start: index for index, piece in enumerate(pieces)}
    run_parts(lambda rows: add_rows(rows, *sums[order[rows.start]]), pieces, len(pieces))
    return sums.sum(axis=0)


class ReadSums:
    """One round of read-count QC.

    Total count and number of detections per gene over the kept cells, and per cell
    over the kept genes.
    """

    def __init__(self, keep_genes: np.ndarray, *, check: bool = False, n_jobs: int = 1) -> None:
        #: Threads sharing the rows of a CSR block (its sums are exact in any order).
        self.n_jobs = n_jobs
        self.gene_weights = keep_genes.astype(np.float64)
        self.gene_counts = np.zeros(keep_genes.size)
        self.gene_cells = np.zeros(keep_genes.size)
        self.cells = PerCell(2)
        #: With ``check``, the validity of the counts read (:class:`CountCheck`), found in
        #: the same pass: the sums mean something only once it is confirmed.
        self.check = CountCheck() if check else None

    def add(
        self, rows: slice, block: np.ndarray | sparse.csr_matrix, cell_weights: np.ndarray
    ) -> None:
        if self.check is not None:
            self.check.add(rows, block)
        if isinstance(block, sparse.csr_matrix | sparse.csr_array):
            self._add_csr(rows, block, cell_weights)
            return
        detected = block != 0
        self.gene_counts += np.asarray(cell_weights @ block).ravel()
        self.gene_cells += np.asarray(cell_weights @ detected).ravel()
        self.cells.add(
            rows,
            np.column_stack(
                [
                    np.asarray(block @ self.gene_weights).ravel(),
                    np.asarray(detected @ self.gene_weights).ravel(),
                ]
            ),
        )

    def _add_csr(
        self, rows: slice, block: sparse.csr_matrix | sparse.csr_array, cell_weights: np.ndarray
    ) -> None:
        """Add the sums of :meth:`add` of a CSR block in one read (a compiled kernel).

        Counts are integers (checked in the first round's pass; otherwise refused after
        it) and the weights 0 or 1: every sum is an integer, exact in any order, so the
        sums equal those of the sparse products, and the block's rows are summed in
        ``n_jobs`` parts on threads, each into sums of its own added at the end.
        """
        n_block, n_genes = block.shape
        cells = np.empty((n_block, 2))
        indptr = np.asarray(block.indptr, dtype=np.int64)
        data = block.data.view(np.uint8) if block.data.dtype == np.bool_ else block.data
        weights = np.ascontiguousarray(cell_weights, dtype=np.float64)
        kernel = _kernel("read_sums")

        def add_rows(chosen: slice, counts: np.ndarray, detections: np.ndarray) -> None:
            kernel(
                indptr[chosen.start : chosen.stop + 1],
                block.indices,
                data,
                weights[chosen],
                self.gene_weights,
                counts,
                detections,
                cells[chosen],
            )

        counts, detections = _gene_sums_in_parts(n_block, n_genes, self.n_jobs, add_rows)
        self.gene_counts += counts
        self.gene_cells += detections
        self.cells.add(rows, cells)

    def merge(self, other: ReadSums) -> ReadSums:
        self.gene_counts += other.gene_counts
        self.gene_cells += other.gene_cells
        self.cells.merge(other.cells)
        if self.check is not None and other.check is not None:
            self.check.merge(other.check)
        return self

    def without(self, removed: ReadSums) -> ReadSums:
        """Return these sums less the gene sums of ``removed``; per cell, as they are.

        The next round's sums after a round that removed cells only: the gene sums over
        the remaining cells, and each cell's sums over the same genes as before. Every
        sum is of integer counts (or of ones), exact, so they equal those of a new pass
        over all the cells.
        """
        sums = ReadSums(self.gene_weights > 0, n_jobs=self.n_jobs)
        sums.gene_counts = self.gene_counts - removed.gene_counts
        sums.gene_cells = self.gene_cells - removed.gene_cells
        sums.cells = self.cells
        return sums


@dataclass(frozen=True)
class ReadFilter:
    """The outcome of the iterative read-count QC (:func:`read_filter`).

    Attributes
    ----------
    cells, genes
        Boolean masks of the kept cells and genes.
    rounds
        Number of rounds run.
    first
        Sums of the first round: over all cells and all genes.
    last
        Sums of the last round: over the cells and genes kept before it. When
        ``converged`` (that round removed nothing), these are the kept ones.
    converged
        Whether the last round confirmed the masks (else it removed every cell or gene).
    """

    cells: np.ndarray
    genes: np.ndarray
    rounds: int
    first: ReadSums
    last: ReadSums
    converged: bool


@alternating_scans()
def read_filter(
    counts: InputMatrix,
    bounds: ReadBounds,
    *,
    block_cells: int,
    progress: Progress = no_progress,
    source: str | None = None,
) -> ReadFilter:
    """Run the iterative read-count QC, keeping the sums of its first and last rounds.

    Both masks are recomputed from the currently kept genes and cells, applied at
    once, and the process repeats until nothing changes. Each round is one pass, but
    the round after one that removed cells only reads those cells alone and takes their
    sums off (:meth:`ReadSums.without`: exact integer sums, the same figures).

    With ``source`` (the matrix's name in messages), the first round also checks that
    every count is a finite, non-negative integer (:func:`validate_counts`, in the same
    pass) and raises its ``ValueError`` right after that pass, before any mask is made.
    """
    if source is not None:
        check_count_dtype(counts.dtype, source=source)
    n_cells, n_genes = counts.shape
    keep_cells = np.ones(n_cells, dtype=bool)
    keep_genes = np.ones(n_genes, dtype=bool)
    rounds = 0
    first: ReadSums | None = None
    # In memory a block's rows are shared by threads; dask runs blocks in parallel itself.
    n_jobs = 1 if is_dask(counts) else thread_count()
    sums: ReadSums | None = None
    removed_cells = np.zeros(n_cells, dtype=bool)
    while True:
        rounds += 1
        if sums is not None and np.array_equal(sums.gene_weights > 0, keep_genes):
            # The last round removed cells only: their sums are taken off, read alone.
            gone = np.flatnonzero(removed_cells)
            sums = sums.without(
                accumulate(
                    partial(ReadSums, keep_genes, n_jobs=n_jobs),
                    counts[gone],
                    (np.ones(gone.size),),
                    block_cells=block_cells,
                    progress=progress,
                    desc=f"read-count QC, round {rounds} (the removed cells)",
                )
            )
        else:
            sums = accumulate(
                partial(
                    ReadSums, keep_genes, check=first is None and source is not None, n_jobs=n_jobs
                ),
                counts,
                (keep_cells.astype(np.float64),),
                block_cells=block_cells,
                progress=progress,
                desc=f"read-count QC, round {rounds}",
            )
        if first is None:
            if sums.check is not None:
                assert source is not None  # a check is made only with a source
                sums.check.raise_if_invalid(source)
            first = sums
        cell_counts, cell_genes = sums.cells.values().T
        n_kept_cells, n_kept_genes = keep_cells.sum(), keep_genes.sum()
        genes_pass = (
            (sums.gene_counts >= bounds.min_gene_counts)
            & (sums.gene_cells >= bounds.min_gene_cells)
            & (sums.gene_cells >= bounds.min_gene_cell_fraction * n_kept_cells)
        )
        cells_pass = (
            (cell_counts >= bounds.min_cell_counts)
            & (cell_genes >= bounds.min_cell_genes)
            & (cell_genes >= bounds.min_cell_gene_fraction * n_kept_genes)
        )
        new_genes = keep_genes & genes_pass
        new_cells = keep_cells & cells_pass
        if not new_genes.any() or not new_cells.any():
            return ReadFilter(new_cells, new_genes, rounds, first, sums, converged=False)
        if (new_genes == keep_genes).all() and (new_cells == keep_cells).all():
            return ReadFilter(keep_cells, keep_genes, rounds, first, sums, converged=True)
        removed_cells = keep_cells & ~new_cells
        keep_cells, keep_genes = new_cells, new_genes


def filter_reads(
    counts: InputMatrix,
    bounds: ReadBounds,
    *,
    block_cells: int,
    progress: Progress = no_progress,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Run the iterative read-count QC (:func:`read_filter`, without the count check).

    Returns
    -------
    Boolean masks of kept cells and kept genes, and the number of rounds run.
    """
    result = read_filter(counts, bounds, block_cells=block_cells, progress=progress)
    return result.cells, result.genes, result.rounds


def kept_summaries(result: ReadFilter) -> tuple[np.ndarray, np.ndarray, GeneStatistics]:
    """Return the count summaries of the kept cells and genes, from the round confirming them.

    Each kept cell's total count and number of zero-count genes over the kept genes, and
    the :class:`GeneStatistics` of the kept genes over the kept cells: the figures
    :class:`CountSummaries` gives on the filtered counts, equal because every one is a
    sum of integer counts (or of ones), exact in any order. Only ``proportion_sum`` is
    not summed by QC: it is NaN here (the default scaling factor does not use it).
    """
    if not result.converged:
        msg = "kept_summaries: read-count QC removed every cell or gene; nothing was kept."
        raise ValueError(msg)
    sums, cells, genes = result.last, result.cells, result.genes
    kept = sums.cells.values()[cells]
    n_genes = int(genes.sum())
    totals = np.ascontiguousarray(kept[:, 0])
    zeros = n_genes - kept[:, 1]
    stats = GeneStatistics(n_genes)
    stats.n_cells = int(cells.sum())
    stats.detected = sums.gene_cells[genes]
    stats.total = sums.gene_counts[genes]
    stats.proportion_sum = np.full(n_genes, np.nan)
    return totals, zeros, stats


def _table(
    function: Callable[[np.ndarray], np.ndarray], counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``function`` at the distinct counts, and each count's index into them."""
    if counts.dtype.kind not in "iu":
        as_integers = block_array(counts.shape, np.int64)
        np.copyto(as_integers, counts, casting="unsafe")
        counts = as_integers
    if counts.size == 0:
        return np.empty(0), np.empty(0, dtype=np.intp)
    largest = int(counts.max())
    if largest < max(counts.size, 1 << 16):
        return function(np.arange(largest + 1, dtype=np.float64)), counts
    distinct, index = np.unique(counts, return_inverse=True)
    return function(distinct.astype(np.float64)), index.reshape(counts.shape)


def _lookup(function: Callable[[np.ndarray], np.ndarray], counts: np.ndarray) -> np.ndarray:
    """``function(counts)`` evaluated once per distinct count value."""
    table, index = _table(function, counts)
    return table[index]


def _sparse_mass(indptr, index, exp_table, n_genes, exp_zero, mass):
    """Per row of a CSR block: the sum of ``exp`` of the log proportions over all genes.

    Stored entries add ``exp_table[index[p]]`` in their order (as ``np.bincount`` does),
    the other ``n_genes - stored`` entries ``exp_zero`` each.
    """
    for i in range(indptr.size - 1):
        start, stop = indptr[i], indptr[i + 1]
        total = 0.0
        for p in range(start, stop):
            total += exp_table[index[p]]
        mass[i] = total + (n_genes - (stop - start)) * exp_zero


def _sparse_write(indptr, indices, index, table, zero_value, shift, out):
    """Write each row of the log CPM of a CSR block into ``out``.

    ``zero_value - shift`` everywhere, then the stored entries ``table[index[p]] - shift``
    (the arithmetic of fill, scatter, subtract).
    """
    for i in range(indptr.size - 1):
        row = out[i]
        offset = shift[i]
        background = zero_value - offset
        for g in range(row.size):
            row[g] = background
        for p in range(indptr[i], indptr[i + 1]):
            row[indices[p]] = table[index[p]] - offset


def _csr_sums(indptr, indices, data, cells, detected, total, proportion):
    """Sum a CSR block per row and per column in one read.

    Per row its total and zero-count genes (into ``cells``); per column its detections,
    total and sum of proportions (into the zeroed ``detected``, ``total``,
    ``proportion``): the figures of :func:`cell_summaries` and
    :meth:`GeneStatistics.update`, each sum in scipy's order (rows in turn).
    """
    n_genes = detected.size
    for i in range(indptr.size - 1):
        row_total = 0.0
        nonzero = 0
        for p in range(indptr[i], indptr[i + 1]):
            value = data[p]
            row_total += value
            nonzero += value != 0
        cells[i, 0] = row_total
        cells[i, 1] = n_genes - nonzero
    for i in range(indptr.size - 1):
        row_total = cells[i, 0]
        # An empty cell adds nothing (and is refused later): weight 0, not 1 / 0.
        inverse = 1.0 / row_total if row_total != 0 else 0.0
        for p in range(indptr[i], indptr[i + 1]):
            column = indices[p]
            value = data[p]
            total[column] += value
            proportion[column] += value * inverse
            if value != 0:
                detected[column] += 1.0


def _csr_count_sums(indptr, indices, data, cells, detected, total):
    """Sum a CSR block as :func:`_csr_sums` does, but the proportions, in one loop.

    Every sum is of integers (counts, ones): exact in any order. The rows are
    ``indptr``'s, a slice of a block's (its positions index ``indices`` and ``data``).
    """
    n_genes = detected.size
    for i in range(indptr.size - 1):
        row_total = 0.0
        nonzero = 0
        for p in range(indptr[i], indptr[i + 1]):
            value = data[p]
            column = indices[p]
            row_total += value
            total[column] += value
            if value != 0:
                nonzero += 1
                detected[column] += 1.0
        cells[i, 0] = row_total
        cells[i, 1] = n_genes - nonzero


def _read_sums(indptr, indices, data, cell_weights, gene_weights, counts, detections, cells):
    """Add the sums of one round of read-count QC over a CSR block, in one read.

    Per gene over the cells weighted by ``cell_weights`` (added to ``counts`` and
    ``detections``), per cell over the genes weighted by ``gene_weights`` (into
    ``cells``: total count and detected genes).
    """
    for i in range(indptr.size - 1):
        weight = cell_weights[i]
        total = 0.0
        detected = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            value = data[p]
            if value != 0:
                column = indices[p]
                count = float(value)
                counts[column] += weight * count
                detections[column] += weight
                total += count * gene_weights[column]
                detected += gene_weights[column]
        cells[i, 0] = total
        cells[i, 1] = detected


def _subset_sizes(indptr, indices, rows, column_index, sizes):
    """Entries each kept row (``rows``) keeps: those of kept columns (``column_index >= 0``)."""
    for r in range(rows.size):
        i = rows[r]
        kept = 0
        for p in range(indptr[i], indptr[i + 1]):
            if column_index[indices[p]] >= 0:
                kept += 1
        sizes[r + 1] = kept


def _subset_fill(indptr, indices, data, rows, column_index, new_indptr, new_indices, new_data):
    """Copy the kept entries of the kept rows, in their order, with their new columns."""
    for r in range(rows.size):
        i = rows[r]
        q = new_indptr[r]
        for p in range(indptr[i], indptr[i + 1]):
            column = column_index[indices[p]]
            if column >= 0:
                new_indices[q] = column
                new_data[q] = data[p]
                q += 1


def subset_counts(
    matrix: sparse.csr_matrix | sparse.csr_array, cells: np.ndarray, genes: np.ndarray
) -> sparse.csr_matrix:
    """Return ``matrix[cells][:, genes]`` (boolean masks) as a new CSR matrix.

    The same stored entries in the same order as scipy's indexing gives (each kept row's
    entries of kept columns, renumbered), in two compiled reads instead of scipy's column
    indexing, which costs several times more.
    """
    rows = np.flatnonzero(cells)
    column_index = np.full(genes.size, -1, dtype=np.int64)
    column_index[genes] = np.arange(int(genes.sum()))
    indptr = np.asarray(matrix.indptr, dtype=np.int64)
    sizes = np.zeros(rows.size + 1, dtype=np.int64)
    _kernel("subset_sizes")(indptr, matrix.indices, rows, column_index, sizes)
    new_indptr = np.cumsum(sizes)
    n_stored = int(new_indptr[-1])
    new_indices = np.empty(n_stored, dtype=matrix.indices.dtype)
    new_data = np.empty(n_stored, dtype=matrix.data.dtype)
    data = matrix.data.view(np.uint8) if matrix.data.dtype == np.bool_ else matrix.data
    fill = new_data.view(np.uint8) if new_data.dtype == np.bool_ else new_data
    _kernel("subset_fill")(
        indptr, matrix.indices, data, rows, column_index, new_indptr, new_indices, fill
    )
    index_type = matrix.indptr.dtype if n_stored <= np.iinfo(matrix.indptr.dtype).max else np.int64
    return sparse.csr_matrix(
        (new_data, new_indices, new_indptr.astype(index_type)),
        shape=(rows.size, int(genes.sum())),
    )


_KERNELS: dict[str, Callable] = {}


def _kernel(name: str) -> Callable:
    """Return the compiled kernel ``name`` (numba, compiled on first use, cached on disk)."""
    if name not in _KERNELS:
        import numba

        sources: dict[str, Callable[..., None]] = {
            "mass": _sparse_mass,
            "write": _sparse_write,
            "sums": _csr_sums,
            "count_sums": _csr_count_sums,
            "read_sums": _read_sums,
            "subset_sizes": _subset_sizes,
            "subset_fill": _subset_fill,
        }
        source = sources[name]
        _KERNELS[name] = numba.njit(nogil=True, cache=True, boundscheck=False)(source)
    return _KERNELS[name]


def _sparse_lcpm(
    block: sparse.csr_matrix,
    log_proportion: Callable[[np.ndarray], np.ndarray],
    zero_value: float,
    out: np.ndarray,
) -> None:
    """Log CPM of a CSR block into ``out`` in one pass over its rows (compiled kernels).

    The same values, bit for bit, as the dense route of :func:`lcpm_block` (fill with the
    zero value, scatter the stored values, subtract each cell's log mass): the same
    table, the same ``exp`` (numpy's, of the table), the same order of the sums.
    """
    n_block, n_genes = block.shape
    table, index = _table(log_proportion, block.data)
    indptr = np.asarray(block.indptr, dtype=np.int64)
    mass = np.empty(n_block)
    exp_zero = np.exp(zero_value)
    _kernel("mass")(indptr, index, np.exp(table), n_genes, float(exp_zero), mass)
    shift = np.log(mass) - np.log(CPM_SCALE)
    _kernel("write")(indptr, block.indices, index, table, zero_value, shift, out)


def lcpm_block(
    block: np.ndarray | sparse.csr_matrix,
    total: float,
    *,
    varscale: float = 0.0,
    rng: np.random.Generator | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Bayesian log CPM of one block of cells (METHOD 2).

    Each count ``k`` maps to the posterior mean ``digamma(k + 1) - digamma(total + 2)``
    of the log proportion, optionally resampled with variance ``varscale`` times the
    posterior variance; each cell is then shifted so that its proportions sum to
    ``CPM_SCALE``. Returns a dense float64 array: ``out`` (C-contiguous, float64, the
    shape of ``block``) if given.
    """
    digamma_total = digamma(total + 2.0)

    def log_proportion(k: np.ndarray) -> np.ndarray:
        return digamma(k + 1.0) - digamma_total

    n_block, n_genes = block.shape
    if out is None:
        out = block_array((n_block, n_genes))
    zero_value = float(log_proportion(np.zeros(1))[0])
    if sparse.issparse(block) and varscale <= 0:
        _sparse_lcpm(block, log_proportion, zero_value, out)
        return out
    if sparse.issparse(block):
        rows = _block_rows(block)
        table, index = _table(log_proportion, block.data)
        stored = table[index]
        # Stored entries addressed by flat position: faster than (row, column) indexing.
        flat = rows * n_genes
        flat += block.indices
        out.fill(zero_value)
        out.reshape(-1)[flat] = stored
    else:
        table, index = _table(log_proportion, block)
        np.take(table, index, out=out)
    if varscale > 0:
        if rng is None:
            msg = "lcpm_block: resampling (varscale > 0) needs a random generator `rng`."
            raise ValueError(msg)
        trigamma_total = polygamma(1, total + 2.0)

        def posterior_variance(k: np.ndarray) -> np.ndarray:
            return polygamma(1, k + 1.0) - trigamma_total

        if sparse.issparse(block):
            variance = np.full(out.shape, float(posterior_variance(np.zeros(1))[0]))
            variance.reshape(-1)[flat] = _lookup(posterior_variance, block.data)
        else:
            variance = _lookup(posterior_variance, block)
        out += np.sqrt(varscale * variance) * rng.standard_normal(out.shape)
        log_mass = np.log(np.exp(out).sum(axis=1))
    elif sparse.issparse(block):
        n_stored = np.diff(block.indptr)
        stored_mass = np.bincount(rows, weights=np.exp(stored, out=stored), minlength=n_block)
        log_mass = np.log(stored_mass + (n_genes - n_stored) * np.exp(zero_value))
    else:
        log_mass = np.log(np.exp(out).sum(axis=1))
    out -= (log_mass - np.log(CPM_SCALE))[:, None]
    return out


def lcpm_chunk(block: ArrayLike, total: float, float_type: DTypeLike = np.float64) -> np.ndarray:
    """:func:`lcpm_block` of one chunk of a dask array of counts, as ``float_type``.

    Mapped over the chunks of the counts to make a lazily computed log CPM layer.
    """
    return lcpm_block(materialize(block), total).astype(float_type, copy=False)


def cell_summaries(block: np.ndarray | sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per cell of a block: total count and number of zero-count genes."""
    totals = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
    zeros = block.shape[1] - _nonzero_per_row(block)
    return totals, zeros.astype(np.float64)


def summary_covariates(totals: np.ndarray, n_zero_genes: np.ndarray) -> np.ndarray:
    """Cellular summary covariates: log total, number of zero genes, log total squared."""
    log_totals = np.log(totals)
    return np.column_stack([log_totals, n_zero_genes, log_totals**2])


class GeneStatistics:
    """Per-gene sums over cells accumulated block by block, for the scaling factor."""

    def __init__(self, n_genes: int) -> None:
        self.n_cells = 0
        self.detected = np.zeros(n_genes)
        self.total = np.zeros(n_genes)
        self.proportion_sum = np.zeros(n_genes)

    def update(self, block: np.ndarray | sparse.csr_matrix, cell_totals: np.ndarray) -> None:
        self.n_cells += block.shape[0]
        if sparse.issparse(block):
            detected = np.bincount(block.indices[block.data != 0], minlength=block.shape[1])
        else:
            detected = np.count_nonzero(block, axis=0)
        self.detected += detected
        self.total += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
        # An empty cell adds nothing (and is refused later): weight 0, not 1 / 0.
        inverse = np.divide(
            1.0, cell_totals, out=np.zeros_like(cell_totals), where=cell_totals != 0
        )
        self.proportion_sum += np.asarray(inverse @ block).ravel()

    def merge(self, other: GeneStatistics) -> GeneStatistics:
        self.n_cells += other.n_cells
        self.detected += other.detected
        self.total += other.total
        self.proportion_sum += other.proportion_sum
        return self


class CountSummaries:
    """One pass over raw counts.

    Their validity (:class:`CountCheck`), each cell's total count and number of
    zero-count genes, and the :class:`GeneStatistics`.
    """

    def __init__(self, n_genes: int, *, proportions: bool = True, n_jobs: int = 1) -> None:
        self.check = CountCheck()
        self.cells = PerCell(2)
        self.genes = GeneStatistics(n_genes)
        #: Without ``proportions`` the genes' sums of proportions are not made (NaN):
        #: the other sums, of integers, are then exact in any order and a CSR block's
        #: rows are summed in ``n_jobs`` parts on threads.
        self.proportions, self.n_jobs = proportions, n_jobs
        if not proportions:
            self.genes.proportion_sum[:] = np.nan

    def add(self, rows: slice, block: np.ndarray | sparse.csr_matrix) -> None:
        self.check.add(rows, block)
        if isinstance(block, sparse.csr_matrix | sparse.csr_array):
            self._add_csr(rows, block)
            return
        totals, zeros = cell_summaries(block)
        self.cells.add(rows, np.column_stack([totals, zeros]))
        self.genes.update(block, totals)

    def _add_csr(self, rows: slice, block: sparse.csr_matrix | sparse.csr_array) -> None:
        """Add the sums of :func:`cell_summaries` and :meth:`GeneStatistics.update` at once.

        A compiled kernel (:func:`_csr_sums`) adds in the order scipy's products do, so
        that the sums are the same, bit for bit.
        """
        n_block, n_genes = block.shape
        cells = np.empty((n_block, 2))
        indptr = np.asarray(block.indptr, dtype=np.int64)
        genes = self.genes
        genes.n_cells += n_block
        if self.proportions:
            detected, total, proportion = np.zeros((3, n_genes))
            _kernel("sums")(indptr, block.indices, block.data, cells, detected, total, proportion)
            self.cells.add(rows, cells)
            genes.detected += detected
            genes.total += total
            genes.proportion_sum += proportion
            return
        # Integer sums only: the block's rows in parts on threads, added in any order.
        kernel = _kernel("count_sums")

        def add_rows(chosen: slice, detected: np.ndarray, total: np.ndarray) -> None:
            kernel(
                indptr[chosen.start : chosen.stop + 1],
                block.indices,
                block.data,
                cells[chosen],
                detected,
                total,
            )

        detected, total = _gene_sums_in_parts(n_block, n_genes, self.n_jobs, add_rows)
        self.cells.add(rows, cells)
        genes.detected += detected
        genes.total += total

    def merge(self, other: CountSummaries) -> CountSummaries:
        self.check.merge(other.check)
        self.cells.merge(other.cells)
        self.genes.merge(other.genes)
        return self


#: Gene-level variables the scaling factor can be based on (METHOD 3).
SCALING_VARIABLES: dict[str, Callable[[GeneStatistics], np.ndarray]] = {
    "zero_fraction": lambda s: 1.0 - s.detected / s.n_cells,
    "log_zero_fraction": lambda s: np.log(1.0 - s.detected / s.n_cells),
    "log_detected_fraction": lambda s: np.log(s.detected / s.n_cells),
    "log_mean_proportion": lambda s: np.log(s.total / s.total.sum()),
    "log_mean_cell_proportion": lambda s: np.log(s.proportion_sum / s.n_cells),
}


def scaling_factor_values(
    stats: GeneStatistics,
    variable: str = "zero_fraction",
    *,
    zero_at: float | str = 0.0,
    one_at: float | str = "max",
) -> np.ndarray:
    """Gene scaling factor: ``variable`` mapped linearly so ``zero_at -> 0``, ``one_at -> 1``.

    ``zero_at``/``one_at`` are numbers or ``"min"``/``"max"`` of the variable over genes.
    """
    values = SCALING_VARIABLES[variable](stats)
    if not np.isfinite(values).all():
        msg = (
            f"scaling variable {variable!r} is not finite for some genes (a gene detected in "
            "no cell or in every cell); filter genes with `nsc.pp.qc_reads` or use "
            "variable='zero_fraction'."
        )
        raise ValueError(msg)
    ends = {"min": values.min(), "max": values.max()}
    low = ends.get(zero_at, zero_at) if isinstance(zero_at, str) else float(zero_at)
    high = ends.get(one_at, one_at) if isinstance(one_at, str) else float(one_at)
    if isinstance(low, str) or isinstance(high, str):
        msg = f"zero_at/one_at must be numbers, 'min' or 'max'; got {zero_at!r}, {one_at!r}."
        raise ValueError(msg)
    if high == low:
        msg = (
            f"the scaling variable {variable!r} takes the same value {low:g} at both ends of "
            "the mapping (e.g. no gene has any zero count); the scaling factor is undefined."
        )
        raise ValueError(msg)
    return (values - low) / (high - low)
