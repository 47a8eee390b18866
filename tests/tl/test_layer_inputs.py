"""The tests of a layer normalised under another key read that run's own inputs."""

from __future__ import annotations

import numpy as np
import pytest

import normalisr_sc as nsc


def _normalise_again(adata, key: str) -> None:
    """A second normalisation under ``key``-prefixed keys, with one more covariate."""
    nsc.pp.lcpm(adata, key_added=f"{key}_lcpm")
    nsc.pp.normcov(adata, ["batch", "noise"], layer=f"{key}_lcpm", key_added=f"{key}_cov")
    nsc.pp.compute_var(
        adata, layer=f"{key}_lcpm", covariates_key=f"{key}_cov", key_added=f"{key}_weight"
    )
    nsc.pp.normvar(
        adata,
        layer=f"{key}_lcpm",
        covariates_key=f"{key}_cov",
        weights_key=f"{key}_weight",
        key_added=key,
    )


@pytest.fixture(scope="module")
def twice():
    """Normalised with the default keys, then again as ``norm2`` (another covariate)."""
    adata = nsc.datasets.simulate(n_cells=400, n_genes=60, seed=0)
    adata.obs["noise"] = np.random.default_rng(3).normal(size=adata.n_obs)
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    _normalise_again(adata, "norm2")
    return adata


@pytest.fixture(scope="module")
def alone():
    """The same counts normalised only as ``norm2``."""
    adata = nsc.datasets.simulate(n_cells=400, n_genes=60, seed=0)
    adata.obs["noise"] = np.random.default_rng(3).normal(size=adata.n_obs)
    _normalise_again(adata, "norm2")
    return adata


def test_de_of_another_layer_reads_its_own_run(twice, alone):
    nsc.tl.de(twice, "group", layer="norm2", reference="control", key_added="de2")
    params = twice.uns["de2"]["params"]
    assert params["covariates_key"] == "norm2_covariates_norm"
    assert params["logfc_layer"] == "norm2_lcpm"
    assert params["logfc_covariates"] == "norm2_cov"
    # The same test as on data holding only that run: nothing of the default run read.
    nsc.tl.de(alone, "group", layer="norm2", reference="control", key_added="de2")
    for suffix in ("pvals", "logfc", "gamma"):
        np.testing.assert_array_equal(
            twice.varm[f"de2_{suffix}"].to_numpy(), alone.varm[f"de2_{suffix}"].to_numpy()
        )
    # ...and not the test of the default layer.
    nsc.tl.de(twice, "group", reference="control")
    assert twice.uns["nsc_de"]["params"]["covariates_key"] == "nsc_covariates_norm"
    assert not np.allclose(twice.varm["de2_pvals"], twice.varm["nsc_de_pvals"])


def test_keys_given_are_used_as_given(twice):
    # Keys other than the defaults are read as named, whatever run wrote the layer.
    nsc.tl.de(twice, "group", reference="control", logfc_covariates="norm2_cov", key_added="de3")
    params = twice.uns["de3"]["params"]
    assert params["logfc_covariates"] == "norm2_cov"
    assert params["covariates_key"] == "nsc_covariates_norm"
    assert params["logfc_layer"] == "lcpm"
    nsc.tl.de(twice, "group", reference="control", key_added="de4")
    assert not np.allclose(twice.varm["de3_logfc"], twice.varm["de4_logfc"])
    np.testing.assert_array_equal(twice.varm["de3_pvals"], twice.varm["de4_pvals"])


def test_coex_of_another_layer_reads_its_own_run(twice, alone):
    nsc.tl.coex(twice, layer="norm2", key_added="coex2")
    nsc.tl.coex(alone, layer="norm2", key_added="coex2")
    assert twice.uns["coex2"]["params"]["covariates_key"] == "norm2_covariates_norm"
    np.testing.assert_array_equal(twice.varp["coex2_r"], alone.varp["coex2_r"])
