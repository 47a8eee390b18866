"""nsc.pp.normcov: assembling and normalising the covariate matrix (METHOD 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from hypothesis import given, settings
from hypothesis import strategies as st

import normalisr_sc as nsc

from .._helpers import FORMATS, assert_unchanged, block_size, counts_adata

SUMMARY = ["log_total_counts", "n_zero_genes", "log_total_counts_sq"]


def standardized(values) -> np.ndarray:
    """Centred, divided by the population SD."""
    values = np.asarray(values, dtype=np.float64)
    return (values - values.mean()) / np.sqrt(((values - values.mean()) ** 2).mean())


def plain_adata(obs: dict) -> AnnData:
    """AnnData whose ``obsm['nsc_cov']`` is given, so normcov runs without counts."""
    n = len(next(iter(obs.values())))
    adata = AnnData(X=np.ones((n, 2)))
    adata.obs_names = [f"c{i}" for i in range(n)]
    for key, value in obs.items():
        adata.obs[key] = value
    return adata


@pytest.fixture
def lcpm_adata(counts_adata):
    nsc.pp.lcpm(counts_adata)
    return counts_adata


def test_normcov_names_and_one_hot(lcpm_adata):
    adata = lcpm_adata
    nsc.pp.normcov(adata, covariates=["batch"])
    cov = adata.obsm["nsc_covariates"]
    assert isinstance(cov, pd.DataFrame)
    assert list(cov.columns) == [*SUMMARY, "batch[b2]", "intercept"]
    pd.testing.assert_index_equal(cov.index, adata.obs_names)
    # One-hot dropping the first level, binary column untouched.
    np.testing.assert_array_equal(cov["batch[b2]"], (adata.obs["batch"] == "b2").astype(float))
    np.testing.assert_array_equal(cov["intercept"], np.ones(adata.n_obs))
    params = adata.uns["nsc_covariates"]["params"]
    assert params["covariates"] == ["batch"]
    assert params["columns"] == [*SUMMARY, "batch[b2]", "intercept"]
    assert params["intercept"] is True


def test_normcov_standardizes_with_population_sd(lcpm_adata):
    adata = lcpm_adata
    nsc.pp.normcov(adata)
    cov = adata.obsm["nsc_covariates"]
    raw = adata.obsm["nsc_cov"]
    assert list(cov.columns) == [*SUMMARY, "intercept"]
    for name in SUMMARY:
        np.testing.assert_allclose(cov[name], standardized(raw[name]), rtol=1e-12, atol=1e-12)
        assert abs(cov[name].mean()) < 1e-12
        assert cov[name].std(ddof=0) == pytest.approx(1.0, rel=1e-12)
        # not the sample SD
        assert cov[name].std(ddof=1) != pytest.approx(1.0, rel=1e-6)


def test_normcov_covariate_as_string(lcpm_adata):
    nsc.pp.normcov(lcpm_adata, "batch")
    assert "batch[b2]" in lcpm_adata.obsm["nsc_covariates"].columns


def test_normcov_without_intercept(lcpm_adata):
    nsc.pp.normcov(lcpm_adata, ["batch"], intercept=False)
    cov = lcpm_adata.obsm["nsc_covariates"]
    assert list(cov.columns) == [*SUMMARY, "batch[b2]"]
    assert not (cov == 1).all(axis=0).any()


def test_normcov_categorical_levels_and_numeric_columns():
    adata = plain_adata(
        {
            "group": pd.Categorical(["x", "y", "z", "y", "x", "z"], categories=["z", "x", "y"]),
            "donor": ["d1", "d2", "d1", "d1", "d2", "d2"],  # strings are categorical
            "dose": [0.5, 1.0, 2.0, 4.0, 0.5, 3.0],
            "treated": [0, 1, 1, 0, 0, 1],  # numeric 0/1 stays binary
            "flag": [True, False, False, True, True, False],
            "pair": [1, 2, 1, 2, 1, 2],  # two values other than 0/1: continuous
        }
    )
    nsc.pp.normcov(adata, ["group", "donor", "dose", "treated", "flag", "pair"], summary=False)
    cov = adata.obsm["nsc_covariates"]
    assert list(cov.columns) == [
        "group[x]",
        "group[y]",
        "donor[d2]",
        "dose",
        "treated",
        "flag",
        "pair",
        "intercept",
    ]
    np.testing.assert_array_equal(cov["group[x]"], [1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(cov["group[y]"], [0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(cov["donor[d2]"], [0, 1, 0, 0, 1, 1])
    np.testing.assert_allclose(
        cov["dose"], standardized([0.5, 1.0, 2.0, 4.0, 0.5, 3.0]), rtol=1e-14
    )
    np.testing.assert_array_equal(cov["treated"], [0, 1, 1, 0, 0, 1])
    np.testing.assert_array_equal(cov["flag"], [1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(cov["pair"], [-1, 1, -1, 1, -1, 1])
    assert cov.dtypes.eq(np.float64).all()


def test_normcov_drops_unused_categories():
    group = pd.Categorical(["a", "b", "b", "a"], categories=["unused", "a", "b"])
    adata = plain_adata({"group": group, "dose": [1.0, 2.0, 3.0, 5.0]})
    nsc.pp.normcov(adata, ["group", "dose"], summary=False)
    assert list(adata.obsm["nsc_covariates"].columns) == ["group[b]", "dose", "intercept"]


def test_normcov_obsm_key_added_and_column_order(lcpm_adata):
    lcpm_adata.obs["depth"] = np.linspace(0, 3, lcpm_adata.n_obs) ** 2
    nsc.pp.normcov(lcpm_adata, ["depth", "batch"], key_added="cov2")
    assert "nsc_covariates" not in lcpm_adata.obsm
    cov = lcpm_adata.obsm["cov2"]
    assert list(cov.columns) == [*SUMMARY, "depth", "batch[b2]", "intercept"]
    np.testing.assert_allclose(cov["depth"], standardized(lcpm_adata.obs["depth"]), rtol=1e-12)


def test_normcov_on_view(lcpm_adata):
    before = lcpm_adata.copy()
    mask = np.arange(lcpm_adata.n_obs) % 4 != 0
    view = lcpm_adata[mask]
    copy = view.copy()
    nsc.pp.normcov(view, ["batch"])
    nsc.pp.normcov(copy, ["batch"])
    assert not view.is_view
    pd.testing.assert_frame_equal(view.obsm["nsc_covariates"], copy.obsm["nsc_covariates"])
    # The continuous columns are standardised over the subset, not the parent.
    assert abs(view.obsm["nsc_covariates"]["log_total_counts"].mean()) < 1e-12
    assert_unchanged(before, lcpm_adata)


def test_normcov_view_with_single_remaining_level(lcpm_adata):
    view = lcpm_adata[lcpm_adata.obs["batch"] == "b2"]
    with pytest.raises(ValueError, match="single level"):
        nsc.pp.normcov(view, ["batch"])


@pytest.mark.slow  # a hypothesis sweep
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_cells=st.integers(12, 80),
    n_genes=st.integers(5, 30),
    fmt=st.sampled_from(FORMATS),
    storage=st.sampled_from([np.int64, np.float32, np.float64]),
    block=st.sampled_from([7, 4096]),
)
def test_normcov_property(make_counts, seed, n_cells, n_genes, fmt, storage, block):
    """Covariates from sparse/dense, float32/float64 counts agree; standardised; finite."""
    counts = make_counts(n_cells, n_genes, seed=seed, mean_total=100.0)
    counts[0, 0] += 1
    counts[0, -1] = 0
    reference = counts_adata(counts, "dense")
    other = counts_adata(counts.astype(storage), fmt)
    nsc.pp.lcpm(reference)
    with block_size(block):
        nsc.pp.lcpm(other)
    raw = reference.obsm["nsc_cov"].to_numpy()
    if (raw == raw[0]).all(axis=0).any():  # e.g. every cell has the same number of zeros
        for adata in (reference, other):
            with pytest.raises(ValueError, match="constant across cells"):
                nsc.pp.normcov(adata, ["batch"])
        return
    nsc.pp.normcov(reference, ["batch"])
    nsc.pp.normcov(other, ["batch"])
    expected = reference.obsm["nsc_covariates"]
    pd.testing.assert_frame_equal(
        other.obsm["nsc_covariates"], expected, check_exact=False, rtol=1e-12, atol=1e-12
    )
    assert np.isfinite(expected.to_numpy()).all()
    for name in SUMMARY:
        raw = reference.obsm["nsc_cov"][name].to_numpy()
        if np.isin(raw, [0, 1]).all():  # e.g. n_zero_genes of 0 or 1 only: binary, kept
            np.testing.assert_array_equal(expected[name], raw)
        else:
            np.testing.assert_allclose(expected[name], standardized(raw), rtol=1e-10, atol=1e-10)
