"""How many times the steps read the counts: a pass more is a regression (issue 14).

In memory, the passes are counted as the blocks the accumulators and lcpm read from the
(sparse) counts; streamed, as the chunks of a dask array of counts computed, which is
what reading an h5ad from disk costs (the lazy log CPM layer recomputes them too).
"""

from __future__ import annotations

import threading
from functools import partial

import numpy as np
import pytest
from anndata import AnnData
from scipy import sparse

import normalisr_sc as nsc
from normalisr_sc._core import _blocks, _reduce
from normalisr_sc.pp import _lcpm

from .._helpers import assert_unchanged

BLOCK = 50
#: Bounds of which the first round removes cells and genes, so that QC runs two rounds.
QC = {"min_gene_cells": 40, "min_cell_counts": 200}


def _simulated(n_cells: int = 400, n_genes: int = 120, *, shallow: bool = True) -> AnnData:
    adata = nsc.datasets.simulate(n_cells=n_cells, n_genes=n_genes, seed=3)
    counts = adata.X.toarray()
    if shallow:
        counts[:15] = np.random.default_rng(3).binomial(counts[:15], 0.02)
        counts[20:, :4] = 0  # four rare genes
    adata.X = sparse.csr_matrix(counts)
    return adata


class _SparseReads:
    """Count the cells read from sparse matrices (the counts; layers are dense).

    Parts of a block already read (``row_block`` of a block) are not counted again.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cells = 0
        for module in (_reduce, _lcpm):
            original = module.row_block

            def counted(matrix, rows, original=original):
                if sparse.issparse(matrix) and matrix.shape[0] > BLOCK:
                    self.cells += len(range(*rows.indices(matrix.shape[0])))
                return original(matrix, rows)

            monkeypatch.setattr(module, "row_block", counted)

    def passes(self, n_cells: int) -> float:
        return self.cells / n_cells


def _streamed_counts(counts: sparse.csr_matrix, calls: list[int]):
    """A dask array of CSR chunks of ``counts`` that counts the chunks computed."""
    import dask.array as da

    lock = threading.Lock()

    def read(block):
        with lock:
            calls[0] += 1
        return block

    lazy = da.from_array(counts, chunks=(BLOCK, -1), asarray=False)
    return lazy.map_blocks(read, dtype=counts.dtype, meta=sparse.csr_matrix((0, 0)))


def test_qc_reads_one_pass_per_round(monkeypatch):
    adata = _simulated()
    reads = _SparseReads(monkeypatch)
    nsc.pp.qc_reads(adata, **QC, chunk_size=BLOCK)
    rounds = adata.uns["nsc_qc"]["params"]["rounds"]
    assert rounds == 2
    # The counts are checked in the first round's pass, the summary comes from its sums.
    assert reads.passes(400) == rounds


def test_qc_round_after_removing_cells_only_reads_them(monkeypatch):
    """The round confirming a round that removed cells only reads those cells alone."""
    adata = _simulated()
    reads = _SparseReads(monkeypatch)
    nsc.pp.qc_reads(adata, min_cell_counts=200, chunk_size=BLOCK)
    assert adata.uns["nsc_qc"]["params"]["rounds"] == 2
    removed = 400 - adata.n_obs
    assert 0 < removed < BLOCK
    assert adata.n_vars == 120  # no gene removed
    # One pass; the removed cells are then taken out of the counts by indexing (a
    # matrix of their rows alone, under the counted size), not by a second pass.
    assert reads.cells == 400


def test_qc_round_after_removing_cells_only_streamed():
    adata = _simulated()
    calls = [0]
    streamed = AnnData(
        X=_streamed_counts(adata.X, calls), obs=adata.obs.copy(), var=adata.var.copy()
    )
    nsc.pp.qc_reads(streamed, min_cell_counts=200, chunk_size=BLOCK)
    nsc.pp.qc_reads(adata, min_cell_counts=200, chunk_size=BLOCK)
    assert streamed.uns["nsc_qc"]["params"]["rounds"] == 2
    np.testing.assert_array_equal(streamed.obs_names, adata.obs_names)
    # One pass, then the one chunk holding the removed cells (the first 15).
    assert calls[0] == _blocks.n_blocks(400, BLOCK) + 1


def test_qc_reads_nothing_removed_one_pass(monkeypatch):
    adata = _simulated(shallow=False)
    counts = adata.X
    reads = _SparseReads(monkeypatch)
    nsc.pp.qc_reads(adata, min_cell_counts=1, chunk_size=BLOCK)
    assert reads.passes(400) == 1
    assert adata.X is counts  # nothing removed: no copy
    assert adata.uns["nsc_qc"]["params"]["rounds"] == 1


def test_normalize_in_memory_passes(monkeypatch):
    adata = _simulated()
    reads = _SparseReads(monkeypatch)
    nsc.pp.normalize(adata, ["batch"], qc=QC, chunk_size=BLOCK)
    # Two QC rounds, and the log CPM written from the counts; the count summary of lcpm
    # is the last QC round's (no pass of its own). The later steps read the layers.
    assert reads.cells == 2 * 400 + 385


def test_lcpm_alone_reads_its_summary(monkeypatch):
    adata = _simulated(shallow=False)
    reads = _SparseReads(monkeypatch)
    nsc.pp.lcpm(adata, chunk_size=BLOCK)
    assert reads.passes(400) == 2  # the count summary, then the log CPM


@pytest.mark.parametrize(("qc", "shallow", "rounds"), [(None, False, 0), (QC, False, 1)])
def test_normalize_streamed_passes(qc, shallow, rounds):
    adata = _simulated(shallow=shallow)
    calls = [0]
    n_chunks = _blocks.n_blocks(adata.n_obs, BLOCK)
    streamed = AnnData(
        X=_streamed_counts(adata.X, calls), obs=adata.obs.copy(), var=adata.var.copy()
    )
    nsc.pp.normalize(streamed, ["batch"], qc=qc, chunk_size=BLOCK, remove_outliers=False)
    expected = {"qc": rounds, "lcpm summary": 1 if qc is None else 0}
    # compute_var and normvar: their passes, and each a first fit on the first 1,024
    # cells (all 400 cells here)
    expected |= {"compute_var": 2 + 1, "normvar": 1 + 1}
    passes = calls[0] / n_chunks
    # The store's fingerprints of the two lazy layers read a few sample rows: under a pass.
    assert sum(expected.values()) <= passes < sum(expected.values()) + 1, (passes, expected)


def test_normalize_streamed_equals_in_memory_with_qc():
    adata = _simulated()
    calls = [0]
    streamed = AnnData(
        X=_streamed_counts(adata.X, calls), obs=adata.obs.copy(), var=adata.var.copy()
    )
    nsc.pp.normalize(streamed, ["batch"], qc=QC, chunk_size=BLOCK)
    nsc.pp.normalize(adata, ["batch"], qc=QC, chunk_size=BLOCK)
    assert streamed.shape == adata.shape == (385, 116)
    for key in ("lcpm", "normalisr"):
        np.testing.assert_array_equal(np.asarray(streamed.layers[key].compute()), adata.layers[key])
    np.testing.assert_array_equal(streamed.obsm["nsc_cov"], adata.obsm["nsc_cov"])
    np.testing.assert_array_equal(streamed.var["nsc_scale"], adata.var["nsc_scale"])
    assert streamed.uns["nsc_qc"]["summary"] == adata.uns["nsc_qc"]["summary"]


BAD = {
    "negative": (-1, "negative values"),
    "nan": (np.nan, "NaN or infinite"),
    "fractional": (0.5, "non-integer values"),
    "huge": (2.0**64, "at least 2\\*\\*63"),
}


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("step", ["qc_reads", "qc_reads-inplace=False", "normalize"])
@pytest.mark.parametrize("streamed", [False, True])
def test_bad_counts_refused_before_any_change(bad, step, streamed):
    adata = _simulated(shallow=False)
    counts = adata.X.astype(np.float64)
    # A bad count in the last block: the check cannot have stopped early.
    counts[390, 7] = BAD[bad][0]
    adata.X = counts
    if streamed:
        adata.X = _streamed_counts(counts, [0])
    before = adata.copy()
    if step == "normalize":
        run = partial(nsc.pp.normalize, adata, ["batch"], qc=QC)
    else:
        run = partial(nsc.pp.qc_reads, adata, **QC, inplace=step == "qc_reads")
    with pytest.raises(ValueError, match=BAD[bad][1]):
        run(chunk_size=BLOCK)
    if streamed:
        assert adata.X.name == before.X.name
        assert adata.uns.keys() == before.uns.keys()
        assert adata.shape == before.shape
    else:
        assert_unchanged(before, adata)


def test_qc_subset_equals_anndatas(monkeypatch):
    import pandas as pd

    from normalisr_sc.pp import _qc

    adata = _simulated()
    adata.obs["batch"] = pd.Categorical(adata.obs["batch"])
    adata.layers["other"] = adata.X.copy() * 2
    adata.obsm["embedding"] = np.arange(2 * adata.n_obs).reshape(-1, 2)
    cells = np.arange(adata.n_obs) % 3 != 0
    genes = np.arange(adata.n_vars) % 4 != 0
    counts = adata.X
    kept = _qc._subset(adata, cells, genes)
    expected = adata[cells, genes].copy()
    assert adata.X is counts  # the user's AnnData is as it was
    assert_unchanged(expected, kept)
    assert type(kept.X) is sparse.csr_matrix

    def fail(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(AnnData, "copy", fail)
    with pytest.raises(MemoryError):
        _qc._subset(adata, cells, genes)
    assert adata.X is counts
