"""Side outputs follow ``key_added`` (scanpy's rule) and are found through the records."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

import normalisr_sc as nsc
from normalisr_sc._store import owned, written_key

from ..conftest import random_counts

matplotlib.use("Agg")


def _two_counts() -> ad.AnnData:
    adata = ad.AnnData(X=random_counts(seed=0).astype(np.float64))
    adata.layers["other"] = random_counts(seed=1).astype(np.float64)
    adata.obs["batch"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 3 == 0, "b1", "b2"))
    return adata


def _pipeline(adata: ad.AnnData, *, layer: str | None, key: str | None) -> None:
    """lcpm -> normcov -> compute_var -> normvar, with defaults or under ``key``."""
    if key is None:
        nsc.pp.lcpm(adata, layer=layer)
        nsc.pp.normcov(adata, ["batch"])
        nsc.pp.compute_var(adata)
        nsc.pp.normvar(adata)
        return
    nsc.pp.lcpm(adata, layer=layer, key_added=key)
    nsc.pp.normcov(adata, ["batch"], layer=key, key_added=f"{key}_covs")
    nsc.pp.compute_var(adata, layer=key, covariates_key=f"{key}_covs", key_added=f"{key}_w")
    nsc.pp.normvar(
        adata,
        layer=key,
        covariates_key=f"{key}_covs",
        weights_key=f"{key}_w",
        key_added=f"{key}_norm",
    )


@pytest.fixture
def both() -> ad.AnnData:
    adata = _two_counts()
    _pipeline(adata, layer=None, key=None)
    _pipeline(adata, layer="other", key="sub")
    return adata


def test_default_keys_are_the_historic_names(both):
    assert both.uns["lcpm"]["cov_key"] == "nsc_cov"
    assert both.uns["lcpm"]["scale_key"] == "nsc_scale"
    assert both.uns["normalisr"]["normvar_key"] == "nsc_normvar"
    assert both.uns["normalisr"]["covariates_norm_key"] == "nsc_covariates_norm"


def test_two_runs_under_different_keys_keep_both_side_outputs(both):
    assert both.uns["sub"]["cov_key"] == "sub_cov"
    assert both.uns["sub"]["scale_key"] == "sub_scale"
    assert both.uns["sub_norm"]["normvar_key"] == "sub_norm_normvar"
    assert both.uns["sub_norm"]["covariates_norm_key"] == "sub_norm_covariates_norm"
    for container, first, second in [
        ("obsm", "nsc_cov", "sub_cov"),
        ("var", "nsc_scale", "sub_scale"),
        ("varm", "nsc_normvar", "sub_norm_normvar"),
        ("obsm", "nsc_covariates_norm", "sub_norm_covariates_norm"),
    ]:
        a = np.asarray(getattr(both, container)[first], dtype=np.float64)
        b = np.asarray(getattr(both, container)[second], dtype=np.float64)
        assert a.shape == b.shape
        assert not np.allclose(a, b), (container, first, second)
        assert owned(both, container, first)
        assert owned(both, container, second)


def test_downstream_steps_find_the_side_outputs_of_their_run(both):
    # the run under "sub" equals the default pipeline on the other counts alone
    alone = ad.AnnData(X=both.layers["other"].copy(), obs=both.obs[["batch"]].copy())
    _pipeline(alone, layer=None, key=None)
    pd.testing.assert_frame_equal(both.obsm["sub_cov"], alone.obsm["nsc_cov"])
    pd.testing.assert_frame_equal(both.obsm["sub_covs"], alone.obsm["nsc_covariates"])
    np.testing.assert_allclose(both.obs["sub_w"], alone.obs["nsc_weight"], rtol=1e-12)
    np.testing.assert_allclose(both.layers["sub_norm"], alone.layers["normalisr"], rtol=1e-10)
    np.testing.assert_allclose(
        both.varm["sub_norm_normvar"].to_numpy(),
        alone.varm["nsc_normvar"].to_numpy(),
        rtol=1e-10,
    )
    assert both.uns["sub_norm"]["params"]["scale_key"] == "sub_scale"
    assert both.uns["normalisr"]["params"]["scale_key"] == "nsc_scale"
    # pl.weights takes the log totals of the lcpm run the weights were fitted to
    for weights_key, cov_key in [("nsc_weight", "nsc_cov"), ("sub_w", "sub_cov")]:
        ax = nsc.pl.weights(both, weights_key=weights_key, show=False)
        x = ax.collections[0].get_offsets()[:, 0]
        np.testing.assert_allclose(x, both.obsm[cov_key]["log_total_counts"])
        matplotlib.pyplot.close(ax.figure)


def test_side_keys_survive_an_h5ad_round_trip(both, tmp_path):
    both.write_h5ad(tmp_path / "both.h5ad")
    read = ad.read_h5ad(tmp_path / "both.h5ad")
    assert written_key(read, "sub", "cov_key", "nsc_cov") == "sub_cov"
    assert written_key(read, "sub_norm", "normvar_key", "nsc_normvar") == "sub_norm_normvar"
    for container, key in [
        ("obsm", "sub_cov"),
        ("var", "sub_scale"),
        ("varm", "sub_norm_normvar"),
        ("obsm", "sub_norm_covariates_norm"),
    ]:
        assert owned(read, container, key), (container, key)
    # the steps rerun on the file find the same side outputs and replace their own
    before = read.layers["sub_norm"].copy()
    nsc.pp.normvar(
        read, layer="sub", covariates_key="sub_covs", weights_key="sub_w", key_added="sub_norm"
    )
    np.testing.assert_array_equal(read.layers["sub_norm"], before)
    nsc.pp.lcpm(read, layer="other", key_added="sub")
    pd.testing.assert_frame_equal(read.obsm["sub_cov"], both.obsm["sub_cov"])


def test_a_user_key_in_the_way_of_a_side_output_is_refused_before_any_change():
    adata = _two_counts()
    adata.obsm["sub_cov"] = np.zeros((adata.n_obs, 2))
    with pytest.raises(ValueError, match=r"adata.obsm\['sub_cov'\] already exists"):
        nsc.pp.lcpm(adata, key_added="sub")
    assert "sub" not in adata.layers
    assert "sub_scale" not in adata.var


def test_qc_outlier_under_another_key_keeps_its_own_qc_record(both):
    nsc.pp.qc_outlier(both, inplace=False)
    default = dict(both.uns["nsc_qc"]["summary"])
    assert both.uns["nsc_outlier"]["qc_key"] == "nsc_qc"
    nsc.pp.qc_outlier(both, weights_key="sub_w", key_added="sub_out", inplace=False)
    assert both.uns["sub_out"]["qc_key"] == "sub_out_qc"
    assert dict(both.uns["nsc_qc"]["summary"]) == default  # left as it was
    assert both.uns["sub_out_qc"]["summary"]["outliers_removed"] == 0
    assert both.uns["sub_out_qc"]["summary"]["n_cells_kept"] == both.n_obs
    assert owned(both, "uns", "sub_out_qc")
