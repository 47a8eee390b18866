"""What every step reads is checked before anything changes: finite values, real dtypes,
non-degenerate shapes, unique names, valid parameters; results never replace the user's data.

Each case asserts a ValueError whose message names the key or parameter, and that the
AnnData is deep-equal before and after.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import normalisr_sc as nsc
from normalisr_sc._utils import gene_positions

from .._helpers import assert_unchanged, counts_adata


def assert_fails(adata: AnnData, function, match: str, **kwargs) -> None:
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        function(adata, **kwargs)
    assert_unchanged(before, adata)


@pytest.fixture
def adata(make_counts) -> AnnData:
    adata = counts_adata(make_counts(200, 40, seed=4))
    adata.obs["dose"] = np.linspace(0.0, 1.0, adata.n_obs)
    adata.layers["counts"] = adata.X.copy()
    return adata


@pytest.fixture
def weighted(adata) -> AnnData:
    nsc.pp.lcpm(adata)
    nsc.pp.normcov(adata, ["batch"])
    nsc.pp.compute_var(adata)
    return adata


def _lazy(adata: AnnData, key: str) -> None:
    adata.layers[key] = da.from_array(np.asarray(adata.layers[key]), chunks=(60, -1))


# ---------------------------------------------------------------- non-finite values read


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("function", [nsc.pp.compute_var, nsc.pp.normvar])
def test_non_finite_lcpm_layer(weighted, function, bad, lazy):
    layer = np.array(weighted.layers["lcpm"])
    layer[5, 3] = bad
    weighted.layers["lcpm"] = layer
    if lazy:
        _lazy(weighted, "lcpm")
    assert_fails(
        weighted, function, r"adata.layers\['lcpm'\] contains NaN or infinite values \(1 of them\)"
    )


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("function", [nsc.pp.compute_var, nsc.pp.normvar])
def test_lcpm_layer_overflowing_the_sums(weighted, function, lazy):
    """Finite values whose squares overflow float64: refused through the passes' sums."""
    layer = np.array(weighted.layers["lcpm"])
    layer[5, 3] = 1e300
    weighted.layers["lcpm"] = layer
    if lazy:
        _lazy(weighted, "lcpm")
    assert_fails(weighted, function, r"adata.layers\['lcpm'\] holds values so large")


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
@pytest.mark.parametrize("function", [nsc.pp.compute_var, nsc.pp.normvar])
def test_non_finite_covariates(weighted, function, bad):
    weighted.obsm["nsc_covariates"].iloc[7, 1] = bad
    assert_fails(
        weighted, function, r"adata.obsm\['nsc_covariates'\] contains NaN or infinite values"
    )


def test_non_numeric_covariates(weighted):
    frame = weighted.obsm["nsc_covariates"].copy()
    frame["label"] = "x"
    weighted.obsm["nsc_covariates"] = frame
    assert_fails(
        weighted,
        nsc.pp.compute_var,
        r"adata.obsm\['nsc_covariates'\] \(column 'label'\) has dtype object",
    )


def test_duplicated_covariate_columns(weighted):
    frame = weighted.obsm["nsc_covariates"]
    weighted.obsm["nsc_covariates"] = frame.set_axis(["a", "a", *frame.columns[2:]], axis=1)
    assert_fails(weighted, nsc.pp.normvar, r"has the column name\(s\) \['a'\] more than once")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_summary_covariates(adata, bad):
    nsc.pp.lcpm(adata)
    adata.obsm["nsc_cov"].iloc[0, 0] = bad
    assert_fails(adata, nsc.pp.normcov, r"adata.obsm\['nsc_cov'\] contains NaN or infinite")


def test_infinite_obs_covariate(adata):
    nsc.pp.lcpm(adata)
    adata.obs.loc[adata.obs_names[3], "dose"] = np.inf
    assert_fails(
        adata, nsc.pp.normcov, r"adata.obs\['dose'\] contains NaN or infinite", covariates="dose"
    )


def test_complex_obs_covariate(adata):
    nsc.pp.lcpm(adata)
    adata.obs["phase"] = np.exp(1j * np.arange(adata.n_obs))
    assert_fails(
        adata, nsc.pp.normcov, r"adata.obs\['phase'\] has dtype complex128", covariates="phase"
    )


@pytest.mark.parametrize(("column", "where"), [("nsc_weight", "obs"), ("nsc_scale", "var")])
def test_non_finite_columns_for_normvar(weighted, column, where):
    frame = getattr(weighted, where)
    frame.loc[frame.index[1], column] = np.inf
    assert_fails(weighted, nsc.pp.normvar, rf"adata.{where}\['{column}'\] contains NaN or inf")


@pytest.mark.parametrize("name", ["zero_at", "one_at"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, "0", None, True, [0]])
def test_scaling_factor_ends(adata, name, bad):
    assert_fails(adata, nsc.pp.scaling_factor, f"`{name}` must be", **{name: bad})


# ---------------------------------------------------------------- dtypes and shapes


COUNT_STEPS = {
    "qc_reads": nsc.pp.qc_reads,
    "lcpm": nsc.pp.lcpm,
    "scaling_factor": nsc.pp.scaling_factor,
    "cpm": nsc.pp.cpm,
    "minmax": nsc.pp.minmax,
    "normalize": lambda adata: nsc.pp.normalize(adata, qc=None),
}


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("step", list(COUNT_STEPS))
def test_complex_counts_refused(adata, step, fmt):
    values = adata.X.toarray() + 0j
    adata.X = sparse.csr_matrix(values) if fmt == "csr" else values
    assert_fails(adata, COUNT_STEPS[step], r"adata.X has dtype complex128; .* real numbers")


@pytest.mark.parametrize("function", [nsc.pp.compute_var, nsc.pp.normvar])
def test_complex_layer_refused(weighted, function):
    weighted.layers["lcpm"] = weighted.layers["lcpm"] + 0j
    assert_fails(weighted, function, r"adata.layers\['lcpm'\] has dtype complex128")


@pytest.mark.parametrize("shape", [(0, 40), (200, 0), (0, 0)])
@pytest.mark.parametrize("step", list(COUNT_STEPS))
def test_degenerate_shapes(step, shape):
    adata = AnnData(X=sparse.csr_matrix(shape, dtype=np.int64))
    with pytest.raises(
        ValueError, match=r"adata.X has shape .*: no (cells|genes).*at least one"
    ) as error:
        COUNT_STEPS[step](adata)
    assert "zero-size" not in str(error.value)
    assert "min_cell_counts" not in str(error.value)


@pytest.mark.parametrize("step", ["qc_reads", "lcpm", "scaling_factor", "normalize"])
@pytest.mark.parametrize("huge", [2.0**63, 1e19, 1e300])
def test_counts_above_int64(adata, step, huge):
    counts = adata.X.toarray().astype(np.float64)
    counts[2, 2] = huge
    adata.X = counts
    assert_fails(adata, COUNT_STEPS[step], r"contains a count of .*, at least 2\*\*63")


def test_uint64_counts_above_int64(adata):
    counts = adata.X.toarray().astype(np.uint64)
    counts[0, 0] = 2**63 + 5
    adata.X = counts
    assert_fails(adata, nsc.pp.lcpm, r"at least 2\*\*63")


# ---------------------------------------------------------------- covariate name clashes


@pytest.mark.parametrize(
    "name", ["intercept", "log_total_counts", "n_zero_genes", "log_total_counts_sq"]
)
def test_covariate_named_like_a_summary_column(adata, name):
    nsc.pp.lcpm(adata)
    adata.obs[name] = np.arange(adata.n_obs, dtype=float)
    assert_fails(
        adata,
        nsc.pp.normcov,
        rf"covariate column name\(s\) \['{name}'\] would occur "
        "more than once.*Rename the adata.obs column",
        covariates=[name],
    )


def test_covariate_named_like_a_one_hot_level(adata):
    nsc.pp.lcpm(adata)
    adata.obs["batch[b2]"] = np.arange(adata.n_obs, dtype=float)
    assert_fails(
        adata,
        nsc.pp.normcov,
        r"\['batch\[b2\]'\] would occur more than once",
        covariates=["batch", "batch[b2]"],
    )


def test_intercept_column_allowed_without_intercept(adata, tmp_path):
    nsc.pp.lcpm(adata)
    adata.obs["intercept"] = np.arange(adata.n_obs, dtype=float)
    nsc.pp.normcov(adata, ["intercept"], intercept=False)
    columns = list(adata.obsm["nsc_covariates"].columns)
    assert columns.count("intercept") == 1
    adata.write_h5ad(tmp_path / "a.h5ad")  # unique names: h5ad can store them


def test_normalize_refuses_clash(adata):
    adata.obs["log_total_counts"] = np.arange(adata.n_obs, dtype=float)
    assert_fails(
        adata,
        nsc.pp.normalize,
        r"\['log_total_counts'\] would occur more than once",
        covariates=["log_total_counts"],
        qc=None,
    )


# ---------------------------------------------------------------- ownership of results


def test_obs_key_does_not_make_a_layer_ours(adata):
    """compute_var(key_added='counts') then lcpm(key_added='counts'): raw counts stay."""
    nsc.pp.lcpm(adata)
    nsc.pp.normcov(adata)
    nsc.pp.compute_var(adata, key_added="counts")
    assert_fails(
        adata,
        nsc.pp.lcpm,
        r"adata.layers\['counts'\] already exists and was not written by normalisr_sc",
        key_added="counts",
    )


@pytest.mark.parametrize(
    ("function", "key"),
    [
        (nsc.pp.lcpm, "lcpm"),
        (nsc.pp.cpm, "cpm"),
        (nsc.pp.minmax, "minmax"),
    ],
)
def test_users_layer_over_our_result_is_refused(adata, function, key):
    function(adata)
    function(adata)  # our own result: replaced
    adata.layers[key] = (
        np.asarray(
            adata.layers[key].todense() if sparse.issparse(adata.layers[key]) else adata.layers[key]
        )
        + 1.0
    )
    assert_fails(adata, function, rf"adata.layers\['{key}'\] already exists and was changed since")


def test_users_scale_column_is_refused(adata):
    adata.var["nsc_scale"] = 0.5
    assert_fails(adata, nsc.pp.lcpm, r"adata.var\['nsc_scale'\] already exists")


def test_users_weights_column_is_refused(weighted):
    weighted.obs["nsc_weight"] = weighted.obs["nsc_weight"] * 2
    assert_fails(
        weighted,
        nsc.pp.compute_var,
        r"adata.obs\['nsc_weight'\] already exists "
        "and was changed since",
    )


@pytest.mark.parametrize("key", ["nsc_normvar", "nsc_covariates_norm"])
def test_users_normvar_outputs_are_refused(weighted, key):
    container = "varm" if key == "nsc_normvar" else "obsm"
    n = weighted.n_vars if container == "varm" else weighted.n_obs
    getattr(weighted, container)[key] = np.zeros((n, 2))
    assert_fails(weighted, nsc.pp.normvar, rf"adata.{container}\['{key}'\] already exists")


def test_refusal_comes_before_the_work(adata, monkeypatch):
    """check_writable runs first: a refused lcpm never reads the counts."""
    adata.layers["lcpm"] = adata.X.copy()
    from normalisr_sc.pp import _lcpm

    def no_reading(*args, **kwargs):
        raise AssertionError("the counts were read")

    monkeypatch.setattr(_lcpm, "input_matrix", no_reading)
    assert_fails(adata, nsc.pp.lcpm, "already exists")


# ---------------------------------------------------------------- parameters


PARAMETERS = [
    (nsc.pp.lcpm, {"dtype": "bogus"}, r"`dtype` must be one of \['float32', 'float64'\]"),
    (nsc.pp.lcpm, {"dtype": None}, "`dtype` must be one of"),
    (nsc.pp.lcpm, {"dtype": np.complex128}, "`dtype` must be one of"),
    (nsc.pp.lcpm, {"varscale": "1"}, "`varscale` must be a finite number >= 0"),
    (nsc.pp.lcpm, {"seed": 1.5}, "`seed` must be an integer >= 0 or None"),
    (nsc.pp.lcpm, {"seed": -1}, "`seed` must be an integer >= 0"),
    (nsc.pp.lcpm, {"key_added": ""}, "`key_added` must be a non-empty string"),
    (nsc.pp.lcpm, {"key_added": 3}, "`key_added` must be a non-empty string"),
    (nsc.pp.lcpm, {"layer": ["counts"]}, "`layer` must be a non-empty string or None"),
    (nsc.pp.lcpm, {"chunked": "yes"}, "`chunked` must be True or False or None"),
    (nsc.pp.lcpm, {"chunk_size": 0}, "`chunk_size` must be an integer >= 1"),
    (nsc.pp.lcpm, {"chunk_size": "100"}, "`chunk_size` must be an integer"),
    (nsc.pp.scaling_factor, {"variable": 3}, "`variable` must be one of"),
    (nsc.pp.scaling_factor, {"inplace": 1}, "`inplace` must be True or False"),
    (nsc.pp.scaling_factor, {"key_added": None}, "`key_added` must be a non-empty string"),
    (
        nsc.pp.normcov,
        {"covariates": ["batch", "batch"]},
        r"`covariates` names \['batch'\] more than once",
    ),
    (nsc.pp.normcov, {"covariates": 3}, "`covariates` must be a string or a list of strings"),
    (nsc.pp.normcov, {"intercept": "no"}, "`intercept` must be True or False"),
    (nsc.pp.normcov, {"summary": None}, "`summary` must be True or False"),
    (nsc.pp.compute_var, {"stepmax": "2"}, "`stepmax` must be an integer >= 1"),
    (nsc.pp.compute_var, {"stepmax": True}, "`stepmax` must be an integer >= 1"),
    (nsc.pp.compute_var, {"eps": -1.0}, "`eps` must be a finite number > 0"),
    (nsc.pp.compute_var, {"layer": None}, "`layer` must be a non-empty string"),
    (nsc.pp.compute_var, {"covariates_key": 0}, "`covariates_key` must be a non-empty string"),
    (nsc.pp.normvar, {"keepvar": "yes"}, "`keepvar` must be True or False"),
    (nsc.pp.normvar, {"dtype": "int8"}, r"`dtype` must be one of \['float32', 'float64'\] or None"),
    (nsc.pp.normvar, {"weights_key": ""}, "`weights_key` must be a non-empty string"),
    (nsc.pp.normvar, {"scale_key": 1}, "`scale_key` must be a non-empty string"),
    (nsc.pp.cpm, {"target_sum": "1e6"}, "`target_sum` must be a finite number > 0"),
    (nsc.pp.cpm, {"key_added": "a/b"}, "must be a non-empty string without '/'"),
    (nsc.pp.minmax, {"feature_range": (0, 1, 2)}, "`feature_range` must be two finite numbers"),
    (nsc.pp.minmax, {"feature_range": "ab"}, "`feature_range` must be two finite numbers"),
    (nsc.pp.minmax, {"chunk_size": -5}, "`chunk_size` must be an integer >= 1"),
]


@pytest.mark.parametrize(
    ("function", "kwargs", "match"),
    PARAMETERS,
    ids=[f"{f.__name__}-{next(iter(k))}" for f, k, _ in PARAMETERS],
)
def test_invalid_parameters(weighted, function, kwargs, match):
    assert_fails(weighted, function, match, **kwargs)


# ---------------------------------------------------------------- gene names


def test_gene_positions_with_duplicated_names():
    adata = AnnData(X=np.ones((3, 4)), var=pd.DataFrame(index=["a", "b", "a", "c"]))
    with pytest.raises(ValueError, match=r"\['a'\].*var_names_make_unique\(\)"):
        gene_positions(adata, ["c", "a"])
    np.testing.assert_array_equal(gene_positions(adata, ["c", "b"]), [3, 1])
    with pytest.raises(ValueError, match=r"1 gene\(s\) not in adata.var_names, e.g. \['z'\]"):
        gene_positions(adata, ["b", "z"])
