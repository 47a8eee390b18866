"""scanpy reads the results of ``nsc.tl.de``: ``rank_genes_groups`` layout in
``adata.uns[key_added]``, read by scanpy's own getter and plots."""

from __future__ import annotations

import anndata as ad
import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import stats

import normalisr_sc as nsc
from normalisr_sc._store import owned

from ._data import normalised_adata, normalised_arrays


@pytest.fixture(scope="module")
def tested():
    adata = nsc.datasets.simulate(n_cells=500, n_genes=80, n_batches=2, seed=6)
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    nsc.tl.de(adata, "group")
    return adata


def test_rank_genes_groups_df_reads_our_results(tested):
    ours = nsc.get.de_df(tested, "case").set_index("gene")
    theirs = sc.get.rank_genes_groups_df(tested, group="case", key="nsc_de")
    assert len(theirs) == tested.n_vars
    assert (np.diff(theirs["scores"].to_numpy()) <= 0).all()  # scanpy's order
    assert theirs["scores"].iloc[0] > 0 > theirs["scores"].iloc[-1]
    rows = ours.loc[theirs["names"]]
    np.testing.assert_allclose(theirs["pvals"], rows["pval"], rtol=1e-15)
    np.testing.assert_allclose(theirs["pvals_adj"], rows["qval"], rtol=1e-12)
    np.testing.assert_allclose(theirs["logfoldchanges"], rows["log2fc"], rtol=1e-6)
    # Scores are the signed t statistics of the tests.
    df = tested.uns["nsc_de"]["df"][1]
    moderate = (rows["pval"] > 1e-200).to_numpy()
    expected = stats.t.isf(rows["pval"].to_numpy()[moderate] / 2, df)
    np.testing.assert_allclose(np.abs(theirs["scores"].to_numpy()[moderate]), expected, rtol=1e-4)
    assert (np.sign(theirs["scores"].to_numpy()) == np.sign(rows["gamma"].to_numpy())).all()
    params = tested.uns["nsc_de"]["params"]
    assert params["groupby"] == "group"
    assert params["reference"] == "rest"
    assert params["design"] == "case_control"


@pytest.mark.slow
def test_scanpy_plots_read_our_results(tested, tmp_path):
    adata = tested.copy()
    axes = sc.pl.rank_genes_groups_dotplot(
        adata, key="nsc_de", n_genes=3, show=False, dendrogram=False
    )
    labels = [t.get_text() for t in axes["mainplot_ax"].get_xticklabels()]
    names = adata.uns["nsc_de"]["names"]
    assert labels == [*names["control"][:3], *names["case"][:3]]
    plt.savefig(tmp_path / "dotplot.png")
    assert (tmp_path / "dotplot.png").stat().st_size > 1000
    plt.close("all")
    sc.pl.rank_genes_groups(adata, key="nsc_de", n_genes=5, show=False)
    plt.close("all")


@pytest.mark.slow
def test_layout_survives_h5ad_and_rerun(tested, tmp_path):
    path = tmp_path / "de.h5ad"
    tested.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(
        sc.get.rank_genes_groups_df(back, "case", key="nsc_de"),
        sc.get.rank_genes_groups_df(tested, "case", key="nsc_de"),
    )
    assert owned(back, "uns", "nsc_de")
    # One dict of parameters, scanpy's and ours, kept whole by the round trip.
    params = back.uns["nsc_de"]["params"]
    assert set(tested.uns["nsc_de"]["params"]) == set(params)
    assert {"groupby", "reference", "method", "use_raw", "layer", "corr_method"} <= set(params)
    assert {"design", "min_cells", "covariates_key", "n_genes", "qcut"} <= set(params)
    assert not any(isinstance(v, dict) for v in params.values())
    assert "normalisr" not in back.uns or "de" not in back.uns["normalisr"]
    sc.pl.rank_genes_groups(back, key="nsc_de", n_genes=3, show=False)
    plt.close("all")
    nsc.tl.de(back, "group", reference="control", n_genes=5, rankby_abs=True)
    assert len(back.uns["nsc_de"]["names"]) == 5
    assert back.uns["nsc_de"]["names"].dtype.names == ("case",)
    assert back.uns["nsc_de"]["params"]["reference"] == "control"
    assert list(back.uns["nsc_de"]["params"]["reference_groups"]) == ["control"]
    assert back.uns["nsc_de"]["params"]["rankby_abs"]
    first = back.uns["nsc_de"]["names"]["case"][0]
    assert first == back.varm["nsc_de_log10p"]["case"].idxmax()


def test_many_groups_keep_only_the_top_genes_by_default():
    expression, covariates = normalised_arrays(303, 120, seed=4)
    adata = normalised_adata(expression, covariates)
    adata.obs["cluster"] = pd.Categorical([f"c{i % 101}" for i in range(303)])
    nsc.tl.de(adata, "cluster")
    assert len(adata.uns["nsc_de"]["names"].dtype.names) == 101
    assert len(adata.uns["nsc_de"]["names"]) == 100
    assert adata.varm["nsc_de_pvals"].shape == (120, 101)
    nsc.tl.de(adata, "cluster", groups=["c0", "c1"], n_genes=0)
    assert "names" not in adata.uns["nsc_de"]
    assert adata.uns["nsc_de"]["params"]["n_genes"] == 0
