"""Per-pair effective sample size of ``nsc.tl.de`` (issue 13, section 3): the cells with a
nonzero count of each gene among the cells of each group and among its control cells,
the pairs excluded from the q-values, and what the user reads of them."""

from __future__ import annotations

import logging

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

import normalisr_sc as nsc
from normalisr_sc._store import owned

from .._helpers import assert_unchanged

SCREEN = "nsc_guides"
NT = "non-targeting"


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


def expected_counts(adata, groupby, design, reference, names):
    """Independent count: the cells of each test written out per design, then numpy sums."""
    nonzero = _dense(adata.X) != 0
    if groupby in adata.obs.columns:
        column = adata.obs[groupby]
        labelled = column.notna().to_numpy()
        levels = [str(c) for c in column.astype("category").cat.categories]
        member = np.column_stack([(column.astype(str) == g).to_numpy() & labelled for g in levels])
    else:
        member = _dense(adata.obsm[groupby]) != 0
        levels = [str(n) for n in adata.uns[groupby]["names"]]
        labelled = np.ones(adata.n_obs, dtype=bool)
    ref = np.isin(levels, reference)
    in_ref = member[:, ref].any(axis=1)
    others = member[:, ~ref].sum(axis=1)
    n_group = np.zeros((adata.n_vars, len(names)), dtype=np.int64)
    n_control = np.zeros_like(n_group)
    for j, name in enumerate(names):
        x = member[:, levels.index(name)]
        if design == "low_moi":
            own, control = x & (others == 1), others == 0
        elif design == "case_control" and reference:
            own, control = x & (others == 1), (others == 0) & in_ref
        else:
            own, control = x, ~x
        n_group[:, j] = nonzero[own & labelled].sum(axis=0)
        n_control[:, j] = nonzero[control & labelled].sum(axis=0)
    return n_group, n_control


def _check_counts(adata, groupby, design, reference, key="nsc_de"):
    names = list(adata.uns[key]["groups"])
    n_group, n_control = expected_counts(adata, groupby, design, reference, names)
    np.testing.assert_array_equal(adata.varm[f"{key}_n_nonzero_group"].to_numpy(), n_group)
    np.testing.assert_array_equal(adata.varm[f"{key}_n_nonzero_control"].to_numpy(), n_control)
    assert list(adata.varm[f"{key}_n_nonzero_group"].columns) == names
    return n_group, n_control


@pytest.fixture(scope="module")
def low_moi():
    adata = nsc.datasets.simulate(
        n_cells=900, n_genes=70, n_targets=5, n_non_targeting=3, seed=3, mean_total_counts=300
    )
    nsc.tl.assign_guides(adata, "grna_counts", groups="grna_group")
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    return adata


@pytest.fixture(scope="module")
def high_moi():
    adata = nsc.datasets.simulate(
        n_cells=900,
        n_genes=60,
        n_targets=6,
        n_non_targeting=3,
        moi=3.0,
        seed=4,
        mean_total_counts=300,
    )
    nsc.tl.assign_guides(adata, "grna_counts", mode="threshold", groups="grna_group")
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    return adata


@pytest.fixture(scope="module")
def clusters():
    adata = nsc.datasets.simulate(
        n_cells=600, n_genes=60, n_batches=2, seed=5, mean_total_counts=300
    )
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b", "c", "ref"], dtype=object)[rng.integers(0, 4, adata.n_obs)]
    labels[rng.random(adata.n_obs) < 0.05] = None  # unlabelled cells are in no test
    adata.obs["cluster"] = pd.Categorical(labels)
    return adata


@pytest.mark.slow
def test_low_moi_counts_and_exclusion(low_moi, caplog):
    adata = low_moi.copy()
    with caplog.at_level(logging.WARNING, logger="normalisr_sc"):
        nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT)
    n_group, n_control = _check_counts(adata, SCREEN, "low_moi", [NT])
    # The control cells of low MOI are the same cells for every group.
    assert (n_control == n_control[:, :1]).all()
    excluded = (n_group < 7) | (n_control < 7)
    assert 0 < excluded.sum() < excluded.size  # the test exercises both kinds of pair
    assert f"de: {excluded.sum()} of {excluded.size} (group, gene) pairs" in caplog.text
    np.testing.assert_array_equal(adata.uns["nsc_de"]["n_excluded"], excluded.sum(axis=0))
    assert adata.uns["nsc_de"]["params"]["min_nonzero"] == 7
    _check_qvalues(adata, excluded)


def _check_qvalues(adata, excluded, key="nsc_de"):
    """q-values everywhere: BH over the pairs passing the QC, NaN and last for the others."""
    pvals = adata.varm[f"{key}_pvals"]
    table = nsc.get.de_df(adata, key=key)
    layout = adata.uns[key]
    for j, group in enumerate(pvals.columns):
        kept = ~excluded[:, j]
        expected = pd.Series(np.nan, index=adata.var_names)
        expected[kept] = stats.false_discovery_control(pvals[group].to_numpy()[kept])
        part = table[table["group"] == group].set_index("gene")
        np.testing.assert_allclose(part["qval"], expected[part.index], rtol=1e-12)
        np.testing.assert_array_equal(
            part["qc_pass"], kept[adata.var_names.get_indexer(part.index)]
        )
        # The excluded pairs come last, in the table and in scanpy's layout.
        assert not part["qc_pass"].iloc[: kept.sum()].eq(False).any()
        names = list(layout["names"][group])
        np.testing.assert_allclose(
            layout["pvals_adj"][group], expected[names].to_numpy(), rtol=1e-12
        )
        assert set(names[kept.sum() :]) == set(adata.var_names[~kept])
        got = part[["n_nonzero_group", "n_nonzero_control"]]
        stored = adata.varm[f"{key}_n_nonzero_group"][group][part.index]
        np.testing.assert_array_equal(got["n_nonzero_group"], stored)


def test_scanpy_reads_the_excluded_pairs(low_moi):
    sc = pytest.importorskip("scanpy")
    adata = low_moi.copy()
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT)
    ours = nsc.get.de_df(adata, "target000").set_index("gene")
    theirs = sc.get.rank_genes_groups_df(adata, "target000", key="nsc_de")
    np.testing.assert_allclose(theirs["pvals_adj"], ours.loc[theirs["names"], "qval"], rtol=1e-12)
    kept = sc.get.rank_genes_groups_df(adata, "target000", key="nsc_de", pval_cutoff=0.5)
    assert ours.loc[kept["names"], "qc_pass"].all()


@pytest.mark.slow
def test_case_control_rest_and_reference(clusters):
    adata = clusters.copy()
    nsc.tl.de(adata, "cluster", min_nonzero=7, key_added="rest")
    n_group, n_control = _check_counts(adata, "cluster", "case_control", [], key="rest")
    _check_qvalues(adata, (n_group < 7) | (n_control < 7), key="rest")
    nsc.tl.de(adata, "cluster", reference="ref", min_nonzero=20, key_added="ref")
    n_group, n_control = _check_counts(adata, "cluster", "case_control", ["ref"], key="ref")
    excluded = (n_group < 20) | (n_control < 20)
    assert 0 < excluded.sum() < excluded.size
    _check_qvalues(adata, excluded, key="ref")


def test_case_control_default_runs_no_pair_qc(clusters):
    adata = clusters.copy()
    nsc.tl.de(adata, "cluster", reference="ref")
    assert "nsc_de_n_nonzero_group" not in adata.varm
    table = nsc.get.de_df(adata)
    assert "qc_pass" not in table
    for group, part in table.groupby("group", observed=True):
        pvals = adata.varm["nsc_de_pvals"][group][part["gene"]]
        np.testing.assert_allclose(part["qval"], stats.false_discovery_control(pvals))


@pytest.mark.slow
def test_case_control_reference_on_an_obsm_matrix(high_moi):
    """Cells with several non-reference groups are in no test; control: reference cells."""
    adata = high_moi.copy()
    nsc.tl.de(adata, SCREEN, reference=NT, min_nonzero=5)
    _check_counts(adata, SCREEN, "case_control", [NT])


def test_high_moi_counts(high_moi):
    adata = high_moi.copy()
    nsc.tl.de(adata, SCREEN, design="high_moi", reference=NT)
    n_group, n_control = _check_counts(adata, SCREEN, "high_moi", [NT])
    # Cells carrying several groups: the group counts of a gene add up beyond its cells.
    assert (n_group.sum(axis=1) > (_dense(adata.X) != 0).sum(axis=0)).any()
    _check_qvalues(adata, (n_group < 7) | (n_control < 7))


@pytest.mark.slow
def test_streamed_counts_give_the_same(low_moi, tmp_path):
    adata = low_moi.copy()
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT)
    chunked = low_moi.copy()
    nsc.tl.de(chunked, SCREEN, design="low_moi", reference=NT, chunked=True, chunk_size=97)
    lazy = low_moi.copy()
    lazy.layers["counts"] = da.from_array(lazy.X, chunks=(128, -1), asarray=False)
    nsc.tl.de(lazy, SCREEN, design="low_moi", reference=NT, counts_layer="counts")
    path = tmp_path / "screen.h5ad"
    low_moi.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    nsc.tl.de(backed, SCREEN, design="low_moi", reference=NT, chunk_size=111)
    for other in (chunked, lazy, backed):
        for suffix in ("n_nonzero_group", "n_nonzero_control", "pvals"):
            pd.testing.assert_frame_equal(
                other.varm[f"nsc_de_{suffix}"], adata.varm[f"nsc_de_{suffix}"], rtol=1e-9
            )
    assert lazy.uns["nsc_de"]["params"]["counts_layer"] == "counts"
    backed.file.close()


def test_min_nonzero_zero_skips_and_drops_the_counts(low_moi):
    adata = low_moi.copy()
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT)
    assert "nsc_de_n_nonzero_group" in adata.varm
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT, min_nonzero=0)
    assert "nsc_de_n_nonzero_group" not in adata.varm
    assert "nsc_de_n_nonzero_control" not in adata.varm
    assert not np.isnan(adata.uns["nsc_de"]["pvals_adj"]["target000"]).any()
    with pytest.raises(ValueError, match="without the pair QC"):
        nsc.get.de_df(adata, min_nonzero=7)


def test_de_df_min_nonzero_rethresholds(low_moi):
    adata = low_moi.copy()
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT)
    strict = nsc.get.de_df(adata, min_nonzero=40)
    n_group = strict["n_nonzero_group"].to_numpy()
    n_control = strict["n_nonzero_control"].to_numpy()
    np.testing.assert_array_equal(strict["qc_pass"], (n_group >= 40) & (n_control >= 40))
    assert strict["qc_pass"].sum() < nsc.get.de_df(adata)["qc_pass"].sum()
    assert strict.loc[~strict["qc_pass"], "qval"].isna().all()
    cut = nsc.get.de_df(adata, pval_cutoff=0.05)
    assert cut["qc_pass"].all()
    assert (cut["qval"] <= 0.05).all()


@pytest.mark.slow
def test_results_survive_h5ad_and_rerun(low_moi, tmp_path):
    adata = low_moi.copy()
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT)
    path = tmp_path / "de.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for suffix in ("n_nonzero_group", "n_nonzero_control"):
        pd.testing.assert_frame_equal(back.varm[f"nsc_de_{suffix}"], adata.varm[f"nsc_de_{suffix}"])
        assert owned(back, "varm", f"nsc_de_{suffix}")
    pd.testing.assert_frame_equal(nsc.get.de_df(back), nsc.get.de_df(adata))
    np.testing.assert_array_equal(
        back.uns["nsc_de"]["n_excluded"], adata.uns["nsc_de"]["n_excluded"]
    )
    nsc.tl.de(back, SCREEN, design="low_moi", reference=NT, min_nonzero=3)
    assert back.uns["nsc_de"]["params"]["min_nonzero"] == 3


def _negate_counts(adata):
    adata.layers["signed"] = adata.layers["normalisr"].copy()


@pytest.mark.parametrize(
    ("mutate", "kwargs", "match"),
    [
        (None, {"counts_layer": "nope"}, "counts_layer='nope'"),
        (_negate_counts, {"counts_layer": "signed"}, "negative values"),
        (None, {"min_nonzero": -1}, "min_nonzero"),
        (None, {"min_nonzero": 2.5}, "min_nonzero"),
        (None, {"counts_layer": 3}, "counts_layer"),
        (None, {"qcut": 0}, "qcut"),
    ],
)
def test_bad_input_leaves_adata_unchanged(low_moi, mutate, kwargs, match):
    adata = low_moi.copy()
    # n_genes=0: assert_unchanged compares record arrays without NaN equality.
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT, n_genes=0)
    if mutate is not None:
        mutate(adata)
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT, **kwargs)
    assert_unchanged(before, adata)


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def papalexi(shared_data):
    adata = ad.read_h5ad(shared_data / "papalexi_lowmoi.h5ad")
    nsc.tl.assign_guides(adata, "grna_counts", guide_names="grna_ids", groups="grna_group")
    nsc.pp.normalize(adata, covariates=["bio_rep"], qc=None)
    return adata


@pytest.mark.slow
def test_papalexi_counts_equal_numpy(papalexi, caplog):
    adata = papalexi.copy()
    with caplog.at_level(logging.WARNING, logger="normalisr_sc"):
        nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT)
    n_group, n_control = _check_counts(adata, SCREEN, "low_moi", [NT])
    excluded = (n_group < 7) | (n_control < 7)
    # Recorded: 925 of 7,475 pairs (25 targets x 299 genes) excluded at min_nonzero=7.
    assert excluded.sum() == adata.uns["nsc_de"]["n_excluded"].sum()
    assert f"de: {excluded.sum()} of {excluded.size} (group, gene) pairs" in caplog.text
    assert 0 < excluded.sum() < 0.5 * excluded.size
    _check_qvalues(adata, excluded)
