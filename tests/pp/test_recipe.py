"""nsc.pp.normalize: the whole recipe, against the steps run one by one."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData, read_h5ad
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import sparse

import normalisr_sc as nsc

from .._helpers import (
    FORMATS,
    as_format,
    assert_close,
    assert_nested_equal,
    assert_unchanged,
    binary_covariates_well_posed,
    block_size,
    counts_adata,
)

#: The paper's absolute bounds (the default's cell bounds scale down on 300 genes).
QC = dict(nsc.pp.DEFAULT_QC, transcriptome_genes=None)
#: The uns records of the recipe's steps (results and params), keyed by their output.
STEP_RECORDS = ("lcpm", "nsc_covariates", "nsc_weight", "nsc_outlier", "normalisr")


@pytest.fixture(scope="module")
def recipe_data() -> tuple[AnnData, np.ndarray, np.ndarray]:
    """600 x 300 simulated cells: 20 shallow cells and 5 rare genes fail QC, 5 deep cells
    become variance outliers."""
    adata = nsc.datasets.simulate(n_cells=600, n_genes=300, seed=1)
    rng = np.random.default_rng(1)
    counts = adata.X.toarray()
    shallow = rng.choice(600, 20, replace=False)
    counts[shallow] = rng.binomial(counts[shallow], 0.03)
    counts[30:, :5] = 0
    deep = rng.choice(np.setdiff1d(np.arange(600), shallow), 5, replace=False)
    counts[deep] = counts[deep] * 40 + rng.poisson(3, (5, 300))
    adata.X = sparse.csr_matrix(counts)
    return adata, np.sort(shallow), np.sort(deep)


def stepwise(
    adata: AnnData,
    covariates=None,
    *,
    qc=QC,
    remove_outliers=True,
    stepmax=1,
    keepvar=True,
    layer=None,
) -> AnnData:
    """The recipe written out as its six calls, on a copy."""
    adata = adata.copy()
    if qc is not None:
        nsc.pp.qc_reads(adata, **qc, layer=layer)
    nsc.pp.lcpm(adata, layer=layer)
    nsc.pp.normcov(adata, covariates)
    nsc.pp.compute_var(adata, stepmax=stepmax)
    if remove_outliers:
        nsc.pp.qc_outlier(adata)
    nsc.pp.normvar(adata, keepvar=keepvar)
    return adata


OUTPUT_LAYERS = ("lcpm", "normalisr")
OUTPUT_OBSM = ("nsc_cov", "nsc_covariates", "nsc_covariates_norm")


def assert_same_outputs(result: AnnData, expected: AnnData, *, rtol: float | None = None):
    """Names, layers, obsm, weights, outliers, scale and uns of two normalised AnnData."""
    pd.testing.assert_index_equal(result.obs_names, expected.obs_names)
    pd.testing.assert_index_equal(result.var_names, expected.var_names)
    for key in OUTPUT_LAYERS:
        if rtol is None:
            np.testing.assert_array_equal(result.layers[key], expected.layers[key])
        else:
            assert_close(result.layers[key], expected.layers[key], rtol=rtol)
    for key in OUTPUT_OBSM:
        pd.testing.assert_frame_equal(
            result.obsm[key],
            expected.obsm[key],
            check_exact=rtol is None,
            rtol=rtol or 0,
            atol=rtol or 0,
        )
    for key in ("nsc_weight", "nsc_outlier"):
        assert (key in result.obs) == (key in expected.obs)
        if key in expected.obs:
            assert_close(
                result.obs[key].to_numpy(float), expected.obs[key].to_numpy(float), rtol=rtol or 0
            )
    np.testing.assert_array_equal(result.var["nsc_scale"], expected.var["nsc_scale"])


@pytest.mark.slow
def test_normalize_equals_steps(recipe_data):
    adata, shallow, deep = recipe_data
    result = adata.copy()
    assert nsc.pp.normalize(result, covariates=["batch"], qc=QC) is None
    expected = stepwise(adata, ["batch"])
    assert_same_outputs(result, expected)
    assert_nested_equal(
        {k: expected.uns[k] for k in STEP_RECORDS}, {k: result.uns[k] for k in STEP_RECORDS}
    )
    assert_nested_equal(expected.uns["nsc_qc"]["params"], result.uns["nsc_qc"]["params"])
    # qc_outlier(inplace=True) counts the cells after the read QC; the recipe the input's.
    summary = expected.uns["nsc_qc"]["summary"]
    recipe_summary = dict(result.uns["nsc_qc"]["summary"])
    assert recipe_summary == {**summary, "n_cells_in": 600, "n_genes_in": 300}
    # QC removed the shallow cells and the rare genes, qc_outlier the deep cells.
    assert result.shape == (600 - 20 - 5, 300 - 5)
    assert not result.obs_names.isin(adata.obs_names[shallow]).any()
    assert not result.obs_names.isin(adata.obs_names[deep]).any()
    assert not result.var_names.isin(adata.var_names[:5]).any()
    assert result.uns["nsc_outlier"]["params"]["n_outliers"] == 5
    assert not result.obs["nsc_outlier"].any()
    # The counts themselves are the subset of the input, untouched.
    cells = adata.obs_names.get_indexer(result.obs_names)
    genes = adata.var_names.get_indexer(result.var_names)
    np.testing.assert_array_equal(result.X.toarray(), adata.X[cells][:, genes].toarray())
    assert list(result.obsm["nsc_covariates"].columns) == [
        "log_total_counts",
        "n_zero_genes",
        "log_total_counts_sq",
        "batch[b2]",
        "intercept",
    ]


def test_normalize_outputs_are_valid(recipe_data):
    adata = recipe_data[0]
    result = nsc.pp.normalize(adata, covariates="batch", qc=QC, copy=True)
    for key in OUTPUT_LAYERS:
        layer = result.layers[key]
        assert isinstance(layer, np.ndarray)
        assert layer.shape == result.shape
        assert layer.dtype == np.float64
        assert np.isfinite(layer).all()
    weights = result.obs["nsc_weight"].to_numpy()
    assert np.isfinite(weights).all()
    assert weights.min() >= 1.0
    scale = result.var["nsc_scale"].to_numpy()
    assert ((scale >= 0) & (scale <= 1)).all()
    for key in OUTPUT_OBSM:
        frame = result.obsm[key]
        assert isinstance(frame, pd.DataFrame)
        pd.testing.assert_index_equal(frame.index, result.obs_names)
        assert np.isfinite(frame.to_numpy()).all()
    # Every result is recorded as normalisr_sc's, so a rerun may replace it.
    written = result.uns["nsc_written"]
    assert set(written["uns"]) == {*STEP_RECORDS, "nsc_qc"}
    for key in written["uns"]:
        assert "params" in result.uns[key], key
    assert set(result.uns["nsc_qc"]) == {"params", "summary"}
    assert set(written["layers"]) == set(OUTPUT_LAYERS)
    assert set(written["obsm"]) == set(OUTPUT_OBSM)
    assert set(written["obs"]) == {"nsc_weight", "nsc_outlier"}
    assert set(written["var"]) == {"nsc_scale"}
    assert set(written["varm"]) == {"nsc_normvar"}


def test_normalize_copy_leaves_input_unchanged(recipe_data):
    adata = recipe_data[0].copy()
    before = adata.copy()
    result = nsc.pp.normalize(adata, covariates=["batch"], qc=QC, copy=True)
    assert isinstance(result, AnnData)
    assert result is not adata
    assert result.n_obs < adata.n_obs
    assert_unchanged(before, adata)


def test_normalize_keeps_existing_annotations(recipe_data):
    adata = recipe_data[0].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.obsm["pos"] = np.arange(adata.n_obs * 2, dtype=float).reshape(-1, 2)
    adata.var["id"] = np.arange(adata.n_vars)
    adata.uns["note"] = {"kept": True}
    adata.uns["other"] = [1, 2]
    nsc.pp.normalize(adata, covariates=["batch"])
    cells = recipe_data[0].obs_names.get_indexer(adata.obs_names)
    np.testing.assert_array_equal(adata.obsm["pos"][:, 0], 2 * cells)
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), adata.X.toarray())
    np.testing.assert_array_equal(
        adata.var["id"], recipe_data[0].var_names.get_indexer(adata.var_names)
    )
    assert adata.uns["note"] == {"kept": True}
    assert adata.uns["normalisr"]["params"]["keepvar"] is True
    assert adata.uns["other"] == [1, 2]
    assert list(adata.obs["group"].cat.categories) == ["control", "case"]


def test_normalize_without_qc_or_outlier_removal(recipe_data):
    adata = recipe_data[0]
    result = nsc.pp.normalize(
        adata, covariates=["batch"], qc=None, remove_outliers=False, copy=True
    )
    assert result.shape == adata.shape
    assert "nsc_outlier" not in result.obs
    assert "params" not in result.uns["nsc_qc"]  # no read-count QC ran
    assert result.uns["nsc_qc"]["summary"]["n_cells_kept"] == adata.n_obs
    assert "nsc_outlier" not in result.uns
    expected = stepwise(adata, ["batch"], qc=None, remove_outliers=False)
    assert_same_outputs(result, expected)


@pytest.mark.slow
def test_normalize_options_pass_through(recipe_data):
    adata = recipe_data[0]
    qc = {"min_cell_counts": 800, "min_gene_cells": 100}
    result = nsc.pp.normalize(adata, ["batch", "group"], qc=qc, stepmax=3, keepvar=False, copy=True)
    expected = stepwise(adata, ["batch", "group"], qc=qc, stepmax=3, keepvar=False)
    assert_same_outputs(result, expected)
    assert result.uns["nsc_weight"]["params"]["steps"] == 3
    assert result.uns["normalisr"]["params"]["keepvar"] is False
    assert result.uns["nsc_qc"]["params"]["min_cell_counts"] == 800
    assert "group[case]" in result.obsm["nsc_covariates"].columns


@pytest.mark.slow
def test_normalize_layer(recipe_data):
    adata = recipe_data[0].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sparse.csr_matrix(adata.X.multiply(0.5))  # not integer counts
    nsc.pp.normalize(adata, ["batch"], qc=QC, layer="counts")
    expected = stepwise(recipe_data[0], ["batch"])
    assert_same_outputs(adata, expected)


@pytest.mark.slow
def test_normalize_position_not_name_based(recipe_data):
    """Numeric-looking, shuffled cell names do not confuse the way back to the input."""
    adata = recipe_data[0].copy()
    adata.obs_names = [str(i) for i in np.random.default_rng(0).permutation(adata.n_obs)]
    adata.var_names = [str(i + 7) for i in range(adata.n_vars)]
    result = nsc.pp.normalize(adata, ["batch"], qc=QC, copy=True)
    expected = stepwise(adata, ["batch"])
    assert_same_outputs(result, expected)


@pytest.mark.slow
def test_normalize_duplicate_names(recipe_data):
    """Non-unique cell and gene names still map results back by position."""
    original = recipe_data[0]
    adata = original.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        adata.obs_names = [f"c{i % 100}" for i in range(adata.n_obs)]
        adata.var_names = [f"g{j % 50}" for j in range(adata.n_vars)]
        result = nsc.pp.normalize(adata, ["batch"], copy=True)
    expected = nsc.pp.normalize(original, ["batch"], copy=True)
    cells = original.obs_names.get_indexer(expected.obs_names)
    genes = original.var_names.get_indexer(expected.var_names)
    np.testing.assert_array_equal(result.obs_names, adata.obs_names[cells])
    np.testing.assert_array_equal(result.var_names, adata.var_names[genes])
    for key in OUTPUT_LAYERS:
        np.testing.assert_array_equal(result.layers[key], expected.layers[key])
    np.testing.assert_array_equal(result.obs["nsc_weight"], expected.obs["nsc_weight"])


def test_normalize_rerun_is_stable(recipe_data):
    adata = recipe_data[0].copy()
    nsc.pp.normalize(adata, ["batch"], qc=None, remove_outliers=False)
    first = adata.copy()
    nsc.pp.normalize(adata, ["batch"], qc=None, remove_outliers=False)
    assert_same_outputs(adata, first)


@pytest.mark.slow
def test_normalize_on_view(recipe_data):
    parent = recipe_data[0].copy()
    before = parent.copy()
    view = parent[parent.obs["group"] == "case"]
    expected = nsc.pp.normalize(view.copy(), ["batch"], copy=True)
    nsc.pp.normalize(view, ["batch"])
    assert not view.is_view
    assert_same_outputs(view, expected)
    assert_unchanged(before, parent)


@pytest.mark.slow
def test_normalize_block_size(recipe_data):
    adata = recipe_data[0]
    expected = nsc.pp.normalize(adata, ["batch"], copy=True)
    with block_size(7):
        result = nsc.pp.normalize(adata, ["batch"], copy=True)
    assert nsc.settings.block_cells == 4096
    assert_same_outputs(result, expected, rtol=1e-10)


# ---------------------------------------------------------------- properties


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_cells=st.integers(100, 250),
    n_genes=st.integers(20, 60),
    mean_total=st.sampled_from([200.0, 2000.0]),
    fmt=st.sampled_from(FORMATS),
    storage=st.sampled_from([np.int64, np.int32, np.float32, np.float64]),
    data=st.data(),
)
def test_normalize_property(make_counts, seed, n_cells, n_genes, mean_total, fmt, storage, data):
    """Sparse or dense, any count storage, view or not: the recipe gives the same result.

    Up to 1e-8 of the magnitude: see test_variance_block_size_invariant for why not 1e-12.
    """
    counts = make_counts(n_cells, n_genes, seed=seed, mean_total=mean_total)
    reference = counts_adata(counts, "dense")
    try:
        expected = nsc.pp.normalize(reference, ["batch"], qc=None, copy=True)
    except ValueError as error:  # degenerate draws: no zero at all, constant covariate...
        assume(False)
        raise AssertionError from error  # pragma: no cover
    assume(binary_covariates_well_posed(expected.obsm["nsc_covariates"]))
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=n_cells, max_size=n_cells)))
    mask[: n_cells // 2] = True  # keep enough cells
    other = AnnData(X=as_format(counts.astype(storage), fmt), obs=reference.obs, var=reference.var)
    result = nsc.pp.normalize(other, ["batch"], qc=None, copy=True)
    assert_same_outputs(result, expected, rtol=1e-8)
    for key in OUTPUT_LAYERS:
        assert np.isfinite(result.layers[key]).all()
    assert (result.obs["nsc_weight"] >= 1).all()

    view = other[mask]
    try:
        from_copy = nsc.pp.normalize(view.copy(), ["batch"], qc=None, copy=True)
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error)[:20])):
            nsc.pp.normalize(view, ["batch"], qc=None)
        return
    nsc.pp.normalize(view, ["batch"], qc=None)
    assert_same_outputs(view, from_copy)


# ---------------------------------------------------------------- real data


@pytest.mark.slow
def test_papalexi_normalize(shared_data):
    """The real low-MOI screen: CSR float32 counts of a 299-gene panel, no read QC."""
    path = shared_data / "papalexi_lowmoi.h5ad"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    adata = read_h5ad(path)
    assert sparse.issparse(adata.X)
    assert adata.X.dtype == np.float32
    n_cells, n_genes = adata.shape
    nsc.pp.normalize(adata, covariates=["bio_rep"], qc=None)
    assert adata.n_vars == n_genes
    assert adata.n_obs == n_cells - adata.uns["nsc_outlier"]["params"]["n_outliers"]
    assert adata.n_obs > 0.95 * n_cells
    for key in OUTPUT_LAYERS:
        assert adata.layers[key].shape == adata.shape
        assert np.isfinite(adata.layers[key]).all()
    weights = adata.obs["nsc_weight"].to_numpy()
    assert np.isfinite(weights).all()
    assert weights.min() == 1.0
    assert weights.max() > 1.0
    assert list(adata.obsm["nsc_covariates"].columns) == [
        "log_total_counts",
        "n_zero_genes",
        "log_total_counts_sq",
        "bio_rep[rep_2]",
        "bio_rep[rep_3]",
        "intercept",
    ]
    assert np.isfinite(adata.obsm["nsc_covariates_norm"].to_numpy()).all()
    scale = adata.var["nsc_scale"].to_numpy()
    assert scale.min() >= 0
    assert scale.max() == 1.0


@pytest.mark.slow
def test_papalexi_default_qc_keeps_the_panel(shared_data, caplog):
    """The 299-gene panel: default QC keeps >= 90% of the cells and says what went."""
    import logging

    caplog.set_level(logging.WARNING, logger="normalisr_sc")
    adata = read_h5ad(shared_data / "papalexi_lowmoi.h5ad")
    n_cells, n_genes = adata.shape
    nsc.pp.normalize(adata, covariates=["bio_rep"])
    summary = adata.uns["nsc_qc"]["summary"]
    assert adata.n_obs >= 0.9 * n_cells
    assert (summary["n_cells_in"], summary["n_genes_in"]) == (n_cells, n_genes)
    assert (summary["n_cells_kept"], summary["n_genes_kept"]) == adata.shape
    # The cell bounds are the paper's scaled to 299 of 20,000 genes.
    assert summary["bounds"]["min_cell_counts"] == pytest.approx(500 * 299 / 20_000)
    assert summary["bounds"]["min_cell_genes"] == pytest.approx(100 * 299 / 20_000)
    # Genes detected in fewer than 2% of cells go: more than 10%, so it is a WARNING.
    removed = n_genes - adata.n_vars
    assert removed == summary["genes_removed"]["min_gene_cell_fraction"] > 0.1 * n_genes
    assert f"removed {removed} of {n_genes} genes" in caplog.text
    assert "min_gene_cell_fraction" in caplog.text
    for gene in adata.uns["pc_pairs"]["response_id"]:  # positive-control genes stay
        assert gene in adata.var_names
    # ... and keep their power: with the paper's absolute bounds (245 cells left) STAT3
    # read -log10 p = 0.7; measured with these defaults: 14.5 (TNFRSF14) to 424.7 (STAT1).
    nsc.tl.assign_guides(
        adata, "grna_counts", mode="max", guide_names="grna_ids", groups="grna_group"
    )
    nsc.tl.de(adata, "nsc_guides", design="low_moi", reference="non-targeting", min_cells=2)
    log10p = adata.varm["nsc_de_log10p"]
    pairs = adata.uns["pc_pairs"]
    for gene, group in zip(pairs["response_id"], pairs["grna_group"], strict=True):
        assert log10p.loc[gene, group] > 10, (gene, group)


def test_normalize_refuses_unknown_qc_keys(recipe_data):
    adata = recipe_data[0].copy()
    before = adata.copy()
    with pytest.raises(ValueError, match=r"`qc` has unknown key\(s\) \['bogus'\]; accepted"):
        nsc.pp.normalize(adata, qc={"bogus": 1})
    with pytest.raises(ValueError, match=r"`qc\['min_cell_counts'\]` must be a finite number"):
        nsc.pp.normalize(adata, qc={"min_cell_counts": "500"})
    with pytest.raises(ValueError, match="`covariates` names"):
        nsc.pp.normalize(adata, covariates=["batch", "batch"])
    with pytest.raises(ValueError, match="`stepmax` must be an integer >= 1"):
        nsc.pp.normalize(adata, stepmax=0)
    assert_unchanged(before, adata)


def test_normalize_refuses_user_keys_before_any_work(recipe_data, monkeypatch):
    from normalisr_sc.pp import _recipe

    def no_work(*args, **kwargs):
        raise AssertionError("QC ran before the refusal")

    monkeypatch.setattr(_recipe, "_qc_reads", no_work)
    adata = recipe_data[0].copy()
    adata.obsm["nsc_covariates"] = np.zeros((adata.n_obs, 2))
    before = adata.copy()
    with pytest.raises(ValueError, match=r"adata.obsm\['nsc_covariates'\] already exists"):
        nsc.pp.normalize(adata)
    assert_unchanged(before, adata)


def test_normalize_summary_and_outlier_warning(recipe_data, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="normalisr_sc")
    adata = recipe_data[0]
    result = nsc.pp.normalize(adata, ["batch"], qc=QC, copy=True)
    summary = result.uns["nsc_qc"]["summary"]
    assert summary["cells_removed"]["min_cell_counts"] == 20
    assert summary["outliers_removed"] == 5
    assert summary["n_cells_kept"] == result.n_obs == 575
    assert not caplog.records  # 25 of 600 cells and 5 of 300 genes: under 10%
    text = nsc.pp._qc.format_qc_summary(summary)
    assert "cells: 575 of 600 kept (95.8%)" in text
    assert "cells removed as variance outliers: 5" in text
