"""``nsc.get.de_df`` and ``nsc.get.coex_df``: tidy tables of stored results."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import normalisr_sc as nsc


@pytest.fixture(scope="module")
def tested():
    adata = nsc.datasets.simulate(n_cells=400, n_genes=60, n_batches=2, seed=2)
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    nsc.tl.de(adata, "group")
    nsc.tl.coex(adata)
    return adata


def test_de_df_layout_and_order(tested):
    table = nsc.get.de_df(tested)
    assert list(table.columns) == [
        "group",
        "gene",
        "pval",
        "log10p",
        "qval",
        "logfc",
        "log2fc",
        "gamma",
        "var",
    ]
    assert len(table) == 2 * tested.n_vars
    assert list(table["group"].cat.categories) == ["control", "case"]
    for group, part in table.groupby("group", observed=True):
        assert (np.diff(part["log10p"].to_numpy()) <= 0).all()
        np.testing.assert_allclose(part["qval"], stats.false_discovery_control(part["pval"]))
        stored = tested.varm["nsc_de_logfc"][group]
        np.testing.assert_array_equal(part["logfc"], stored[part["gene"]].to_numpy())
        np.testing.assert_allclose(part["log2fc"], part["logfc"] / np.log(2), rtol=1e-15)
        gamma = tested.varm["nsc_de_gamma"][group]
        np.testing.assert_array_equal(part["gamma"], gamma[part["gene"]].to_numpy())


def test_de_df_group_and_cutoff(tested):
    table = nsc.get.de_df(tested, "case", pval_cutoff=0.05)
    assert set(table["group"]) == {"case"}
    assert (table["qval"] <= 0.05).all()
    full = nsc.get.de_df(tested, "case")
    assert len(table) == (full["qval"] <= 0.05).sum()
    assert set(tested.uns["simulation"]["de_genes"]) & set(table["gene"])


def test_coex_df_edge_list(tested):
    table = nsc.get.coex_df(tested)
    n = tested.n_vars
    assert len(table) == n * (n - 1) // 2
    assert (table["gene1"] != table["gene2"]).all()
    assert (np.diff(table["log10p"].to_numpy()) <= 0).all()
    np.testing.assert_allclose(
        np.sort(table["qval"]), np.sort(stats.false_discovery_control(table["pval"]))
    )
    first = table.iloc[0]
    i, j = tested.var_names.get_indexer([first["gene1"], first["gene2"]])
    assert first["r"] == tested.varp["nsc_coex_r"][i, j]
    strong = nsc.get.coex_df(tested, qval_cutoff=0.01)
    assert (strong["qval"] <= 0.01).all()


def test_coex_df_on_a_subset(tested):
    genes = list(tested.var_names[[3, 7, 11]])
    nsc.tl.coex(tested, genes=genes, key_added="sub")
    table = nsc.get.coex_df(tested, key="sub")
    assert len(table) == 3
    assert set(table["gene1"]) | set(table["gene2"]) == set(genes)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: nsc.get.de_df(a, "nope"), "not among"),
        (lambda a: nsc.get.de_df(a, key="missing"), r"nsc\.tl\.de"),
        (lambda a: nsc.get.de_df(a, pval_cutoff=0), "pval_cutoff"),
        (lambda a: nsc.get.de_df(a, ["case", "case"]), "more than once"),
        (lambda a: nsc.get.de_df(a, 3.5), "`group`"),
        (lambda a: nsc.get.coex_df(a, key="missing"), r"nsc\.tl\.coex"),
        (lambda a: nsc.get.coex_df(a, qval_cutoff=2), "qval_cutoff"),
    ],
)
def test_bad_input(tested, call, match):
    with pytest.raises(ValueError, match=match):
        call(tested)


def test_de_df_with_pair_qc_columns():
    adata = nsc.datasets.simulate(
        n_cells=500, n_genes=50, n_targets=3, n_non_targeting=2, seed=9, mean_total_counts=300
    )
    nsc.tl.assign_guides(adata, "grna_counts", groups="grna_group")
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    nsc.tl.de(adata, "nsc_guides", design="low_moi", reference="non-targeting")
    table = nsc.get.de_df(adata)
    assert list(table.columns)[-3:] == ["n_nonzero_group", "n_nonzero_control", "qc_pass"]
    assert table["n_nonzero_group"].dtype.kind == "i"
    for _, part in table.groupby("group", observed=True):
        passing = part["qc_pass"].to_numpy()
        # The pairs passing the QC first, each part from most to least significant.
        assert not (np.diff(passing.astype(int)) > 0).any()
        assert (np.diff(part["log10p"].to_numpy()[passing]) <= 0).all()
        assert part["qval"].isna().to_numpy().tolist() == (~passing).tolist()


def test_de_df_pairs_without_pair_qc(tested):
    pairs = [("case", g) for g in tested.var_names[:10]] + [("control", tested.var_names[3])]
    table = nsc.get.de_df(tested, pairs=pairs)
    assert "qc_pass" not in table
    assert len(table) == 11
    p = [tested.varm["nsc_de_pvals"].at[gene, group] for group, gene in pairs]
    expected = dict(zip(pairs, stats.false_discovery_control(p), strict=True))
    got = dict(zip(zip(table["group"], table["gene"], strict=True), table["qval"], strict=True))
    for pair, q in expected.items():
        np.testing.assert_allclose(got[pair], q, rtol=1e-12)
    assert list(table["group"].cat.categories) == ["control", "case"]
