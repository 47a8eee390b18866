"""nsc.pp.compute_var (METHOD 5) and nsc.pp.normvar (METHOD 7) against explicit numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import normalisr_sc as nsc

from .._helpers import (
    assert_close,
    assert_unchanged,
    binary_covariates_well_posed,
    block_size,
    counts_adata,
)


def explicit_weights(
    expression: np.ndarray, cov: np.ndarray, *, stepmax: int = 1, eps: float = 1e-6
) -> tuple[np.ndarray, int]:
    """METHOD 5 written out with np.linalg.lstsq; cells x genes, cells x covariates."""
    n = expression.shape[0]
    design = np.column_stack([cov, np.ones(n)])
    scale = np.ones(n)
    best, best_change, steps = scale, np.inf, 0
    while steps < stepmax and best_change > eps:
        y, x = expression / scale[:, None], cov / scale[:, None]
        residual = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
        residual = (residual - residual.mean(axis=0)) / residual.std(axis=0)
        log_rms = np.log(np.sqrt((residual**2).mean(axis=1)))
        fitted = design @ np.linalg.lstsq(design, log_rms, rcond=None)[0]
        new = np.exp(fitted) * scale
        new /= new.min()
        change = np.abs((new - scale) / scale).max()
        scale = new
        steps += 1
        if change < best_change:
            best, best_change = scale, change
    weights = 1 / best
    return weights / weights.min(), steps


def explicit_normvar(
    expression: np.ndarray,
    cov: np.ndarray,
    weights: np.ndarray,
    factor: np.ndarray,
    *,
    keepvar: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """METHOD 7 written out gene by gene with np.linalg.pinv."""
    out = np.empty_like(expression, dtype=np.float64)
    for gene in range(expression.shape[1]):
        gene_weight = weights ** factor[gene]
        y = expression[:, gene] * gene_weight
        x = cov * gene_weight[:, None]
        residual = y - x @ np.linalg.pinv(x.T @ x, rcond=1e-8, hermitian=True) @ (x.T @ y)
        if keepvar:
            residual *= (y.std() / np.sqrt((residual**2).mean())) ** factor[gene]
        out[:, gene] = residual
    continuous = ((cov != 0) & (cov != 1)).any(axis=0) | (cov == 1).all(axis=0)
    cov_out = cov.copy()
    cov_out[:, continuous] *= weights[:, None]
    return out, cov_out


@pytest.fixture(scope="module")
def prepared(make_counts):
    """lcpm + normcov(batch) on 300 cells x 80 genes (CSR)."""
    adata = counts_adata(make_counts(300, 80, seed=7))
    nsc.pp.lcpm(adata)
    nsc.pp.normcov(adata, ["batch"])
    return adata


def _arrays(adata):
    return adata.layers["lcpm"], adata.obsm["nsc_covariates"].to_numpy()


# ---------------------------------------------------------------- compute_var


def test_compute_var_matches_explicit(prepared):
    adata = prepared.copy()
    nsc.pp.compute_var(adata)
    weights = adata.obs["nsc_weight"].to_numpy()
    expected, _ = explicit_weights(*_arrays(adata))
    np.testing.assert_allclose(weights, expected, rtol=1e-10)
    assert weights.min() == 1.0
    assert np.isfinite(weights).all()
    assert weights.max() > 1.05  # the fit is not trivial
    params = adata.uns["nsc_weight"]["params"]
    assert params["steps"] == 1
    assert params["stepmax"] == 1


@pytest.mark.parametrize("stepmax", [2, 3, 5])
def test_compute_var_iterated_matches_explicit(prepared, stepmax):
    adata = prepared.copy()
    nsc.pp.compute_var(adata, stepmax=stepmax, eps=1e-12)
    expected, steps = explicit_weights(*_arrays(adata), stepmax=stepmax, eps=1e-12)
    np.testing.assert_allclose(adata.obs["nsc_weight"], expected, rtol=1e-9)
    assert adata.uns["nsc_weight"]["params"]["steps"] == steps == stepmax
    single = prepared.copy()
    nsc.pp.compute_var(single)
    assert not np.allclose(adata.obs["nsc_weight"], single.obs["nsc_weight"], rtol=1e-6)


def test_compute_var_stops_under_eps(prepared):
    adata = prepared.copy()
    nsc.pp.compute_var(adata, stepmax=10, eps=1e3)
    assert adata.uns["nsc_weight"]["params"]["steps"] == 1
    expected, _ = explicit_weights(*_arrays(adata))
    np.testing.assert_allclose(adata.obs["nsc_weight"], expected, rtol=1e-10)


def test_compute_var_keys(prepared):
    adata = prepared.copy()
    adata.layers["other"] = adata.layers["lcpm"][:, ::-1].copy()
    adata.obsm["cov_small"] = adata.obsm["nsc_covariates"][["log_total_counts", "intercept"]]
    nsc.pp.compute_var(adata, layer="other", covariates_key="cov_small", key_added="w")
    assert "nsc_weight" not in adata.obs
    expected, _ = explicit_weights(adata.layers["other"], adata.obsm["cov_small"].to_numpy())
    np.testing.assert_allclose(adata.obs["w"], expected, rtol=1e-10)


def test_compute_var_accepts_array_covariates(prepared):
    adata = prepared.copy()
    frame = adata.obsm["nsc_covariates"]
    adata.obsm["as_array"] = frame.to_numpy()
    nsc.pp.compute_var(adata, covariates_key="as_array")
    expected, _ = explicit_weights(adata.layers["lcpm"], frame.to_numpy())
    np.testing.assert_allclose(adata.obs["nsc_weight"], expected, rtol=1e-10)


def test_compute_var_on_view(prepared):
    before = prepared.copy()
    view = prepared[50:]
    copy = view.copy()
    nsc.pp.compute_var(view)
    nsc.pp.compute_var(copy)
    assert not view.is_view
    np.testing.assert_array_equal(view.obs["nsc_weight"], copy.obs["nsc_weight"])
    assert_unchanged(before, prepared)


# ---------------------------------------------------------------- normvar


@pytest.fixture(scope="module")
def weighted(prepared):
    adata = prepared.copy()
    nsc.pp.compute_var(adata)
    return adata


@pytest.mark.parametrize("keepvar", [True, False])
def test_normvar_matches_explicit(weighted, keepvar):
    adata = weighted.copy()
    nsc.pp.normvar(adata, keepvar=keepvar)
    expression, cov = _arrays(adata)
    weights = adata.obs["nsc_weight"].to_numpy()
    factor = adata.var["nsc_scale"].to_numpy()
    assert (factor == 0).any()  # genes without zeros: no variance normalisation
    assert (factor == 1).any()
    expected, expected_cov = explicit_normvar(expression, cov, weights, factor, keepvar=keepvar)
    result = adata.layers["normalisr"]
    assert result.dtype == np.float64
    assert_close(result, expected, rtol=1e-9)
    norm_cov = adata.obsm["nsc_covariates_norm"]
    assert list(norm_cov.columns) == list(adata.obsm["nsc_covariates"].columns)
    pd.testing.assert_index_equal(norm_cov.index, adata.obs_names)
    assert_close(norm_cov.to_numpy(), expected_cov, rtol=1e-12)
    # Continuous covariates and the intercept are weighted, the binary batch column is not.
    np.testing.assert_array_equal(norm_cov["intercept"], weights)
    np.testing.assert_array_equal(norm_cov["batch[b2]"], adata.obsm["nsc_covariates"]["batch[b2]"])
    assert adata.uns["normalisr"]["params"]["keepvar"] is keepvar


def test_normvar_keepvar_keeps_variance_scale(weighted):
    adata = weighted.copy()
    nsc.pp.normvar(adata)
    expression = adata.layers["lcpm"]
    weights = adata.obs["nsc_weight"].to_numpy()
    factor = adata.var["nsc_scale"].to_numpy()
    weighted_expression = expression * weights[:, None] ** factor
    result = adata.layers["normalisr"]
    # After rescaling by (sd / rms) ** f, genes with f = 1 keep their SD exactly.
    full = factor == 1
    np.testing.assert_allclose(
        np.sqrt((result[:, full] ** 2).mean(axis=0)),
        weighted_expression[:, full].std(axis=0),
        rtol=1e-10,
    )
    # Residuals are orthogonal to the weighted covariates of each gene.
    cov = adata.obsm["nsc_covariates"].to_numpy()
    for gene in range(0, adata.n_vars, 7):
        x = cov * (weights ** factor[gene])[:, None]
        assert np.abs(x.T @ result[:, gene]).max() < 1e-8 * np.abs(result[:, gene]).sum()


def test_normvar_unweighted_genes_are_ols_residuals(weighted):
    """With every weight 1, normvar (keepvar=False) is plain OLS residuals."""
    adata = weighted.copy()
    adata.obs["ones"] = 1.0
    nsc.pp.normvar(adata, weights_key="ones", keepvar=False)
    expression, cov = _arrays(adata)
    beta = np.linalg.lstsq(cov, expression, rcond=None)[0]
    assert_close(adata.layers["normalisr"], expression - cov @ beta, rtol=1e-9)


def test_normvar_float32(weighted):
    adata = weighted.copy()
    nsc.pp.normvar(adata, dtype=np.float32)
    reference = weighted.copy()
    nsc.pp.normvar(reference)
    assert adata.layers["normalisr"].dtype == np.float32
    np.testing.assert_allclose(
        adata.layers["normalisr"],
        reference.layers["normalisr"],
        rtol=1e-5,
        atol=1e-5 * np.abs(reference.layers["normalisr"]).max(),
    )


def test_normvar_dtype_follows_float32_lcpm(make_counts):
    adata = counts_adata(make_counts(200, 40, seed=1))
    nsc.pp.lcpm(adata, dtype=np.float32)
    nsc.pp.normcov(adata)
    nsc.pp.compute_var(adata)
    nsc.pp.normvar(adata)
    assert adata.layers["normalisr"].dtype == np.float32
    expression = adata.layers["lcpm"].astype(np.float64)
    expected, _ = explicit_normvar(
        expression,
        adata.obsm["nsc_covariates"].to_numpy(),
        adata.obs["nsc_weight"].to_numpy(),
        adata.var["nsc_scale"].to_numpy(),
    )
    assert_close(adata.layers["normalisr"], expected, rtol=1e-5)
    assert np.isfinite(adata.layers["normalisr"]).all()


def test_normvar_key_added_and_keys(weighted):
    adata = weighted.copy()
    adata.obs["w2"] = adata.obs["nsc_weight"] ** 2
    adata.var["f2"] = adata.var["nsc_scale"] / 2
    nsc.pp.normvar(adata, key_added="norm2", weights_key="w2", scale_key="f2")
    assert "normalisr" not in adata.layers
    expected, expected_cov = explicit_normvar(
        *_arrays(adata), adata.obs["w2"].to_numpy(), adata.var["f2"].to_numpy()
    )
    assert_close(adata.layers["norm2"], expected, rtol=1e-9)
    assert_close(adata.obsm["norm2_covariates_norm"].to_numpy(), expected_cov)


def test_normvar_on_view(weighted):
    before = weighted.copy()
    mask = np.arange(weighted.n_obs) % 5 != 0
    view = weighted[mask]
    copy = view.copy()
    nsc.pp.normvar(view)
    nsc.pp.normvar(copy)
    assert not view.is_view
    np.testing.assert_array_equal(view.layers["normalisr"], copy.layers["normalisr"])
    pd.testing.assert_frame_equal(
        view.obsm["nsc_covariates_norm"], copy.obsm["nsc_covariates_norm"]
    )
    assert_unchanged(before, weighted)


# ---------------------------------------------------------------- properties


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_cells=st.integers(100, 250),
    n_genes=st.integers(20, 60),
    mean_total=st.sampled_from([100.0, 300.0, 2000.0]),
    block=st.sampled_from([1, 7, 13]),
    stepmax=st.integers(1, 3),
)
def test_variance_block_size_invariant(
    make_counts, seed, n_cells, n_genes, mean_total, block, stepmax
):
    """Block size of the streaming kernels does not change weights or normalised values.

    To 1e-8 of the magnitude (the bar of the reference agreement), not to machine
    precision: the method standardises each gene's residual by its SD, and a gene with
    almost no residual (e.g. zero in every cell: its log CPM is nearly a function of the
    covariates, residual SD ~1e-4) turns rounding differences of 1e-15 from summing in
    another order into ~1e-10 in the weights. On 300 x 80 without such genes the weights
    agree to 1e-12, see test_variance_block_size_realistic.
    """
    counts = make_counts(n_cells, n_genes, seed=seed, mean_total=mean_total)
    assume((counts == 0).any())  # else the scaling factor is undefined
    adata = counts_adata(counts)
    nsc.pp.lcpm(adata)
    raw = adata.obsm["nsc_cov"].to_numpy()
    assume(not (raw == raw[0]).all(axis=0).any())  # a constant covariate is refused
    nsc.pp.normcov(adata, ["batch"])
    assume(binary_covariates_well_posed(adata.obsm["nsc_covariates"]))
    small = adata.copy()
    nsc.pp.compute_var(adata, stepmax=stepmax)
    nsc.pp.normvar(adata)
    with block_size(block):
        nsc.pp.compute_var(small, stepmax=stepmax)
        nsc.pp.normvar(small)
    assert_close(small.obs["nsc_weight"].to_numpy(), adata.obs["nsc_weight"].to_numpy(), rtol=1e-8)
    assert_close(small.layers["normalisr"], adata.layers["normalisr"], rtol=1e-8)
    assert np.isfinite(adata.layers["normalisr"]).all()
    assert (adata.obs["nsc_weight"] >= 1).all()
    expected, _ = explicit_weights(*_arrays(adata), stepmax=stepmax)
    assert_close(adata.obs["nsc_weight"].to_numpy(), expected, rtol=1e-8)


def test_variance_block_size_realistic(weighted):
    """On a few hundred cells the weights do not depend on the block size beyond 1e-10.

    The variance fit is ill-conditioned (log total and its square are nearly collinear),
    so summation order alone moves the weights by a few 1e-12.
    """
    reference = weighted.copy()
    nsc.pp.normvar(reference)
    adata = weighted.copy()
    with block_size(7):
        nsc.pp.compute_var(adata)
        nsc.pp.normvar(adata)
    assert_close(
        adata.obs["nsc_weight"].to_numpy(), reference.obs["nsc_weight"].to_numpy(), rtol=1e-10
    )
    assert_close(adata.layers["normalisr"], reference.layers["normalisr"], rtol=1e-10)
