"""Tidy views of the association results: ``nsc.get.de_df`` and ``nsc.get.coex_df``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._pvalues import bh_qvalues
from .._readers import coex_block
from .._utils import require
from .._validate import as_names, check_number, check_str

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


def _check_cutoff(name: str, cutoff: float | None) -> None:
    check_number(name, cutoff, minimum=0, maximum=1, min_open=True, allow_none=True)


def de_df(
    adata: AnnData,
    group: str | Sequence[str] | None = None,
    *,
    pval_cutoff: float | None = None,
    key: str = "nsc_de",
) -> pd.DataFrame:
    """Differential expression results of :func:`normalisr_sc.tl.de` as a tidy table.

    Parameters
    ----------
    adata
        AnnData after :func:`normalisr_sc.tl.de`.
    group
        Group(s) to report; default all tested groups.
    pval_cutoff
        Keep rows whose adjusted p-value (``qval``) is at most this, as in
        :func:`scanpy.get.rank_genes_groups_df`.
    key
        ``key_added`` of :func:`normalisr_sc.tl.de`.

    Returns
    -------
    DataFrame with one row per group and gene: ``group`` (categorical, in the order of
    the tested groups), ``gene``, ``pval``, ``log10p`` (``-log10`` p-value, exact
    beyond float underflow), ``qval`` (Benjamini-Hochberg over the genes of the group),
    ``logfc`` (natural-log fold change of the log CPM, adjusted for the covariates),
    ``log2fc`` (the same in log2), ``gamma`` (the test's coefficient on the normalised
    scale, not a fold change) and ``var`` (residual variance of the gene). Rows are
    sorted by group, then from most to least significant.

    Examples
    --------
    >>> nsc.tl.de(adata, "group", reference="control")
    >>> nsc.get.de_df(adata, "case", pval_cutoff=0.05).head()
    """
    _check_cutoff("pval_cutoff", pval_cutoff)
    check_str("key", key)
    chosen = as_names("group", group)
    for suffix in ("pvals", "log10p", "logfc", "gamma", "var"):
        require(adata, "varm", f"{key}_{suffix}", "nsc.tl.de")
    pvals = adata.varm[f"{key}_pvals"]
    names = [str(c) for c in pvals.columns]
    chosen = chosen or names
    unknown = [g for g in chosen if g not in names]
    if unknown:
        msg = f"group(s) {unknown} not among the tested groups {names[:20]}."
        raise ValueError(msg)
    columns = [names.index(g) for g in chosen]

    def values(suffix: str) -> np.ndarray:
        return np.asarray(adata.varm[f"{key}_{suffix}"])[:, columns].T

    log10p = values("log10p")
    n_genes = adata.n_vars
    table = pd.DataFrame(
        {
            "group": pd.Categorical(np.repeat(chosen, n_genes), categories=chosen),
            "gene": np.tile(np.asarray(adata.var_names), len(chosen)),
            "pval": values("pvals").ravel(),
            "log10p": log10p.ravel(),
            "qval": bh_qvalues(values("pvals"), axis=1).ravel(),
            "logfc": values("logfc").ravel(),
            "log2fc": values("logfc").ravel() / np.log(2.0),
            "gamma": values("gamma").ravel(),
            "var": values("var").ravel(),
        }
    )
    order = np.lexsort(
        (
            -np.abs(table["logfc"].to_numpy()),
            -table["log10p"].to_numpy(),
            table["group"].cat.codes.to_numpy(),
        )
    )
    table = table.iloc[order]
    if pval_cutoff is not None:
        table = table[table["qval"] <= pval_cutoff]
    return table.reset_index(drop=True)


def coex_df(
    adata: AnnData, *, qval_cutoff: float | None = None, key: str = "nsc_coex"
) -> pd.DataFrame:
    """Co-expression results of :func:`normalisr_sc.tl.coex` as an edge list.

    Parameters
    ----------
    adata
        AnnData after :func:`normalisr_sc.tl.coex`.
    qval_cutoff
        Keep pairs whose q-value is at most this.
    key
        ``key_added`` of :func:`normalisr_sc.tl.coex`.

    Returns
    -------
    DataFrame with one row per unordered pair of tested genes: ``gene1``, ``gene2``,
    ``r`` (Pearson r after covariate removal), ``pval``, ``log10p`` (``-log10``
    p-value) and ``qval`` (Benjamini-Hochberg over all pairs), sorted from most to least
    significant. It needs the matrices of ``coex(store='all')``; after
    ``coex(store='network')`` only the edges ``adata.varp[key + '_net']`` are stored.

    Examples
    --------
    >>> nsc.tl.coex(adata)
    >>> nsc.get.coex_df(adata, qval_cutoff=0.01).head()
    """
    _check_cutoff("qval_cutoff", qval_cutoff)
    check_str("key", key)
    index, pvals = coex_block(adata, key, "pvals")
    _, log10p = coex_block(adata, key, "log10p")
    _, r = coex_block(adata, key, "r")
    first, second = np.triu_indices(index.size, 1)
    pair_p = pvals[first, second]
    table = pd.DataFrame(
        {
            "gene1": np.asarray(adata.var_names)[index[first]],
            "gene2": np.asarray(adata.var_names)[index[second]],
            "r": r[first, second],
            "pval": pair_p,
            "log10p": log10p[first, second],
            "qval": bh_qvalues(pair_p),
        }
    )
    table = table.iloc[np.argsort(-table["log10p"].to_numpy(), kind="stable")]
    if qval_cutoff is not None:
        table = table[table["qval"] <= qval_cutoff]
    return table.reset_index(drop=True)
