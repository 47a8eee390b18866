"""nsc.pl.qq and nsc.pl.volcano draw the stored association results."""

from __future__ import annotations

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats

import normalisr_sc as nsc
from normalisr_sc._core._pvalues import genomic_inflation as inflation


@pytest.fixture(scope="module")
def tested():
    adata = nsc.datasets.simulate(n_cells=600, n_genes=150, seed=4)
    nsc.pp.normalize(adata, covariates="batch", qc=None)
    nsc.tl.de(adata, "group", reference="control")
    nsc.tl.coex(adata, genes=list(adata.var_names[:40]))
    return adata


@pytest.mark.slow
def test_qq_de_points_are_sorted_stored_values(tested, tmp_path):
    ax = nsc.pl.qq(tested, save=tmp_path / "qq.png", show=False)
    assert (tmp_path / "qq.png").stat().st_size > 1000
    [(label, (expected, observed))] = ax.nsc_qq.items()
    stored = tested.varm["nsc_de_log10p"]["case"].to_numpy()
    np.testing.assert_allclose(observed, np.sort(stored)[::-1])
    n = stored.size
    np.testing.assert_allclose(expected, -np.log10((np.arange(1, n + 1) - 0.5) / n))
    assert f"{inflation(stored):.2f}" in label
    # The axes follow the expected range; stronger values sit at the edge as triangles.
    top = ax.get_xlim()[1]
    assert top == pytest.approx(1.1 * expected.max())
    beyond = int((observed > top).sum())
    assert beyond > 0
    triangles = ax.collections[-1].get_offsets()
    assert len(triangles) == beyond
    np.testing.assert_allclose(np.asarray(triangles)[:, 1], top)
    assert f"{beyond} beyond the axis" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(ax.figure)


def test_qq_band_holds_uniform_order_statistics(tested):
    ax = nsc.pl.qq(tested, show=False)
    band = ax.collections[0].get_paths()[0].vertices
    n = tested.n_vars
    # The middle rank's 95% interval from Beta(i, n - i + 1).
    i = n // 2
    low, high = stats.beta.ppf([0.025, 0.975], i, n - i + 1)
    x = -np.log10((i - 0.5) / n)
    near = band[np.isclose(band[:, 0], x)]
    np.testing.assert_allclose(sorted(near[:, 1]), sorted(-np.log10([high, low])), rtol=1e-9)
    unclipped = nsc.pl.qq(tested, clip=False, show=False)
    assert unclipped.get_ylim()[1] > ax.get_ylim()[1]
    plt.close("all")


def test_qq_one_series_per_group(tested):
    groups = list(tested.varm["nsc_de_log10p"].columns)
    ax = nsc.pl.qq(tested, group=groups, show=False)
    assert [label.split(" (")[0] for label in ax.nsc_qq] == groups


def test_plots_follow_scanpy_autoshow(tested, monkeypatch):
    import scanpy as sc

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    before = sc.settings.autoshow
    try:
        sc.settings.autoshow = True
        assert nsc.pl.qq(tested) is None
        assert shown == [True]
        sc.settings.autoshow = False
        assert nsc.pl.qq(tested) is not None
    finally:
        sc.settings.autoshow = before
    plt.close("all")


def test_qq_coex_uses_distinct_pairs_of_the_block(tested):
    ax = nsc.pl.qq(tested, "nsc_coex", show=False)
    [(_, (_, observed))] = ax.nsc_qq.items()
    assert observed.size == 40 * 39 // 2
    plt.close(ax.figure)


@pytest.mark.slow
def test_inflation_of_uniform_pvalues_is_one():
    p = (np.arange(1, 100_001) - 0.5) / 100_000
    assert inflation(-np.log10(p)) == pytest.approx(1.0, abs=1e-3)
    assert inflation(-np.log10(stats.chi2.sf(4 * stats.chi2.isf(p, 1), 1))) == pytest.approx(
        4.0, rel=1e-3
    )


@pytest.mark.slow
def test_volcano_points_and_labels(tested, tmp_path):
    ax = nsc.pl.volcano(tested, "case", n_labels=5, save=tmp_path / "volcano.png", show=False)
    assert (tmp_path / "volcano.png").stat().st_size > 1000
    x, y = ax.collections[0].get_offsets().T
    np.testing.assert_allclose(x, tested.varm["nsc_de_logfc"]["case"])
    np.testing.assert_allclose(y, tested.varm["nsc_de_log10p"]["case"])
    q = nsc.get.de_df(tested, "case").set_index("gene")["qval"].reindex(tested.var_names)
    significant = (q <= 0.05).to_numpy()
    colors = ax.collections[0].get_facecolors()
    red, blue = mpl.colors.to_rgba("tab:red"), mpl.colors.to_rgba("tab:blue")
    np.testing.assert_array_equal([tuple(c) in (red, blue) for c in colors], significant)
    order = np.flatnonzero(significant)[np.argsort(-y[significant], kind="stable")]
    assert sorted(t.get_text() for t in ax.texts) == sorted(tested.var_names[order[:5]])
    plt.close(ax.figure)


def test_volcano_colours_follow_the_tables_q_values_under_pair_qc(tested):
    adata = tested.copy()
    nsc.tl.de(adata, "group", reference="control", min_nonzero=150, key_added="qc")
    table = nsc.get.de_df(adata, "case", key="qc").set_index("gene").reindex(adata.var_names)
    assert (~table["qc_pass"]).sum() > 0, "the bound must exclude some pairs"
    ax = nsc.pl.volcano(adata, "case", key="qc", show=False)
    red, blue = mpl.colors.to_rgba("tab:red"), mpl.colors.to_rgba("tab:blue")
    coloured = np.array([tuple(c) in (red, blue) for c in ax.collections[0].get_facecolors()])
    np.testing.assert_array_equal(coloured, (table["qval"] <= 0.05).to_numpy())
    assert not coloured[~table["qc_pass"].to_numpy()].any()
    plt.close(ax.figure)


@pytest.mark.slow
def test_volcano_log2(tested, tmp_path):
    ax = nsc.pl.volcano(tested, "case", log2=True, save=tmp_path / "volcano2.png", show=False)
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


@pytest.mark.slow
def test_coex_network_draws_stored_edges(tested, tmp_path):
    nsc.tl.binnet(tested, qcut=0.05)
    genes = list(tested.var_names[:40])
    ax = nsc.pl.coex_network(
        tested, genes=genes, highlight=genes[:3], save=tmp_path / "n.png", show=False
    )
    assert (tmp_path / "n.png").stat().st_size > 1000
    net = tested.varp["nsc_coex_net"].toarray()[:40, :40]
    undirected = net | net.T
    expected = sorted(
        (genes[i], genes[j]) if genes[i] < genes[j] else (genes[j], genes[i])
        for i, j in zip(*np.nonzero(np.triu(undirected, 1)), strict=True)
    )
    assert ax.nsc_edges == expected  # colours and the highlight: tests/pl/test_network.py
    plt.close(ax.figure)


@pytest.mark.slow
def test_coex_heatmap_shows_clustered_r(tested, tmp_path):
    genes = list(tested.var_names[:12])
    ax = nsc.pl.coex_heatmap(tested, genes, save=tmp_path / "heatmap.png", show=False)
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
    order = [genes.index(label.get_text()) for label in ax.get_xticklabels()]
    r = tested.varp["nsc_coex_r"]
    r = r.toarray() if hasattr(r, "toarray") else np.asarray(r)
    np.testing.assert_allclose(ax.images[0].get_array(), r[np.ix_(order, order)])
    assert sorted(order) == list(range(12))
    with pytest.raises(ValueError, match="outside the co-expression"):
        nsc.pl.coex_heatmap(tested, [*genes[:2], tested.var_names[100]])
    plt.close(ax.figure)


def test_qq_values_beyond_the_axis_get_one_legend_entry():
    screen = nsc.datasets.simulate(
        n_cells=900, n_genes=60, n_targets=3, knockdown=2.0, n_modules=0, seed=2
    )
    nsc.tl.assign_guides(screen, "grna_counts", groups="grna_group")
    nsc.pp.normalize(screen, covariates="batch", qc=None)
    nsc.tl.de(screen, "nsc_guides", design="low_moi", reference="non-targeting")
    groups = list(screen.varm["nsc_de_log10p"].columns)
    ax = nsc.pl.qq(screen, group=groups, show=False)
    top = ax.get_xlim()[1]
    beyond = sum(int((observed > top).sum()) for _, observed in ax.nsc_qq.values())
    assert beyond >= 3  # the knocked-down target genes
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t for t in texts if "beyond the axis" in t] == [f"{beyond} beyond the axis"]
    # Every series' triangles sit at the edge, in its own colour.
    triangles = [c for c in ax.collections if len(c.get_offsets()) and c.get_offsets()[0][1] == top]
    assert sum(len(c.get_offsets()) for c in triangles) == beyond
    plt.close(ax.figure)
