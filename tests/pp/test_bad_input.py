"""Bad input: each raises a ValueError saying what is wrong, and leaves the AnnData unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import normalisr_sc as nsc
from normalisr_sc.pp import _recipe

from .._helpers import assert_unchanged, counts_adata


@pytest.fixture
def adata(make_counts) -> AnnData:
    """300 x 80 CSR counts with annotations everywhere, so that changes would show."""
    adata = counts_adata(make_counts(300, 80, seed=0))
    adata.obs["dose"] = np.linspace(0.0, 1.0, adata.n_obs)
    adata.var["symbol"] = [f"S{j}" for j in range(adata.n_vars)]
    adata.layers["raw"] = adata.X.copy()
    adata.obsm["pos"] = np.arange(2 * adata.n_obs, dtype=float).reshape(-1, 2)
    adata.uns["note"] = {"a": 1, "b": np.arange(3)}
    return adata


def assert_fails(adata: AnnData, function, match: str, **kwargs) -> None:
    """``function(adata, **kwargs)`` raises ValueError matching ``match``; adata is untouched."""
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        function(adata, **kwargs)
    assert_unchanged(before, adata)


def with_x(adata: AnnData, matrix) -> AnnData:
    adata.X = matrix
    return adata


COUNT_READERS = {
    "qc_reads": nsc.pp.qc_reads,
    "lcpm": nsc.pp.lcpm,
    "scaling_factor": nsc.pp.scaling_factor,
    "normalize": lambda adata: nsc.pp.normalize(adata, qc=None),
}


# ---------------------------------------------------------------- the counts


@pytest.mark.parametrize("step", list(COUNT_READERS))
@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_negative_counts(adata, step, dtype):
    counts = adata.X.toarray().astype(dtype)
    counts[3, 4] = -2
    assert_fails(
        with_x(adata, sparse.csr_matrix(counts)),
        COUNT_READERS[step],
        r"adata.X contains negative values \(minimum -2\).*raw UMI counts",
    )


@pytest.mark.parametrize("step", list(COUNT_READERS))
def test_non_integer_counts(adata, step):
    counts = adata.X.toarray().astype(float)
    counts[5, 1] = 2.5
    assert_fails(
        with_x(adata, counts),
        COUNT_READERS[step],
        r"non-integer values \(e.g. 2.5\).*not normalised or log-transformed",
    )


def test_non_integer_counts_in_layer(adata):
    adata.layers["raw"] = adata.layers["raw"] * 0.5
    assert_fails(adata, nsc.pp.lcpm, r"adata.layers\['raw'\] contains non-integer", layer="raw")


@pytest.mark.parametrize("step", list(COUNT_READERS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_counts(adata, step, bad):
    counts = adata.X.toarray().astype(np.float64)
    counts[7, 7] = bad
    assert_fails(
        with_x(adata, sparse.csr_matrix(counts)), COUNT_READERS[step], "NaN or infinite values"
    )


@pytest.mark.parametrize("step", ["lcpm", "scaling_factor", "normalize"])
def test_cell_with_zero_counts(adata, step):
    counts = adata.X.toarray()
    counts[[4, 9]] = 0
    assert_fails(
        with_x(adata, sparse.csr_matrix(counts)),
        COUNT_READERS[step],
        r"2 cell\(s\) have zero total count \(e.g. \['cell4', 'cell9'\]\).*min_cell_counts=1",
    )


def test_cell_with_zero_counts_cpm(adata):
    counts = adata.X.toarray()
    counts[4] = 0
    assert_fails(
        with_x(adata, sparse.csr_matrix(counts)),
        nsc.pp.cpm,
        r"1 cell\(s\) have zero total count.*undefined",
    )


def test_negative_values_cpm(adata):
    adata.X = sparse.csr_matrix(-adata.X.toarray())
    assert_fails(adata, nsc.pp.cpm, "negative values")


@pytest.mark.parametrize("function", [nsc.pp.cpm, nsc.pp.minmax])
def test_nan_values_simple(adata, function):
    values = adata.X.toarray().astype(float)
    values[0, 0] = np.nan
    assert_fails(with_x(adata, values), function, "NaN or infinite values")


def test_empty_x(adata):
    adata.X = None
    assert_fails(adata, nsc.pp.lcpm, r"adata.X is empty; pass `layer=`")


# ---------------------------------------------------------------- covariates


@pytest.fixture
def lcpm_done(adata) -> AnnData:
    nsc.pp.lcpm(adata)
    return adata


def test_constant_numeric_covariate(lcpm_done):
    lcpm_done.obs["depth"] = 3.0
    assert_fails(
        lcpm_done, nsc.pp.normcov, r"covariate\(s\) \['depth'\] are constant", covariates=["depth"]
    )


def test_constant_numeric_covariate_normalize(adata):
    adata.obs["depth"] = 3
    assert_fails(
        adata, nsc.pp.normalize, "are constant across cells", covariates=["depth"], qc=None
    )


def test_single_level_categorical_covariate(lcpm_done):
    lcpm_done.obs["site"] = pd.Categorical(["s1"] * lcpm_done.n_obs, categories=["s1", "s2"])
    assert_fails(
        lcpm_done,
        nsc.pp.normcov,
        r"adata.obs\['site'\] has a single level \['s1'\]",
        covariates=["site"],
    )


def test_covariate_with_missing_values(lcpm_done):
    lcpm_done.obs.loc[lcpm_done.obs_names[:3], "dose"] = np.nan
    assert_fails(
        lcpm_done, nsc.pp.normcov, r"adata.obs\['dose'\] has 3 missing values", covariates=["dose"]
    )


def test_covariate_with_infinite_values(lcpm_done):
    lcpm_done.obs.loc[lcpm_done.obs_names[0], "dose"] = np.inf
    assert_fails(lcpm_done, nsc.pp.normcov, "NaN or infinite", covariates=["dose"])


def test_unknown_obs_column_normcov(lcpm_done):
    assert_fails(
        lcpm_done,
        nsc.pp.normcov,
        r"covariate column\(s\) \['donor'\] not found in adata.obs; available",
        covariates=["batch", "donor"],
    )


def test_unknown_obs_column_normalize(adata):
    assert_fails(adata, nsc.pp.normalize, r"\['donor'\] not found in adata.obs", covariates="donor")


def test_no_covariates_at_all(lcpm_done):
    assert_fails(lcpm_done, nsc.pp.normcov, "no covariates", summary=False)


def test_too_few_cells_for_covariates(make_counts):
    adata = counts_adata(make_counts(5, 30, seed=1, mean_total=100.0))
    nsc.pp.lcpm(adata)
    nsc.pp.normcov(adata)  # 3 summary covariates + intercept
    assert_fails(adata, nsc.pp.compute_var, "5 cells are too few for 4 covariates: at least 6")


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize(
    "function",
    [
        nsc.pp.qc_reads,
        nsc.pp.lcpm,
        nsc.pp.scaling_factor,
        nsc.pp.normalize,
        nsc.pp.cpm,
        nsc.pp.minmax,
    ],
)
def test_wrong_layer_name(adata, function):
    assert_fails(
        adata,
        function,
        r"layer 'counts' not found; available layers: \['raw'\]. Pass layer=None",
        layer="counts",
    )


@pytest.mark.parametrize(
    ("function", "key"),
    [
        (nsc.pp.lcpm, "lcpm"),
        (nsc.pp.normalize, "lcpm"),
        (nsc.pp.normalize, "normalisr"),
        (nsc.pp.cpm, "cpm"),
        (nsc.pp.minmax, "minmax"),
    ],
)
def test_existing_foreign_layer_not_overwritten(adata, function, key):
    adata.layers[key] = adata.X.copy()
    assert_fails(adata, function, rf"adata.layers\['{key}'\] already exists and was not written")


def test_existing_foreign_layer_normvar(lcpm_done):
    nsc.pp.normcov(lcpm_done)
    nsc.pp.compute_var(lcpm_done)
    lcpm_done.layers["normalisr"] = lcpm_done.layers["lcpm"].copy()
    assert_fails(lcpm_done, nsc.pp.normvar, "already exists")


# ---------------------------------------------------------------- QC removing everything


def test_qc_removes_every_cell(adata):
    assert_fails(
        adata,
        nsc.pp.qc_reads,
        r"removed every cell \(300 cells x 80 genes in\)",
        min_cell_counts=10**9,
    )


def test_qc_removes_every_gene(adata):
    assert_fails(adata, nsc.pp.qc_reads, "removed every gene.*lower the bounds", min_gene_cells=301)


def test_qc_removes_everything_in_normalize(adata):
    assert_fails(
        adata,
        nsc.pp.normalize,
        "removed every cell",
        covariates=["batch"],
        qc={"min_cell_genes": 81},
    )


# ---------------------------------------------------------------- missing prerequisites


def test_normcov_before_lcpm(adata):
    assert_fails(adata, nsc.pp.normcov, r"adata.obsm\['nsc_cov'\] not found; run `nsc.pp.lcpm`")


def test_compute_var_before_lcpm(adata):
    assert_fails(adata, nsc.pp.compute_var, r"adata.layers\['lcpm'\].*run `nsc.pp.lcpm` first")


def test_compute_var_before_normcov(lcpm_done):
    assert_fails(
        lcpm_done,
        nsc.pp.compute_var,
        r"adata.obsm\['nsc_covariates'\] not found; run `nsc.pp.normcov` first",
    )


def test_qc_outlier_before_compute_var(lcpm_done):
    nsc.pp.normcov(lcpm_done)
    assert_fails(
        lcpm_done,
        nsc.pp.qc_outlier,
        r"adata.obs\['nsc_weight'\] not found; run `nsc.pp.compute_var` first",
    )


def test_normvar_before_compute_var(lcpm_done):
    nsc.pp.normcov(lcpm_done)
    assert_fails(lcpm_done, nsc.pp.normvar, r"run `nsc.pp.compute_var` first")


def test_normvar_without_scale(lcpm_done):
    nsc.pp.normcov(lcpm_done)
    nsc.pp.compute_var(lcpm_done)
    del lcpm_done.var["nsc_scale"]
    assert_fails(
        lcpm_done, nsc.pp.normvar, r"adata.var\['nsc_scale'\] not found; run `nsc.pp.lcpm`"
    )


# ---------------------------------------------------------------- stored values


@pytest.fixture
def weighted(lcpm_done) -> AnnData:
    nsc.pp.normcov(lcpm_done, ["batch"])
    nsc.pp.compute_var(lcpm_done)
    return lcpm_done


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
@pytest.mark.parametrize("function", [nsc.pp.qc_outlier, nsc.pp.normvar])
def test_invalid_weights(weighted, function, bad):
    weighted.obs.loc[weighted.obs_names[2], "nsc_weight"] = bad
    assert_fails(
        weighted,
        function,
        r"adata.obs\['nsc_weight'\] (must hold finite positive|contains NaN or infinite)",
    )


@pytest.mark.parametrize("bad", [-0.5, np.nan])
def test_invalid_scaling_factor(weighted, bad):
    weighted.var.loc[weighted.var_names[1], "nsc_scale"] = bad
    assert_fails(
        weighted,
        nsc.pp.normvar,
        r"adata.var\['nsc_scale'\] (must hold finite non-negative|contains NaN or inf)",
    )


def test_outlier_fraction_too_large(weighted):
    weights = np.random.default_rng(0).normal(3.0, 0.1, weighted.n_obs)
    weights[:4] = 10.0  # 1.3% far outliers, with outrate 0.5% allowing 1%
    weighted.obs["nsc_weight"] = weights
    assert_fails(
        weighted,
        nsc.pp.qc_outlier,
        r"4 of 300 cells \(1.3%\) are variance outliers, more than 2 \* outrate = 1.0%",
        outrate=0.005,
    )


def test_weights_without_spread(weighted):
    weighted.obs["nsc_weight"] = 2.0
    assert_fails(weighted, nsc.pp.qc_outlier, "do not vary")


# ---------------------------------------------------------------- invalid parameters


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"min_gene_cell_fraction": 1.5},
            r"`min_gene_cell_fraction` must be a finite number in \[0, 1\]",
        ),
        (
            {"min_cell_gene_fraction": 2.0},
            r"`min_cell_gene_fraction` must be a finite number in \[0, 1\]",
        ),
        ({"min_cell_counts": -1}, "`min_cell_counts` must be a finite number >= 0"),
        ({"min_gene_cells": np.nan}, "`min_gene_cells` must be a finite number >= 0"),
        ({"min_gene_counts": np.inf}, "`min_gene_counts` must be a finite number >= 0"),
    ],
)
def test_invalid_qc_reads_bounds(adata, kwargs, match):
    assert_fails(adata, nsc.pp.qc_reads, match, **kwargs)


def test_invalid_qc_bounds_in_normalize(adata):
    assert_fails(
        adata,
        nsc.pp.normalize,
        r"`qc\['min_gene_cell_fraction'\]` must be a finite",
        qc={"min_gene_cell_fraction": 3.0},
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pcut": 0.0}, r"`pcut` must be a finite number in \(0, 1\)"),
        ({"pcut": 1.0}, r"`pcut` must be a finite number in \(0, 1\)"),
        ({"pcut": -1e-3}, r"`pcut` must be a finite number in \(0, 1\)"),
        ({"outrate": 0.0}, r"`outrate` must be a finite number in \(0, 0.5\)"),
        ({"outrate": 0.5}, r"`outrate` must be a finite number in \(0, 0.5\)"),
    ],
)
def test_invalid_qc_outlier_parameters(weighted, kwargs, match):
    assert_fails(weighted, nsc.pp.qc_outlier, match, **kwargs)


@pytest.mark.parametrize("varscale", [-0.1, np.inf, np.nan])
def test_invalid_varscale(adata, varscale):
    assert_fails(adata, nsc.pp.lcpm, "`varscale` must be a finite number >= 0", varscale=varscale)


@pytest.mark.parametrize("function", [nsc.pp.lcpm, nsc.pp.normvar])
def test_integer_output_dtype(weighted, function):
    assert_fails(
        weighted, function, r"`dtype` must be one of \['float32', 'float64'\]", dtype=np.int32
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stepmax": 0}, "`stepmax` must be an integer >= 1"),
        ({"stepmax": 1.5}, "`stepmax` must be an integer >= 1"),
        ({"eps": 0.0}, "`eps` must be a finite number > 0"),
    ],
)
def test_invalid_compute_var_parameters(weighted, kwargs, match):
    assert_fails(weighted, nsc.pp.compute_var, match, **kwargs)


@pytest.mark.parametrize(
    "feature_range",
    [
        (1, 0),
        (0, 0),
        (0, np.inf),
        (np.nan, 1),
        (0, 1, 2),
        (0,),
        "01",
        ("0", 1),
        1.0,
        None,
        (True, 2),
    ],
)
def test_invalid_feature_range(adata, feature_range):
    assert_fails(
        adata,
        nsc.pp.minmax,
        "`feature_range` must be two finite numbers",
        feature_range=feature_range,
    )


@pytest.mark.parametrize("target_sum", [0, -1e6, np.nan, np.inf, "1e6", None, True])
def test_invalid_target_sum(adata, target_sum):
    assert_fails(
        adata, nsc.pp.cpm, "`target_sum` must be a finite number > 0", target_sum=target_sum
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variable": "mean"}, r"`variable` must be one of \['zero_fraction', .*got 'mean'"),
        ({"zero_at": "median"}, r"`zero_at` must be one of \['min', 'max'\], got 'median'"),
        ({"zero_at": np.nan}, "`zero_at` must be a finite number"),
        ({"one_at": "1"}, r"`one_at` must be one of \['min', 'max'\]"),
        ({"zero_at": 0.5, "one_at": 0.5}, "takes the same value 0.5 at both ends"),
        ({"variable": "log_zero_fraction"}, "is not finite for some genes"),
    ],
)
def test_invalid_scaling_factor_parameters(adata, kwargs, match):
    assert_fails(adata, nsc.pp.scaling_factor, match, **kwargs)


# ---------------------------------------------------------------- normalize failing midway


def test_normalize_fails_after_qc_single_level(make_counts):
    """QC removes every cell of batch b1, so normcov fails after qc_reads and lcpm ran."""
    counts = make_counts(300, 80, seed=2)
    counts[:20] = 0
    counts[:20, :3] = 1  # 20 shallow cells
    adata = counts_adata(counts)
    adata.obs["batch"] = pd.Categorical(["b1"] * 20 + ["b2"] * 280)
    assert_fails(
        adata,
        nsc.pp.normalize,
        r"adata.obs\['batch'\] has a single level",
        covariates=["batch"],
        qc={"min_cell_counts": 10},
    )


def test_normalize_fails_in_last_step(adata, monkeypatch):
    def broken_normvar(adata, **kwargs):
        nsc.pp.normvar(adata, **kwargs)
        msg = "normvar failed at the very end"
        raise ValueError(msg)

    monkeypatch.setattr(_recipe, "normvar", broken_normvar)
    assert_fails(adata, nsc.pp.normalize, "failed at the very end", covariates=["batch"], qc=None)


def test_normalize_fails_in_outlier_step(adata, monkeypatch):
    """An outlier error (too many variance outliers) leaves adata as it was."""

    def strict_qc_outlier(adata, **kwargs):
        nsc.pp.qc_outlier(adata, pcut=0.999, outrate=0.001)

    monkeypatch.setattr(_recipe, "qc_outlier", strict_qc_outlier)
    assert_fails(
        adata,
        nsc.pp.normalize,
        "are variance outliers, more than 2 \\* outrate",
        covariates=["batch"],
        qc=None,
    )


def test_normalize_copy_fails_cleanly(adata):
    assert_fails(
        adata, nsc.pp.normalize, "removed every gene", qc={"min_gene_counts": 10**9}, copy=True
    )


def test_layers_written_by_us_may_be_rewritten_but_not_foreign_ones(counts_adata):
    nsc.pp.cpm(counts_adata)
    nsc.pp.cpm(counts_adata, key_added="cpm_again")
    nsc.pp.cpm(counts_adata)  # the first layer is still ours after a second key was added
    counts_adata.layers["mine"] = counts_adata.X.copy()
    before = counts_adata.copy()
    with pytest.raises(ValueError, match="was not written by normalisr_sc"):
        nsc.pp.cpm(counts_adata, key_added="mine")
    assert_unchanged(before, counts_adata)
