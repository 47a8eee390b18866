"""Read-count QC in fewer passes: checked in its first round, summaries handed to lcpm."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from normalisr_sc._core import _blocks, _counts


def _counts_matrix(seed: int, n_cells: int = 300, n_genes: int = 80) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    depth = rng.gamma(2.0, 1.0, size=(n_cells, 1))
    values = rng.poisson(depth * rng.gamma(0.3, 1.0, size=(1, n_genes)))
    values[:5] = rng.binomial(values[:5], 0.05)  # shallow cells
    values[10:, :3] = 0  # rare genes
    return sparse.csr_matrix(values)


BOUNDS = _counts.ReadBounds(min_gene_cells=12, min_cell_counts=15)


@pytest.mark.parametrize("form", ["csr", "dense"])
def test_kept_summaries_are_lcpms_on_the_filtered_counts(form):
    matrix = _counts_matrix(seed=1)
    matrix.data[::17] = 0  # explicit zeros: stored, not detected
    counts = matrix if form == "csr" else matrix.toarray()
    result = _counts.read_filter(counts, BOUNDS, block_cells=64, source="X")
    assert result.converged
    assert result.rounds >= 2
    assert 0 < result.cells.sum() < result.cells.size
    assert 0 < result.genes.sum() < result.genes.size
    totals, zeros, stats = _counts.kept_summaries(result)
    filtered = matrix[result.cells][:, result.genes]
    summaries = _counts.CountSummaries(filtered.shape[1])
    summaries.add(slice(0, filtered.shape[0]), filtered)
    expected_totals, expected_zeros = summaries.cells.values().T
    np.testing.assert_array_equal(totals, expected_totals)
    np.testing.assert_array_equal(zeros, expected_zeros)
    assert stats.n_cells == summaries.genes.n_cells
    np.testing.assert_array_equal(stats.detected, summaries.genes.detected)
    np.testing.assert_array_equal(stats.total, summaries.genes.total)
    assert np.isnan(stats.proportion_sum).all()  # not summed by QC
    np.testing.assert_array_equal(
        _counts.scaling_factor_values(stats), _counts.scaling_factor_values(summaries.genes)
    )


def test_first_round_sums_are_over_everything():
    matrix = _counts_matrix(seed=2)
    result = _counts.read_filter(matrix, BOUNDS, block_cells=64)
    everything = _counts.ReadSums(np.ones(matrix.shape[1], dtype=bool))
    everything.add(slice(0, matrix.shape[0]), matrix, np.ones(matrix.shape[0]))
    np.testing.assert_array_equal(result.first.gene_counts, everything.gene_counts)
    np.testing.assert_array_equal(result.first.gene_cells, everything.gene_cells)
    np.testing.assert_array_equal(result.first.cells.values(), everything.cells.values())
    assert result.first.check is None  # no source: not checked
    cells, genes, rounds = _counts.filter_reads(matrix, BOUNDS, block_cells=64)
    np.testing.assert_array_equal(cells, result.cells)
    np.testing.assert_array_equal(genes, result.genes)
    assert rounds == result.rounds


@pytest.mark.parametrize(
    ("value", "message"),
    [(-2, "negative"), (np.nan, "NaN"), (np.inf, "NaN or infinite"), (1.5, "non-integer")],
)
def test_read_filter_refuses_bad_counts_after_its_first_pass(value, message):
    matrix = _counts_matrix(seed=3).astype(np.float64)
    matrix.data[-1] = value  # in the last block
    with pytest.raises(ValueError, match=message):
        _counts.read_filter(matrix, BOUNDS, block_cells=64, source="adata.X")
    with pytest.raises(ValueError, match="must be numeric"):
        _counts.read_filter(
            np.zeros((4, 3), dtype=complex), BOUNDS, block_cells=64, source="adata.X"
        )


def test_kept_summaries_refuse_a_filter_that_kept_nothing():
    matrix = _counts_matrix(seed=4)
    result = _counts.read_filter(matrix, _counts.ReadBounds(min_cell_counts=1e9), block_cells=64)
    assert not result.converged
    assert not result.cells.any()
    with pytest.raises(ValueError, match="nothing was kept"):
        _counts.kept_summaries(result)


@pytest.mark.parametrize("n_jobs", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_count_summaries_without_proportions_in_parts_are_the_same_sums(n_jobs, dtype):
    matrix = _counts_matrix(seed=5).astype(dtype)
    matrix.data[::7] = 0
    whole = _counts.CountSummaries(matrix.shape[1])
    parts = _counts.CountSummaries(matrix.shape[1], proportions=False, n_jobs=n_jobs)
    for start in range(0, matrix.shape[0], 70):
        rows = slice(start, min(start + 70, matrix.shape[0]))
        whole.add(rows, _blocks.row_block(matrix, rows))
        parts.add(rows, _blocks.row_block(matrix, rows))
    np.testing.assert_array_equal(parts.cells.values(), whole.cells.values())
    assert parts.genes.n_cells == whole.genes.n_cells
    np.testing.assert_array_equal(parts.genes.detected, whole.genes.detected)
    np.testing.assert_array_equal(parts.genes.total, whole.genes.total)
    assert np.isnan(parts.genes.proportion_sum).all()
    assert np.isfinite(whole.genes.proportion_sum).all()


def test_rows_of_a_checked_block_are_not_checked_again(monkeypatch):
    matrix = _counts_matrix(seed=6)
    block = _blocks.row_block(matrix, slice(0, 100))
    calls = []
    original = _blocks.is_canonical
    monkeypatch.setattr(_blocks, "is_canonical", lambda m: calls.append(m.shape) or original(m))
    part = _blocks.row_block(block, slice(10, 40))
    assert calls == []
    assert _blocks.materialize(part) is part
    assert calls == []
    np.testing.assert_array_equal(part.toarray(), matrix[10:40].toarray())
    assert not part.indices.flags.writeable
    # A block of a matrix not made here is checked, and a non-canonical one fixed.
    unsorted = matrix.copy()
    unsorted.indices[:2] = unsorted.indices[:2][::-1].copy()
    unsorted.has_sorted_indices = False
    fixed = _blocks.row_block(unsorted, slice(0, 50))
    assert calls
    assert fixed.has_canonical_format
    np.testing.assert_array_equal(fixed.toarray(), unsorted[:50].toarray())


@pytest.mark.parametrize("n_jobs", [2, 3, 500])
def test_read_sums_in_parts_are_the_same_sums(n_jobs):
    matrix = _counts_matrix(seed=7)
    matrix.data[::9] = 0
    rng = np.random.default_rng(7)
    keep_genes = rng.random(matrix.shape[1]) > 0.2
    cell_weights = (rng.random(matrix.shape[0]) > 0.2).astype(np.float64)
    one = _counts.ReadSums(keep_genes)
    parts = _counts.ReadSums(keep_genes, n_jobs=n_jobs)
    for start in range(0, matrix.shape[0], 64):
        rows = slice(start, min(start + 64, matrix.shape[0]))
        one.add(rows, _blocks.row_block(matrix, rows), cell_weights[rows])
        parts.add(rows, _blocks.row_block(matrix, rows), cell_weights[rows])
    np.testing.assert_array_equal(parts.gene_counts, one.gene_counts)
    np.testing.assert_array_equal(parts.gene_cells, one.gene_cells)
    np.testing.assert_array_equal(parts.cells.values(), one.cells.values())
    np.testing.assert_array_equal(one.gene_counts, cell_weights @ matrix.toarray())


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, bool])
def test_subset_counts_is_scipys_indexing(dtype):
    matrix = _counts_matrix(seed=8).astype(dtype)
    matrix.data[::5] = 0  # explicit zeros are kept, as scipy keeps them
    rng = np.random.default_rng(8)
    cells, genes = rng.random(matrix.shape[0]) > 0.3, rng.random(matrix.shape[1]) > 0.4
    kept = _counts.subset_counts(matrix, cells, genes)
    expected = matrix[cells][:, genes]
    assert kept.shape == expected.shape
    assert kept.dtype == expected.dtype
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(kept, name), getattr(expected, name))
    assert kept.has_canonical_format
    empty = _counts.subset_counts(matrix, np.zeros_like(cells), genes)
    assert empty.shape == (0, genes.sum())


def _qc_by_definition(values: np.ndarray, bounds: _counts.ReadBounds):
    """The iterative QC as METHOD 1 states it, every round over the whole matrix."""
    cells = np.ones(values.shape[0], dtype=bool)
    genes = np.ones(values.shape[1], dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        kept = values[cells][:, genes]
        gene_counts = np.zeros(values.shape[1])
        gene_cells = np.zeros(values.shape[1])
        gene_counts[genes] = kept.sum(axis=0)
        gene_cells[genes] = (kept > 0).sum(axis=0)
        cell_counts = values[:, genes].sum(axis=1)
        cell_genes = (values[:, genes] > 0).sum(axis=1)
        new_genes = genes & (gene_counts >= bounds.min_gene_counts)
        new_genes &= gene_cells >= bounds.min_gene_cells
        new_genes &= gene_cells >= bounds.min_gene_cell_fraction * cells.sum()
        new_cells = cells & (cell_counts >= bounds.min_cell_counts)
        new_cells &= cell_genes >= bounds.min_cell_genes
        new_cells &= cell_genes >= bounds.min_cell_gene_fraction * genes.sum()
        if (new_cells == cells).all() and (new_genes == genes).all():
            return cells, genes, rounds, gene_counts, gene_cells
        cells, genes = new_cells, new_genes


#: (bounds, least detections of the genes kept in the data, least rounds): cells only
#: (round 2 reads the removed cells alone); cells only, and then a gene falls below its
#: bound (a round reading the removed cells, then a whole pass); cells and genes at once.
CASES = {
    "cells only": (_counts.ReadBounds(min_cell_counts=15), 0, 2),
    "then genes": (_counts.ReadBounds(min_cell_counts=15, min_gene_cells=20), 20, 3),
    "both": (BOUNDS, 0, 2),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("form", ["csr", "dense", "dask"])
def test_rounds_equal_their_definition(case, form):
    """Also where a round follows one that removed cells only (read alone, sums taken off)."""
    import dask.array as da

    bounds, least_detections, least_rounds = CASES[case]
    matrix = _counts_matrix(seed=3)
    matrix = matrix[:, np.flatnonzero((matrix.toarray() > 0).sum(axis=0) >= least_detections)]
    values = matrix.toarray()
    counts = {
        "csr": matrix,
        "dense": values,
        "dask": da.from_array(matrix, chunks=(64, -1), asarray=False),
    }[form]
    result = _counts.read_filter(counts, bounds, block_cells=64)
    cells, genes, rounds, gene_counts, gene_cells = _qc_by_definition(values, bounds)
    assert result.converged
    np.testing.assert_array_equal(result.cells, cells)
    np.testing.assert_array_equal(result.genes, genes)
    assert result.rounds == rounds >= least_rounds
    np.testing.assert_array_equal(result.last.gene_counts[genes], gene_counts[genes])
    np.testing.assert_array_equal(result.last.gene_cells[genes], gene_cells[genes])
    kept = values[cells][:, genes]
    np.testing.assert_array_equal(result.last.cells.values()[cells, 0], kept.sum(axis=1))
    np.testing.assert_array_equal(result.last.cells.values()[cells, 1], (kept > 0).sum(axis=1))
