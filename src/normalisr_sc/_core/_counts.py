"""Kernels on raw UMI counts: validation, read-count QC and Bayesian log CPM.

Every function here works on a cells x genes matrix (dense or CSR) one block of cells
at a time, so that in-memory, backed and dask inputs share the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from scipy.special import digamma, polygamma

from ._blocks import row_block, row_slices

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import ArrayLike

#: Counts are scaled to this many per cell before the log (log CPM).
CPM_SCALE = 1e6


def _stored_values(block: np.ndarray | sparse.csr_matrix) -> np.ndarray:
    return block.data if sparse.issparse(block) else block


def validate_counts(counts: ArrayLike, *, source: str, block_cells: int) -> None:
    """Raise ``ValueError`` unless every entry is a finite, non-negative integer.

    ``source`` names the matrix in the message (e.g. ``"adata.X"``).
    """
    for rows in row_slices(counts.shape[0], block_cells):
        values = _stored_values(row_block(counts, rows))
        if values.dtype.kind in "biu":
            if values.dtype.kind == "i" and values.size and values.min() < 0:
                msg = (
                    f"{source} contains negative values (minimum {values.min()}); "
                    "raw UMI counts are expected. Pass the layer holding raw counts via `layer=`."
                )
                raise ValueError(msg)
            continue
        if values.dtype.kind != "f":
            msg = f"{source} has dtype {values.dtype}; raw UMI counts must be numeric."
            raise ValueError(msg)
        if not np.isfinite(values).all():
            msg = (
                f"{source} contains NaN or infinite values; raw UMI counts must be finite. "
                "Remove or repair those entries before normalisation."
            )
            raise ValueError(msg)
        if values.size and values.min() < 0:
            msg = (
                f"{source} contains negative values (minimum {values.min():g}); raw UMI "
                "counts are expected. Pass the layer holding raw counts via `layer=`."
            )
            raise ValueError(msg)
        fractional = values != np.floor(values)
        if fractional.any():
            example = values[fractional].flat[0]
            msg = (
                f"{source} contains non-integer values (e.g. {example:g}); Normalisr needs raw "
                "UMI counts, not normalised or log-transformed data. Pass the layer holding "
                "raw counts via `layer=`."
            )
            raise ValueError(msg)


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


def filter_reads(
    counts: ArrayLike, bounds: ReadBounds, *, block_cells: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Iterative read-count QC.

    Both masks are recomputed from the currently kept genes and cells, applied at
    once, and the process repeats until nothing changes.

    Returns
    -------
    Boolean masks of kept cells and kept genes, and the number of rounds run.
    """
    n_cells, n_genes = counts.shape
    keep_cells = np.ones(n_cells, dtype=bool)
    keep_genes = np.ones(n_genes, dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        gene_counts = np.zeros(n_genes)
        gene_cells = np.zeros(n_genes)
        cell_counts = np.zeros(n_cells)
        cell_genes = np.zeros(n_cells)
        gene_weights = keep_genes.astype(np.float64)
        for rows in row_slices(n_cells, block_cells):
            block = row_block(counts, rows)
            detected = block != 0
            cell_weights = keep_cells[rows].astype(np.float64)
            gene_counts += np.asarray(cell_weights @ block).ravel()
            gene_cells += np.asarray(cell_weights @ detected).ravel()
            cell_counts[rows] = np.asarray(block @ gene_weights).ravel()
            cell_genes[rows] = np.asarray(detected @ gene_weights).ravel()
        n_kept_cells, n_kept_genes = keep_cells.sum(), keep_genes.sum()
        genes_pass = (
            (gene_counts >= bounds.min_gene_counts)
            & (gene_cells >= bounds.min_gene_cells)
            & (gene_cells >= bounds.min_gene_cell_fraction * n_kept_cells)
        )
        cells_pass = (
            (cell_counts >= bounds.min_cell_counts)
            & (cell_genes >= bounds.min_cell_genes)
            & (cell_genes >= bounds.min_cell_gene_fraction * n_kept_genes)
        )
        new_genes = keep_genes & genes_pass
        new_cells = keep_cells & cells_pass
        if not new_genes.any() or not new_cells.any():
            return new_cells, new_genes, rounds
        if (new_genes == keep_genes).all() and (new_cells == keep_cells).all():
            return keep_cells, keep_genes, rounds
        keep_cells, keep_genes = new_cells, new_genes


def _table(function: Callable[[np.ndarray], np.ndarray], counts: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``function`` at the distinct counts, and each count's index into them."""
    if counts.dtype.kind not in "iu":
        counts = counts.astype(np.int64)
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


def matrix_total(counts: ArrayLike, *, block_cells: int) -> float:
    """Total count of the whole matrix."""
    return float(
        sum(_stored_values(row_block(counts, rows)).sum(dtype=np.float64)
            for rows in row_slices(counts.shape[0], block_cells))
    )


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
        out = np.empty((n_block, n_genes))
    zero_value = float(log_proportion(np.zeros(1))[0])
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
        self.proportion_sum += np.asarray((1.0 / cell_totals) @ block).ravel()


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
