"""nsc.pl.coex_network: modules, hub labels, node sizes and the highlight ring."""

from __future__ import annotations

import matplotlib as mpl

mpl.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import sparse

import normalisr_sc as nsc
from normalisr_sc._store import store


def _two_cliques() -> ad.AnnData:
    """A network of two 6-gene cliques joined by one edge, and 3 isolated genes."""
    n = 15
    net = np.zeros((n, n), dtype=bool)
    for block in (range(6), range(6, 12)):
        for i in block:
            for j in block:
                net[i, j] = i != j
    net[0, 6] = True
    adata = ad.AnnData(np.zeros((3, n)))
    adata.var_names = [f"g{i}" for i in range(n)]
    store(adata, "binnet", {}, varp={"nsc_coex_net": sparse.csr_matrix(net)})
    return adata


def test_modules_labels_and_sizes_follow_the_network(tmp_path):
    adata = _two_cliques()
    path = tmp_path / "net.png"
    ax = nsc.pl.coex_network(adata, n_genes=12, highlight=["g3"], save=path, show=False)
    assert path.stat().st_size > 1000
    assert sorted(map(sorted, ax.nsc_modules)) == [
        sorted(f"g{i}" for i in range(6)),
        sorted(f"g{i}" for i in range(6, 12)),
    ]
    assert len(ax.nsc_edges) == 2 * 15 + 1
    assert len(ax.nsc_labels) == 12  # few genes: all labelled
    assert set(ax.nsc_labels[:2]) == {"g0", "g6"}  # the best connected first
    sizes = ax.collections[0].get_sizes()
    assert sizes[0] == sizes.max()
    assert sizes[1] < sizes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "module 1 (6 genes)" in legend
    assert "highlighted genes" in legend
    ring = ax.collections[0].get_edgecolors()
    red = mpl.colors.to_rgba("tab:red")
    assert [tuple(c) == red for c in ring].count(True) == 1
    plt.close("all")


def test_hub_labels_can_be_limited():
    ax = nsc.pl.coex_network(_two_cliques(), n_labels=3, show=False)
    assert len(ax.nsc_labels) == 3
    plt.close("all")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_genes": 0}, "n_genes"),
        ({"n_labels": -1}, "n_labels"),
        ({"genes": ["g0", "g0"]}, "more than once"),
        ({"genes": ["nope", "g1"]}, "not in adata.var_names"),
        ({"key": "absent"}, r"nsc\.tl\.binnet"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nsc.pl.coex_network(_two_cliques(), show=False, **kwargs)
    plt.close("all")
