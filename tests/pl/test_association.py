"""nsc.pl.qq and nsc.pl.volcano draw the stored association results."""

from __future__ import annotations

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats

import normalisr_sc as nsc
from normalisr_sc.pl._association import inflation


@pytest.fixture(scope="module")
def tested():
    adata = nsc.datasets.simulate(n_cells=600, n_genes=150, seed=4)
    nsc.pp.normalize(adata, covariates="batch", qc=None)
    nsc.tl.de(adata, "group", reference="control")
    nsc.tl.coex(adata, genes=list(adata.var_names[:40]))
    return adata


def test_qq_de_points_are_sorted_stored_values(tested, tmp_path):
    ax = nsc.pl.qq(tested, save=tmp_path / "qq.png")
    assert (tmp_path / "qq.png").stat().st_size > 1000
    expected, observed = ax.collections[0].get_offsets().T
    stored = tested.varm["nsc_de_log10p"]["case"].to_numpy()
    np.testing.assert_allclose(observed, np.sort(stored)[::-1])
    n = stored.size
    np.testing.assert_allclose(expected, -np.log10((np.arange(1, n + 1) - 0.5) / n))
    assert f"{inflation(stored):.3f}" in ax.get_title()
    plt.close(ax.figure)


def test_qq_coex_uses_distinct_pairs_of_the_block(tested):
    ax = nsc.pl.qq(tested, "nsc_coex")
    assert ax.collections[0].get_offsets().shape[0] == 40 * 39 // 2
    plt.close(ax.figure)


def test_inflation_of_uniform_pvalues_is_one():
    p = (np.arange(1, 100_001) - 0.5) / 100_000
    assert inflation(-np.log10(p)) == pytest.approx(1.0, abs=1e-3)
    assert inflation(-np.log10(stats.chi2.sf(4 * stats.chi2.isf(p, 1), 1))) == pytest.approx(4.0, rel=1e-3)


def test_volcano_points_and_labels(tested, tmp_path):
    ax = nsc.pl.volcano(tested, "case", n_labels=5, save=tmp_path / "volcano.png")
    assert (tmp_path / "volcano.png").stat().st_size > 1000
    x, y = ax.collections[0].get_offsets().T
    np.testing.assert_allclose(x, tested.varm["nsc_de_logfc"]["case"])
    np.testing.assert_allclose(y, tested.varm["nsc_de_log10p"]["case"])
    top = tested.var_names[np.argsort(y)[::-1][:5]]
    assert sorted(t.get_text() for t in ax.texts) == sorted(top)
    plt.close(ax.figure)


def test_volcano_log2(tested, tmp_path):
    ax = nsc.pl.volcano(tested, "case", log2=True, save=tmp_path / "volcano2.png")
    x, _ = ax.collections[0].get_offsets().T
    np.testing.assert_allclose(x, tested.varm["nsc_de_logfc"]["case"] / np.log(2))
    assert "log_2" in ax.get_xlabel()
    assert ax.get_title() == "nsc_de: case vs control"
    plt.close(ax.figure)


def test_plot_errors(tested):
    with pytest.raises(ValueError, match="`log2`"):
        nsc.pl.volcano(tested, "case", log2="yes")
    with pytest.raises(ValueError, match="`n_labels`"):
        nsc.pl.volcano(tested, "case", n_labels=-1)
    with pytest.raises(ValueError, match="not in the results"):
        nsc.pl.volcano(tested, "nope")
    with pytest.raises(ValueError, match="no results under key"):
        nsc.pl.qq(tested, "missing")


def test_coex_network_draws_stored_edges(tested, tmp_path):
    nsc.tl.binnet(tested, qcut=0.05)
    genes = list(tested.var_names[:40])
    ax = nsc.pl.coex_network(tested, genes=genes, highlight=genes[:3], save=tmp_path / "n.png")
    assert (tmp_path / "n.png").stat().st_size > 1000
    net = tested.varp["nsc_coex_net"].toarray()[:40, :40]
    undirected = net | net.T
    expected = sorted((genes[i], genes[j]) if genes[i] < genes[j] else (genes[j], genes[i])
                      for i, j in zip(*np.nonzero(np.triu(undirected, 1)), strict=True))
    assert ax.nsc_edges == expected  # colours and the highlight: tests/pl/test_network.py
    plt.close(ax.figure)


def test_coex_heatmap_shows_clustered_r(tested, tmp_path):
    genes = list(tested.var_names[:12])
    ax = nsc.pl.coex_heatmap(tested, genes, save=tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
    order = [genes.index(label.get_text()) for label in ax.get_xticklabels()]
    r = tested.varp["nsc_coex_r"]
    r = r.toarray() if hasattr(r, "toarray") else np.asarray(r)
    np.testing.assert_allclose(ax.images[0].get_array(), r[np.ix_(order, order)])
    assert sorted(order) == list(range(12))
    with pytest.raises(ValueError, match="outside the co-expression"):
        nsc.pl.coex_heatmap(tested, [*genes[:2], tested.var_names[100]])
    plt.close(ax.figure)
