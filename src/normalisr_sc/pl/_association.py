"""Plots of association results: QQ plot with inflation, volcano."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from .._core._pvalues import genomic_inflation
from .._docs import doc_params
from .._readers import coex_block
from .._store import read_params
from .._utils import require
from .._validate import as_names, check_bool, check_int, check_number, check_str
from ..get import de_df
from ._utils import check_plot_args, doc_show_save_ax, finish, finite_values, new_axes

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes


def _neg_log10_pvalues(adata: AnnData, key: str, group: str | None) -> np.ndarray:
    """-log10 p of DE (``varm``) or co-expression (``varp``, distinct pairs) results."""
    if f"{key}_log10p" in adata.varm:
        table = adata.varm[f"{key}_log10p"]
        if group is not None:
            if group not in table.columns:
                msg = (
                    f"group {group!r} not in the results of {key!r}; groups: {list(table.columns)}."
                )
                raise ValueError(msg)
            table = table[[group]]
        values = table.to_numpy(dtype=float).ravel()
    elif f"{key}_log10p" in adata.varp or f"{key}_net" in adata.varp:
        _, block = coex_block(adata, key, "log10p")
        values = block[np.triu_indices_from(block, k=1)]
    else:
        msg = f"no results under key {key!r}; run `nsc.tl.de` or `nsc.tl.coex` first."
        raise ValueError(msg)
    return finite_values(values, f"the -log10 p-values under key {key!r}")


#: Coverage of the band of the uniform order statistics drawn in the QQ plot.
BAND = 0.95
#: The QQ plot's axes reach this far beyond the largest expected value.
QQ_MARGIN = 1.1
#: A QQ plot with more series than this has its legend beside the axes.
LEGEND_INSIDE_UP_TO = 4
#: Colours of the series of a QQ plot, one per group.
SERIES_COLORS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "black",
)


def _as_groups(group: str | Sequence[str] | None) -> list[str | None]:
    if group is None:
        return [None]
    return list(as_names("group", group, allow_none=False))


#: The band is drawn through every rank up to this one and about as many more, spaced
#: evenly in log scale beyond it: the same picture as every rank, at a fixed cost.
BAND_EXACT_RANKS = 1000


def _band_ranks(n: int) -> np.ndarray:
    """Ranks at which the 95% band of ``n`` uniform order statistics is evaluated."""
    head = np.arange(1, min(n, BAND_EXACT_RANKS) + 1)
    if n <= BAND_EXACT_RANKS:
        return head
    tail = np.geomspace(BAND_EXACT_RANKS, n, BAND_EXACT_RANKS).round().astype(np.int64)
    return np.union1d(head, tail)


def draw_qq(ax: Axes, series: dict[str, np.ndarray], *, clip: bool = True) -> Axes:
    """Draw a QQ plot of ``-log10`` p-values into ``ax``: one colour per series.

    ``series`` maps a label to its observed ``-log10`` p-values sorted from the largest;
    the legend gives each label with its inflation factor. Draws the grey 95% band of
    the uniform order statistics (of the longest series), the diagonal and, with
    ``clip``, observed values beyond the expected range at the top edge as triangles.
    Sets ``ax.nsc_qq`` (label with lambda -> ``(expected, observed)``).
    """
    top = QQ_MARGIN * max(-np.log10(0.5 / obs.size) for obs in series.values())
    if not clip:
        top = max(top, QQ_MARGIN * max(obs[0] for obs in series.values()))
    n_max = max(obs.size for obs in series.values())
    rank = _band_ranks(n_max)
    expected_all = -np.log10((rank - 0.5) / n_max)
    low, high = np.asarray(
        stats.beta.ppf([(1 - BAND) / 2, (1 + BAND) / 2], rank[:, None], n_max - rank[:, None] + 1)
    ).T
    ax.fill_between(
        expected_all,
        -np.log10(high),
        -np.log10(low),
        color="0.85",
        label=f"{BAND:.0%} band (null)",
        zorder=0,
    )
    ax.plot([0, top], [0, top], color="grey", linewidth=1, linestyle="--", zorder=1)
    drawn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # What was drawn, per series, for the tests and for users' own annotations.
    ax.nsc_qq = drawn  # type: ignore[attr-defined]  # our attribute on a matplotlib Axes
    # Values beyond the axis: one legend entry for all series (their colour tells which).
    n_beyond = sum(int((observed > top).sum()) for observed in series.values())
    beyond_label: str | None = f"{n_beyond} beyond the axis"
    if len(series) > 1 and n_beyond:
        ax.scatter([], [], s=18, marker="^", color="black", label=beyond_label)
        beyond_label = None
    for index, (name, observed) in enumerate(series.items()):
        expected = -np.log10((np.arange(1, observed.size + 1) - 0.5) / observed.size)
        color = SERIES_COLORS[index % len(SERIES_COLORS)]
        label = f"{name} ($\\lambda$ = {genomic_inflation(observed):.2f})"
        inside = observed <= top
        ax.scatter(
            expected[inside],
            observed[inside],
            s=6,
            color=color,
            rasterized=True,
            label=label,
            zorder=2,
        )
        if (~inside).any():
            ax.scatter(
                expected[~inside],
                np.full((~inside).sum(), top),
                s=18,
                marker="^",
                color=color,
                zorder=3,
                label=beyond_label,
            )
            beyond_label = None
        drawn[label] = (expected, observed)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top * 1.03)
    ax.set_xlabel("expected $-\\log_{10} p$")
    ax.set_ylabel("observed $-\\log_{10} p$")
    if len(series) > LEGEND_INSIDE_UP_TO:
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(frameon=False, fontsize=7, loc="upper left")
    return ax


@doc_params(doc_show_save_ax=doc_show_save_ax)
def qq(
    adata: AnnData,
    key: str = "nsc_de",
    *,
    group: str | Sequence[str] | None = None,
    clip: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes | None:
    """QQ plot of observed against expected ``-log10`` p-values, to judge calibration.

    Under the null the points follow the diagonal, inside the grey band (the pointwise
    95% range of uniform order statistics), and the genomic inflation ``lambda``
    (median chi-square / 0.455, in the legend) is 1. Both axes span the expected range,
    where calibration is read; observed values beyond it are drawn at the top edge as
    triangles (their number is in the legend) unless ``clip=False``.

    Parameters
    ----------
    adata
        AnnData with results of :func:`normalisr_sc.tl.de` or :func:`normalisr_sc.tl.coex`.
    key
        Key of the results (``key_added`` of the test).
    group
        For DE, only this group's tests; a list draws one colour per group (e.g. the
        negative-control groups); default all groups pooled.
    clip
        Keep the axes on the expected range (observed values beyond it at the edge);
        ``False`` extends the y axis to the largest observed value.
    {doc_show_save_ax}

    Returns
    -------
    The Axes (``None`` if shown). ``ax.nsc_qq`` maps each series' label to its
    ``(expected, observed)`` arrays, sorted from the most significant.
    """
    check_str("key", key)
    check_bool("clip", clip)
    check_plot_args(ax, show, save)
    series = {}
    for name in _as_groups(group):
        observed = np.sort(_neg_log10_pvalues(adata, key, name))[::-1]
        if observed.size == 0:
            msg = f"no finite p-values under key {key!r}{f' for group {name!r}' if name else ''}."
            raise ValueError(msg)
        series[name] = observed
    ax = draw_qq(
        new_axes(ax),
        {(name if name else "all tests"): observed for name, observed in series.items()},
        clip=clip,
    )
    ax.set_title(key + (f" {group}" if isinstance(group, str) else ""))
    return finish(ax, show=show, save=save)


@doc_params(doc_show_save_ax=doc_show_save_ax)
def volcano(
    adata: AnnData,
    group: str,
    key: str = "nsc_de",
    *,
    qcut: float = 0.05,
    fc_cut: float = 0.0,
    n_labels: int = 10,
    log2: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes | None:
    """Fold change against ``-log10`` p-value for one group, significant genes coloured.

    The fold change is ``logfc`` of :func:`normalisr_sc.tl.de` (covariate-adjusted
    difference of mean log CPM), in natural log or, with ``log2``, in log2. Genes with a
    q-value at most ``qcut`` -- the ``qval`` of :func:`normalisr_sc.get.de_df`: over the
    genes of the group, or over the chosen pairs of ``tl.de(pairs=...)``, pairs excluded
    by the pair QC never significant -- and an absolute fold change of at least ``fc_cut`` are red (up) or blue (down); the
    ``n_labels`` most significant of them are labelled, placed apart by adjustText.

    Parameters
    ----------
    adata
        AnnData with results of :func:`normalisr_sc.tl.de`.
    group
        Group (column of the results) to plot.
    key
        Key of the results.
    qcut
        Q-value cutoff of significance, in (0, 1].
    fc_cut
        Smallest absolute fold change coloured, in the plotted unit (natural log or
        log2), drawn as dotted lines when above 0.
    n_labels
        Number of most significant coloured genes labelled with their names.
    log2
        Plot the fold change in log2 instead of natural log.
    {doc_show_save_ax}

    Returns
    -------
    The Axes (``None`` if shown); its first collection holds all points (fold change,
    ``-log10 p``) in the order of ``adata.var_names``, coloured by significance.
    """
    check_str("group", group)
    check_str("key", key)
    qcut = check_number("qcut", qcut, minimum=0, maximum=1, min_open=True)
    fc_cut = check_number("fc_cut", fc_cut, minimum=0)
    n_labels = check_int("n_labels", n_labels, minimum=0)
    check_bool("log2", log2)
    check_plot_args(ax, show, save)
    from adjustText import adjust_text
    from matplotlib.lines import Line2D

    require(adata, "varm", f"{key}_logfc", "nsc.tl.de")
    logfc = adata.varm[f"{key}_logfc"]
    if group not in logfc.columns:
        msg = f"group {group!r} not in the results of {key!r}; groups: {list(logfc.columns)}."
        raise ValueError(msg)
    x = finite_values(logfc[group], f"adata.varm[{key + '_logfc'!r}][{group!r}]")
    x = x / (np.log(2.0) if log2 else 1.0)
    y = finite_values(adata.varm[f"{key}_log10p"][group], f"adata.varm[{key + '_log10p'!r}]")
    # The q-values the tables report (the pair QC and chosen pairs included), in var order.
    table = de_df(adata, group, key=key)
    qvals = table.set_index("gene")["qval"].reindex(adata.var_names).to_numpy()
    significant = (np.nan_to_num(qvals, nan=1.0) <= qcut) & (np.abs(x) >= fc_cut)
    colors = np.where(significant, np.where(x > 0, "tab:red", "tab:blue"), "lightgrey")
    ax = new_axes(ax, figsize=(5, 4.5))
    ax.scatter(x, y, s=6, c=list(colors), rasterized=True)
    texts = [
        ax.text(x[i], y[i], adata.var_names[i], fontsize=7)
        for i in np.flatnonzero(significant)[np.argsort(-y[significant], kind="stable")][:n_labels]
    ]
    if texts:
        # Room beside the outermost points, so labels there can move apart inside the axes.
        ax.margins(x=0.15, y=0.08)
        adjust_text(
            texts,
            x=x,
            y=y,
            ax=ax,
            expand=(1.2, 1.6),
            arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5},
        )
    ax.axvline(0, color="grey", linewidth=0.8)
    for edge in (-fc_cut, fc_cut) if fc_cut > 0 else ():
        ax.axvline(edge, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("$\\log_2$ fold change" if log2 else "log fold change (natural log)")
    ax.set_ylabel("$-\\log_{10} p$")
    n_up, n_down = int((significant & (x > 0)).sum()), int((significant & (x < 0)).sum())
    ax.legend(
        handles=[
            Line2D([], [], marker="o", linestyle="", color="tab:red", label=f"up ({n_up})"),
            Line2D([], [], marker="o", linestyle="", color="tab:blue", label=f"down ({n_down})"),
            Line2D([], [], marker="o", linestyle="", color="lightgrey", label=f"q > {qcut:g}"),
        ],
        frameon=False,
        fontsize=7,
    )
    params = read_params(adata, key)
    reference = list(np.atleast_1d(params.get("reference_groups", [])))
    baseline = "rest" if params.get("design", "case_control") == "case_control" else "no group"
    against = ", ".join(map(str, reference)) if reference else baseline
    ax.set_title(f"{key}: {group} vs {against}")
    return finish(ax, show=show, save=save)
