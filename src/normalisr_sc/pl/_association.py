"""Plots of association results: QQ plot with inflation, volcano."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from .._utils import require
from .._validate import check_bool, check_int, check_str
from ..tl._coex import coex_block
from ._utils import finish, new_axes

if TYPE_CHECKING:
    import os

    from anndata import AnnData
    from matplotlib.axes import Axes

#: Median of the chi-square distribution with one degree of freedom.
CHI2_MEDIAN = stats.chi2.ppf(0.5, 1)


def _neg_log10_pvalues(adata: AnnData, key: str, group: str | None) -> np.ndarray:
    """-log10 p of DE (``varm``) or co-expression (``varp``, distinct pairs) results."""
    if f"{key}_log10p" in adata.varm:
        table = adata.varm[f"{key}_log10p"]
        if group is not None:
            if group not in table.columns:
                msg = f"group {group!r} not in the results of {key!r}; groups: {list(table.columns)}."
                raise ValueError(msg)
            table = table[[group]]
        values = table.to_numpy(dtype=float).ravel()
    elif f"{key}_log10p" in adata.varp or f"{key}_net" in adata.varp:
        _, block = coex_block(adata, key, "log10p")
        values = block[np.triu_indices_from(block, k=1)]
    else:
        msg = f"no results under key {key!r}; run `nsc.tl.de` or `nsc.tl.coex` first."
        raise ValueError(msg)
    return values[np.isfinite(values)]


def inflation(neg_log10_p: np.ndarray) -> float:
    """Genomic inflation: median chi-square (1 df) of the p-values over its null median."""
    chi2 = stats.chi2.isf(10.0 ** -np.asarray(neg_log10_p), 1)
    return float(np.median(chi2) / CHI2_MEDIAN)


def qq(
    adata: AnnData,
    key: str = "nsc_de",
    *,
    group: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes:
    """QQ plot of observed against expected ``-log10`` p-values, with the inflation factor.

    Under the null the points follow the diagonal and the genomic inflation
    (median chi-square / 0.455) is 1; a calibrated test keeps the bulk on the line.

    Parameters
    ----------
    adata
        AnnData with results of :func:`normalisr_sc.tl.de` or :func:`normalisr_sc.tl.coex`.
    key
        Key of the results (``key_added`` of the test).
    group
        For DE, only this group's tests; default all groups pooled.
    ax, show, save
        Axes to draw into, call ``plt.show()``, save to this path.

    Returns
    -------
    The Axes; its first collection holds the points (expected, observed).
    """
    check_str("key", key)
    check_str("group", group, allow_none=True)
    observed = np.sort(_neg_log10_pvalues(adata, key, group))[::-1]
    if observed.size == 0:
        msg = f"no finite p-values under key {key!r}."
        raise ValueError(msg)
    expected = -np.log10((np.arange(1, observed.size + 1) - 0.5) / observed.size)
    ax = new_axes(ax)
    ax.scatter(expected, observed, s=5, color="tab:blue", rasterized=True)
    top = max(expected.max(), observed.max())
    ax.plot([0, top], [0, top], color="grey", linewidth=1, linestyle="--")
    ax.set_xlabel("expected $-\\log_{10} p$")
    ax.set_ylabel("observed $-\\log_{10} p$")
    ax.set_title(f"{key}{f' {group}' if group else ''}: $\\lambda$ = {inflation(observed):.3f}")
    return finish(ax, show=show, save=save)


def volcano(
    adata: AnnData,
    group: str,
    key: str = "nsc_de",
    *,
    n_labels: int = 10,
    log2: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes:
    """Fold change against ``-log10`` p-value for one group, top genes labelled.

    The fold change is ``logfc`` of :func:`normalisr_sc.tl.de` (covariate-adjusted
    difference of mean log CPM), in natural log or, with ``log2``, in log2.

    Parameters
    ----------
    adata
        AnnData with results of :func:`normalisr_sc.tl.de`.
    group
        Group (column of the results) to plot.
    key
        Key of the results.
    n_labels
        Number of most significant genes labelled with their names.
    log2
        Plot the fold change in log2 instead of natural log.
    ax, show, save
        Axes to draw into, call ``plt.show()``, save to this path.

    Returns
    -------
    The Axes; its first collection holds the points (fold change, ``-log10 p``) in the
    order of ``adata.var_names``.
    """
    check_str("group", group)
    check_str("key", key)
    n_labels = check_int("n_labels", n_labels, minimum=0)
    check_bool("log2", log2)
    require(adata, "varm", f"{key}_logfc", "nsc.tl.de")
    logfc = adata.varm[f"{key}_logfc"]
    if group not in logfc.columns:
        msg = f"group {group!r} not in the results of {key!r}; groups: {list(logfc.columns)}."
        raise ValueError(msg)
    x = logfc[group].to_numpy(dtype=float) / (np.log(2.0) if log2 else 1.0)
    y = adata.varm[f"{key}_log10p"][group].to_numpy(dtype=float)
    ax = new_axes(ax)
    ax.scatter(x, y, s=5, color="tab:grey", rasterized=True)
    for index in np.argsort(y)[::-1][:n_labels]:
        ax.annotate(adata.var_names[index], (x[index], y[index]), fontsize=7,
                    xytext=(2, 2), textcoords="offset points")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("$\\log_2$ fold change" if log2 else "log fold change (natural log)")
    ax.set_ylabel("$-\\log_{10} p$")
    record = adata.uns.get(key, {})
    reference = list(np.atleast_1d(record.get("reference", []))) if hasattr(record, "get") else []
    baseline = "rest" if record.get("design", "case_control") == "case_control" else "no group"
    against = ", ".join(map(str, reference)) if reference else baseline
    ax.set_title(f"{key}: {group} vs {against}")
    return finish(ax, show=show, save=save)
