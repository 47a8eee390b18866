"""nsc.datasets.simulate: shapes, reproducibility, planted truth and argument checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import normalisr_sc as nsc


@pytest.fixture(scope="module")
def case_control():
    return nsc.datasets.simulate(
        n_cells=1500, n_genes=200, n_batches=3, de_fraction=0.1, de_log_fold_change=1.0, seed=3
    )


def test_counts_and_annotations(case_control):
    adata = case_control
    assert adata.shape == (1500, 200)
    assert sparse.issparse(adata.X)
    assert adata.X.format == "csr"
    assert adata.X.dtype.kind == "i"
    assert adata.X.data.min() >= 0
    assert (np.asarray(adata.X.sum(axis=1)).ravel() > 0).all()
    assert adata.obs_names.is_unique
    assert adata.var_names.is_unique
    assert list(adata.obs["group"].cat.categories) == ["control", "case"]
    assert (adata.obs["group"] == "case").sum() == 750
    assert set(adata.obs["batch"].cat.categories) == {"b1", "b2", "b3"}
    # Library sizes near the requested typical total.
    median_total = np.median(np.asarray(adata.X.sum(axis=1)).ravel())
    assert 2000 < median_total < 8000
    # Some zeros and some large counts: realistic sparsity.
    assert 0.05 < 1 - adata.X.nnz / np.prod(adata.shape) < 0.95


def test_same_seed_same_data_other_seed_other_data():
    first = nsc.datasets.simulate(n_cells=100, n_genes=60, seed=9)
    second = nsc.datasets.simulate(n_cells=100, n_genes=60, seed=9)
    other = nsc.datasets.simulate(n_cells=100, n_genes=60, seed=10)
    assert (first.X != second.X).nnz == 0
    pd.testing.assert_frame_equal(first.obs, second.obs)
    assert first.uns["simulation"]["de_genes"] == second.uns["simulation"]["de_genes"]
    assert (first.X != other.X).nnz > 0


def test_planted_differential_expression(case_control):
    adata = case_control
    truth = adata.uns["simulation"]
    de_genes = truth["de_genes"]
    effects = np.asarray(truth["de_log_fold_change"])
    assert len(de_genes) == round(0.1 * 200) == effects.size
    assert set(np.abs(effects)) == {1.0}
    counts = adata.X.toarray()
    proportion = counts / counts.sum(axis=1, keepdims=True)
    case = (adata.obs["group"] == "case").to_numpy()
    genes = adata.var_names.get_indexer(de_genes)
    observed = np.log(
        proportion[case][:, genes].mean(axis=0) / proportion[~case][:, genes].mean(axis=0)
    )
    # Signs recovered for (nearly) every DE gene; unaffected genes barely move.
    assert (np.sign(observed) == np.sign(effects)).mean() >= 0.9
    others = np.setdiff1d(np.arange(adata.n_vars), genes)
    null = np.log(
        proportion[case][:, others].mean(axis=0) / proportion[~case][:, others].mean(axis=0)
    )
    assert np.median(np.abs(null)) < 0.5 * np.median(np.abs(observed))


def test_null_genes_calibrated_without_de():
    """With no planted DE, case-control p-values of every gene are uniform."""
    from scipy import stats

    adata = nsc.datasets.simulate(n_cells=1000, n_genes=300, de_fraction=0, seed=4)
    nsc.pp.normalize(adata, covariates=["batch"])
    nsc.tl.de(adata, "group", reference="control")
    pvals = nsc.get.de_df(adata)["pval"].to_numpy(float)
    assert stats.kstest(pvals, "uniform").pvalue > 0.01
    assert 0.02 < (pvals < 0.05).mean() < 0.08


def test_planted_modules_are_correlated(case_control):
    adata = case_control
    modules = adata.uns["simulation"]["modules"]
    assert sorted(modules) == ["module1", "module2"]
    assert all(len(genes) == 10 for genes in modules.values())
    assert not set(modules["module1"]) & set(modules["module2"])
    log_expression = np.log1p(adata.X.toarray() / adata.X.sum(axis=1).A * 1e4)
    correlation = np.corrcoef(log_expression, rowvar=False)
    inside = adata.var_names.get_indexer(modules["module1"])
    within = correlation[np.ix_(inside, inside)][np.triu_indices(inside.size, 1)]
    outside = np.setdiff1d(np.arange(adata.n_vars), inside)[:40]
    between = correlation[np.ix_(inside, outside)]
    assert within.mean() > between.mean() + 0.1


def test_low_moi_screen():
    adata = nsc.datasets.simulate(
        n_cells=1200,
        n_genes=150,
        n_targets=5,
        guides_per_target=2,
        n_non_targeting=3,
        knockdown=1.5,
        seed=4,
    )
    guides = adata.obsm["grna_counts"]
    assert isinstance(guides, pd.DataFrame)
    assert guides.shape == (1200, 5 * 2 + 3)
    table = adata.uns["grna_group"]
    assert list(table.columns) == ["grna_id", "grna_group"]
    assert list(table["grna_id"]) == list(guides.columns)
    assert (table["grna_group"] == "non-targeting").sum() == 3
    carried = adata.uns["simulation"]["guides_carried"].toarray().astype(bool)
    assert (carried.sum(axis=1) == 1).all()  # low MOI: exactly one guide per cell
    # The customary assignment (max UMI guide) recovers the carried guide.
    assert (guides.to_numpy().argmax(axis=1) == carried.argmax(axis=1)).mean() > 0.99
    targets = adata.uns["simulation"]["targets"]
    assert list(targets["grna_group"]) == [f"target{t:03d}" for t in range(5)]
    assert (targets["log_fold_change"] == -1.5).all()
    counts = adata.X.toarray()
    proportion = counts / counts.sum(axis=1, keepdims=True)
    for group, gene in zip(targets["grna_group"], targets["gene"], strict=True):
        has = carried[:, (table["grna_group"] == group).to_numpy()].any(axis=1)
        column = adata.var_names.get_loc(gene)
        fold = np.log(proportion[has, column].mean() / proportion[~has, column].mean())
        assert fold < -0.7, (group, fold)


def test_high_moi_screen():
    adata = nsc.datasets.simulate(n_cells=800, n_genes=120, n_targets=6, moi=3.0, seed=5)
    carried = adata.uns["simulation"]["guides_carried"].toarray()
    per_cell = carried.sum(axis=1)
    assert abs(per_cell.mean() - 3.0) < 0.3
    assert per_cell.max() > 1
    assert adata.uns["simulation"]["params"]["moi"] == 3.0
    assert adata.uns["simulation"]["params"]["n_targets"] == 6


def test_no_screen_has_empty_targets(case_control):
    targets = case_control.uns["simulation"]["targets"]
    assert isinstance(targets, pd.DataFrame)
    assert targets.empty
    assert "grna_counts" not in case_control.obsm
    assert case_control.uns["simulation"]["params"]["moi"] == "low"


def test_simulated_data_normalizes(case_control):
    result = nsc.pp.normalize(case_control, covariates=["batch"], copy=True)
    assert np.isfinite(result.layers["normalisr"]).all()
    assert result.n_obs > 0.9 * case_control.n_obs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_cells": 3}, "`n_cells` must be an integer >= 4"),
        ({"n_genes": 1, "n_modules": 0}, "`n_genes` must be an integer >= 2"),
        (
            {"n_genes": 20, "n_modules": 2, "module_size": 10, "n_targets": 1},
            "= 21 planted genes, but n_genes=20",
        ),
        ({"de_fraction": 1.5}, r"`de_fraction` must be a finite number in \[0, 1\]"),
        ({"de_fraction": -0.1}, r"`de_fraction` must be a finite number in \[0, 1\]"),
        ({"n_targets": 2, "moi": 0.0}, "`moi` must be a finite number > 0 or None"),
        ({"seed": 1.5}, "`seed` must be an integer >= 0"),
        ({"dispersion": float("nan")}, "`dispersion` must be a finite number > 0"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nsc.datasets.simulate(**kwargs)
