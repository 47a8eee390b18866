"""``nsc.tl.coex`` and ``nsc.tl.binnet``: agreement with normalisr 1.0.0, gene subsets,
storage and bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import normalisr_sc as nsc

from .._helpers import assert_unchanged
from ._data import normalised_adata, normalised_arrays

AGREEMENT_RTOL = 1e-8


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    expression, covariates = normalised_arrays(600, 35, seed=4)
    # A co-expression module among the first 6 genes.
    factor = np.random.default_rng(5).normal(size=600)
    expression[:, :6] += 0.8 * factor[:, None]
    return expression, covariates


@pytest.fixture
def adata(arrays):
    return normalised_adata(*arrays)


@pytest.fixture(scope="module")
def reference(arrays):
    nr = pytest.importorskip("normalisr.normalisr")
    expression, covariates = arrays
    return nr.coex(expression.T, covariates.T, nth=1)


def test_coex_matches_normalisr(adata, reference):
    nsc.tl.coex(adata)
    pvals, dot, var = reference
    off = ~np.eye(adata.n_vars, dtype=bool)
    ours_log10p = adata.varp["nsc_coex_log10p"][off]
    np.testing.assert_allclose(ours_log10p, -np.log10(pvals[off]), rtol=AGREEMENT_RTOL)
    np.testing.assert_allclose(adata.varp["nsc_coex_pvals"][off], pvals[off], rtol=AGREEMENT_RTOL)
    r = dot / np.sqrt(np.outer(var, var))
    np.testing.assert_allclose(
        adata.varp["nsc_coex_r"][off], r[off], rtol=AGREEMENT_RTOL, atol=1e-12
    )
    np.testing.assert_allclose(adata.var["nsc_coex_var"], var, rtol=AGREEMENT_RTOL)
    assert (np.diag(adata.varp["nsc_coex_pvals"]) == 1).all()
    assert (np.diag(adata.varp["nsc_coex_r"]) == 1).all()
    np.testing.assert_array_equal(adata.varp["nsc_coex_pvals"], adata.varp["nsc_coex_pvals"].T)
    assert (adata.varp["nsc_coex_pvals"][:6, :6][off[:6, :6]] < 1e-10).all()


def test_coex_subset_is_the_block_of_the_full_matrix(adata):
    nsc.tl.coex(adata)
    full = {name: adata.varp[f"nsc_coex_{name}"].copy() for name in ("pvals", "log10p", "r")}
    genes = list(adata.var_names[[9, 2, 30, 4]])
    nsc.tl.coex(adata, genes=genes, key_added="sub")
    index = np.sort(adata.var_names.get_indexer(genes))
    assert list(adata.uns["sub"]["genes"]) == list(adata.var_names[index])
    for name, matrix in full.items():
        stored = adata.varp[f"sub_{name}"]
        assert sparse.issparse(stored)
        assert stored.shape == (adata.n_vars, adata.n_vars)
        assert stored.nnz <= index.size**2
        np.testing.assert_allclose(
            stored[index][:, index].toarray(), matrix[np.ix_(index, index)], rtol=1e-10, atol=1e-13
        )
    variance = adata.var["sub_var"].to_numpy()
    assert np.isnan(np.delete(variance, index)).all()
    np.testing.assert_allclose(variance[index], adata.var["nsc_coex_var"].to_numpy()[index])


def test_binnet_matches_normalisr(adata, reference):
    nr = pytest.importorskip("normalisr.normalisr")
    nsc.tl.coex(adata)
    nsc.tl.binnet(adata, qcut=0.1)
    net = adata.varp["nsc_coex_net"]
    assert sparse.issparse(net)
    assert net.dtype == bool
    expected = nr.binnet(reference[0], 0.1)
    np.testing.assert_array_equal(net.toarray(), expected)
    assert adata.uns["nsc_coex"]["binnet"]["n_edges"] == expected.sum()
    assert net[:6, :6].sum() == 30  # the planted module, no self edges


def test_binnet_on_a_subset_keeps_gene_positions(adata):
    genes = list(adata.var_names[:8])
    nsc.tl.coex(adata, genes=genes)
    nsc.tl.binnet(adata)
    net = adata.varp["nsc_coex_net"]
    assert net.shape == (adata.n_vars, adata.n_vars)
    rows, cols = net.nonzero()
    assert rows.max() < 8
    assert cols.max() < 8
    assert net[:6, :6].sum() == 30


def test_binnet_per_row_is_benjamini_hochberg():
    pvals = np.array(
        [
            [1.0, 0.01, 0.04, 0.5],
            [0.01, 1.0, 0.03, 0.2],
            [0.04, 0.03, 1.0, 0.02],
            [0.5, 0.2, 0.02, 1.0],
        ]
    )
    adata = ad.AnnData(np.zeros((2, 4)))
    adata.varp["x_pvals"] = pvals
    nsc.tl.binnet(adata, qcut=0.05, key="x")
    # row 0: p (0.01, 0.04, 0.5) -> q (0.03, 0.06, 0.5); row 2: (0.04, 0.03, 0.02) -> all
    # 0.04; row 3: (0.5, 0.2, 0.02) -> (0.5, 0.3, 0.06): the net is asymmetric.
    expected = np.array(
        [
            [0, 1, 0, 0],
            [1, 0, 1, 0],
            [1, 1, 0, 1],
            [0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(adata.varp["x_net"].toarray(), expected)


@pytest.mark.slow
def test_coex_results_survive_h5ad(adata, tmp_path):
    nsc.tl.coex(adata, genes=list(adata.var_names[:10]), key_added="sub")
    nsc.tl.coex(adata)
    nsc.tl.binnet(adata)
    path = tmp_path / "coex.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.varp["nsc_coex_log10p"], adata.varp["nsc_coex_log10p"])
    np.testing.assert_array_equal(back.varp["sub_r"].toarray(), adata.varp["sub_r"].toarray())
    np.testing.assert_array_equal(
        back.varp["nsc_coex_net"].toarray(), adata.varp["nsc_coex_net"].toarray()
    )
    assert back.uns["nsc_coex"]["binnet"]["qcut"] == 0.05


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: nsc.tl.coex(a, genes=["gene0", "nope"]), "not in adata.var_names"),
        (lambda a: nsc.tl.coex(a, genes=["gene0"]), "at least 2 genes"),
        (lambda a: nsc.tl.coex(a, genes=["gene0", "gene0", "gene1"]), "more than once"),
        (lambda a: nsc.tl.coex(a, layer="missing"), r"nsc\.pp\.normvar"),
        (lambda a: nsc.tl.coex(a, dimreduce=1000), "degrees of freedom"),
        (lambda a: nsc.tl.binnet(a), r"nsc\.tl\.coex"),
        (lambda a: nsc.tl.binnet(a, qcut=1.5), "qcut"),
        (lambda a: nsc.tl.binnet(a, qcut="0.05"), "qcut"),
        (lambda a: nsc.tl.coex(a, key_added="nsc_written"), "fingerprints"),
        (lambda a: nsc.tl.coex(a, key_added=""), "key_added"),
        (lambda a: nsc.tl.coex(a, dtype="bogus"), "dtype"),
    ],
)
def test_bad_input_leaves_adata_unchanged(adata, call, match):
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        call(adata)
    assert_unchanged(before, adata)


def test_results_never_replace_the_users_data(adata):
    adata.varp["mine_r"] = np.eye(adata.n_vars)
    adata.var["mine_var"] = 1.0
    before = adata.copy()
    with pytest.raises(ValueError, match=r"adata\.(varp|var)\['mine_(r|var)'\].*not written"):
        nsc.tl.coex(adata, key_added="mine")
    assert_unchanged(before, adata)
    nsc.tl.coex(adata, key_added="ours")
    nsc.tl.coex(adata, key_added="ours", dtype="float32")  # its own results are replaced
    assert adata.varp["ours_r"].dtype == np.float32


def test_binnet_refuses_nan_pvalues(adata):
    nsc.tl.coex(adata)
    adata.varp["nsc_coex_pvals"][0, 1] = np.nan
    before = adata.copy()
    with pytest.raises(ValueError, match="NaN"):
        nsc.tl.binnet(adata)
    assert_unchanged(before, adata)


def test_empty_network_is_an_error():
    expression, covariates = normalised_arrays(300, 6, seed=9)
    adata = normalised_adata(expression, covariates)
    nsc.tl.coex(adata)
    before = adata.copy()
    with pytest.raises(ValueError, match="empty"):
        nsc.tl.binnet(adata, qcut=1e-12)
    assert_unchanged(before, adata)


@pytest.mark.slow
def test_coex_on_pbmc_monocytes(shared_data):
    adata = ad.read_h5ad(shared_data / "pbmc3k_raw.h5ad")
    adata = adata[adata.obs["seurat_cell_type"] == "CD14+ Mono"].copy()
    nsc.pp.normalize(adata, qc={"min_gene_cells": 50})
    nsc.tl.coex(adata)
    nsc.tl.binnet(adata)
    r = adata.varp["nsc_coex_r"]
    # Ribosomal protein genes form the textbook co-expression module.
    ribosomal = adata.var_names.str.match(r"^RP[SL]\d")
    assert ribosomal.sum() > 10
    block = r[np.ix_(ribosomal, ribosomal)][~np.eye(ribosomal.sum(), dtype=bool)]
    others = r[np.ix_(~ribosomal, ~ribosomal)][~np.eye((~ribosomal).sum(), dtype=bool)]
    assert np.median(block) > np.median(others) + 0.05
    assert adata.varp["nsc_coex_net"].nnz > 0
