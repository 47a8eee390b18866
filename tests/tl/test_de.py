"""``nsc.tl.de``: agreement with normalisr 1.0.0, the joint high-MOI regression, simulated
screens, real data calibration and bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

import normalisr_sc as nsc
from normalisr_sc._core._association import case_control, high_moi, low_moi
from normalisr_sc._store import owned

from .._helpers import assert_unchanged, block_size
from ._data import normalised_adata, normalised_arrays, random_guides, simulate_screen

SINGLE = {"case_control": 0, "low_moi": 1, "high_moi": 4}
KERNELS = {"case_control": case_control, "low_moi": low_moi, "high_moi": high_moi}
AGREEMENT_RTOL = 1e-8
#: normalisr's p-values near 1 carry the error of scipy's ``betainc`` there (2.5e-10
#: absolute at p = 0.99996, df = 566, in the high-MOI test below), large against a
#: ``-log10 p`` of 1.6e-5; ours are within 2e-13 relative of 40-digit mpmath
#: (tests/_core/test_pvalues.py), so ``-log10 p`` is compared with this absolute floor.
LOG10P_ATOL = 1e-9


def _assert_log10p_close(ours: np.ndarray, reference_pvals: np.ndarray) -> None:
    np.testing.assert_allclose(
        ours, -np.log10(reference_pvals), rtol=AGREEMENT_RTOL, atol=LOG10P_ATOL
    )


def _rel(actual: np.ndarray, desired: np.ndarray) -> float:
    return float(np.max(np.abs(actual - desired) / np.maximum(np.abs(desired), 1e-300)))


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    return normalised_arrays(500, 40, seed=1)


def _reference_de(groups, expression, covariates, design):
    nr = pytest.importorskip("normalisr.normalisr")
    return nr.de(np.asarray(groups.T), expression.T, covariates.T, single=SINGLE[design], nth=1)


@pytest.mark.parametrize(
    ("design", "per_cell"), [("case_control", 0.3), ("low_moi", 0.3), ("high_moi", 5.0)]
)
def test_de_matches_normalisr(arrays, design, per_cell):
    expression, covariates = arrays
    groups = random_guides(expression.shape[0], 8, per_cell, seed=2).toarray()
    expression = expression + 2.0 * groups[:, :1] * (np.arange(40) < 5)
    ours = KERNELS[design](groups, expression, covariates, block_cells=128)
    pvals, gamma, _, var_group, var_gene = _reference_de(groups, expression, covariates, design)
    assert ours.tested.all()
    _assert_log10p_close(ours.neg_log10_pvals, pvals)
    assert _rel(ours.pvals, pvals) < AGREEMENT_RTOL
    assert _rel(ours.gamma, gamma) < AGREEMENT_RTOL
    assert _rel(ours.var_x, var_group) < AGREEMENT_RTOL
    assert _rel(ours.var_y, np.broadcast_to(var_gene, ours.var_y.shape)) < AGREEMENT_RTOL
    assert (ours.pvals[0, :5] < 1e-4).all()


def test_de_api_matches_normalisr_on_obs_column(arrays):
    expression, covariates = arrays
    adata = normalised_adata(expression, covariates)
    labels = np.array(["a", "b", "c", "ref"])[np.arange(adata.n_obs) % 4]
    adata.obs["cluster"] = pd.Categorical(labels)
    nsc.tl.de(adata, "cluster", design="low_moi", reference="ref")
    groups = np.column_stack([labels == g for g in "abc"]).astype(float)
    pvals, gamma, *_ = _reference_de(groups, expression, covariates, "low_moi")
    assert list(adata.varm["nsc_de_pvals"].columns) == ["a", "b", "c"]
    _assert_log10p_close(adata.varm["nsc_de_log10p"].to_numpy().T, pvals)
    assert _rel(adata.varm["nsc_de_gamma"].to_numpy().T, gamma) < AGREEMENT_RTOL
    np.testing.assert_array_equal(adata.uns["nsc_de"]["n_cells_test"], [250, 250, 250])


def test_results_do_not_depend_on_block_size(arrays):
    expression, covariates = arrays
    groups = random_guides(expression.shape[0], 6, 3.0, seed=5)
    for kernel in KERNELS.values():
        whole = kernel(groups, expression, covariates, block_cells=10_000)
        blocked = kernel(groups, expression, covariates, block_cells=37)
        np.testing.assert_allclose(blocked.neg_log10_pvals, whole.neg_log10_pvals, rtol=1e-10)
        np.testing.assert_allclose(blocked.gamma, whole.gamma, rtol=1e-10, atol=1e-14)


def _per_group_regression(groups, expression, covariates):
    """The high-MOI statistic spelt out: one regression per group, all others as covariates."""
    n_cells, n_groups = groups.shape
    pvals = np.ones((n_groups, expression.shape[1]))
    gamma = np.zeros_like(pvals)
    for x in range(n_groups):
        others = np.column_stack([np.delete(groups, x, axis=1), covariates])
        projector = others @ np.linalg.pinv(others, rcond=1e-10)
        x_res = groups[:, x] - projector @ groups[:, x]
        if x_res @ x_res < 1e-9 * groups[:, x].sum():
            continue
        y_res = expression - projector @ expression
        dot = x_res @ y_res
        r2 = dot**2 / ((x_res @ x_res) * (y_res**2).sum(axis=0))
        df = n_cells - 1 - np.linalg.matrix_rank(others)
        pvals[x] = 2 * stats.t.sf(np.sqrt(df * r2 / (1 - r2)), df)
        gamma[x] = dot / (x_res @ x_res)
    return pvals, gamma


@pytest.mark.slow
@pytest.mark.parametrize("deficiency", ["none", "identical", "covariate", "complement"])
def test_high_moi_joint_regression_equals_per_group(arrays, deficiency):
    expression, covariates = arrays
    groups = random_guides(expression.shape[0], 7, 5.0, seed=3).toarray()
    if deficiency == "identical":
        groups[:, 1] = groups[:, 0]
    elif deficiency == "covariate":
        groups[:, 2] = covariates[:, 2]  # the binary covariate
    elif deficiency == "complement":
        groups[:, 3] = covariates[:, 2]
        groups[:, 4] = 1 - covariates[:, 2]  # sums to a vector in the covariates' span?
    expression = expression + 0.5 * groups[:, :1]
    ours = high_moi(groups, expression, covariates, block_cells=128)
    pvals, gamma = _per_group_regression(groups, expression, covariates)
    np.testing.assert_allclose(np.log(ours.pvals), np.log(pvals), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours.gamma, gamma, rtol=1e-9, atol=1e-12)
    inseparable = {"none": [], "identical": [0, 1], "covariate": [2], "complement": [3]}
    for x in inseparable[deficiency]:
        assert (ours.pvals[x] == 1).all()
        assert (ours.gamma[x] == 0).all()


def test_high_moi_many_guides_per_cell_matches_normalisr():
    expression, covariates = normalised_arrays(600, 25, seed=7)
    groups = random_guides(600, 30, 8.0, seed=8)
    ours = high_moi(groups, expression, covariates, block_cells=200)
    pvals, gamma, *_ = _reference_de(groups.toarray(), expression, covariates, "high_moi")
    _assert_log10p_close(ours.neg_log10_pvals, pvals)
    assert _rel(ours.gamma, gamma) < AGREEMENT_RTOL


def test_single_valued_groups_are_skipped(arrays):
    expression, covariates = arrays
    groups = random_guides(expression.shape[0], 4, 1.0, seed=4).toarray()
    groups[:, 1] = 0
    for kernel in KERNELS.values():
        result = kernel(groups, expression, covariates, block_cells=128)
        assert not result.tested[1]
        assert (result.pvals[1] == 1).all()
        assert (result.gamma[1] == 0).all()
        assert result.tested[[0, 2, 3]].all()


def test_huge_effect_keeps_its_log10p(arrays):
    expression, covariates = normalised_arrays(4000, 3, seed=2)
    groups = (np.arange(4000) % 2 == 0).astype(float)[:, None]
    expression[:, 0] += 8.0 * groups[:, 0]
    result = case_control(groups, expression, covariates, block_cells=1000)
    assert result.pvals[0, 0] == 0  # far below the smallest float
    assert result.neg_log10_pvals[0, 0] > 1000
    assert np.isfinite(result.neg_log10_pvals[0, 0])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("design", "per_cell", "n_cells"),
    [("case_control", 6.0, 1200), ("low_moi", 0.8, 2500), ("high_moi", 6.0, 1200)],
)
def test_simulated_screen_calibrated_and_powered(design, per_cell, n_cells):
    adata = simulate_screen(n_cells=n_cells, per_cell=per_cell, seed=11)
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    nsc.tl.de(adata, "guides", design=design)
    pvals = adata.varm["nsc_de_pvals"]
    planted = np.zeros(pvals.shape, dtype=bool)
    for guide, gene in adata.uns["targets"].items():
        planted[adata.var_names.get_loc(gene), pvals.columns.get_loc(guide)] = True
    assert stats.kstest(pvals.to_numpy()[~planted], "uniform").pvalue > 1e-3
    assert (pvals.to_numpy()[planted] < 1e-4).all()
    assert (adata.varm["nsc_de_logfc"].to_numpy()[planted] < 0).all()


def test_case_control_simulation_finds_planted_genes():
    adata = nsc.datasets.simulate(n_cells=800, n_genes=200, de_fraction=0.1, seed=3)
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    nsc.tl.de(adata, "group", reference="control")
    truth = adata.uns["simulation"]
    pvals = adata.varm["nsc_de_pvals"]["case"]
    found = pvals[truth["de_genes"]]
    null = pvals.drop(truth["de_genes"])
    assert (found < 1e-3).mean() > 0.9
    assert stats.kstest(null, "uniform").pvalue > 1e-3
    signs = np.sign(adata.varm["nsc_de_logfc"]["case"][truth["de_genes"]].to_numpy())
    assert (signs == np.sign(truth["de_log_fold_change"])).mean() > 0.9


@pytest.mark.slow
def test_results_stored_and_survive_h5ad(arrays, tmp_path):
    expression, covariates = arrays
    adata = normalised_adata(expression, covariates)
    adata.obsm["guides"] = random_guides(adata.n_obs, 5, 2.0, seed=1)
    adata.uns["guides"] = {"names": [f"sg{i}" for i in range(5)]}
    nsc.tl.de(adata, "guides", design="high_moi", groups=["sg1", "sg3"], key_added="hm")
    for suffix in ("pvals", "log10p", "logfc", "gamma", "var"):
        frame = adata.varm[f"hm_{suffix}"]
        assert list(frame.columns) == ["sg1", "sg3"]
        assert frame.index.equals(adata.var_names)
    record = adata.uns["hm"]
    assert record["params"]["design"] == "high_moi"
    assert record["params"]["groups"] == ["sg1", "sg3"]
    assert list(record["groups"]) == ["sg1", "sg3"]
    path = tmp_path / "de.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(back.varm["hm_log10p"], adata.varm["hm_log10p"])
    np.testing.assert_array_equal(back.uns["hm"]["df"], record["df"])
    assert back.uns["hm"]["params"]["design"] == "high_moi"
    assert list(back.uns["hm"]["params"]["groups"]) == ["sg1", "sg3"]
    assert owned(back, "uns", "hm")


@pytest.fixture
def small_adata(arrays):
    expression, covariates = arrays
    adata = normalised_adata(expression, covariates)
    adata.obs["cluster"] = pd.Categorical(np.array(["a", "b", "ref"])[np.arange(adata.n_obs) % 3])
    adata.obsm["guides"] = random_guides(adata.n_obs, 4, 0.5, seed=2)
    return adata


def _singleton_level(adata):
    adata.obs["cluster"] = pd.Categorical(["solo", *adata.obs["cluster"][1:]])


def _group_everywhere(adata):
    adata.obsm["all"] = np.ones((adata.n_obs, 1))


def _counts_not_indicators(adata):
    adata.obsm["bad"] = np.full((adata.n_obs, 2), 2.0)


def _drop(where, key):
    return lambda adata: getattr(adata, where).pop(key)


@pytest.mark.parametrize(
    ("mutate", "kwargs", "match"),
    [
        (_singleton_level, {"groups": ["solo"]}, "fewer than min_cells=2"),
        (_group_everywhere, {"groupby": "all"}, "every cell"),
        (None, {"design": "low_moi"}, "reference="),
        (_drop("layers", "normalisr"), {}, r"nsc\.pp\.normvar"),
        (_drop("obsm", "nsc_covariates_norm"), {}, r"nsc\.pp\.normvar"),
        (None, {"groupby": "nope"}, "neither"),
        (None, {"reference": "zzz"}, "not found"),
        (None, {"groups": ["a"], "reference": "a"}, "both tested"),
        (None, {"design": "other"}, "design"),
        (None, {"dimreduce": -1}, "dimreduce"),
        (None, {"dimreduce": 500}, "degrees of freedom"),
        (_counts_not_indicators, {"groupby": "bad"}, "0/1"),
    ],
)
def test_bad_input_leaves_adata_unchanged(small_adata, mutate, kwargs, match):
    if mutate is not None:
        mutate(small_adata)
    before = small_adata.copy()
    with pytest.raises(ValueError, match=match):
        nsc.tl.de(small_adata, **{"groupby": "cluster", **kwargs})
    assert_unchanged(before, small_adata)


def test_valid_call_on_bad_input_fixture_succeeds(small_adata):
    nsc.tl.de(small_adata, "cluster", design="low_moi", reference="ref")
    nsc.tl.de(small_adata, "guides", design="low_moi", key_added="g")
    assert small_adata.varm["nsc_de_pvals"].shape == (small_adata.n_vars, 2)
    assert small_adata.varm["g_pvals"].shape == (small_adata.n_vars, 4)


def test_too_few_cells_for_covariates():
    expression, covariates = normalised_arrays(5, 3, seed=0)
    adata = normalised_adata(expression, covariates)
    adata.obs["g"] = pd.Categorical(["x", "x", "x", "y", "y"])
    before = adata.copy()
    with pytest.raises(ValueError, match="too few cells"):
        nsc.tl.de(adata, "g", reference="y")
    assert_unchanged(before, adata)


def test_nan_expression_is_an_error(small_adata):
    small_adata.layers["normalisr"][3, 2] = np.nan
    before = small_adata.copy()
    with block_size(64), pytest.raises(ValueError, match="NaN"):
        nsc.tl.de(small_adata, "cluster")
    assert_unchanged(before, small_adata)


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def papalexi(shared_data):
    adata = ad.read_h5ad(shared_data / "papalexi_lowmoi.h5ad")
    nsc.pp.normalize(adata, covariates=["bio_rep"], qc=None)
    return adata


@pytest.mark.slow
def test_papalexi_positive_controls(papalexi):
    adata = papalexi
    nsc.tl.assign_guides(adata, "grna_counts", guide_names="grna_ids", groups="grna_group")
    carried = np.asarray(adata.obsm["nsc_guides"].sum(axis=0)).ravel()
    counts = dict(zip(adata.uns["nsc_guides"]["names"], carried, strict=True))
    tested = [g for g, n in counts.items() if n >= 2 and g != "non-targeting"]
    nsc.tl.de(adata, "nsc_guides", design="low_moi", reference="non-targeting", groups=tested)
    pairs = adata.uns["pc_pairs"]
    pvals = [
        adata.varm["nsc_de_pvals"].loc[gene, group]
        for gene, group in zip(pairs["response_id"], pairs["grna_group"], strict=True)
    ]
    logfc = [
        adata.varm["nsc_de_logfc"].loc[gene, group]
        for gene, group in zip(pairs["response_id"], pairs["grna_group"], strict=True)
    ]
    assert len(pvals) == 9
    assert (np.array(pvals) < 1e-10).all()
    assert (np.array(logfc) < 0).all()


@pytest.mark.slow
def test_papalexi_non_targeting_calibrated(papalexi):
    adata = papalexi
    nsc.tl.assign_guides(adata, "grna_counts", guide_names="grna_ids", key_added="guide")
    table = adata.uns["grna_group"]
    nt = list(table["grna_id"][table["grna_group"] == "non-targeting"])
    names = adata.uns["guide"]["names"]
    carriers = adata.obsm["guide"][:, [names.index(g) for g in nt]]
    cells = adata[np.asarray(carriers.sum(axis=1)).ravel() > 0].copy()
    # Each non-targeting guide against the cells of all other non-targeting guides.
    pvals = []
    for guide in nt:
        nsc.tl.de(
            cells,
            "guide",
            design="low_moi",
            groups=[guide],
            reference=[g for g in names if g != guide],
        )
        pvals.append(cells.varm["nsc_de_pvals"][guide].to_numpy())
    pvals = np.concatenate(pvals)
    inflation = np.median(stats.chi2.isf(pvals, 1)) / stats.chi2.ppf(0.5, 1)
    assert 0.035 <= (pvals < 0.05).mean() <= 0.065
    assert 0.9 <= inflation <= 1.1


@pytest.fixture(scope="module")
def pbmc(shared_data):
    adata = ad.read_h5ad(shared_data / "pbmc3k_raw.h5ad")
    nsc.pp.normalize(adata)
    return adata


@pytest.mark.slow
def test_pbmc_b_cells_against_monocytes(pbmc):
    cells = pbmc[pbmc.obs["seurat_cell_type"].isin(["B", "CD14+ Mono"])].copy()
    nsc.tl.de(cells, "seurat_cell_type", reference="CD14+ Mono", groups=["B"])
    table = nsc.get.de_df(cells, "B")
    top = table.head(60).set_index("gene")
    for gene in ("MS4A1", "CD79A", "CD79B"):
        assert top.loc[gene, "logfc"] > 0
    for gene in ("LYZ", "S100A8", "CD14"):
        assert top.loc[gene, "logfc"] < 0


@pytest.mark.slow
def test_pbmc_random_split_is_uniform(pbmc):
    cells = pbmc[pbmc.obs["seurat_cell_type"] == "CD14+ Mono"].copy()
    pvals = []
    for seed in range(4):
        half = np.random.default_rng(seed).permutation(cells.n_obs) < cells.n_obs // 2
        cells.obs["half"] = pd.Categorical(np.where(half, "h1", "h2"))
        nsc.tl.de(cells, "half", reference="h2")
        pvals.append(cells.varm["nsc_de_pvals"]["h1"].to_numpy())
    pvals = np.concatenate(pvals)
    assert 0.035 <= (pvals < 0.05).mean() <= 0.065


def test_sparse_and_dense_group_matrices_agree(small_adata):
    dense = small_adata.obsm["guides"].toarray()
    small_adata.obsm["guides_dense"] = pd.DataFrame(
        dense, index=small_adata.obs_names, columns=["0", "1", "2", "3"]
    )
    nsc.tl.de(small_adata, "guides", design="low_moi", key_added="s")
    nsc.tl.de(small_adata, "guides_dense", design="low_moi", key_added="d")
    pd.testing.assert_frame_equal(small_adata.varm["s_log10p"], small_adata.varm["d_log10p"])
    assert sparse.issparse(small_adata.obsm["guides"])
