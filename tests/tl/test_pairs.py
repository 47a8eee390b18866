"""Chosen pairs and positive controls of ``nsc.tl.de`` and ``nsc.get.de_df`` (issue 13,
section 4): q-values over exactly the chosen pairs, the recovery report of positive
controls, their storage and their refusals."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import normalisr_sc as nsc
from normalisr_sc._store import owned

from .._helpers import assert_unchanged

SCREEN = "nsc_guides"
NT = "non-targeting"


@pytest.fixture(scope="module")
def screen():
    adata = nsc.datasets.simulate(
        n_cells=900, n_genes=70, n_targets=5, n_non_targeting=3, seed=8, mean_total_counts=300
    )
    nsc.tl.assign_guides(adata, "grna_counts", groups="grna_group")
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    return adata


def _targets(adata) -> pd.DataFrame:
    truth = adata.uns["simulation"]["targets"]
    return pd.DataFrame({"group": truth["grna_group"], "gene": truth["gene"]})


def _cis_pairs(adata, n_per_group: int = 6, seed: int = 0) -> pd.DataFrame:
    """The planted pairs and a few random genes per group, as a cis screen's pairs."""
    rng = np.random.default_rng(seed)
    planted = _targets(adata)
    rows = [planted]
    for group in planted["group"].iloc[:3]:
        genes = rng.choice(np.asarray(adata.var_names), n_per_group, replace=False)
        rows.append(pd.DataFrame({"group": group, "gene": genes}))
    return pd.concat(rows).drop_duplicates().reset_index(drop=True)


def _bh_over_pairs(adata, pairs: pd.DataFrame, min_nonzero: int = 7) -> pd.Series:
    """Explicit BH over the pairs passing the QC (NaN for the others)."""
    p = np.array([adata.varm["nsc_de_pvals"].at[n, g] for g, n in pairs.to_numpy()])
    n_group = np.array([adata.varm["nsc_de_n_nonzero_group"].at[n, g] for g, n in pairs.to_numpy()])
    n_ctrl = np.array(
        [adata.varm["nsc_de_n_nonzero_control"].at[n, g] for g, n in pairs.to_numpy()]
    )
    kept = (n_group >= min_nonzero) & (n_ctrl >= min_nonzero)
    q = np.full(len(pairs), np.nan)
    q[kept] = stats.false_discovery_control(p[kept])
    return pd.Series(q, index=pd.MultiIndex.from_frame(pairs[["group", "gene"]]))


@pytest.mark.slow
def test_pairs_restrict_groups_and_q_is_bh_over_them(screen, caplog):
    adata = screen.copy()
    pairs = _cis_pairs(adata)
    with caplog.at_level(logging.WARNING, logger="normalisr_sc"):
        nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT, pairs=pairs, min_nonzero=60)
    groups = list(dict.fromkeys(pairs["group"]))
    # Only the groups of the pairs are tested (every gene of them).
    assert sorted(adata.uns["nsc_de"]["groups"]) == sorted(groups)
    assert adata.varm["nsc_de_pvals"].shape == (adata.n_vars, len(groups))
    table = nsc.get.de_df(adata)  # the stored pairs by default
    assert len(table) == len(pairs)
    expected = _bh_over_pairs(adata, pairs, 60)
    got = table.set_index(["group", "gene"])["qval"]
    assert expected.notna().sum() < len(pairs)  # some pairs excluded by the QC
    assert f"de: {expected.isna().sum()} of the {len(pairs)} chosen pairs" in caplog.text
    np.testing.assert_allclose(got[expected.index], expected, rtol=1e-12)
    assert set(table.columns) >= {"pval", "qval", "logfc", "log2fc", "n_nonzero_group", "qc_pass"}
    # scanpy's layout: the same q-values for the pairs, NaN and after them for other genes.
    layout = adata.uns["nsc_de"]
    for group in groups:
        names = list(layout["names"][group])
        adj = pd.Series(layout["pvals_adj"][group], index=names)
        mine = expected.xs(group, level="group")
        np.testing.assert_allclose(adj[mine.index], mine, rtol=1e-12)
        others = [n for n in names if n not in set(mine.index)]
        assert adj[others].isna().all()
        # The pairs of the family (chosen and passing the QC) come first.
        n_family = int(mine.notna().sum())
        assert adj.iloc[:n_family].notna().all()
        assert adj.iloc[n_family:].isna().all()
    # A group filter keeps the q-values of the whole family.
    one = nsc.get.de_df(adata, groups[0]).set_index(["group", "gene"])["qval"]
    np.testing.assert_allclose(one, got[one.index], rtol=0)


def test_de_df_pairs_on_an_unrestricted_run(screen):
    adata = screen.copy()
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT)
    pairs = _cis_pairs(adata, seed=1)
    table = nsc.get.de_df(adata, pairs=pairs)
    expected = _bh_over_pairs(adata, pairs)
    got = table.set_index(["group", "gene"])["qval"]
    np.testing.assert_allclose(got[expected.index], expected, rtol=1e-12)
    # Pairs as a list of tuples, and SCEPTRE's layout, give the same table.
    tuples = nsc.get.de_df(adata, pairs=list(pairs.itertuples(index=False, name=None)))
    sceptre = nsc.get.de_df(
        adata, pairs=pairs.rename(columns={"group": "grna_group", "gene": "response_id"})
    )
    pd.testing.assert_frame_equal(tuples, table)
    pd.testing.assert_frame_equal(sceptre, table)
    # 'all' and the default: every gene of every group, q per group.
    pd.testing.assert_frame_equal(nsc.get.de_df(adata, pairs="all"), nsc.get.de_df(adata))
    assert len(nsc.get.de_df(adata)) == adata.n_vars * 5


def test_all_pairs_after_a_pairs_run(screen):
    adata = screen.copy()
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT, pairs=_targets(adata))
    every = nsc.get.de_df(adata, pairs="all")
    assert len(every) == adata.n_vars * 5
    for _, part in every[every["qc_pass"]].groupby("group", observed=True):
        np.testing.assert_allclose(
            part["qval"], stats.false_discovery_control(part["pval"]), rtol=1e-12
        )


def test_positive_controls_report(screen, caplog):
    adata = screen.copy()
    controls = _targets(adata)
    # One null pair among the controls: not recovered, and a warning names it.
    controls.loc[len(controls)] = ["target001", adata.var_names[60]]
    with caplog.at_level(logging.INFO, logger="normalisr_sc"):
        nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT, positive_controls=controls)
    report = adata.uns["nsc_de"]["positive_controls"]
    assert list(report["group"]) == list(controls["group"])
    p = np.array([adata.varm["nsc_de_pvals"].at[n, g] for g, n in controls.to_numpy()])
    np.testing.assert_array_equal(report["pval"], p)
    kept = report["qc_pass"].to_numpy()
    np.testing.assert_allclose(
        report["qval"][kept], stats.false_discovery_control(p[kept]), rtol=1e-12
    )
    # Rank: the gene's position among the genes of its group passing the QC, by p-value.
    table = nsc.get.de_df(adata, pairs="all")
    for row in report.itertuples():
        part = table[table["group"] == row.group].reset_index(drop=True)
        assert part.index[part["gene"] == row.gene][0] + 1 == row.rank
    recovered = report["recovered"].to_numpy()
    assert recovered[:5].all()  # the planted knock-downs
    assert not recovered[5]
    np.testing.assert_array_equal(recovered, kept & (report["qval"].to_numpy() <= 0.05))
    assert "positive controls: 5 of 6 recovered at q <= 0.05" in caplog.text
    assert f"target001:{adata.var_names[60]}" in caplog.text
    assert any(r.levelname == "WARNING" and "not recovered" in r.message for r in caplog.records)


@pytest.mark.slow
def test_everything_survives_h5ad(screen, tmp_path):
    adata = screen.copy()
    nsc.tl.de(
        adata,
        SCREEN,
        design="low_moi",
        reference=NT,
        pairs=_cis_pairs(adata),
        positive_controls=_targets(adata),
        qcut=0.1,
    )
    path = tmp_path / "pairs.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for name in ("pairs", "positive_controls"):
        pd.testing.assert_frame_equal(
            back.uns["nsc_de"][name], adata.uns["nsc_de"][name], check_dtype=False
        )
    assert back.uns["nsc_de"]["params"]["qcut"] == 0.1
    assert back.uns["nsc_de"]["params"]["n_positive_controls"] == len(
        adata.uns["nsc_de"]["positive_controls"]
    )
    pd.testing.assert_frame_equal(nsc.get.de_df(back), nsc.get.de_df(adata))
    assert owned(back, "uns", "nsc_de")
    nsc.tl.de(back, SCREEN, design="low_moi", reference=NT)  # replaces the results
    assert "pairs" not in back.uns["nsc_de"]
    assert len(nsc.get.de_df(back)) == back.n_vars * 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pairs": pd.DataFrame({"group": ["nope"], "gene": ["gene00001"]})}, "nope"),
        ({"pairs": pd.DataFrame({"group": ["target000"], "gene": ["GENE_X"]})}, "GENE_X"),
        ({"pairs": pd.DataFrame({"group": [NT], "gene": ["gene00001"]})}, "reference"),
        ({"pairs": pd.DataFrame({"target": ["target000"], "gene": ["gene00001"]})}, "columns"),
        ({"pairs": [("target000", "gene00001")] * 2}, "more than once"),
        ({"pairs": "target000"}, "DataFrame"),
        ({"positive_controls": [("zzz", "gene00001")]}, "zzz"),
        (
            {"positive_controls": [("target001", "gene00001")], "groups": ["target000"]},
            "not among `groups=`",
        ),
        ({"pairs": [("target002", "gene00001")], "groups": ["target000"]}, "not among"),
        ({"qcut": 1.5}, "qcut"),
    ],
)
def test_bad_pairs_leave_adata_unchanged(screen, kwargs, match):
    adata = screen.copy()
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT, n_genes=0)
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT, **kwargs)
    assert_unchanged(before, adata)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pairs": [("nope", "gene00001")]}, "nope"),
        ({"pairs": [("target000", "GENE_X")]}, "GENE_X"),
        ({"pairs": "some"}, "'all'"),
        ({"min_nonzero": -2}, "min_nonzero"),
    ],
)
def test_de_df_refuses_bad_pairs(screen, kwargs, match):
    adata = screen.copy()
    nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT, n_genes=0)
    with pytest.raises(ValueError, match=match):
        nsc.get.de_df(adata, **kwargs)


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def papalexi(shared_data):
    adata = ad.read_h5ad(shared_data / "papalexi_lowmoi.h5ad")
    nsc.tl.assign_guides(adata, "grna_counts", guide_names="grna_ids", groups="grna_group")
    nsc.pp.normalize(adata, covariates=["bio_rep"], qc=None)
    return adata


@pytest.mark.slow
def test_papalexi_positive_controls_recovered(papalexi, caplog):
    adata = papalexi.copy()
    controls = adata.uns["pc_pairs"]  # SCEPTRE's layout: response_id, grna_group
    with caplog.at_level(logging.INFO, logger="normalisr_sc"):
        nsc.tl.de(adata, SCREEN, design="low_moi", reference=NT, positive_controls=controls)
    report = adata.uns["nsc_de"]["positive_controls"]
    assert len(report) == 9
    assert report["qc_pass"].all()
    assert report["recovered"].all()
    # Recorded on this data: every p-value below 1e-10; the knocked-out gene is the most
    # significant of its group for 7 of the 9 (JAK2 ranks 3rd, IFNGR2 17th of 299);
    # every fold change negative (knock-downs).
    assert (report["pval"] < 1e-10).all()
    assert (report["rank"] == 1).sum() >= 7
    assert (report["rank"] <= 20).all()
    assert (report["logfc"] < 0).all()
    assert "positive controls: 9 of 9 recovered" in caplog.text
    # The same pairs through get.de_df, as a cis analysis: q over those 9 pairs only.
    table = nsc.get.de_df(adata, pairs=controls).set_index(["group", "gene"])
    mine = report.set_index(["group", "gene"])
    np.testing.assert_allclose(table.loc[mine.index, "qval"], mine["qval"], rtol=1e-12)
