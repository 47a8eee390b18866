"""nsc.tl.calibration_check: negative-control pairs from the non-targeting cells."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

import normalisr_sc as nsc
from normalisr_sc._core._pvalues import bh_qvalues, genomic_inflation
from normalisr_sc._store import fingerprint

NT = "non-targeting"


def _screen(
    *, moi: float | None = None, seed: int = 0, n_cells: int = 3000, confound: bool = False
) -> ad.AnnData:
    """A generated screen with pooled (``nsc_guides``) and guide-level (``guide_ids``) assignments.

    With ``confound``: half of the genes are 1.6 times higher in batch ``b1``, and the
    first half of the NT guides are given to the NT cells of ``b1``, the others to those
    of ``b2`` (NT guide identity confounded with batch).
    """
    adata = nsc.datasets.simulate(
        n_cells=n_cells,
        n_genes=120,
        n_targets=8,
        guides_per_target=2,
        n_non_targeting=6,
        de_fraction=0.0,
        n_modules=0,
        moi=moi,
        seed=seed,
    )
    if confound:
        rng = np.random.default_rng(seed)
        counts = adata.X.toarray()
        b1 = (adata.obs["batch"] == "b1").to_numpy()
        genes = np.arange(0, adata.n_vars, 2)
        counts[np.ix_(b1, genes)] = rng.poisson(1.6 * counts[np.ix_(b1, genes)])
        adata.X = sparse.csr_matrix(counts)
        guide_counts = adata.obsm["grna_counts"].copy()
        nt_columns = [c for c in guide_counts.columns if c.startswith("NT_")]
        values = guide_counts.to_numpy()
        nt_position = [guide_counts.columns.get_loc(c) for c in nt_columns]
        nt_cells = np.flatnonzero(values[:, nt_position].max(axis=1) >= 5)
        half = len(nt_columns) // 2
        for cell in nt_cells:
            own = rng.integers(half) + (0 if b1[cell] else half)
            values[cell, nt_position] = 0
            values[cell, nt_position[own]] = 20
        adata.obsm["grna_counts"] = pd.DataFrame(
            values, index=guide_counts.index, columns=guide_counts.columns
        )
    mode = "max" if moi is None else "threshold"
    nsc.tl.assign_guides(adata, "grna_counts", mode=mode, groups="grna_group")
    nsc.tl.assign_guides(adata, "grna_counts", mode=mode, key_added="guide_ids")
    return adata


def _discovery(adata: ad.AnnData, *, covariates: str | None = "batch", design="low_moi"):
    nsc.pp.normalize(adata, covariates=covariates, qc=None, remove_outliers=False)
    nsc.tl.de(adata, "nsc_guides", design=design, reference=NT)
    return adata


@pytest.fixture(scope="module")
def low_moi() -> ad.AnnData:
    return _discovery(_screen())


@pytest.fixture(scope="module")
def high_moi() -> ad.AnnData:
    return _discovery(_screen(moi=3.0, seed=1), design="high_moi")


def _nt_guides(adata: ad.AnnData) -> list[str]:
    return [g for g in adata.uns["guide_ids"]["names"] if g.startswith("NT_")]


def _nt_pool(adata: ad.AnnData) -> np.ndarray:
    """Low MOI: cells carrying exactly one guide, an NT guide."""
    guides = adata.obsm["guide_ids"].tocsr()
    names = np.array(adata.uns["guide_ids"]["names"])
    single = np.diff(guides.indptr) == 1
    first = np.zeros(adata.n_obs, dtype=object)
    first[single] = names[guides.indices[guides.indptr[:-1][single]]]
    return single & np.char.startswith(first.astype(str), "NT_")


@pytest.mark.slow
def test_null_screen_is_calibrated(low_moi):
    adata = low_moi.copy()
    summary = nsc.tl.calibration_check(adata, guides="guide_ids", nt_guides="grna_group")
    assert summary.construction == "guides"
    assert summary.design == "low_moi"
    assert summary.n_groups == 6
    assert summary.n_pairs + summary.n_excluded == 6 * adata.n_vars
    assert summary.n_excluded == adata.uns["nsc_calibration"]["n_excluded"]
    assert summary.n_cells == int(_nt_pool(adata).sum())
    assert 0.8 < summary.inflation < 1.2
    assert 0.02 < summary.fraction_below_05 < 0.085
    assert summary.calibrated
    record = adata.uns["nsc_calibration"]
    # The stored figures are those of the stored p-values.
    pvals = record["pvals"]
    assert pvals.size == summary.n_pairs
    assert record["inflation"] == pytest.approx(genomic_inflation(record["log10p"]))
    assert record["inflation"] == summary.inflation
    assert record["fraction_below_05"] == pytest.approx(np.mean(pvals < 0.05))
    assert record["n_false_discoveries"] == int((bh_qvalues(pvals) <= 0.1).sum())
    assert record["ks_statistic"] == pytest.approx(stats.kstest(pvals, "uniform").statistic)
    np.testing.assert_allclose(record["log10p"], -np.log10(pvals), rtol=1e-9)
    assert list(record["groups"]) == _nt_guides(adata)
    assert adata.uns["nsc_calibration"]["params"]["construction"] == "guides"
    assert adata.uns["nsc_calibration"]["params"]["design"] == "low_moi"
    assert "guides" in str(summary)
    assert "calibrated" in str(summary)


@pytest.mark.slow
def test_random_groups_follow_the_discovery_analysis(low_moi):
    adata = low_moi.copy()
    summary = nsc.tl.calibration_check(adata)  # no guide-level assignment: random groups
    tested = adata.uns["nsc_de"]["groups"]
    assert summary.construction == "random"
    assert summary.n_groups == len(tested)
    size = min(int(np.median(adata.uns["nsc_de"]["n_cells"])), summary.n_cells // 2)
    assert (summary.groups["n_cells"] == size).all()
    assert summary.n_pairs + summary.n_excluded == len(tested) * adata.n_vars
    assert 0.8 < summary.inflation < 1.2
    assert summary.calibrated
    again = adata.copy()
    nsc.tl.calibration_check(again)  # seeded: the same groups
    np.testing.assert_array_equal(
        again.uns["nsc_calibration"]["pvals"], adata.uns["nsc_calibration"]["pvals"]
    )
    other = nsc.tl.calibration_check(adata.copy(), seed=3)
    assert other.inflation != summary.inflation


@pytest.mark.slow
@pytest.mark.parametrize("per_group", [1, 2])
def test_one_call_equals_one_de_per_group_on_the_nt_cells(low_moi, per_group):
    adata = low_moi.copy()
    nsc.tl.calibration_check(
        adata, guides="guide_ids", nt_guides=_nt_guides(adata), guides_per_group=per_group
    )
    record = adata.uns["nsc_calibration"]
    pool = _nt_pool(adata)
    names = np.array(adata.uns["guide_ids"]["names"])
    guides = adata.obsm["guide_ids"].tocsr()
    sub = adata[pool].copy()
    sub_guides = guides[pool]
    assert len(record["groups"]) == (6 if per_group == 1 else 8)  # 8 = discovery groups
    for j, group in enumerate(record["groups"]):
        members = [np.flatnonzero(names == g)[0] for g in group.split("+")]
        carried = np.asarray(sub_guides[:, members].sum(axis=1)).ravel() > 0
        sub.obs["undercover"] = pd.Categorical(np.where(carried, "in", "rest"))
        nsc.tl.de(sub, "undercover", reference="rest", key_added="one", n_genes=0, min_nonzero=7)
        explicit = sub.varm["one_pvals"]["in"].to_numpy()
        # The same pair QC as tl.de: the pairs kept are those passing it there.
        passing = (sub.varm["one_n_nonzero_group"]["in"].to_numpy() >= 7) & (
            sub.varm["one_n_nonzero_control"]["in"].to_numpy() >= 7
        )
        genes = record["gene"][record["group"] == j]
        np.testing.assert_array_equal(genes, np.flatnonzero(passing))
        ours = record["pvals"][record["group"] == j]
        np.testing.assert_allclose(ours, explicit[genes], rtol=1e-10, atol=1e-12)
        assert summary_cells(record, j) == int(carried.sum())


def summary_cells(record, j: int) -> int:
    return int(record["per_group"]["n_cells"].iloc[j])


@pytest.mark.slow
def test_high_moi_equals_the_joint_regression_with_nt_columns(high_moi):
    adata = high_moi.copy()
    summary = nsc.tl.calibration_check(adata, guides="guide_ids", nt_guides="grna_group")
    assert summary.design == "high_moi"
    record = adata.uns["nsc_calibration"]
    # Explicitly: the pooled groups and the NT guides' own columns in one tl.de run.
    pooled = adata.obsm["nsc_guides"]
    names = np.array(adata.uns["guide_ids"]["names"])
    nt = [np.flatnonzero(names == g)[0] for g in record["groups"]]
    adata.obsm["joint"] = pd.DataFrame(
        sparse.hstack([pooled, adata.obsm["guide_ids"][:, nt]]).toarray().astype(np.int8),
        index=adata.obs_names,
        columns=list(adata.uns["nsc_guides"]["names"]) + list(record["groups"]),
    )
    nsc.tl.de(adata, "joint", design="high_moi", reference=NT, key_added="explicit", n_genes=0)
    for j, group in enumerate(record["groups"]):
        explicit = adata.varm["explicit_pvals"][group].to_numpy()
        passing = (adata.varm["explicit_n_nonzero_group"][group].to_numpy() >= 7) & (
            adata.varm["explicit_n_nonzero_control"][group].to_numpy() >= 7
        )
        genes = record["gene"][record["group"] == j]
        np.testing.assert_array_equal(genes, np.flatnonzero(passing))
        np.testing.assert_allclose(
            record["pvals"][record["group"] == j], explicit[genes], rtol=1e-10, atol=1e-12
        )
    # The targeting groups' results of that run are those of the discovery run: the NT
    # columns are extra columns of the same joint regression.
    assert 0.75 < summary.inflation < 1.25


def test_high_moi_random_groups(high_moi):
    adata = high_moi.copy()
    summary = nsc.tl.calibration_check(adata, construction="random", n_groups=5, group_size=80)
    assert summary.construction == "random"
    assert summary.n_groups == 5
    assert (summary.groups["n_cells"] == 80).all()
    column = list(adata.uns["nsc_guides"]["names"]).index(NT)
    assert summary.n_cells == adata.obsm["nsc_guides"][:, column].sum()  # every NT cell
    assert summary.calibrated


@pytest.mark.slow
def test_confounded_nt_guides_are_detected(caplog):
    adata = _discovery(_screen(confound=True, seed=2), covariates=None)
    with caplog.at_level(logging.WARNING, logger="normalisr_sc"):
        summary = nsc.tl.calibration_check(adata, guides="guide_ids", nt_guides="grna_group")
    assert not summary.calibrated
    assert summary.inflation > 1.2 or summary.fraction_below_05 > 0.1
    assert summary.n_false_discoveries > 0
    assert adata.uns["nsc_calibration"]["calibrated"] is False or not bool(
        adata.uns["nsc_calibration"]["calibrated"]
    )
    assert any("MISCALIBRATED" in r.getMessage() for r in caplog.records)
    # With the confounder as a covariate, the same assignment is calibrated.
    fixed = _discovery(_screen(confound=True, seed=2), covariates="batch")
    assert nsc.tl.calibration_check(fixed, guides="guide_ids", nt_guides="grna_group").calibrated


@pytest.mark.slow
def test_subsets_of_pairs(low_moi):
    adata = low_moi.copy()
    options = {"construction": "random", "n_groups": 20, "min_nonzero": 0}
    full = nsc.tl.calibration_check(adata, **options, key_added="all")
    some = nsc.tl.calibration_check(adata, **options, n_pairs=300, key_added="some")
    assert some.n_pairs == 300
    everything = adata.uns["all"]["pvals"]
    index = adata.uns["some"]["group"] * adata.n_vars + adata.uns["some"]["gene"]
    np.testing.assert_array_equal(adata.uns["some"]["pvals"], everything[index])
    discovery = nsc.tl.calibration_check(
        adata, construction="random", n_groups=20, n_pairs="discovery", key_added="disc"
    )
    # As many as the discovery analysis' family: its pairs passing its pair QC.
    in_family = (adata.varm["nsc_de_n_nonzero_group"].to_numpy() >= 7) & (
        adata.varm["nsc_de_n_nonzero_control"].to_numpy() >= 7
    )
    assert discovery.n_pairs == int(in_family.sum()) < full.n_pairs
    # A discovery analysis of chosen pairs: its family is those pairs passing its QC.
    chosen = pd.DataFrame({"group": ["target000"] * 30, "gene": list(adata.var_names[:30])})
    nsc.tl.de(adata, "nsc_guides", design="low_moi", reference=NT, pairs=chosen, key_added="few")
    passing = (adata.varm["few_n_nonzero_group"]["target000"].to_numpy()[:30] >= 7) & (
        adata.varm["few_n_nonzero_control"]["target000"].to_numpy()[:30] >= 7
    )
    of_pairs = nsc.tl.calibration_check(
        adata, "few", construction="random", n_groups=20, n_pairs="discovery", key_added="c"
    )
    assert of_pairs.n_pairs == int(passing.sum()) > 0
    # Fewer NT pairs than the discovery analysis has: all of them.
    few = nsc.tl.calibration_check(
        adata, guides="guide_ids", nt_guides="grna_group", n_pairs="discovery", key_added="fw"
    )
    assert few.n_pairs + few.n_excluded == 6 * adata.n_vars


@pytest.mark.slow
def test_rerun_and_h5ad_round_trip(low_moi, tmp_path):
    adata = low_moi.copy()
    nsc.tl.calibration_check(adata)
    nsc.tl.calibration_check(adata, seed=1)  # our own key: replaced
    path = tmp_path / "cal.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(
        back.uns["nsc_calibration"]["pvals"], adata.uns["nsc_calibration"]["pvals"]
    )
    nsc.tl.calibration_check(back, seed=2)


def _no_reference(adata):
    adata.uns["nsc_de"] = {**adata.uns["nsc_de"], "reference": []}


BAD = [
    ({"construction": "undercover"}, "`construction` must be one of"),
    ({"qcut": 0}, "`qcut` must be"),
    ({"qcut": 1.5}, "`qcut` must be"),
    ({"n_pairs": 0}, "`n_pairs` must be"),
    ({"n_pairs": "all"}, "`n_pairs` must be"),
    ({"seed": -1}, "`seed` must be"),
    ({"guides_per_group": 0}, "`guides_per_group` must be"),
    ({"n_groups": 0}, "`n_groups` must be"),
    ({"group_size": 2.5}, "`group_size` must be"),
    ({"design": "pooled"}, "`design` must be one of"),
    ({"dimreduce": -1}, "`dimreduce` must be"),
    ({"min_cells": 0}, "`min_cells` must be"),
    ({"key": ""}, "`key` must be"),
    ({"key_added": 3}, "`key_added` must be"),
    ({"chunked": "yes"}, "`chunked` must be"),
    ({"nt_guides": 5}, "`nt_guides` must be"),
    ({"control": 5}, "`control` must be"),
    ({"key": "missing"}, r"Run `nsc.tl.de\(adata, ..., key_added='missing'\)`"),
    ({"key": None}, "pass `groupby=` and `design=`"),
    ({"construction": "guides"}, "needs `guides=`"),
    ({"guides": "nope"}, "neither an adata.obs column"),
    ({"guides": "guide_ids"}, "pass `nt_guides=`"),
    ({"guides": "guide_ids", "nt_guides": ["NT_g99"]}, "not columns of"),
    ({"guides": "guide_ids", "nt_guides": {"x": NT}}, "maps to the control"),
    ({"control": "nothing"}, "not found in 'nsc_guides'"),
    ({"group_size": 100_000}, "cannot be drawn"),
    ({"guides": "guide_ids", "nt_guides": "grna_group", "guides_per_group": 6}, "needs more NT"),
    ({"guides": "guide_ids", "nt_guides": "grna_group", "n_groups": 7}, "more NT groups than"),
    ({"guides": "guide_ids", "nt_guides": "grna_group", "group_size": 9}, "construction='random'"),
    ({"guides_per_group": 2}, "applies to construction='guides'"),
    ({"key": None, "groupby": "nsc_guides", "design": "low_moi", "n_pairs": "discovery"}, "needs"),
    ({"key_added": "nsc_written"}, "fingerprints of its results"),
    ({"key_added": "grna_group"}, "was not written by normalisr_sc"),
    ({"layer": "missing"}, "missing"),
    ({"min_nonzero": -1}, "`min_nonzero` must be"),
    ({"counts_layer": "raw"}, "counts_layer='raw' is not among the layers"),
    ({"min_nonzero": 100_000}, "every NT pair has fewer than"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD, ids=[str(k) for k, _ in BAD])
def test_bad_inputs_are_refused_and_change_nothing(low_moi, kwargs, match):
    adata = low_moi.copy()
    before = fingerprint(dict(adata.uns)), set(adata.uns), set(adata.obsm)
    with pytest.raises(ValueError, match=match):
        nsc.tl.calibration_check(adata, **kwargs)
    assert (fingerprint(dict(adata.uns)), set(adata.uns), set(adata.obsm)) == before


@pytest.mark.slow
def test_no_control_group_names_the_fix(low_moi):
    adata = low_moi.copy()
    nsc.tl.de(adata, "nsc_guides", key_added="noref", n_genes=0)  # each group vs the rest
    before = fingerprint(dict(adata.uns))
    with pytest.raises(ValueError, match=r"no non-targeting control.*control='non-targeting'"):
        nsc.tl.calibration_check(adata, key="noref")
    assert fingerprint(dict(adata.uns)) == before
    # Naming the control group explicitly works.
    summary = nsc.tl.calibration_check(adata, key="noref", control=NT, n_groups=4)
    assert summary.n_groups == 4


# ---------------------------------------------------------------- Papalexi


@pytest.fixture(scope="module")
def papalexi(shared_data):
    adata = ad.read_h5ad(shared_data / "papalexi_lowmoi.h5ad")
    options = {"guide_names": "grna_ids"}
    nsc.tl.assign_guides(adata, "grna_counts", groups="grna_group", **options)
    nsc.tl.assign_guides(adata, "grna_counts", key_added="guide_ids", **options)
    nsc.pp.normalize(adata, covariates=["bio_rep"])
    nsc.tl.de(adata, "nsc_guides", design="low_moi", reference=NT, min_cells=2)
    return adata


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs",
    [
        {"guides": "guide_ids", "nt_guides": "grna_group", "guides_per_group": 4},
        {"construction": "random"},
        {"guides": "guide_ids", "nt_guides": "grna_group"},
    ],
    ids=["sceptre-like 4 NT guides per group", "random", "one NT guide per group"],
)
def test_papalexi_is_calibrated(papalexi, kwargs):
    adata = papalexi.copy()
    summary = nsc.tl.calibration_check(adata, **kwargs)
    assert summary.calibrated
    assert 0.03 < summary.fraction_below_05 < 0.07
    assert 0.9 < summary.inflation < 1.1
    assert summary.ks_statistic < 0.04
    n_genes = adata.n_vars
    if kwargs.get("guides_per_group") or kwargs.get("construction"):
        # As many NT pairs as the discovery analysis has, no false discovery.
        assert summary.n_pairs + summary.n_excluded == len(adata.uns["nsc_de"]["groups"]) * n_genes
        assert summary.n_false_discoveries == 0
    else:
        assert summary.n_groups == 9  # the NT guides carried by NT cells
        # 2,187 pairs: 2 pairs reach q <= 0.1 (p 2.9e-5 and 8.2e-5), within chance.
        assert summary.n_false_discoveries <= 2


def test_streamed_layers_give_the_same_pairs(low_moi):
    adata = low_moi.copy()
    options = {"guides": "guide_ids", "nt_guides": "grna_group"}
    nsc.tl.calibration_check(adata, **options, key_added="memory")
    nsc.tl.calibration_check(adata, **options, chunked=True, chunk_size=700, key_added="dask")
    memory, dask = adata.uns["memory"], adata.uns["dask"]
    np.testing.assert_array_equal(memory["gene"], dask["gene"])
    np.testing.assert_allclose(memory["pvals"], dask["pvals"], rtol=1e-9, atol=1e-15)
