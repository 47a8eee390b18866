"""Low-MOI ``nsc.tl.de`` of a screen streamed from an h5ad on disk (X read lazily, the
normalised layers recomputed block by block, as ``benchmarks/bench_genomewide.py`` runs
it) equals the same screen normalised and tested in memory: statistics, fold changes,
pair QC counts and the scanpy layout."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData, read_h5ad
from anndata.experimental import read_elem_lazy
from anndata.io import read_elem
from scipy import sparse

import normalisr_sc as nsc

RESULTS = ("pvals", "log10p", "logfc", "gamma", "var")
PAIR_QC = ("n_nonzero_group", "n_nonzero_control")
CHUNK = 97  # not a divisor of the number of cells: the last block is short


def _screen(n_cells: int = 700, n_genes: int = 40, n_groups: int = 15) -> AnnData:
    """Counts of a low-MOI screen: one label per cell, a knock-down of gene j by group j."""
    rng = np.random.default_rng(7)
    label = rng.integers(0, n_groups + 1, n_cells)
    depth = rng.lognormal(np.log(2000), 0.3, n_cells)
    share = rng.dirichlet(np.full(n_genes, 2.0))
    rate = depth[:, None] * share[None, :]
    knocked = label < n_groups
    rate[np.flatnonzero(knocked), label[knocked] % n_genes] *= 0.2
    counts = rng.poisson(rate).astype(np.float32)
    names = np.array([f"g{k}" for k in range(n_groups)] + ["nt"], dtype=object)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(names[label]),
            "batch": pd.Categorical(rng.choice(["a", "b"], n_cells)),
        },
        index=[f"c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    return AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)


def _pipeline(adata: AnnData) -> None:
    nsc.pp.normalize(adata, covariates=["batch"], qc=None, remove_outliers=False, chunk_size=CHUNK)
    nsc.tl.de(
        adata, "perturbation", design="low_moi", reference="nt", min_cells=2, chunk_size=CHUNK
    )


@pytest.mark.slow
def test_screen_streamed_from_disk_equals_in_memory(tmp_path, monkeypatch):
    from normalisr_sc.tl import _de

    def separate_pass(*args, **kwargs):
        raise AssertionError("the pair QC should be counted in the kernel's pass")

    monkeypatch.setattr(_de, "_pair_counts", separate_pass)
    path = tmp_path / "screen.h5ad"
    _screen().write_h5ad(path)
    expected = read_h5ad(path)
    _pipeline(expected)
    with h5py.File(path, "r") as file:
        obs, var = read_elem(file["obs"]), read_elem(file["var"])
    lazy = read_elem_lazy(h5py.File(path, "r")["X"], chunks=(CHUNK, var.shape[0]))
    streamed = AnnData(X=lazy, obs=obs, var=var)
    _pipeline(streamed)
    for suffix in RESULTS:
        got, want = streamed.varm[f"nsc_de_{suffix}"], expected.varm[f"nsc_de_{suffix}"]
        assert list(got.columns) == list(want.columns)
        np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-9, atol=1e-12)
    for suffix in PAIR_QC:
        got, want = streamed.varm[f"nsc_de_{suffix}"], expected.varm[f"nsc_de_{suffix}"]
        assert got.to_numpy().dtype == np.int32
        np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())
    # the pair QC counts are the cells with a nonzero count in each group and in the
    # reference cells
    counts = expected.X.toarray() != 0
    labels = expected.obs["perturbation"].to_numpy()
    for group in ("g0", "g7"):
        np.testing.assert_array_equal(
            expected.varm["nsc_de_n_nonzero_group"][group], counts[labels == group].sum(axis=0)
        )
        np.testing.assert_array_equal(
            expected.varm["nsc_de_n_nonzero_control"][group], counts[labels == "nt"].sum(axis=0)
        )
    for field in ("names", "pvals"):
        got, want = streamed.uns["nsc_de"][field], expected.uns["nsc_de"][field]
        for group in want.dtype.names:
            if field == "names":
                np.testing.assert_array_equal(got[group], want[group])
            else:
                np.testing.assert_allclose(got[group], want[group], rtol=1e-9)
    # the planted knock-downs are found
    pvals = expected.varm["nsc_de_pvals"]
    assert all(pvals.loc[f"gene{k}", f"g{k}"] < 1e-3 for k in range(15))
