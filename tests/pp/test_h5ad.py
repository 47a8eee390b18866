"""Everything nsc.pp writes survives write_h5ad / read_h5ad."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData, read_h5ad
from scipy import sparse

import normalisr_sc as nsc

from .._helpers import assert_unchanged


def round_trip(adata: AnnData, path) -> AnnData:
    adata.write_h5ad(path)
    return read_h5ad(path)


def assert_same_after_round_trip(written: AnnData, read: AnnData) -> None:
    """Everything written is read back as it was (the same check as a refused call's)."""
    assert_unchanged(written, read)


@pytest.fixture
def normalized(counts_adata) -> AnnData:
    adata = counts_adata
    adata.obs["dose"] = np.linspace(0.5, 2.0, adata.n_obs)
    nsc.pp.normalize(
        adata,
        covariates=["batch", "dose"],
        qc={"min_gene_cells": 30, "min_cell_genes": 20},
        stepmax=2,
    )
    return adata


@pytest.mark.slow
def test_normalize_round_trip(normalized, tmp_path):
    adata = normalized
    read = round_trip(adata, tmp_path / "normalized.h5ad")
    assert_same_after_round_trip(adata, read)
    # Spot checks of what matters downstream.
    assert list(read.obsm["nsc_covariates"].columns) == [
        "log_total_counts",
        "n_zero_genes",
        "log_total_counts_sq",
        "batch[b2]",
        "dose",
        "intercept",
    ]
    assert list(read.obsm["nsc_cov"].columns) == [
        "log_total_counts",
        "n_zero_genes",
        "log_total_counts_sq",
    ]
    assert read.obs["nsc_outlier"].dtype == bool
    written = read.uns["nsc_written"]
    steps = {"nsc_qc", "lcpm", "nsc_covariates", "nsc_weight", "nsc_outlier", "normalisr"}
    assert set(written["uns"]) == steps
    assert all("params" in read.uns[key] for key in steps)
    assert set(written["layers"]) == {"lcpm", "normalisr"}
    assert set(written["obs"]) == {"nsc_weight", "nsc_outlier"}
    assert set(written["obsm"]) == {"nsc_cov", "nsc_covariates", "nsc_covariates_norm"}
    summary = read.uns["nsc_qc"]["summary"]
    assert (summary["n_cells_kept"], summary["n_genes_kept"]) == read.shape
    assert read.uns["nsc_weight"]["params"]["steps"] == 2
    assert list(read.uns["nsc_covariates"]["params"]["covariates"]) == ["batch", "dose"]
    # What was read back is still normalisr_sc's: a rerun may replace it.
    nsc.pp.normalize(read, covariates=["batch", "dose"], qc=None)
    assert read.uns["nsc_weight"]["params"]["steps"] == 1


@pytest.mark.slow
def test_simple_and_scaling_factor_round_trip(counts_adata, tmp_path):
    adata = counts_adata
    adata.layers["counts_csc"] = sparse.csc_matrix(adata.X)
    nsc.pp.cpm(adata)
    nsc.pp.cpm(adata, layer="counts_csc", key_added="cpm_csc", target_sum=1e4)
    with pytest.warns(UserWarning, match="must densify"):
        nsc.pp.minmax(adata, layer="cpm", key_added="minmax", feature_range=(0, 2))
    adata.layers["cpm_zeros"] = adata.layers["cpm"].copy()
    adata.layers["cpm_zeros"][0] = 0  # every gene has a zero: min-max stays sparse
    adata.layers["cpm_zeros"].eliminate_zeros()
    nsc.pp.minmax(adata, layer="cpm_zeros", key_added="minmax_sparse", feature_range=(0, 2))
    nsc.pp.scaling_factor(
        adata, variable="log_mean_proportion", zero_at="max", one_at="min", key_added="f_mean"
    )
    read = round_trip(adata, tmp_path / "simple.h5ad")
    assert_same_after_round_trip(adata, read)
    assert read.layers["cpm"].format == "csr"
    assert read.layers["cpm_csc"].format == "csc"
    assert isinstance(read.layers["minmax"], np.ndarray)  # some gene had no zero
    assert read.layers["minmax_sparse"].format == "csr"
    assert read.uns["f_mean"]["params"]["zero_at"] == "max"
    assert list(read.uns["minmax"]["params"]["feature_range"]) == [0.0, 2.0]
    assert read.uns["cpm"]["params"]["target_sum"] == 1e6
    assert read.uns["cpm_csc"]["params"]["target_sum"] == 1e4


def test_lcpm_options_round_trip(counts_adata, tmp_path):
    adata = counts_adata
    nsc.pp.lcpm(adata, dtype=np.float32, varscale=0.5, seed=3)
    read = round_trip(adata, tmp_path / "lcpm.h5ad")
    assert_same_after_round_trip(adata, read)
    assert read.layers["lcpm"].dtype == np.float32
    assert read.uns["lcpm"]["params"]["seed"] == 3


@pytest.mark.slow
def test_pipeline_resumes_after_round_trip(counts_adata, tmp_path):
    """Stop after normcov, save, reload, continue: same result as without the break."""
    adata = counts_adata
    nsc.pp.lcpm(adata)
    nsc.pp.normcov(adata, ["batch"])
    read = round_trip(adata, tmp_path / "half.h5ad")
    for obj in (adata, read):
        nsc.pp.compute_var(obj)
        nsc.pp.qc_outlier(obj)
        nsc.pp.normvar(obj)
    np.testing.assert_array_equal(read.layers["normalisr"], adata.layers["normalisr"])
    pd.testing.assert_frame_equal(
        read.obsm["nsc_covariates_norm"], adata.obsm["nsc_covariates_norm"]
    )
    # A second round trip of the finished object, and normalize on top, still work.
    again = round_trip(read, tmp_path / "full.h5ad")
    assert_same_after_round_trip(read, again)
    nsc.pp.normvar(again, keepvar=False)  # overwrites its own layer after reading
    assert again.uns["normalisr"]["params"]["keepvar"] is not True
