"""Tests of nsc.tl.gotop / nsc.tl.pccovt on a tiny hand-made ontology and real PBMC data."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse, stats

import normalisr_sc as nsc
from normalisr_sc import _go

N_GENES = 40
HUB_GENES = [f"G{i}" for i in range(10)]

OBO = """format-version: 1.2
ontology: go

[Term]
id: GO:0000001
name: root process
namespace: biological_process

[Term]
id: GO:0000002
name: housekeeping programme
namespace: biological_process
is_a: GO:0000001 ! root process

[Term]
id: GO:0000003
name: housekeeping subprogramme
namespace: biological_process
is_a: GO:0000002 ! housekeeping programme

[Term]
id: GO:0000004
name: other programme
namespace: biological_process
is_a: GO:0000001 ! root process
"""


def _gaf_line(
    entrez: int, symbol: str, term: str, evidence: str = "IDA", qualifier: str = "involved_in"
) -> str:
    fields = [
        "NCBIGene",
        str(entrez),
        symbol,
        qualifier,
        term,
        "PMID:1",
        evidence,
        "",
        "P",
        "",
        "",
        "protein",
        "taxon:9606",
        "20220101",
        "test",
        "",
        "",
    ]
    return "\t".join(fields)


def _annotation_lines() -> list[tuple[int, str, str, str, str]]:
    rows = [(1000 + i, f"G{i}", "GO:0000003", "IDA", "involved_in") for i in range(8)]
    rows += [(1000 + i, f"G{i}", "GO:0000002", "IMP", "involved_in") for i in (8, 9)]
    rows += [(1000 + i, f"G{i}", "GO:0000004", "IDA", "involved_in") for i in range(20, 30)]
    rows.append((1030, "G30", "GO:0000002", "IEP", "involved_in"))  # expression-based
    rows.append((1031, "G31", "GO:0000002", "IDA", "NOT|involved_in"))  # negated
    return rows


@pytest.fixture
def go_files(tmp_path):
    obo = tmp_path / "tiny.obo"
    obo.write_text(OBO)
    gaf = tmp_path / "tiny.gaf.gz"
    lines = ["!gaf-version: 2.2"] + [_gaf_line(*row) for row in _annotation_lines()]
    with gzip.open(gaf, "wt") as stream:
        stream.write("\n".join(lines) + "\n")
    gene2go = tmp_path / "gene2go"
    header = "#tax_id\tGeneID\tGO_ID\tEvidence\tQualifier\tGO_term\tPubMed\tCategory"
    body = [
        f"9606\t{e}\t{t}\t{ev}\t{q.split('|')[0]}\tx\t1\tProcess"
        for e, _, t, ev, q in _annotation_lines()
    ]
    gene2go.write_text("\n".join([header, *body]) + "\n")
    return obo, gaf, gene2go


@pytest.fixture
def hub_adata() -> AnnData:
    """Genes G0..G39; the network is a clique on G0..G9 plus a few sparse edges."""
    rng = np.random.default_rng(0)
    adata = AnnData(X=rng.normal(size=(50, N_GENES)))
    adata.var_names = [f"G{i}" for i in range(N_GENES)]
    adata.var["entrez"] = [str(1000 + i) for i in range(N_GENES)]
    net = np.zeros((N_GENES, N_GENES), dtype=bool)
    net[:10, :10] = True
    np.fill_diagonal(net, False)
    net[20, 21] = net[25, 30] = True
    adata.varp["nsc_coex_net"] = sparse.csr_matrix(net)
    return adata


def _run_gotop(adata, go_files, **kwargs):
    obo, gaf, _ = go_files
    nsc.tl.gotop(adata, obo, gaf, n_principal=10, min_genes=5, **kwargs)
    return adata.uns["nsc_gotop"]


def test_gotop_finds_planted_term_with_exact_fisher(hub_adata, go_files):
    result = _run_gotop(hub_adata, go_files)
    assert sorted(result["principal_genes"]) == sorted(HUB_GENES)
    assert result["top_term"] == "GO:0000002"
    assert result["top_term_name"] == "housekeeping programme"
    assert sorted(result["top_term_genes"]) == sorted(HUB_GENES)
    table = result["enrichment"].set_index("term")
    # Propagated: G0..G9 are in GO:0000002 (8 via the child term); G30 (IEP) and G31 (NOT) are not.
    row = table.loc["GO:0000002"]
    assert (row.study_count, row.study_size, row.population_count, row.population_size) == (
        10,
        10,
        10,
        40,
    )
    expected = stats.fisher_exact([[10, 0], [0, 30]]).pvalue
    np.testing.assert_allclose(row.pval, expected, rtol=1e-10)
    child = table.loc["GO:0000003"]
    assert (child.study_count, child.population_count) == (8, 8)
    np.testing.assert_allclose(child.pval, stats.fisher_exact([[8, 2], [0, 30]]).pvalue, rtol=1e-10)
    assert child.odds_ratio == np.inf  # no population gene outside the study is in the term
    assert child.depth == 2
    assert child.namespace == "BP"


def test_gotop_evidence_codes_are_respected(hub_adata, go_files):
    result = _run_gotop(hub_adata, go_files, evidence=_go.DEFAULT_EVIDENCE | {"IEP"})
    assert "G30" in result["top_term_genes"]
    assert "G31" not in result["top_term_genes"]


def test_gotop_gene2go_with_var_column(hub_adata, go_files):
    obo, _, gene2go = go_files
    nsc.tl.gotop(hub_adata, obo, gene2go, n_principal=10, gene_id="entrez")
    result = hub_adata.uns["nsc_gotop"]
    assert result["top_term"] == "GO:0000002"
    assert sorted(result["top_term_genes"]) == sorted(HUB_GENES)


def test_gotop_mapping(hub_adata, go_files):
    obo, gaf, _ = go_files
    hub_adata.var_names = [f"ENSG{i:05d}" for i in range(N_GENES)]
    mapping = {f"ENSG{i:05d}": f"G{i}" for i in range(N_GENES)}
    nsc.tl.gotop(hub_adata, obo, gaf, n_principal=10, gene_id=mapping)
    assert hub_adata.uns["nsc_gotop"]["top_term"] == "GO:0000002"


def test_go_files_are_parsed_once(go_files, tmp_path):
    obo, gaf, _ = go_files
    assert _go.read_godag(obo) is _go.read_godag(obo)
    assert _go.read_annotations(gaf) is _go.read_annotations(gaf)
    copy = tmp_path / "copy.obo"
    copy.write_text(OBO)
    first = _go.read_godag(copy)
    copy.write_text(OBO + "\n")  # a changed file (size and mtime) is read again
    assert _go.read_godag(copy) is not first


def _snapshot(adata):
    return adata.copy()


def _assert_unchanged(before: AnnData, after: AnnData) -> None:
    assert list(after.uns) == list(before.uns)
    assert list(after.obsm) == list(before.obsm)
    assert after.shape == before.shape
    for key in before.obsm:
        pd.testing.assert_frame_equal(pd.DataFrame(after.obsm[key]), pd.DataFrame(before.obsm[key]))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a, f: {"go_obo": f[0].parent / "missing.obo"}, "not found"),
        (lambda a, f: {"go_obo": f[2]}, "does not look like an OBO"),
        (lambda a, f: {"annotations": f[0]}, "neither a GAF"),
        (lambda a, f: {"n_principal": 1}, "`n_principal` must be an integer >= 2"),
        (lambda a, f: {"pcut": 0}, r"`pcut` must be a finite number in \(0, 1\]"),
        (lambda a, f: {"min_genes": 0.5}, "`min_genes` must be an integer >= 1"),
        (lambda a, f: {"n_principal": N_GENES}, "n_principal must be between"),
        (lambda a, f: {"gene_id": "nonexistent"}, "neither 'symbol'"),
    ],
)
def test_gotop_bad_input(hub_adata, go_files, change, match):
    obo, gaf, _ = go_files
    kwargs = {"go_obo": obo, "annotations": gaf, "n_principal": 10, **change(hub_adata, go_files)}
    before = _snapshot(hub_adata)
    with pytest.raises(ValueError, match=match):
        nsc.tl.gotop(hub_adata, **kwargs)
    _assert_unchanged(before, hub_adata)


def test_gotop_no_gene_matches_shows_both_sides(hub_adata, go_files):
    hub_adata.var_names = [f"X{i}" for i in range(N_GENES)]
    before = _snapshot(hub_adata)
    with pytest.raises(ValueError, match=r"e\.g\. \['X0'.*symbols \['G0'"):
        _run_gotop(hub_adata, go_files)
    _assert_unchanged(before, hub_adata)


def test_gotop_empty_network(hub_adata, go_files):
    hub_adata.varp["nsc_coex_net"] = sparse.csr_matrix((N_GENES, N_GENES), dtype=bool)
    before = _snapshot(hub_adata)
    with pytest.raises(ValueError, match="no edge"):
        _run_gotop(hub_adata, go_files)
    _assert_unchanged(before, hub_adata)


def test_gotop_missing_network(hub_adata, go_files):
    del hub_adata.varp["nsc_coex_net"]
    with pytest.raises(ValueError, match=r"nsc\.tl\.binnet"):
        _run_gotop(hub_adata, go_files)


@pytest.fixture
def normalized():
    adata = nsc.datasets.simulate(n_cells=400, n_genes=120, seed=3)
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    return adata


def _reference_standardized_pc(expression: np.ndarray) -> np.ndarray:
    centred = expression - expression.mean(axis=0)
    standardized = centred / np.sqrt((centred**2).mean(axis=0))
    u, s, _ = np.linalg.svd(standardized, full_matrices=False)
    return u[:, 0] * s[0]


@pytest.mark.parametrize("condition", [True, False])
def test_pccovt_is_top_pc(normalized, condition):
    genes = list(normalized.var_names[:15])
    before = normalized.obsm["nsc_covariates_norm"].copy()
    nsc.tl.pccovt(normalized, genes, condition_on_covariates=condition, name="hk")
    after = normalized.obsm["nsc_covariates_norm"]
    pd.testing.assert_frame_equal(after.drop(columns="hk"), before)
    expression = normalized[:, genes].layers["normalisr"]
    if condition:
        design = np.column_stack([before.to_numpy(), np.ones(normalized.n_obs)])
        expression = expression - design @ np.linalg.lstsq(design, expression, rcond=None)[0]
    expected = _reference_standardized_pc(expression)
    sign = np.sign(expected @ after["hk"].to_numpy())
    np.testing.assert_allclose(after["hk"].to_numpy(), sign * expected, rtol=1e-8, atol=1e-10)
    record = normalized.uns["nsc_pccovt"]["hk"]
    assert list(record["genes"]) == genes
    assert 0 < record["explained_variance_ratio"] <= 1


def test_pccovt_agrees_with_reference(normalized):
    ref = pytest.importorskip("normalisr.normalisr")
    genes = list(normalized.var_names[10:40])
    # A housekeeping-like programme shared by the genes gives the component a clear
    # eigen-gap, so the reference's randomized truncated SVD converges.
    rng = np.random.default_rng(1)
    programme = np.outer(rng.normal(size=normalized.n_obs), rng.uniform(0.5, 1.5, len(genes)))
    normalized.layers["normalisr"][:, 10:40] += programme
    covariates = normalized.obsm["nsc_covariates_norm"]
    expected = ref.pccovt(
        normalized.layers["normalisr"].T,
        covariates.to_numpy().T,
        np.array(normalized.var_names),
        genes,
    )[-1]
    nsc.tl.pccovt(normalized, genes)
    ours = normalized.obsm["nsc_covariates_norm"]["pc_covariate_1"].to_numpy()
    sign = np.sign(ours @ expected)
    np.testing.assert_allclose(ours, sign * expected, rtol=1e-6, atol=1e-6 * np.abs(ours).max())


def test_pccovt_bad_input(normalized):
    before = normalized.copy()
    with pytest.raises(ValueError, match=r"not in adata\.var_names"):
        nsc.tl.pccovt(normalized, ["gene00000", "nope"])
    with pytest.raises(ValueError, match="at least 2 genes"):
        nsc.tl.pccovt(normalized, ["gene00000"])
    with pytest.raises(ValueError, match="already exists"):
        nsc.tl.pccovt(normalized, list(normalized.var_names[:5]), name="intercept")
    _assert_unchanged(before, normalized)
    del normalized.layers["normalisr"]
    with pytest.raises(ValueError, match=r"nsc\.pp\.normvar"):
        nsc.tl.pccovt(normalized, list(normalized.var_names[:5]))


#: Housekeeping programmes the top term of PBMC co-expression may be.
HOUSEKEEPING_TERMS = {
    "GO:0022626",  # cytosolic ribosome
    "GO:0002181",  # cytoplasmic translation
    "GO:0005840",  # ribosome
    "GO:0003735",  # structural constituent of ribosome
    "GO:0044391",  # ribosomal subunit
    "GO:0022625",  # cytosolic large ribosomal subunit
    "GO:0022627",  # cytosolic small ribosomal subunit
    "GO:0006412",  # translation
    "GO:0005743",  # mitochondrial inner membrane
    "GO:0006119",  # oxidative phosphorylation
}


@pytest.fixture(scope="module")
def pbmc_monocytes(shared_data):
    import anndata as ad

    adata = ad.read_h5ad(shared_data / "pbmc3k_raw.h5ad")
    adata = adata[adata.obs["seurat_cell_type"] == "CD14+ Mono"].copy()
    nsc.pp.normalize(
        adata, qc={"min_gene_cells": 50, "min_cell_counts": 500, "min_cell_genes": 100}
    )
    return adata


@pytest.mark.slow  # GO enrichment over PBMC monocytes
def test_pbmc_top_term_is_housekeeping_and_peels_off(pbmc_monocytes, shared_data):
    go = shared_data / "go"
    obo, gaf = go / "go-basic_GOdb_2022-07-01.obo.gz", go / "human_orgHsegdb_2022-09-12.gaf.gz"
    adata = pbmc_monocytes.copy()
    nsc.tl.coex(adata)
    nsc.tl.binnet(adata, qcut=0.05)
    nsc.tl.gotop(adata, obo, gaf)
    result = adata.uns["nsc_gotop"]
    assert result["top_term"] in HOUSEKEEPING_TERMS
    housekeeping = result["top_term_genes"]
    assert sum(g.startswith(("RPL", "RPS")) for g in housekeeping) >= 20
    index = adata.var_names.get_indexer(housekeeping)
    edges_before = adata.varp["nsc_coex_net"][np.ix_(index, index)].sum()

    nsc.tl.pccovt(adata, housekeeping)
    nsc.tl.coex(adata)
    nsc.tl.binnet(adata, qcut=0.05)
    edges_after = adata.varp["nsc_coex_net"][np.ix_(index, index)].sum()
    # Measured on this data: 453 -> 105 edges among the 73 cytosolic-ribosome genes (0.23).
    assert edges_after < 0.5 * edges_before


@pytest.mark.slow  # the peel: coex and GO rounds on PBMC monocytes
def test_pbmc_coex_peel(pbmc_monocytes, shared_data):
    go = shared_data / "go"
    obo, gaf = go / "go-basic_GOdb_2022-07-01.obo.gz", go / "human_orgHsegdb_2022-09-12.gaf.gz"
    adata = pbmc_monocytes.copy()
    nsc.tl.coex_peel(adata, obo, gaf, rounds=2)
    terms = adata.uns["nsc_coex_peel"]["terms"]
    assert list(terms["round"]) == [1, 2]
    assert terms["term"].iloc[0] in HOUSEKEEPING_TERMS
    assert terms["term"].iloc[1] != terms["term"].iloc[0]
    covariates = adata.obsm["nsc_covariates_norm"].columns
    assert {"go_round1", "go_round2"} <= set(covariates)
    first, last = adata.varp["nsc_coex_net_round1"], adata.varp["nsc_coex_net"]
    assert last.sum() < first.sum()
    assert adata.uns["nsc_coex"]["binnet"]["n_edges"] == last.sum()


def test_coex_peel_bad_input_leaves_adata_unchanged(normalized, go_files, tmp_path):
    obo, gaf, _ = go_files
    before = normalized.copy()
    with pytest.raises(ValueError, match="does not look like an OBO"):
        nsc.tl.coex_peel(normalized, gaf, gaf)
    with pytest.raises(ValueError, match="`rounds` must be an integer >= 1"):
        nsc.tl.coex_peel(normalized, obo, gaf, rounds=0)
    # Fails inside the first round (no gene of the data is annotated): nothing is kept.
    with pytest.raises(ValueError, match="no gene of the data"):
        nsc.tl.coex_peel(normalized, obo, gaf, n_principal=10)
    _assert_unchanged(before, normalized)
    assert list(normalized.varp) == list(before.varp)
    assert list(normalized.var.columns) == list(before.var.columns)


# ---------------------------------------------------------------- significance, NaN, store


def test_gotop_reports_the_bonferroni_p_of_the_top_term(hub_adata, go_files):
    result = _run_gotop(hub_adata, go_files)
    table = result["enrichment"].set_index("term")
    assert result["top_term_pval_bonferroni"] == table.loc["GO:0000002", "pval_bonferroni"]
    assert result["top_term_pval_bonferroni"] < 0.05
    assert result["best_pval_bonferroni"] == result["top_term_pval_bonferroni"]
    assert "no_top_term" not in result
    assert "nsc_gotop" in hub_adata.uns["nsc_written"]["uns"]
    assert hub_adata.uns["nsc_gotop"]["params"]["n_principal"] > 0


def test_gotop_no_term_below_pcut_means_no_top_term(hub_adata, go_files, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="normalisr_sc")
    best = _run_gotop(hub_adata.copy(), go_files)["top_term_pval_bonferroni"]
    result = _run_gotop(hub_adata, go_files, pcut=best)  # strictly below: none passes
    assert "top_term" not in result
    assert "top_term_genes" not in result
    assert result["best_pval_bonferroni"] == best
    assert f"below pcut={best:g} (best: {best:.3g})" in result["no_top_term"]
    assert "no top term" in caplog.text
    assert hub_adata.uns["nsc_gotop"]["params"]["pcut"] == best


def test_gotop_no_enriched_term(hub_adata, go_files):
    """Hubs without annotation: nothing is enriched, the best p-value is NaN."""
    net = np.zeros((N_GENES, N_GENES), dtype=bool)
    net[10:20, 10:20] = True
    np.fill_diagonal(net, False)
    hub_adata.varp["nsc_coex_net"] = sparse.csr_matrix(net)
    result = _run_gotop(hub_adata, go_files)
    assert "top_term" not in result
    assert np.isnan(result["best_pval_bonferroni"])
    assert result["no_top_term"].startswith("no GO term has odds ratio > 1")


def test_gotop_refuses_a_users_key(hub_adata, go_files):
    hub_adata.uns["nsc_gotop"] = {"mine": 1}
    before = _snapshot(hub_adata)
    with pytest.raises(ValueError, match=r"adata.uns\['nsc_gotop'\] already exists"):
        _run_gotop(hub_adata, go_files)
    _assert_unchanged(before, hub_adata)
    assert hub_adata.uns["nsc_gotop"] == {"mine": 1}


@pytest.mark.parametrize("where", ["layer", "covariates"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_pccovt_refuses_non_finite_input(normalized, where, value):
    genes = list(normalized.var_names[:5])
    if where == "layer":
        normalized.layers["normalisr"][3, 2] = value
        match = r"adata.layers\['normalisr'\] \(the 5 genes\) holds 1 NaN or infinite"
    else:
        normalized.obsm["nsc_covariates_norm"].iloc[7, 0] = value
        match = r"adata.obsm\['nsc_covariates_norm'\] (holds 1|contains) NaN or infinite"
    before = normalized.copy()
    with pytest.raises(ValueError, match=match):
        nsc.tl.pccovt(normalized, genes)
    _assert_unchanged(before, normalized)
    assert "nsc_pccovt" not in normalized.uns


def test_pccovt_stores_through_the_writer(normalized):
    nsc.tl.pccovt(normalized, list(normalized.var_names[:5]), name="hk")
    nsc.tl.pccovt(normalized, list(normalized.var_names[5:10]))
    assert list(normalized.uns["nsc_pccovt"]) == ["hk", "pc_covariate_2"]
    assert normalized.uns["nsc_pccovt"]["hk"]["params"]["name"] == "hk"
    written = normalized.uns["nsc_written"]
    assert "nsc_covariates_norm" in written["obsm"]
    assert "nsc_pccovt" in written["uns"]
    with pytest.raises(ValueError, match="`genes` names"):
        nsc.tl.pccovt(normalized, ["gene00000", "gene00000"])
    with pytest.raises(ValueError, match="`condition_on_covariates` must be True or False"):
        nsc.tl.pccovt(normalized, list(normalized.var_names[:5]), condition_on_covariates=1)


def test_pccovt_conditioning_is_exact_on_an_ill_conditioned_design(normalized):
    """The projection is exact to eps x cond(design), not eps x cond^2."""
    from normalisr_sc.tl._go_covariates import _covariates_removed

    rng = np.random.default_rng(0)
    n = normalized.n_obs
    base = rng.normal(size=(n, 3))
    # Nearly collinear columns: condition number about 1e6.
    design = np.column_stack([base, base[:, 0] + 1e-6 * rng.normal(size=n)])
    expression = rng.normal(size=(n, 4))
    got = _covariates_removed(expression, design)
    full = np.column_stack([design, np.ones(n)])
    expected = expression - full @ np.linalg.lstsq(full, expression, rcond=None)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * np.abs(expected).max())
    # Orthogonal to every column of the design, intercept included.
    np.testing.assert_allclose(full.T @ got, 0, atol=1e-8 * np.abs(expression).sum(axis=0).max())


def _module_data():
    """A simulated data set whose planted module genes are G0..G9 of the tiny ontology."""
    adata = nsc.datasets.simulate(
        n_cells=600,
        n_genes=N_GENES,
        n_modules=1,
        module_size=10,
        module_strength=0.6,
        de_fraction=0,
        seed=2,
    )
    module = adata.uns["simulation"]["modules"]["module1"]
    others = [g for g in adata.var_names if g not in module]
    names = {g: f"G{i}" for i, g in enumerate(module)}
    names |= {g: f"G{10 + i}" for i, g in enumerate(others)}
    adata.var_names = [names[g] for g in adata.var_names]
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    return adata


def test_coex_peel_stops_and_says_why(go_files, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="normalisr_sc")
    obo, gaf, _ = go_files
    adata = _module_data()
    nsc.tl.coex_peel(adata, obo, gaf, rounds=3, n_principal=10)
    peel = adata.uns["nsc_coex_peel"]
    assert list(peel["terms"]["term"]) == ["GO:0000002"]
    assert peel["terms"]["pval_bonferroni"].iloc[0] < 0.05
    assert peel["stopped"].startswith("round 2: no GO term")
    assert "coex_peel stopped in round 2" in caplog.text
    assert "go_round1" in adata.obsm["nsc_covariates_norm"].columns
    assert "go_round2" not in adata.obsm["nsc_covariates_norm"].columns
    assert {"nsc_coex_net_round1", "nsc_coex_net_round2"} <= set(adata.varp)
    written = adata.uns["nsc_written"]
    assert {"nsc_coex_net_round1", "nsc_coex_net"} <= set(written["varp"])
    assert {"nsc_coex_peel", "nsc_gotop", "nsc_pccovt"} <= set(written["uns"])
    assert peel["params"]["rounds"] == 3
    assert adata.uns["nsc_gotop"]["params"]["key"] == "nsc_coex"
