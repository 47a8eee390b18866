"""Co-expression network drawing and clustered correlation heatmap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from .._docs import doc_params
from .._readers import coex_block
from .._store import read_record
from .._utils import gene_positions, require
from .._validate import as_names, check_int, check_str
from ._utils import check_plot_args, doc_show_save_ax, finish, new_axes

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes


#: Up to this many drawn genes, every gene is labelled by default.
LABEL_ALL_UP_TO = 30
#: Otherwise this many of the best connected genes are labelled.
DEFAULT_HUB_LABELS = 15
#: Modules coloured individually; smaller ones are drawn grey.
MAX_MODULES = 9
_MODULE_COLORS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "gold",
)


def _modules(graph, seed: int) -> list[list[str]]:
    """Communities of the drawn network (Louvain), largest first; singletons left out."""
    import networkx as nx

    if graph.number_of_edges() == 0:
        return []
    found = nx.community.louvain_communities(graph, seed=seed)
    modules = [sorted(m) for m in found if len(m) > 1]
    return sorted(modules, key=lambda m: (-len(m), m[0]))


@doc_params(doc_show_save_ax=doc_show_save_ax)
def coex_network(
    adata: AnnData,
    key: str = "nsc_coex",
    *,
    genes: Sequence[str] | None = None,
    n_genes: int = 100,
    highlight: Sequence[str] | None = None,
    n_labels: int | None = None,
    seed: int = 0,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes | None:
    """Draw the binary co-expression network among some genes (spring layout).

    Node size grows with the number of edges of the gene in the drawing; nodes are
    coloured by network module (Louvain communities of the drawn network, largest
    first, in the legend with their sizes; genes in no module are grey). The best
    connected genes are labelled. Highlighted genes get a red ring: by default the
    principal genes of :func:`normalisr_sc.tl.gotop` (the hubs whose GO enrichment
    defines the housekeeping programme), if it has run.

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
        Genes ringed in red; default the principal genes of
        :func:`normalisr_sc.tl.gotop` if it has run (``[]`` for none).
    n_labels
        Number of genes labelled, the best connected first; default all genes when at
        most 30 are drawn, else 15.
    seed
        Seed of the layout and of the module detection.
    {doc_show_save_ax}

    Returns
    -------
    The Axes (``None`` if shown). The nodes are its first collection; the drawn edges (undirected) are
    listed in ``ax.nsc_edges`` as pairs of gene names, the modules in
    ``ax.nsc_modules`` (lists of genes, largest first) and the labelled genes in
    ``ax.nsc_labels``.
    """
    import networkx as nx
    from adjustText import adjust_text
    from matplotlib.lines import Line2D

    check_str("key", key)
    check_int("n_genes", n_genes, minimum=1)
    check_int("n_labels", n_labels, minimum=0, allow_none=True)
    check_int("seed", seed, minimum=0)
    check_plot_args(ax, show, save)
    require(adata, "varp", f"{key}_net", "nsc.tl.binnet")
    net = sparse.csr_matrix(adata.varp[f"{key}_net"], dtype=bool)
    undirected = (net + net.T).astype(bool).tocsr()
    if genes is None:
        degree = np.asarray(undirected.sum(axis=1)).ravel()
        index = np.sort(np.argsort(degree, kind="stable")[::-1][:n_genes])
    else:
        index = gene_positions(adata, as_names("genes", genes, allow_none=False))
    names = adata.var_names[index]
    graph = nx.from_scipy_sparse_array(undirected[index][:, index])
    graph = nx.relabel_nodes(graph, dict(enumerate(names)))
    from_gotop = highlight is None
    if from_gotop:
        highlight = read_record(adata, "nsc_gotop").get("principal_genes", [])
    highlighted = set(as_names("highlight", highlight))

    nodes = list(graph.nodes)
    degree = np.array([graph.degree(node) for node in nodes], dtype=float)
    modules = _modules(graph, seed)
    module_of = {gene: i for i, module in enumerate(modules[:MAX_MODULES]) for gene in module}
    colors = [_MODULE_COLORS[module_of[n]] if n in module_of else "lightgrey" for n in nodes]
    sizes = 15 + 185 * degree / max(degree.max(), 1.0)
    if n_labels is None:
        n_labels = len(nodes) if len(nodes) <= LABEL_ALL_UP_TO else DEFAULT_HUB_LABELS
    labelled = [nodes[i] for i in np.argsort(-degree, kind="stable")[:n_labels]]

    positions = nx.spring_layout(graph, seed=seed)
    ax = new_axes(ax, figsize=(7, 6.5))
    ring = ["tab:red" if node in highlighted else "white" for node in nodes]
    drawn = nx.draw_networkx_nodes(
        graph,
        positions,
        ax=ax,
        nodelist=nodes,
        node_size=sizes,
        node_color=colors,
        edgecolors=ring,
        linewidths=1.2,
    )
    drawn.set_zorder(2)
    # Nodes first, so that they are the first collection; the edges are drawn below them.
    edges = nx.draw_networkx_edges(graph, positions, ax=ax, alpha=0.15, width=0.5)
    if edges is not None and not isinstance(edges, list):
        edges.set_zorder(1)
    texts = [
        ax.text(
            positions[gene][0],
            positions[gene][1],
            gene,
            fontsize=7,
            zorder=3,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7},
        )
        for gene in labelled
    ]
    if texts:
        # Labels pushed apart and linked to their nodes, so none hides another.
        adjust_text(texts, ax=ax, arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            color=_MODULE_COLORS[i],
            label=f"module {i + 1} ({len(module)} genes)",
        )
        for i, module in enumerate(modules[:MAX_MODULES])
    ]
    if len(module_of) < len(nodes):
        handles.append(
            Line2D([], [], marker="o", linestyle="", color="lightgrey", label="other genes")
        )
    if highlighted & set(nodes):
        what = "GO principal genes (gotop)" if from_gotop else "highlighted genes"
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markerfacecolor="white",
                markeredgecolor="tab:red",
                label=what,
            )
        )
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            color="grey",
            markersize=3,
            label="size: number of edges",
        )
    )
    ax.legend(
        handles=handles, frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0)
    )
    drawn_on: Any = ax  # what was drawn, for readers (and tests) of the Axes
    drawn_on.nsc_edges = sorted(tuple(sorted(edge)) for edge in graph.edges)
    drawn_on.nsc_modules = modules
    drawn_on.nsc_labels = labelled
    ax.set_axis_off()
    ax.set_title(f"{key}: {graph.number_of_nodes()} genes, {graph.number_of_edges()} edges")
    return finish(ax, show=show, save=save)


@doc_params(doc_show_save_ax=doc_show_save_ax)
def coex_heatmap(
    adata: AnnData,
    genes: Sequence[str],
    key: str = "nsc_coex",
    *,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes | None:
    """Heatmap of co-expression Pearson r among genes, clustered (average linkage on 1 - r).

    Parameters
    ----------
    adata
        AnnData after :func:`normalisr_sc.tl.coex`.
    genes
        Genes to show (at least 2), all within the computed co-expression block.
    key
        Key of the co-expression results.
    {doc_show_save_ax}

    Returns
    -------
    The Axes (``None`` if shown); its image holds ``r`` in the clustered order given by the tick labels.
    """
    genes = as_names("genes", genes, allow_none=False)
    check_str("key", key)
    check_plot_args(ax, show, save)
    gene_positions(adata, genes)  # unknown or ambiguous names are refused by name
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
