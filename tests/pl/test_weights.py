"""nsc.pl.weights draws the stored weights against library size."""

from __future__ import annotations

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

import normalisr_sc as nsc


@pytest.fixture
def weighted():
    adata = nsc.datasets.simulate(n_cells=400, n_genes=120, seed=5)
    nsc.pp.lcpm(adata)
    nsc.pp.normcov(adata, "batch")
    nsc.pp.compute_var(adata)
    nsc.pp.qc_outlier(adata, pcut=0.5, outrate=0.2, inplace=False)
    return adata


def test_weights_plot_shows_stored_values(weighted, tmp_path):
    path = tmp_path / "weights.png"
    ax = nsc.pl.weights(weighted, save=path, show=False)
    assert path.stat().st_size > 1000
    outlier = weighted.obs["nsc_outlier"].to_numpy()
    assert outlier.any()
    drawn = np.vstack([c.get_offsets() for c in ax.collections])
    expected = np.column_stack(
        [
            np.r_[
                weighted.obsm["nsc_cov"]["log_total_counts"][~outlier],
                weighted.obsm["nsc_cov"]["log_total_counts"][outlier],
            ],
            np.r_[weighted.obs["nsc_weight"][~outlier], weighted.obs["nsc_weight"][outlier]],
        ]
    )
    np.testing.assert_array_equal(drawn, expected)
    plt.close(ax.figure)


def test_weights_plot_into_given_axes(weighted):
    fig, ax = plt.subplots()
    assert nsc.pl.weights(weighted, ax=ax, show=False) is ax
    plt.close(fig)


def test_weights_plot_needs_compute_var():
    adata = nsc.datasets.simulate(n_cells=100, n_genes=50)
    with pytest.raises(ValueError, match=r"nsc\.pp\.compute_var"):
        nsc.pl.weights(adata)


def test_save_creates_a_missing_folder(weighted, tmp_path):
    adata = weighted
    target = tmp_path / "new" / "deeper" / "weights.png"
    nsc.pl.weights(adata, show=False, save=target)
    assert target.stat().st_size > 0
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        nsc.pl.weights(adata, show=False, save=tmp_path / "file" / "w.png")
    plt.close("all")
