"""nsc.pp.lcpm (Bayesian log CPM, METHOD 2) and nsc.pp.scaling_factor (METHOD 3)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from scipy.special import digamma, polygamma

import normalisr_sc as nsc

from .._helpers import (
    FORMATS,
    as_format,
    assert_close,
    assert_unchanged,
    block_size,
    counts_adata,
)

SMALL = np.array(
    [
        [0, 1, 3],
        [2, 0, 0],
    ]
)

#: Zero fractions per gene: 2/3, 1/3, 0, 2/3.
SCALE_COUNTS = np.array(
    [
        [0, 1, 5, 0],
        [0, 3, 2, 1],
        [4, 0, 1, 0],
    ]
)


def explicit_lcpm(counts: np.ndarray) -> np.ndarray:
    """METHOD 2 by the formulas: digamma(k + 1) - digamma(T + 2), then sum(exp) = 1e6 per cell."""
    total = counts.sum()
    raw = digamma(counts + 1.0) - digamma(total + 2.0)
    return raw - (np.log(np.exp(raw).sum(axis=1)) - np.log(1e6))[:, None]


# ---------------------------------------------------------------- lcpm, by hand


@pytest.mark.parametrize("fmt", FORMATS)
def test_lcpm_small_by_formula(fmt):
    adata = counts_adata(SMALL, fmt, batch=False)
    nsc.pp.lcpm(adata)
    result = adata.layers["lcpm"]
    assert isinstance(result, np.ndarray)
    assert result.dtype == np.float64
    total = 6.0
    v = {k: digamma(k + 1.0) - digamma(total + 2.0) for k in (0, 1, 2, 3)}
    raw = np.array([[v[0], v[1], v[3]], [v[2], v[0], v[0]]])
    shift = np.log(np.exp(raw).sum(axis=1)) - np.log(1e6)
    np.testing.assert_allclose(result, raw - shift[:, None], rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(np.exp(result).sum(axis=1), 1e6, rtol=1e-12)
    # Equal counts in a cell give equal values; zeros are finite.
    assert result[1, 1] == result[1, 2]
    assert np.isfinite(result).all()


def test_lcpm_summary_covariates_by_hand():
    adata = counts_adata(SMALL, batch=False)
    nsc.pp.lcpm(adata)
    cov = adata.obsm["nsc_cov"]
    assert isinstance(cov, pd.DataFrame)
    assert list(cov.columns) == ["log_total_counts", "n_zero_genes", "log_total_counts_sq"]
    pd.testing.assert_index_equal(cov.index, adata.obs_names)
    np.testing.assert_allclose(cov["log_total_counts"], np.log([4.0, 2.0]), rtol=1e-15)
    np.testing.assert_array_equal(cov["n_zero_genes"], [1.0, 2.0])
    np.testing.assert_allclose(cov["log_total_counts_sq"], np.log([4.0, 2.0]) ** 2, rtol=1e-15)


def test_lcpm_records_parameters():
    adata = counts_adata(SMALL, batch=False)
    nsc.pp.lcpm(adata)
    params = adata.uns["lcpm"]["params"]
    assert params["total_counts"] == 6.0
    assert params["varscale"] == 0.0
    assert params["dtype"] == "float64"
    assert params["key_added"] == "lcpm"


def test_lcpm_large_counts_use_distinct_values():
    """Counts far above the table size go through the distinct-value path; same formula."""
    counts = np.array(
        [
            [0, 3, 2_000_000],
            [7, 0, 123_457],
            [1, 1, 5_000_001],
        ]
    )
    adata = counts_adata(counts, "csr", batch=False)
    nsc.pp.lcpm(adata)
    assert_close(adata.layers["lcpm"], explicit_lcpm(counts), rtol=1e-13)


def test_lcpm_matches_formula_on_random_counts(make_counts):
    counts = make_counts(150, 40, seed=3)
    adata = counts_adata(counts, "csc")
    nsc.pp.lcpm(adata)
    assert_close(adata.layers["lcpm"], explicit_lcpm(counts), rtol=1e-13)
    cov = adata.obsm["nsc_cov"].to_numpy()
    log_total = np.log(counts.sum(axis=1))
    np.testing.assert_allclose(cov[:, 0], log_total, rtol=1e-15)
    np.testing.assert_array_equal(cov[:, 1], (counts == 0).sum(axis=1))
    np.testing.assert_allclose(cov[:, 2], log_total**2, rtol=1e-15)
    zero_fraction = (counts == 0).mean(axis=0)
    np.testing.assert_allclose(
        adata.var["nsc_scale"], zero_fraction / zero_fraction.max(), rtol=1e-12, atol=1e-15
    )


def test_lcpm_float32_dtype(make_counts):
    counts = make_counts(100, 30, seed=1)
    reference, single = counts_adata(counts), counts_adata(counts)
    nsc.pp.lcpm(reference)
    nsc.pp.lcpm(single, dtype=np.float32)
    assert single.layers["lcpm"].dtype == np.float32
    np.testing.assert_array_equal(
        single.layers["lcpm"], reference.layers["lcpm"].astype(np.float32)
    )
    assert single.uns["lcpm"]["params"]["dtype"] == "float32"
    pd.testing.assert_frame_equal(single.obsm["nsc_cov"], reference.obsm["nsc_cov"])


def test_lcpm_layer_and_key_added(make_counts):
    counts = make_counts(60, 20, seed=2)
    adata = counts_adata(counts)
    adata.layers["counts"] = adata.X.copy()
    adata.X = sparse.csr_matrix(np.log1p(counts) / 3)  # not counts any more
    nsc.pp.lcpm(adata, layer="counts", key_added="bayes")
    assert "lcpm" not in adata.layers
    assert_close(adata.layers["bayes"], explicit_lcpm(counts), rtol=1e-13)
    assert adata.uns["bayes"]["params"]["layer"] == "counts"
    assert adata.uns["bayes"]["params"]["key_added"] == "bayes"
    assert "lcpm" not in adata.uns


def test_lcpm_can_rerun_over_its_own_layer(make_counts):
    adata = counts_adata(make_counts(60, 20, seed=2))
    nsc.pp.lcpm(adata, varscale=1.0, seed=0)
    noisy = adata.layers["lcpm"].copy()
    nsc.pp.lcpm(adata)
    assert not np.allclose(adata.layers["lcpm"], noisy)
    assert_close(adata.layers["lcpm"], explicit_lcpm(adata.X.toarray()), rtol=1e-13)


def test_lcpm_sparse_input_not_densified_as_integers(make_counts):
    """Peak memory of lcpm on sparse counts is the float result plus small blocks."""
    rng = np.random.default_rng(0)
    n_cells, n_genes = 2000, 1000
    counts = sparse.random(
        n_cells,
        n_genes,
        density=0.05,
        format="csr",
        random_state=rng,
        data_rvs=lambda n: rng.integers(1, 50, n),
    ).astype(np.int64)
    counts = (
        counts
        + sparse.csr_matrix(
            (np.ones(n_cells, dtype=np.int64), (np.arange(n_cells), np.zeros(n_cells, int))),
            shape=counts.shape,
        )
    ).tocsr()
    adata = AnnData(X=counts)
    result_bytes = n_cells * n_genes * 8
    with block_size(100):
        tracemalloc.start()
        try:
            nsc.pp.lcpm(adata)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # A dense int64 copy of the counts alone would add another ``result_bytes``.
    assert peak < 1.5 * result_bytes, peak / result_bytes
    assert np.isfinite(adata.layers["lcpm"]).all()


# ---------------------------------------------------------------- posterior resampling


@pytest.fixture(scope="module")
def deep_counts() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.poisson(rng.gamma(2.0, 3.0, (4000, 10))) + (np.arange(10) == 0)


def test_varscale_seeded_reproducible(make_counts):
    counts = make_counts(80, 20, seed=1)
    runs = []
    for seed in (7, 7, 8):
        adata = counts_adata(counts)
        nsc.pp.lcpm(adata, varscale=1.0, seed=seed)
        runs.append(adata.layers["lcpm"])
    mean = counts_adata(counts)
    nsc.pp.lcpm(mean)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])
    assert not np.allclose(runs[0], mean.layers["lcpm"])
    for run in runs:
        assert np.isfinite(run).all()
        np.testing.assert_allclose(np.exp(run).sum(axis=1), 1e6, rtol=1e-10)


def test_varscale_without_seed_runs(make_counts):
    adata = counts_adata(make_counts(50, 10, seed=1))
    nsc.pp.lcpm(adata, varscale=0.3)
    assert np.isfinite(adata.layers["lcpm"]).all()
    assert adata.uns["lcpm"]["params"]["varscale"] == 0.3
    assert "seed" not in adata.uns["lcpm"]["params"]  # None is not stored


@pytest.mark.parametrize("varscale", [0.5, 2.0])
def test_varscale_noise_has_posterior_variance(deep_counts, varscale):
    """Within a cell, the resampled-minus-mean differences are Normal with the posterior variance.

    The per-cell shift changes with the noise, so compare genes within a cell: the
    difference between gene j and gene 0 has variance varscale * (V_j + V_0), with
    V = trigamma(k + 1) - trigamma(T + 2), and mean 0.
    """
    mean, noisy = counts_adata(deep_counts), counts_adata(deep_counts)
    nsc.pp.lcpm(mean)
    nsc.pp.lcpm(noisy, varscale=varscale, seed=1)
    delta = noisy.layers["lcpm"] - mean.layers["lcpm"]
    total = deep_counts.sum()
    variance = polygamma(1, deep_counts + 1.0) - polygamma(1, total + 2.0)
    z = (delta[:, 1:] - delta[:, :1]) / np.sqrt(varscale * (variance[:, 1:] + variance[:, :1]))
    assert abs(z.mean()) < 0.03
    assert abs(z.var() - 1) < 0.04
    # Mean over cells close to the posterior mean, gene by gene.
    per_gene = z.mean(axis=0) * np.sqrt(z.shape[0])
    assert (np.abs(per_gene) < 5).all()


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_varscale_same_for_sparse_and_dense(make_counts, fmt):
    counts = make_counts(70, 15, seed=9)
    a, b = counts_adata(counts, "dense"), counts_adata(counts, fmt)
    nsc.pp.lcpm(a, varscale=1.0, seed=4)
    nsc.pp.lcpm(b, varscale=1.0, seed=4)
    assert_close(b.layers["lcpm"], a.layers["lcpm"])


# ---------------------------------------------------------------- properties

counts_strategy = st.builds(
    dict,
    seed=st.integers(0, 2**16),
    n_cells=st.integers(2, 60),
    n_genes=st.integers(2, 25),
    mean_total=st.sampled_from([5.0, 50.0, 2000.0]),
)


def spec_counts(make_counts, spec: dict) -> np.ndarray:
    """Counts of a strategy draw; cell 0 has a zero (so the scaling factor is defined)."""
    counts = make_counts(
        spec["n_cells"], spec["n_genes"], seed=spec["seed"], mean_total=spec["mean_total"]
    )
    counts[0, 0] += 1
    counts[0, -1] = 0
    return counts


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(
    spec=counts_strategy,
    fmt=st.sampled_from(["csr", "csc"]),
    dtype=st.sampled_from([np.int32, np.float32, np.float64]),
    block=st.sampled_from([1, 7]),
)
def test_lcpm_property(make_counts, spec, fmt, dtype, block):
    """Sparse or dense, integer or float storage, any block size: same lcpm, covariates, scale."""
    counts = spec_counts(make_counts, spec)
    reference = counts_adata(counts, "dense", batch=False)
    nsc.pp.lcpm(reference)
    other = AnnData(
        X=as_format(counts.astype(dtype), fmt), obs=reference.obs[[]], var=reference.var[[]]
    )
    with block_size(block):
        nsc.pp.lcpm(other)
    expected = reference.layers["lcpm"]
    assert np.isfinite(expected).all()
    assert_close(expected, explicit_lcpm(counts), rtol=1e-12)
    assert_close(other.layers["lcpm"], expected, rtol=1e-12)
    pd.testing.assert_frame_equal(
        other.obsm["nsc_cov"], reference.obsm["nsc_cov"], check_exact=False, rtol=1e-14
    )
    np.testing.assert_array_equal(other.var["nsc_scale"], reference.var["nsc_scale"])
    scale = reference.var["nsc_scale"].to_numpy()
    assert np.isfinite(scale).all()
    assert scale.min() >= 0
    assert scale.max() == 1.0


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(spec=counts_strategy, fmt=st.sampled_from(FORMATS), data=st.data())
def test_lcpm_on_view_equals_copy(make_counts, spec, fmt, data):
    parent = counts_adata(spec_counts(make_counts, spec), fmt)
    mask = np.array(
        data.draw(st.lists(st.booleans(), min_size=parent.n_obs, max_size=parent.n_obs))
    )
    mask[0] = True
    before = parent.copy()
    view = parent[mask]
    copy = view.copy()
    nsc.pp.lcpm(view)
    nsc.pp.lcpm(copy)
    assert not view.is_view
    np.testing.assert_array_equal(view.layers["lcpm"], copy.layers["lcpm"])
    pd.testing.assert_frame_equal(view.obsm["nsc_cov"], copy.obsm["nsc_cov"])
    pd.testing.assert_frame_equal(view.var, copy.var)
    assert_unchanged(before, parent)


# ---------------------------------------------------------------- scaling_factor


def test_lcpm_stores_default_scaling_factor():
    adata = counts_adata(SCALE_COUNTS, batch=False)
    nsc.pp.lcpm(adata)
    np.testing.assert_allclose(adata.var["nsc_scale"], [1.0, 0.5, 0.0, 1.0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fmt", FORMATS)
def test_scaling_factor_default_equals_lcpm(fmt):
    adata = counts_adata(SCALE_COUNTS, fmt, batch=False)
    nsc.pp.scaling_factor(adata)
    np.testing.assert_allclose(adata.var["nsc_scale"], [1.0, 0.5, 0.0, 1.0], rtol=1e-12, atol=1e-15)
    assert adata.uns["nsc_scale"]["params"]["variable"] == "zero_fraction"
    assert "lcpm" not in adata.layers


def _mapped(values, low, high):
    return (values - low) / (high - low)


LOG_DETECTED = np.log([1 / 3, 2 / 3, 1.0, 1 / 3])
LOG_MEAN_PROPORTION = np.log(np.array([4.0, 4.0, 8.0, 1.0]) / 17)
LOG_MEAN_CELL_PROPORTION = np.log(
    np.array(
        [
            0.8 / 3,
            (1 / 6 + 1 / 2) / 3,
            (5 / 6 + 1 / 3 + 0.2) / 3,
            (1 / 6) / 3,
        ]
    )
)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"variable": "zero_fraction", "zero_at": 1 / 3, "one_at": 2 / 3}, [1.0, 0.0, -1.0, 1.0]),
        ({"variable": "zero_fraction", "zero_at": "max", "one_at": "min"}, [0.0, 0.5, 1.0, 0.0]),
        (
            {"variable": "log_detected_fraction", "zero_at": "min", "one_at": "max"},
            _mapped(LOG_DETECTED, np.log(1 / 3), 0.0),
        ),
        (
            {"variable": "log_mean_proportion", "zero_at": "min", "one_at": "max"},
            _mapped(LOG_MEAN_PROPORTION, LOG_MEAN_PROPORTION.min(), LOG_MEAN_PROPORTION.max()),
        ),
        (
            {"variable": "log_mean_cell_proportion", "zero_at": "max", "one_at": "min"},
            _mapped(
                LOG_MEAN_CELL_PROPORTION,
                LOG_MEAN_CELL_PROPORTION.max(),
                LOG_MEAN_CELL_PROPORTION.min(),
            ),
        ),
        (
            {"variable": "log_mean_proportion", "zero_at": 0.0, "one_at": "min"},
            LOG_MEAN_PROPORTION / LOG_MEAN_PROPORTION.min(),
        ),
    ],
)
def test_scaling_factor_variants(kwargs, expected):
    adata = counts_adata(SCALE_COUNTS, batch=False)
    before = adata.copy()
    result = nsc.pp.scaling_factor(adata, **kwargs, inplace=False)
    np.testing.assert_allclose(result, expected, rtol=1e-13, atol=1e-15)
    assert_unchanged(before, adata)


def test_scaling_factor_log_zero_fraction():
    counts = SCALE_COUNTS.copy()
    counts[0, 2] = 0  # now every gene has a zero
    adata = counts_adata(counts, batch=False)
    result = nsc.pp.scaling_factor(
        adata, variable="log_zero_fraction", zero_at="min", one_at="max", inplace=False
    )
    values = np.log([2 / 3, 1 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(result, _mapped(values, values.min(), values.max()), rtol=1e-13)


def test_scaling_factor_key_added_and_layer():
    adata = counts_adata(SCALE_COUNTS, batch=False)
    adata.layers["counts"] = adata.X.copy()
    adata.X = sparse.csr_matrix(adata.shape)
    nsc.pp.scaling_factor(
        adata,
        layer="counts",
        key_added="f_detected",
        variable="log_detected_fraction",
        zero_at="min",
        one_at="max",
    )
    np.testing.assert_allclose(
        adata.var["f_detected"], _mapped(LOG_DETECTED, np.log(1 / 3), 0.0), rtol=1e-13
    )
    assert "nsc_scale" not in adata.var
    params = adata.uns["f_detected"]["params"]
    assert params == {
        "variable": "log_detected_fraction",
        "zero_at": "min",
        "one_at": "max",
        "layer": "counts",
        "key_added": "f_detected",
    }


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(spec=counts_strategy, fmt=st.sampled_from(["csr", "csc"]), block=st.sampled_from([1, 7]))
def test_scaling_factor_property(make_counts, spec, fmt, block):
    counts = spec_counts(make_counts, spec)
    expected = (counts == 0).mean(axis=0)
    expected /= expected.max()
    with block_size(block):
        result = nsc.pp.scaling_factor(counts_adata(counts, fmt), inplace=False)
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-15)
    assert ((result >= 0) & (result <= 1)).all()
