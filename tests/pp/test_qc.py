"""nsc.pp.qc_reads (METHOD 1) and nsc.pp.qc_outlier (METHOD 6)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse, stats

import normalisr_sc as nsc

from .._helpers import FORMATS, as_format, assert_unchanged, block_size, counts_adata

BOUND_NAMES = (
    "min_gene_counts",
    "min_gene_cells",
    "min_gene_cell_fraction",
    "min_cell_counts",
    "min_cell_genes",
    "min_cell_gene_fraction",
)


def naive_qc_reads(counts: np.ndarray, **bounds) -> tuple[np.ndarray, np.ndarray]:
    """METHOD 1 written out on a dense matrix: simultaneous masks, repeat until stable."""
    b = dict.fromkeys(BOUND_NAMES, 0) | bounds
    cells = np.ones(counts.shape[0], dtype=bool)
    genes = np.ones(counts.shape[1], dtype=bool)
    while True:
        sub = counts[np.ix_(cells, genes)]
        gene_ok = (
            (sub.sum(axis=0) >= b["min_gene_counts"])
            & ((sub > 0).sum(axis=0) >= b["min_gene_cells"])
            & ((sub > 0).sum(axis=0) >= b["min_gene_cell_fraction"] * sub.shape[0])
        )
        cell_ok = (
            (sub.sum(axis=1) >= b["min_cell_counts"])
            & ((sub > 0).sum(axis=1) >= b["min_cell_genes"])
            & ((sub > 0).sum(axis=1) >= b["min_cell_gene_fraction"] * sub.shape[1])
        )
        if gene_ok.all() and cell_ok.all():
            return cells, genes
        cells[np.flatnonzero(cells)[~cell_ok]] = False
        genes[np.flatnonzero(genes)[~gene_ok]] = False
        if not cells.any() or not genes.any():
            return cells, genes


# ---------------------------------------------------------------- qc_reads, by hand

#: Round 1 removes gene 2 (one cell) and cell 3 (total 1); that drops cell 2's total to
#: 1, so round 2 removes cell 2; round 3 confirms. A single pass would keep cell 2.
ITERATIVE = np.array(
    [
        [2, 2, 0],
        [2, 2, 0],
        [1, 0, 2],
        [0, 1, 0],
    ]
)


@pytest.mark.parametrize("fmt", FORMATS)
def test_qc_reads_second_round_removes_more(fmt):
    adata = counts_adata(ITERATIVE, fmt)
    cells, genes = nsc.pp.qc_reads(adata, min_gene_cells=2, min_cell_counts=3, inplace=False)
    np.testing.assert_array_equal(cells, [True, True, False, False])
    np.testing.assert_array_equal(genes, [True, True, False])
    # A single pass would have kept cell 2 (its total is 3 before gene 2 goes).
    assert ITERATIVE[2].sum() >= 3

    nsc.pp.qc_reads(adata, min_gene_cells=2, min_cell_counts=3)
    assert adata.shape == (2, 2)
    assert list(adata.obs_names) == ["cell0", "cell1"]
    assert list(adata.var_names) == ["gene0", "gene1"]
    params = adata.uns["nsc_qc"]["params"]
    assert params["rounds"] == 3
    assert params["min_gene_cells"] == 2
    assert params["min_cell_counts"] == 3


def test_qc_reads_masks_are_simultaneous():
    """Gene fractions use the cell count of the same round, before that round's removals."""
    counts = np.array(
        [
            [1, 1, 0],
            [1, 1, 1],
            [1, 0, 0],
            [0, 1, 0],
        ]
    )
    adata = counts_adata(counts)
    cells, genes = nsc.pp.qc_reads(
        adata, min_cell_genes=2, min_gene_cell_fraction=0.5, inplace=False
    )
    np.testing.assert_array_equal(cells, [True, True, False, False])
    # Gene 2 is in 1 of 4 cells (< 0.5) in round 1; removing cells first would keep it
    # (1 of 2 cells).
    np.testing.assert_array_equal(genes, [True, True, False])


@pytest.mark.parametrize(
    ("bounds", "cells", "genes"),
    [
        ({}, [1, 1, 1, 1], [1, 1, 1]),
        ({"min_gene_counts": 4}, [1, 1, 1, 1], [1, 1, 0]),
        ({"min_gene_counts": 4, "min_cell_counts": 2}, [1, 1, 0, 0], [1, 1, 0]),
        ({"min_gene_cells": 3}, [1, 1, 1, 1], [1, 1, 0]),
        ({"min_gene_cell_fraction": 0.75}, [1, 1, 1, 1], [1, 1, 0]),
        ({"min_cell_counts": 4}, [1, 1, 0, 0], [1, 1, 1]),
        ({"min_cell_genes": 2}, [1, 1, 1, 0], [1, 1, 1]),
        ({"min_cell_gene_fraction": 0.6}, [1, 1, 1, 0], [1, 1, 1]),
    ],
)
def test_qc_reads_each_bound(bounds, cells, genes):
    adata = counts_adata(ITERATIVE)
    got_cells, got_genes = nsc.pp.qc_reads(adata, **bounds, inplace=False)
    np.testing.assert_array_equal(got_cells, np.array(cells, dtype=bool))
    np.testing.assert_array_equal(got_genes, np.array(genes, dtype=bool))
    assert got_cells.dtype == bool
    assert got_genes.dtype == bool


def test_qc_reads_not_inplace_leaves_adata_unchanged(counts_adata):
    before = counts_adata.copy()
    result = nsc.pp.qc_reads(counts_adata, min_gene_cells=100, min_cell_genes=30, inplace=False)
    assert isinstance(result, tuple)
    cells, genes = result
    assert cells.shape == (counts_adata.n_obs,)
    assert genes.shape == (counts_adata.n_vars,)
    assert 0 < genes.sum() < genes.size
    assert_unchanged(before, counts_adata)


def test_qc_reads_inplace_subsets_everything(counts_adata, make_counts):
    adata = counts_adata
    adata.layers["counts"] = adata.X.copy()
    adata.obsm["pos"] = np.arange(adata.n_obs * 2).reshape(-1, 2)
    adata.var["id"] = np.arange(adata.n_vars)
    cells, genes = nsc.pp.qc_reads(adata, min_gene_cells=100, min_cell_genes=30, inplace=False)
    full = adata.copy()
    assert nsc.pp.qc_reads(adata, min_gene_cells=100, min_cell_genes=30) is None
    assert adata.shape == (cells.sum(), genes.sum())
    assert list(adata.obs_names) == list(full.obs_names[cells])
    assert list(adata.var_names) == list(full.var_names[genes])
    np.testing.assert_array_equal(adata.X.toarray(), full.X[cells][:, genes].toarray())
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), adata.X.toarray())
    np.testing.assert_array_equal(adata.obsm["pos"], full.obsm["pos"][cells])
    np.testing.assert_array_equal(adata.var["id"], np.flatnonzero(genes))
    assert list(adata.obs["batch"]) == list(full.obs["batch"][cells])


def test_qc_reads_layer(counts_adata):
    adata = counts_adata
    adata.layers["counts"] = adata.X.copy()
    adata.X = sparse.csr_matrix(adata.shape)  # X no longer holds the counts
    cells, genes = nsc.pp.qc_reads(adata, min_gene_cells=100, layer="counts", inplace=False)
    expected = naive_qc_reads(adata.layers["counts"].toarray(), min_gene_cells=100)
    np.testing.assert_array_equal(cells, expected[0])
    np.testing.assert_array_equal(genes, expected[1])
    assert not genes.all()


def test_qc_reads_on_view():
    counts = np.tile(ITERATIVE, (2, 1))
    parent = counts_adata(counts)
    before = parent.copy()
    view = parent[:4]
    assert view.is_view
    nsc.pp.qc_reads(view, min_gene_cells=2, min_cell_counts=3)
    assert not view.is_view
    assert view.shape == (2, 2)
    assert list(view.obs_names) == ["cell0", "cell1"]
    assert_unchanged(before, parent)


def test_qc_reads_logs_what_went(caplog):
    caplog.set_level(logging.INFO, logger="normalisr_sc")
    nsc.pp.qc_reads(counts_adata(ITERATIVE), min_gene_cells=2, min_cell_counts=3)
    assert "removed 1/3 genes and 2/4 cells in 3 rounds" in caplog.text


def test_qc_reads_realistic_matches_naive(make_counts):
    counts = make_counts(300, 80, seed=4, mean_total=300)
    bounds = {
        "min_gene_cells": 40,
        "min_gene_cell_fraction": 0.2,
        "min_cell_counts": 150,
        "min_cell_genes": 15,
    }
    cells, genes = nsc.pp.qc_reads(counts_adata(counts), **bounds, inplace=False)
    expected_cells, expected_genes = naive_qc_reads(counts, **bounds)
    np.testing.assert_array_equal(cells, expected_cells)
    np.testing.assert_array_equal(genes, expected_genes)
    assert 0 < cells.sum() < cells.size
    assert 0 < genes.sum() < genes.size


@pytest.mark.slow  # a hypothesis sweep
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_cells=st.integers(3, 40),
    n_genes=st.integers(2, 15),
    bounds=st.fixed_dictionaries(
        {},
        optional={
            "min_gene_counts": st.integers(0, 30),
            "min_gene_cells": st.integers(0, 10),
            "min_gene_cell_fraction": st.floats(0, 1),
            "min_cell_counts": st.integers(0, 30),
            "min_cell_genes": st.integers(0, 8),
            "min_cell_gene_fraction": st.floats(0, 1),
        },
    ),
    fmt=st.sampled_from(FORMATS),
    dtype=st.sampled_from([np.int64, np.int32, np.float32, np.float64]),
    block=st.sampled_from([1, 7, 4096]),
)
def test_qc_reads_property(seed, n_cells, n_genes, bounds, fmt, dtype, block):
    """Any format, count dtype and block size gives the masks of the naive algorithm."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.5, 4.0, (n_cells, n_genes)))
    expected_cells, expected_genes = naive_qc_reads(counts, **bounds)
    adata = AnnData(X=as_format(counts.astype(dtype), fmt))
    with block_size(block):
        if not expected_cells.any() or not expected_genes.any():
            with pytest.raises(ValueError, match="removed every"):
                nsc.pp.qc_reads(adata, **bounds, inplace=False)
            return
        cells, genes = nsc.pp.qc_reads(adata, **bounds, inplace=False)
    np.testing.assert_array_equal(cells, expected_cells)
    np.testing.assert_array_equal(genes, expected_genes)


# ---------------------------------------------------------------- qc_outlier


def naive_outliers(weights: np.ndarray, pcut: float, outrate: float) -> np.ndarray:
    """METHOD 6 written out: quantile start, Normal fit, Bonferroni test, repeat until stable."""
    n = weights.size
    low, high = int(np.ceil(outrate * n)), int(np.floor((1 - outrate) * n))
    ordered = np.sort(weights)
    inliers = (weights >= ordered[low]) & (weights <= ordered[high])
    history = [np.ones(n, dtype=bool)]
    while True:
        mean, sd = weights[inliers].mean(), weights[inliers].std()
        p = 2 * stats.norm.sf(np.abs(weights - mean) / sd)
        inliers = p >= pcut / n
        seen = sum(np.array_equal(past, inliers) for past in history)
        if seen >= 3 and seen >= 0.1 * len(history):
            return ~inliers
        history.append(inliers)


def weights_adata(weights: np.ndarray) -> AnnData:
    adata = AnnData(X=np.ones((weights.size, 2)))
    adata.obs_names = [f"cell{i}" for i in range(weights.size)]
    adata.obs["nsc_weight"] = weights
    return adata


@pytest.fixture
def planted_weights() -> tuple[np.ndarray, np.ndarray]:
    """1000 weights around 3 with three high and two low outliers planted."""
    rng = np.random.default_rng(11)
    weights = rng.normal(3.0, 0.1, 1000)
    planted = np.array([5, 100, 500, 501, 900])
    weights[planted] = [6.0, 4.5, 1.0, 1.5, 9.0]
    return weights, planted


def test_qc_outlier_finds_planted(planted_weights):
    weights, planted = planted_weights
    adata = weights_adata(weights)
    nsc.pp.qc_outlier(adata, inplace=False)
    assert adata.n_obs == weights.size
    assert adata.obs["nsc_outlier"].dtype == bool
    np.testing.assert_array_equal(np.flatnonzero(adata.obs["nsc_outlier"]), planted)
    params = adata.uns["nsc_outlier"]["params"]
    assert params["n_outliers"] == planted.size
    assert params["removed"] is False
    assert params["iterations"] >= 3


def test_qc_outlier_inplace_drops(planted_weights):
    weights, planted = planted_weights
    adata = weights_adata(weights)
    nsc.pp.qc_outlier(adata)
    assert adata.n_obs == weights.size - planted.size
    assert not adata.obs["nsc_outlier"].any()
    kept = np.setdiff1d(np.arange(weights.size), planted)
    assert list(adata.obs_names) == [f"cell{i}" for i in kept]
    np.testing.assert_array_equal(adata.obs["nsc_weight"], weights[kept])


def test_qc_outlier_none_on_normal_weights():
    weights = np.random.default_rng(0).normal(3.0, 0.1, 500)
    adata = weights_adata(weights)
    nsc.pp.qc_outlier(adata)
    assert adata.n_obs == 500
    assert not adata.obs["nsc_outlier"].any()


def test_qc_outlier_pcut_and_key(planted_weights):
    """A lax cut flags more cells; the result goes to ``key_added``."""
    weights, planted = planted_weights
    adata = weights_adata(weights)
    nsc.pp.qc_outlier(adata, pcut=0.5, outrate=0.2, key_added="odd", inplace=False)
    flagged = adata.obs["odd"].to_numpy()
    assert "nsc_outlier" not in adata.obs
    assert flagged[planted].all()
    assert flagged.sum() >= planted.size
    np.testing.assert_array_equal(flagged, naive_outliers(weights, 0.5, 0.2))


def test_qc_outlier_custom_weights_key(planted_weights):
    weights, planted = planted_weights
    adata = weights_adata(np.ones_like(weights))
    adata.obs["w"] = weights
    nsc.pp.qc_outlier(adata, weights_key="w", inplace=False)
    np.testing.assert_array_equal(np.flatnonzero(adata.obs["nsc_outlier"]), planted)


def test_qc_outlier_on_view(planted_weights):
    weights, planted = planted_weights
    parent = weights_adata(weights)
    before = parent.copy()
    view = parent[:600]
    nsc.pp.qc_outlier(view)
    assert not view.is_view
    assert view.n_obs == 600 - np.sum(planted < 600)
    assert_unchanged(before, parent)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(60, 400),
    df=st.floats(1.5, 30.0),
    pcut=st.sampled_from([1e-10, 1e-4, 0.05, 0.5]),
    outrate=st.sampled_from([0.02, 0.05, 0.2]),
)
def test_qc_outlier_matches_naive(seed, n, df, pcut, outrate):
    """Heavy-tailed weights: the outlier mask is that of the naive algorithm (or both refuse)."""
    rng = np.random.default_rng(seed)
    weights = 5.0 + np.abs(rng.standard_t(df, n))
    expected = naive_outliers(weights, pcut, outrate)
    adata = weights_adata(weights)
    if expected.mean() > 2 * outrate:
        with pytest.raises(ValueError, match="variance outliers"):
            nsc.pp.qc_outlier(adata, pcut=pcut, outrate=outrate, inplace=False)
        return
    nsc.pp.qc_outlier(adata, pcut=pcut, outrate=outrate, inplace=False)
    np.testing.assert_array_equal(adata.obs["nsc_outlier"].to_numpy(), expected)


def test_qc_outlier_after_compute_var_flags_deep_cells(make_counts):
    """Cells with 40x the library size get outlying weights and are removed."""
    counts = make_counts(400, 100, seed=0)
    rng = np.random.default_rng(0)
    deep = np.sort(rng.choice(400, 6, replace=False))
    counts[deep] = counts[deep] * 40 + rng.poisson(5, (6, 100))
    adata = counts_adata(counts)
    nsc.pp.lcpm(adata)
    nsc.pp.normcov(adata)
    nsc.pp.compute_var(adata)
    nsc.pp.qc_outlier(adata, inplace=False)
    flagged = adata.obs["nsc_outlier"].to_numpy()
    assert flagged[deep].all()
    assert flagged.sum() <= 2 * 0.02 * 400
    expected = naive_outliers(adata.obs["nsc_weight"].to_numpy(), 1e-10, 0.02)
    np.testing.assert_array_equal(flagged, expected)


def test_qc_outlier_keeps_obs_columns(planted_weights):
    weights, planted = planted_weights
    adata = weights_adata(weights)
    adata.obs["label"] = pd.Categorical(np.arange(weights.size) % 2)
    nsc.pp.qc_outlier(adata)
    kept = np.setdiff1d(np.arange(weights.size), planted)
    np.testing.assert_array_equal(adata.obs["label"].to_numpy(), kept % 2)


# ---------------------------------------------------------------- what QC removed, said


def test_qc_reads_summary_per_bound():
    adata = counts_adata(ITERATIVE)
    nsc.pp.qc_reads(adata, min_gene_cells=2, min_cell_counts=3)
    summary = adata.uns["nsc_qc"]["summary"]
    assert (summary["n_cells_in"], summary["n_cells_kept"]) == (4, 2)
    assert (summary["n_genes_in"], summary["n_genes_kept"]) == (3, 2)
    # Cell 3 fails min_cell_counts on the input; cell 2 goes in round 2 only.
    assert summary["cells_removed"] == {"min_cell_counts": 1, "later_rounds": 1}
    assert summary["genes_removed"] == {"min_gene_cells": 1, "later_rounds": 0}
    assert summary["bounds"]["min_cell_counts"] == 3
    text = nsc.pp._qc.format_qc_summary(summary)
    assert "cells: 2 of 4 kept (50.0%)" in text
    assert "cells below min_cell_counts=3 (total counts): 1" in text
    assert "cells removed in later rounds: 1" in text
    assert "genes below min_gene_cells=2 (cells detected in): 1" in text


def test_qc_reads_warns_when_many_go(caplog):
    caplog.set_level(logging.WARNING, logger="normalisr_sc")
    nsc.pp.qc_reads(counts_adata(ITERATIVE), min_gene_cells=2, min_cell_counts=3)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # cells (2 of 4) and genes (1 of 3)
    cells, genes = (r.getMessage() for r in warnings)
    assert "removed 2 of 4 cells (50.0%)" in cells
    assert "1 below min_cell_counts=3 (total counts)" in cells
    assert "lower `min_cell_counts`" in cells
    assert "qc=" in cells
    assert "removed 1 of 3 genes" in genes
    assert "lower `min_gene_cells`" in genes


def test_qc_reads_quiet_when_few_go(caplog, counts_adata):
    caplog.set_level(logging.WARNING, logger="normalisr_sc")
    cells, genes = nsc.pp.qc_reads(counts_adata, min_cell_genes=60, inplace=False)
    assert 0 < (~cells).sum() <= 0.1 * cells.size
    assert genes.all()
    assert not caplog.records


def test_qc_reads_bounds_scaled_to_the_genes_measured():
    """transcriptome_genes=N: the cell count and gene bounds shrink by n_genes / N."""
    counts = np.array([[4, 1, 0], [2, 0, 0], [3, 3, 3], [1, 1, 0]])
    adata = counts_adata(counts)
    # 3 genes of a 6-gene transcriptome: 6 counts -> 3, 2 genes -> 1.
    cells, _genes = nsc.pp.qc_reads(
        adata, min_cell_counts=6, min_cell_genes=2, transcriptome_genes=6, inplace=False
    )
    np.testing.assert_array_equal(cells, [True, False, True, False])
    plain, _ = nsc.pp.qc_reads(adata, min_cell_counts=3, min_cell_genes=1, inplace=False)
    np.testing.assert_array_equal(cells, plain)
    # A transcriptome at least as large as N is held to the bounds as given.
    same, _ = nsc.pp.qc_reads(
        adata, min_cell_counts=6, min_cell_genes=2, transcriptome_genes=3, inplace=False
    )
    np.testing.assert_array_equal(same, [False, False, True, False])
    nsc.pp.qc_reads(adata, min_cell_counts=6, min_cell_genes=2, transcriptome_genes=6)
    assert adata.uns["nsc_qc"]["params"]["min_cell_counts"] == 3
    assert adata.uns["nsc_qc"]["params"]["transcriptome_genes"] == 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_cell_counts": "500"}, "`min_cell_counts` must be a finite number >= 0"),
        ({"min_gene_cell_fraction": 2}, r"`min_gene_cell_fraction` must be a finite number in"),
        ({"transcriptome_genes": 0}, "`transcriptome_genes` must be an integer >= 1"),
        ({"inplace": "yes"}, "`inplace` must be True or False"),
    ],
)
def test_qc_reads_parameters_checked(kwargs, match):
    adata = counts_adata(ITERATIVE)
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        nsc.pp.qc_reads(adata, **kwargs)
    assert_unchanged(before, adata)


def test_qc_outlier_summary_and_parameters(planted_weights):
    adata = weights_adata(planted_weights[0])
    nsc.pp.qc_outlier(adata)
    n_outliers = adata.uns["nsc_outlier"]["params"]["n_outliers"]
    assert n_outliers > 0
    summary = adata.uns["nsc_qc"]["summary"]
    assert summary["outliers_removed"] == n_outliers
    assert summary["n_cells_in"] - summary["n_cells_kept"] == n_outliers
    assert summary["n_cells_kept"] == adata.n_obs
    assert "variance outliers: " in nsc.pp._qc.format_qc_summary(summary)
    with pytest.raises(ValueError, match="`pcut` must be a finite number in"):
        nsc.pp.qc_outlier(weights_adata(planted_weights[0]), pcut="0.1")


def test_qc_outlier_refuses_a_users_column(planted_weights):
    adata = weights_adata(planted_weights[0])
    adata.obs["nsc_outlier"] = "mine"
    before = adata.copy()
    with pytest.raises(ValueError, match=r"adata.obs\['nsc_outlier'\] already exists"):
        nsc.pp.qc_outlier(adata)
    assert_unchanged(before, adata)


def test_format_qc_summary_refuses_non_mapping():
    with pytest.raises(ValueError, match="`summary` must be a mapping"):
        nsc.pp._qc.format_qc_summary(["n_cells_in"])
    assert nsc.pp._qc.format_qc_summary({}) == "no quality control recorded"


@pytest.mark.slow  # reads PBMC 3k
def test_pbmc_default_qc_is_the_papers_recipe(shared_data):
    """On a whole transcriptome (32,738 genes) the default bounds are the paper's."""
    from anndata import read_h5ad

    adata = read_h5ad(shared_data / "pbmc3k_raw.h5ad")
    default = nsc.pp.qc_reads(adata, **nsc.pp.DEFAULT_QC, inplace=False)
    paper = nsc.pp.qc_reads(
        adata,
        min_gene_cells=50,
        min_gene_cell_fraction=0.02,
        min_cell_counts=500,
        min_cell_genes=100,
        inplace=False,
    )
    for got, expected in zip(default, paper, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert (~paper[1]).sum() > 0  # the bounds did act
