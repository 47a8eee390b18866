"""Co-expression network drawing and clustered correlation heatmap."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from .._utils import gene_positions, require
from ..tl._coex import coex_block
from ._utils import finish, new_axes

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes


def coex_network(
    adata: AnnData,
    key: str = "nsc_coex",
    *,
    genes: Sequence[str] | None = None,
    n_genes: int = 100,
    highlight: Sequence[str] | None = None,
    seed: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes:
    """Draw the binary co-expression network among some genes (spring layout).

    Parameters
    ----------
    adata
        AnnData after :func:`normalisr_sc.tl.binnet`.
    key
        Key of the co-expression results; the network is ``adata.varp[key + '_net']``.
    genes
        Genes to draw; default the ``n_genes`` genes with most edges.
    n_genes
        Number of genes drawn when ``genes`` is not given.
    highlight
        Genes drawn in red; default the principal genes of :func:`normalisr_sc.tl.gotop`
        if it has run.
    seed
        Seed of the layout.
    ax, show, save
        Axes to draw into, call ``plt.show()``, save to this path.

    Returns
    -------
    The Axes; the nodes are its first collection and the drawn edges (undirected)
    are listed in ``ax.nsc_edges`` as pairs of gene names.
    """
    import networkx as nx

    require(adata, "varp", f"{key}_net", "nsc.tl.binnet")
    net = sparse.csr_matrix(adata.varp[f"{key}_net"], dtype=bool)
    undirected = (net + net.T).astype(bool).tocsr()
    if genes is None:
        degree = np.asarray(undirected.sum(axis=1)).ravel()
        index = np.sort(np.argsort(degree, kind="stable")[::-1][:n_genes])
    else:
        index = gene_positions(adata, genes)
    names = adata.var_names[index]
    graph = nx.from_scipy_sparse_array(undirected[index][:, index])
    graph = nx.relabel_nodes(graph, dict(enumerate(names)))
    if highlight is None:
        highlight = adata.uns.get("nsc_gotop", {}).get("principal_genes", [])
    highlighted = set(highlight)
    positions = nx.spring_layout(graph, seed=seed)
    ax = new_axes(ax, figsize=(6, 6))
    colors = ["tab:red" if node in highlighted else "tab:blue" for node in graph.nodes]
    nx.draw_networkx_nodes(graph, positions, ax=ax, node_size=20, node_color=colors)
    nx.draw_networkx_edges(graph, positions, ax=ax, alpha=0.2, width=0.5)
    ax.nsc_edges = sorted(tuple(sorted(edge)) for edge in graph.edges)
    ax.set_axis_off()
    ax.set_title(f"{key}: {graph.number_of_nodes()} genes, {graph.number_of_edges()} edges")
    return finish(ax, show=show, save=save)


def coex_heatmap(
    adata: AnnData,
    genes: Sequence[str],
    key: str = "nsc_coex",
    *,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes:
    """Heatmap of co-expression Pearson r among genes, clustered (average linkage on 1 - r).

    Parameters
    ----------
    adata
        AnnData after :func:`normalisr_sc.tl.coex`.
    genes
        Genes to show (at least 2), all within the computed co-expression block.
    key
        Key of the co-expression results.
    ax, show, save
        Axes to draw into, call ``plt.show()``, save to this path.

    Returns
    -------
    The Axes; its image holds ``r`` in the clustered order given by the tick labels.
    """
    if len(genes) < 2:
        msg = f"coex_heatmap needs at least 2 genes, got {len(genes)}."
        raise ValueError(msg)
    covered, r = coex_block(adata, key, "r")
    position = {gene: i for i, gene in enumerate(adata.var_names[covered])}
    outside = [g for g in genes if g not in position]
    if outside:
        msg = f"{len(outside)} gene(s) outside the co-expression results, e.g. {outside[:3]}."
        raise ValueError(msg)
    index = np.array([position[g] for g in genes])
    sub = r[np.ix_(index, index)]
    distance = np.clip(1.0 - sub, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    order = hierarchy.leaves_list(hierarchy.linkage(squareform(distance, checks=False), "average"))
    ax = new_axes(ax, figsize=(6, 5.5))
    image = ax.imshow(sub[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [genes[i] for i in order]
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.figure.colorbar(image, ax=ax, label="Pearson r")
    return finish(ax, show=show, save=save)
