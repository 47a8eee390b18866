"""What ``nsc.tl.de`` reports is true: ``reference=`` restricts the comparison, ``logfc`` is
a fold change of the log CPM, missing labels and small groups are handled, parameters
are checked."""

from __future__ import annotations

import logging

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest

import normalisr_sc as nsc

from .._helpers import assert_unchanged
from ._data import normalised_adata, normalised_arrays, random_guides

#: Results compared between a test and its explicit equivalent.
COMPARED = ("log10p", "gamma", "logfc", "var")
THREE = ["B", "CD14+ Mono", "NK"]


def _lstsq_coefficient(x: np.ndarray, others: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficient of ``x`` in the least-squares fit of ``y`` on ``[x, others]``."""
    design = np.column_stack([x, others])
    return np.linalg.lstsq(design, y, rcond=None)[0][0]


def _assert_same(first: ad.AnnData, key1: str, second: ad.AnnData, key2: str) -> None:
    """The results agree to 1e-10; p-values of genes almost constant on the cells of the
    test (residual variance below 1e-3 of the median) to 1e-7, as the residual sum of
    squares is a small difference of large sums there, rounded differently by the two
    orders of summation."""
    variance = first.varm[f"{key1}_var"].to_numpy()
    steady = variance > 1e-3 * np.median(variance, axis=0)
    for suffix in COMPARED:
        a, b = first.varm[f"{key1}_{suffix}"], second.varm[f"{key2}_{suffix}"]
        assert list(a.columns) == list(b.columns)
        a, b = a.to_numpy(), b.to_numpy()
        if suffix == "log10p":
            np.testing.assert_allclose(a, b, rtol=1e-7)
            a, b = a[steady], b[steady]
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    for entry in ("df", "n_cells", "n_cells_test"):
        np.testing.assert_array_equal(first.uns[key1][entry], second.uns[key2][entry])


# ---------------------------------------------------------------- PBMC 3k


@pytest.fixture(scope="module")
def pbmc_three(shared_data):
    """B cells, CD14+ monocytes, NK cells and the cells without a label, normalised together."""
    adata = ad.read_h5ad(shared_data / "pbmc3k_raw.h5ad")
    types = adata.obs["seurat_cell_type"]
    adata = adata[(types.isin(THREE) | types.isna()).to_numpy()].copy()
    nsc.pp.normalize(adata)
    assert adata.obs["seurat_cell_type"].isna().sum() > 0
    return adata


@pytest.mark.slow
@pytest.mark.parametrize("design", ["case_control", "low_moi"])
def test_reference_equals_the_explicit_two_group_subset(pbmc_three, design):
    adata = pbmc_three.copy()
    nsc.tl.de(
        adata,
        "seurat_cell_type",
        design=design,
        groups=["B"],
        reference="CD14+ Mono",
        key_added="ref",
    )
    labels = adata.obs["seurat_cell_type"]
    pair = adata[labels.isin(["B", "CD14+ Mono"]).to_numpy()].copy()
    nsc.tl.de(pair, "seurat_cell_type", groups=["B"], key_added="pair")
    _assert_same(adata, "ref", pair, "pair")
    assert adata.uns["ref"]["n_cells_test"][0] == pair.n_obs < adata.n_obs
    assert adata.uns["ref"]["n_cells"][0] == (labels == "B").sum()
    assert list(adata.uns["ref"]["params"]["reference_groups"]) == ["CD14+ Mono"]
    assert adata.uns["ref"]["params"]["reference"] == "CD14+ Mono"


@pytest.mark.slow
def test_reference_changes_the_case_control_result(pbmc_three):
    adata = pbmc_three.copy()
    nsc.tl.de(adata, "seurat_cell_type", groups=["B"], reference="CD14+ Mono", key_added="ref")
    nsc.tl.de(adata, "seurat_cell_type", groups=["B"], key_added="rest")
    labelled = adata.obs["seurat_cell_type"].notna().sum()
    assert adata.uns["rest"]["n_cells_test"][0] == labelled
    assert adata.uns["rest"]["n_cells_unlabelled"] == adata.n_obs - labelled
    gap = np.abs(adata.varm["ref_log10p"]["B"] - adata.varm["rest_log10p"]["B"]).max()
    assert gap > 1.0


@pytest.mark.slow
def test_missing_labels_are_left_out_and_logged(pbmc_three, caplog):
    adata = pbmc_three.copy()
    missing = int(adata.obs["seurat_cell_type"].isna().sum())
    with caplog.at_level(logging.WARNING, logger="normalisr_sc"):
        nsc.tl.de(adata, "seurat_cell_type", key_added="all")
    assert f"{missing} cells with a missing label" in caplog.text
    labelled = adata[adata.obs["seurat_cell_type"].notna().to_numpy()].copy()
    nsc.tl.de(labelled, "seurat_cell_type", key_added="labelled")
    _assert_same(adata, "all", labelled, "labelled")
    assert adata.uns["all"]["n_cells_unlabelled"] == missing


@pytest.mark.slow
def test_high_moi_reference_is_the_baseline_of_the_joint_regression(pbmc_three):
    adata = pbmc_three.copy()
    nsc.tl.de(adata, "seurat_cell_type", design="high_moi", reference="CD14+ Mono", key_added="hm")
    labels = adata.obs["seurat_cell_type"]
    used = labels.notna().to_numpy()
    assert list(adata.varm["hm_logfc"].columns) == ["B", "NK"]
    np.testing.assert_array_equal(adata.uns["hm"]["n_cells_test"], [used.sum()] * 2)
    genes = adata.varm["hm_log10p"]["B"].nlargest(5).index
    index = adata.var_names.get_indexer(genes)
    lcpm = np.asarray(adata.layers["lcpm"])[used][:, index]
    covariates = adata.obsm["nsc_covariates"].to_numpy()[used]
    b, nk = ((labels[used] == g).to_numpy(float) for g in ("B", "NK"))
    expected = _lstsq_coefficient(b, np.column_stack([nk, covariates]), lcpm)
    np.testing.assert_allclose(adata.varm["hm_logfc"].loc[genes, "B"], expected, rtol=1e-8)


@pytest.mark.slow
def test_logfc_of_top_genes_is_the_adjusted_difference_of_mean_log_cpm(pbmc_three):
    adata = pbmc_three.copy()
    nsc.tl.de(adata, "seurat_cell_type")
    labels = adata.obs["seurat_cell_type"]
    used = labels.notna().to_numpy()
    lcpm_all = np.asarray(adata.layers["lcpm"])
    covariates = adata.obsm["nsc_covariates"].to_numpy()[used]
    for group in THREE:
        genes = adata.varm["nsc_de_log10p"][group].nlargest(20).index
        lcpm = lcpm_all[used][:, adata.var_names.get_indexer(genes)]
        x = (labels[used] == group).to_numpy(float)
        expected = _lstsq_coefficient(x, covariates, lcpm)
        logfc = adata.varm["nsc_de_logfc"].loc[genes, group].to_numpy()
        np.testing.assert_allclose(logfc, expected, rtol=1e-8)
        # On the normalised scale the coefficient is several times larger.
        gamma = adata.varm["nsc_de_gamma"].loc[genes, group].to_numpy()
        assert np.median(gamma / logfc) > 1.2
    # Markers: within 25% of the plain difference of mean log CPM.
    for group, gene in (("B", "CD79A"), ("CD14+ Mono", "LYZ"), ("NK", "GNLY")):
        j = adata.var_names.get_loc(gene)
        inside = (labels == group).to_numpy()
        plain = lcpm_all[inside, j].mean() - lcpm_all[used & ~inside, j].mean()
        assert adata.varm["nsc_de_logfc"].loc[gene, group] == pytest.approx(plain, rel=0.25)


# ---------------------------------------------------------------- simulation


@pytest.mark.slow
def test_planted_fold_changes_are_recovered():
    # Many genes, none dominating the library: the planted changes barely shift the
    # other genes' proportions.
    adata = nsc.datasets.simulate(
        n_cells=3000, n_genes=1000, de_fraction=0.03, mean_total_counts=20_000, seed=5
    )
    mean_counts = pd.Series(np.asarray(adata.X.mean(axis=0)).ravel(), index=adata.var_names)
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    nsc.tl.de(adata, "group", reference="control", n_genes=0)
    truth = adata.uns["simulation"]
    planted = pd.Series(truth["de_log_fold_change"], index=truth["de_genes"])
    logfc = adata.varm["nsc_de_logfc"]["case"][planted.index]
    well = mean_counts[planted.index] >= 10
    assert well.sum() >= 10
    np.testing.assert_allclose(logfc[well], planted[well], rtol=0.10)
    # The posterior log CPM shrinks the fold changes of rarely detected genes.
    rare = mean_counts[planted.index] < 1
    assert rare.any()
    assert (np.abs(logfc[rare]) < 0.7 * np.abs(planted[rare])).all()


def test_weights_far_from_one_change_gamma_not_logfc():
    rng = np.random.default_rng(3)
    n_cells, n_genes = 600, 12
    weights = rng.uniform(1.0, 6.0, n_cells)
    group = (np.arange(n_cells) % 2).astype(float)
    raw = np.column_stack([rng.normal(size=n_cells), np.ones(n_cells)])
    log_cpm = 1.5 * group[:, None] + raw[:, :1] * 0.3 + rng.normal(0.0, 0.2, (n_cells, n_genes))
    # The normalised scale multiplies cells by their weights (METHOD 7, f = 1).
    adata = normalised_adata(
        log_cpm * weights[:, None], raw * weights[:, None], log_cpm=log_cpm, raw_covariates=raw
    )
    adata.obs["g"] = pd.Categorical(np.where(group == 1, "case", "control"))
    nsc.tl.de(adata, "g", groups=["case"], reference="control")
    np.testing.assert_allclose(adata.varm["nsc_de_logfc"]["case"], 1.5, rtol=0.03)
    assert (adata.varm["nsc_de_gamma"]["case"] > 3.0).all()


# ---------------------------------------------------------------- small groups, input


@pytest.fixture
def labelled():
    expression, covariates = normalised_arrays(300, 15, seed=9)
    adata = normalised_adata(expression, covariates)
    labels = np.array(["a", "b", "ref"])[np.arange(300) % 3].astype(object)
    labels[:3] = ["tiny", "tiny", "solo"]
    labels[3:6] = None
    adata.obs["cluster"] = pd.Categorical(labels)
    return adata


@pytest.mark.parametrize("design", ["case_control", "low_moi", "high_moi"])
def test_small_groups_are_skipped_with_a_warning(labelled, design, caplog):
    with caplog.at_level(logging.WARNING, logger="normalisr_sc"):
        nsc.tl.de(labelled, "cluster", design=design, reference="ref", min_cells=3)
    assert "tiny, solo" in caplog.text or "solo, tiny" in caplog.text
    assert sorted(labelled.uns["nsc_de"]["skipped"]) == ["solo", "tiny"]
    assert list(labelled.varm["nsc_de_pvals"].columns) == ["a", "b"]
    assert labelled.uns["nsc_de"]["n_cells_unlabelled"] == 3
    expected_test = {"high_moi": [297, 297]}.get(design, [196, 196])
    np.testing.assert_array_equal(labelled.uns["nsc_de"]["n_cells_test"], expected_test)


def test_requested_small_group_is_an_error(labelled):
    before = labelled.copy()
    with pytest.raises(ValueError, match=r"requested with `groups=`.*min_cells=3"):
        nsc.tl.de(labelled, "cluster", groups=["a", "tiny"], reference="ref", min_cells=3)
    assert_unchanged(before, labelled)
    nsc.tl.de(labelled, "cluster", groups=["a", "tiny"], reference="ref")  # 2 cells suffice
    np.testing.assert_array_equal(labelled.uns["nsc_de"]["n_cells"], [98, 2])


def test_case_control_reference_with_several_groups_per_cell(caplog):
    expression, covariates = normalised_arrays(400, 10, seed=2)
    adata = normalised_adata(expression, covariates)
    guides = random_guides(400, 4, 1.0, seed=3).toarray()
    adata.obsm["guides"] = pd.DataFrame(
        guides, index=adata.obs_names, columns=["g0", "g1", "g2", "ctrl"]
    )
    with caplog.at_level(logging.WARNING, logger="normalisr_sc"):
        nsc.tl.de(adata, "guides", reference="ctrl", groups=["g0"])
    others = guides[:, :3].sum(axis=1)
    several = int((others > 1).sum())
    assert f"{several} cells carry several non-reference groups" in caplog.text
    g0 = (guides[:, 0] == 1) & (others == 1)
    ctrl = (guides[:, 3] == 1) & (others == 0)
    assert adata.uns["nsc_de"]["n_cells_test"][0] == (g0 | ctrl).sum()
    genes = np.arange(10)
    expected = _lstsq_coefficient(
        guides[g0 | ctrl, 0],
        np.column_stack([covariates[g0 | ctrl], np.ones((g0 | ctrl).sum())]),
        adata.layers["lcpm"][g0 | ctrl][:, genes],
    )
    np.testing.assert_allclose(adata.varm["nsc_de_logfc"]["g0"], expected, rtol=1e-9)


def test_lazy_log_cpm_streams_both_layers(labelled):
    expected = labelled.copy()
    nsc.tl.de(expected, "cluster", reference="ref")
    labelled.layers["lcpm"] = da.from_array(labelled.layers["lcpm"], chunks=(70, -1))
    nsc.tl.de(labelled, "cluster", reference="ref", chunk_size=50)
    for suffix in COMPARED:
        np.testing.assert_allclose(
            labelled.varm[f"nsc_de_{suffix}"],
            expected.varm[f"nsc_de_{suffix}"],
            rtol=1e-10,
            atol=1e-13,
        )


def _drop_lcpm(adata):
    del adata.layers["lcpm"]


def _drop_raw_covariates(adata):
    del adata.obsm["nsc_covariates"]


def _user_result(adata):
    adata.uns["nsc_de"] = {"mine": 1}


@pytest.mark.parametrize(
    ("mutate", "kwargs", "match"),
    [
        (_drop_lcpm, {}, r"layers\['lcpm'\] not found.*`logfc_layer=`"),
        (_drop_raw_covariates, {}, r"`logfc_covariates=`"),
        (_user_result, {}, "was not written by normalisr_sc"),
        (None, {"reference": ["ref", "ref"]}, "more than once"),
        (None, {"groups": ["a", "a"], "reference": "ref"}, "more than once"),
        (None, {"min_cells": 0}, "`min_cells`"),
        (None, {"min_cells": 2.5}, "`min_cells`"),
        (None, {"chunked": "yes"}, "`chunked`"),
        (None, {"logfc_layer": 3}, "`logfc_layer`"),
        (None, {"key_added": ""}, "`key_added`"),
        (None, {"groupby": 1}, "`groupby`"),
        (None, {"reference": "ref", "min_cells": 1000}, "no group is carried"),
    ],
)
def test_bad_input_leaves_adata_unchanged(labelled, mutate, kwargs, match):
    if mutate is not None:
        mutate(labelled)
    before = labelled.copy()
    with pytest.raises(ValueError, match=match):
        nsc.tl.de(labelled, **{"groupby": "cluster", **kwargs})
    assert_unchanged(before, labelled)


@pytest.mark.slow
def test_results_survive_h5ad_and_are_replaced_on_rerun(labelled, tmp_path):
    nsc.tl.de(labelled, "cluster", reference="ref")
    path = tmp_path / "de.h5ad"
    labelled.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert list(back.uns["nsc_de"]["skipped"]) == ["solo"]  # 1 cell < min_cells=2
    nsc.tl.de(back, "cluster", reference="ref", min_cells=3)  # own results are replaced
    assert sorted(back.uns["nsc_de"]["skipped"]) == ["solo", "tiny"]
    assert back.uns["nsc_de"]["params"]["min_cells"] == 3
