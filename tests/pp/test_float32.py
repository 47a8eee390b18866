"""float32 layers: ``dtype=`` of normalize, lcpm, normvar, cpm and minmax."""

from __future__ import annotations

import numpy as np
import pytest
from anndata import read_h5ad
from scipy import sparse

import normalisr_sc as nsc

from .._helpers import assert_unchanged, block_size, dense


@pytest.fixture(scope="module")
def screen():
    """400 simulated cells x 120 genes, with groups and a batch."""
    return nsc.datasets.simulate(n_cells=400, n_genes=120, seed=3)


def _normalized(adata, **kwargs):
    return nsc.pp.normalize(adata, covariates=["batch"], copy=True, **kwargs)


def _computed(matrix) -> np.ndarray:
    return np.asarray(matrix.compute() if hasattr(matrix, "compute") else matrix)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", np.float32])
def test_normalize_float32_is_the_float64_result_rounded(screen, dtype):
    wide = _normalized(screen)
    narrow = _normalized(screen, dtype=dtype)
    for key in ("lcpm", "normalisr"):
        assert narrow.layers[key].dtype == np.float32
        # One rounding of the float64 result: the later steps read the float64 log CPM.
        np.testing.assert_array_equal(narrow.layers[key], wide.layers[key].astype(np.float32))
    np.testing.assert_array_equal(narrow.obs["nsc_weight"], wide.obs["nsc_weight"])
    np.testing.assert_array_equal(narrow.varm["nsc_normvar"], wide.varm["nsc_normvar"])
    assert narrow.obsm["nsc_covariates_norm"].dtypes.eq(np.float64).all()
    assert narrow.uns["lcpm"]["params"]["dtype"] == "float32"
    assert narrow.uns["normalisr"]["params"]["dtype"] == "float32"
    assert wide.uns["lcpm"]["params"]["dtype"] == "float64"


@pytest.mark.slow
def test_normalize_float32_streamed_equals_in_memory(screen):
    # The same blocks: other blocks sum in another order, which moves the float64 values
    # by about 1e-12 and can move their float32 rounding by one unit.
    with block_size(64):
        in_memory = _normalized(screen, dtype="float32")
        streamed = _normalized(screen, dtype="float32", chunked=True)
    for key in ("lcpm", "normalisr"):
        assert streamed.layers[key].dtype == np.float32
        np.testing.assert_array_equal(_computed(streamed.layers[key]), in_memory.layers[key])


@pytest.mark.slow
def test_float32_layers_survive_h5ad_and_halve_the_file(screen, tmp_path):
    sizes = {}
    for dtype in ("float64", "float32"):
        adata = _normalized(screen, dtype=dtype)
        path = tmp_path / f"{dtype}.h5ad"
        adata.write_h5ad(path)
        back = read_h5ad(path)
        assert back.layers["normalisr"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(back.layers["normalisr"], adata.layers["normalisr"])
        sizes[dtype] = path.stat().st_size
    layer_bytes = 2 * screen.n_obs * screen.n_vars * 4  # what the two layers save at most
    assert sizes["float64"] - sizes["float32"] > 0.8 * layer_bytes


@pytest.mark.slow
def test_de_reads_float32_layers(screen):
    wide = _normalized(screen)
    narrow = _normalized(screen, dtype="float32")
    for adata in (wide, narrow):
        nsc.tl.de(adata, "group", reference="control")
    for field in ("pvals", "logfc"):
        a, b = wide.varm[f"nsc_de_{field}"], narrow.varm[f"nsc_de_{field}"]
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        assert np.isfinite(b).all()
        # The inputs differ by one float32 rounding (relative 6e-8 of values of order 1-10).
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-10)


def test_lcpm_and_normvar_dtype(screen):
    wide, narrow = screen.copy(), screen.copy()
    for adata, dtype in ((wide, "float64"), (narrow, "float32")):
        nsc.pp.lcpm(adata, dtype=dtype)
        nsc.pp.normcov(adata, ["batch"])
        nsc.pp.compute_var(adata)
        nsc.pp.normvar(adata)  # dtype=None: that of the log CPM layer
    assert narrow.layers["normalisr"].dtype == np.float32
    np.testing.assert_array_equal(narrow.layers["lcpm"], wide.layers["lcpm"].astype(np.float32))
    # Step by step, the later steps read the rounded log CPM (as float64): close, not equal.
    np.testing.assert_allclose(narrow.layers["normalisr"], wide.layers["normalisr"], atol=1e-5)
    nsc.pp.normvar(wide, dtype="float32", key_added="narrow")
    np.testing.assert_array_equal(
        wide.layers["narrow"], wide.layers["normalisr"].astype(np.float32)
    )


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.filterwarnings("ignore:min-max scaling of a sparse matrix must densify")
def test_cpm_and_minmax_dtype(screen, fmt, chunked):
    adata = screen.copy()
    if fmt == "dense":
        adata.X = adata.X.toarray()
    for function, key in ((nsc.pp.cpm, "cpm"), (nsc.pp.minmax, "minmax")):
        function(adata, key_added=f"{key}64", chunked=chunked)
        function(adata, key_added=f"{key}32", dtype="float32", chunked=chunked)
        wide, narrow = adata.layers[f"{key}64"], adata.layers[f"{key}32"]
        if chunked:
            wide, narrow = wide.compute(), narrow.compute()
        assert narrow.dtype == np.float32
        assert sparse.issparse(narrow) == sparse.issparse(wide)
        if key == "cpm":  # minmax densifies: some genes have no zero
            assert sparse.issparse(narrow) == (fmt == "csr")
        np.testing.assert_array_equal(dense(narrow), dense(wide).astype(np.float32))
        assert adata.uns[f"{key}32"]["params"]["dtype"] == "float32"
        assert adata.uns[f"{key}64"]["params"]["dtype"] == "float64"


@pytest.mark.parametrize("bad", ["float16", np.int32, "double precision", True, 4])
@pytest.mark.parametrize("step", ["normalize", "lcpm", "cpm", "minmax"])
def test_bad_dtype_is_refused_before_anything_changes(screen, bad, step):
    adata = screen.copy()
    before = adata.copy()
    with pytest.raises(ValueError, match=r"`dtype` must be one of \['float32', 'float64'\]"):
        getattr(nsc.pp, step)(adata, dtype=bad)
    assert_unchanged(before, adata)
