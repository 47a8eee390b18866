"""nsc.pp.cpm and nsc.pp.minmax: sparse stays sparse and equals the dense computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from anndata import AnnData
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse

import normalisr_sc as nsc

from .._helpers import FORMATS, as_format, assert_unchanged, dense

#: Every gene has a zero, so min-max of the sparse matrix stays sparse.
HAND = np.array(
    [
        [1, 3, 0],
        [2, 0, 2],
        [0, 5, 5],
    ]
)


def adata_of(matrix) -> AnnData:
    return AnnData(X=matrix)


def run_quietly(function, adata, **kwargs):
    """Run ``function`` and fail on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        function(adata, **kwargs)


# ---------------------------------------------------------------- cpm


@pytest.mark.parametrize("fmt", FORMATS)
def test_cpm_by_hand(fmt):
    adata = adata_of(as_format(HAND, fmt))
    run_quietly(nsc.pp.cpm, adata)
    result = adata.layers["cpm"]
    expected = np.array(
        [
            [250_000.0, 750_000.0, 0.0],
            [500_000.0, 0.0, 500_000.0],
            [0.0, 500_000.0, 500_000.0],
        ]
    )
    np.testing.assert_array_equal(dense(result), expected)
    assert result.dtype == np.float64
    if fmt == "dense":
        assert isinstance(result, np.ndarray)
    else:
        assert sparse.issparse(result)
        assert result.format == fmt
        assert result.nnz == np.count_nonzero(HAND)
    assert adata.uns["cpm"]["params"]["target_sum"] == 1e6


def test_cpm_target_sum_key_and_layer():
    adata = adata_of(np.zeros((3, 3)))
    adata.layers["counts"] = sparse.csr_matrix(HAND)
    nsc.pp.cpm(adata, layer="counts", key_added="per10k", target_sum=1e4)
    assert "cpm" not in adata.layers
    result = adata.layers["per10k"]
    np.testing.assert_allclose(np.asarray(result.sum(axis=1)).ravel(), 1e4, rtol=1e-15)
    np.testing.assert_allclose(
        result.toarray(), HAND / HAND.sum(axis=1, keepdims=True) * 1e4, rtol=1e-15
    )
    assert "cpm" not in adata.uns  # the record follows key_added
    assert adata.uns["per10k"]["params"] == {
        "layer": "counts",
        "key_added": "per10k",
        "target_sum": 1e4,
        "dtype": "float64",
    }


def test_cpm_does_not_touch_input():
    adata = adata_of(sparse.csr_matrix(HAND))
    before = adata.copy()
    nsc.pp.cpm(adata)
    del adata.layers["cpm"]
    del adata.uns["cpm"], adata.uns["nsc_written"]
    assert_unchanged(before, adata)


def test_cpm_on_view():
    parent = adata_of(sparse.csr_matrix(np.vstack([HAND, HAND * 3])))
    before = parent.copy()
    view = parent[3:]
    nsc.pp.cpm(view)
    assert not view.is_view
    np.testing.assert_allclose(
        view.layers["cpm"].toarray(), HAND / HAND.sum(axis=1, keepdims=True) * 1e6, rtol=1e-15
    )
    assert_unchanged(before, parent)


# ---------------------------------------------------------------- minmax


@pytest.mark.parametrize("fmt", FORMATS)
def test_minmax_by_hand(fmt):
    adata = adata_of(as_format(HAND, fmt))
    run_quietly(nsc.pp.minmax, adata)
    result = adata.layers["minmax"]
    expected = np.array(
        [
            [0.5, 0.6, 0.0],
            [1.0, 0.0, 0.4],
            [0.0, 1.0, 1.0],
        ]
    )
    np.testing.assert_allclose(dense(result), expected, rtol=1e-15, atol=1e-15)
    assert result.dtype == np.float64
    if fmt != "dense":
        assert result.format == fmt


def test_minmax_feature_range_dense():
    adata = adata_of(HAND.astype(float))
    nsc.pp.minmax(adata, feature_range=(-1, 1))
    np.testing.assert_allclose(
        adata.layers["minmax"],
        [
            [0.0, 0.2, -1.0],
            [1.0, -1.0, -0.2],
            [-1.0, 1.0, 1.0],
        ],
        rtol=1e-15,
        atol=1e-15,
    )
    assert adata.uns["minmax"]["params"]["feature_range"] == [-1.0, 1.0]


def test_minmax_constant_gene_maps_to_low():
    adata = adata_of(np.array([[3.0, 0.0], [3.0, 2.0]]))
    nsc.pp.minmax(adata, feature_range=(2, 5))
    np.testing.assert_array_equal(adata.layers["minmax"], [[2.0, 2.0], [2.0, 5.0]])


def test_minmax_sparse_with_zero_minimum_stays_sparse():
    matrix = sparse.csr_matrix(np.array([[0.0, 2.0], [4.0, 0.0], [1.0, 1.0]]))
    adata = adata_of(matrix)
    run_quietly(nsc.pp.minmax, adata, feature_range=(0, 10))
    result = adata.layers["minmax"]
    assert sparse.issparse(result)
    assert result.nnz == matrix.nnz
    np.testing.assert_array_equal(result.toarray(), [[0.0, 10.0], [10.0, 0.0], [2.5, 5.0]])


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_minmax_sparse_densifies_with_warning_on_nonzero_minimum(fmt):
    matrix = np.array([[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]])  # gene 0 has no zero
    adata = adata_of(as_format(matrix, fmt))
    with pytest.warns(UserWarning, match="must densify because some genes have a non-zero minimum"):
        nsc.pp.minmax(adata)
    result = adata.layers["minmax"]
    assert isinstance(result, np.ndarray)
    reference = adata_of(matrix)
    run_quietly(nsc.pp.minmax, reference)
    np.testing.assert_array_equal(result, reference.layers["minmax"])
    np.testing.assert_array_equal(result, [[0.0, 0.0], [1.0, 0.5], [0.5, 1.0]])


def test_minmax_sparse_densifies_with_warning_on_nonzero_range_start():
    adata = adata_of(sparse.csr_matrix(HAND))
    with pytest.warns(UserWarning, match="feature_range starts at a non-zero value"):
        nsc.pp.minmax(adata, feature_range=(1, 2))
    assert isinstance(adata.layers["minmax"], np.ndarray)
    reference = adata_of(HAND)
    nsc.pp.minmax(reference, feature_range=(1, 2))
    np.testing.assert_array_equal(adata.layers["minmax"], reference.layers["minmax"])


def test_minmax_sparse_negative_values_densify():
    matrix = sparse.csr_matrix(np.array([[-1.0, 0.0], [3.0, 2.0], [0.0, 4.0]]))
    adata = adata_of(matrix)
    with pytest.warns(UserWarning, match="must densify"):
        nsc.pp.minmax(adata)
    np.testing.assert_array_equal(adata.layers["minmax"], [[0.0, 0.0], [1.0, 0.5], [0.25, 1.0]])


def test_minmax_layer_and_key():
    adata = adata_of(np.zeros((3, 3)))
    adata.layers["lc"] = HAND * 0.5
    nsc.pp.minmax(adata, layer="lc", key_added="scaled")
    assert "minmax" not in adata.layers
    np.testing.assert_array_equal(adata.layers["scaled"][:, 0], [0.5, 1.0, 0.0])
    assert adata.uns["scaled"]["params"]["layer"] == "lc"
    assert "minmax" not in adata.uns


def test_minmax_after_normalize_of_lcpm(counts_adata):
    """minmax of a normalisr layer (dense, negative values) works like the dense formula."""
    nsc.pp.lcpm(counts_adata)
    nsc.pp.minmax(counts_adata, layer="lcpm")
    lc = counts_adata.layers["lcpm"]
    expected = (lc - lc.min(axis=0)) / (lc.max(axis=0) - lc.min(axis=0))
    np.testing.assert_allclose(counts_adata.layers["minmax"], expected, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- properties

matrices = st.builds(
    lambda seed, n_cells, n_genes, density: sparse.random(
        n_cells,
        n_genes,
        density=density,
        random_state=seed,
        format="csr",
        data_rvs=lambda n: np.random.default_rng(seed).integers(1, 1000, n).astype(float),
    ),
    seed=st.integers(0, 2**16),
    n_cells=st.integers(1, 30),
    n_genes=st.integers(1, 30),
    density=st.floats(0.05, 1.0),
)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(
    matrix=matrices,
    fmt=st.sampled_from(["csr", "csc"]),
    target_sum=st.sampled_from([1.0, 1e4, 1e6, 123.456]),
)
def test_cpm_sparse_equals_dense(matrix, fmt, target_sum):
    matrix = matrix.tolil()
    matrix[:, 0] = 1.0  # no empty cell
    matrix = as_format(matrix.toarray(), fmt)
    sparse_adata, dense_adata = adata_of(matrix), adata_of(matrix.toarray())
    run_quietly(nsc.pp.cpm, sparse_adata, target_sum=target_sum)
    run_quietly(nsc.pp.cpm, dense_adata, target_sum=target_sum)
    result = sparse_adata.layers["cpm"]
    assert result.format == fmt
    assert np.array_equal(result.toarray(), dense_adata.layers["cpm"])
    np.testing.assert_allclose(np.asarray(result.sum(axis=1)).ravel(), target_sum, rtol=1e-12)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(
    matrix=matrices,
    fmt=st.sampled_from(["csr", "csc"]),
    high=st.sampled_from([1.0, 2.5, 1e3]),
    data=st.data(),
)
def test_minmax_sparse_equals_dense(matrix, fmt, high, data):
    matrix = as_format(matrix.toarray(), fmt)
    sparse_adata, dense_adata = adata_of(matrix), adata_of(matrix.toarray())
    has_zero = (matrix.toarray() == 0).any(axis=0).all()
    low = data.draw(st.sampled_from([0.0, -1.0])) if has_zero else 0.0
    if has_zero and low == 0:
        run_quietly(nsc.pp.minmax, sparse_adata, feature_range=(low, high))
        assert sparse.issparse(sparse_adata.layers["minmax"])
        assert sparse_adata.layers["minmax"].format == fmt
    else:
        with pytest.warns(UserWarning, match="must densify"):
            nsc.pp.minmax(sparse_adata, feature_range=(low, high))
        assert isinstance(sparse_adata.layers["minmax"], np.ndarray)
    run_quietly(nsc.pp.minmax, dense_adata, feature_range=(low, high))
    result = dense(sparse_adata.layers["minmax"])
    assert np.array_equal(result, dense_adata.layers["minmax"])
    assert result.min() >= low
    assert result.max() <= high * (1 + 1e-15)
