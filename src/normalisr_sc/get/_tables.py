"""Tidy views of the association results: ``nsc.get.de_df`` and ``nsc.get.coex_df``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._core._pair_qc import family_qvalues, locate_pairs, qc_pass, read_pairs
from .._core._pvalues import bh_qvalues
from .._readers import coex_block
from .._store import read_params, read_record
from .._utils import require
from .._validate import as_names, check_int, check_number, check_str

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


def _check_cutoff(name: str, cutoff: float | None) -> None:
    check_number(name, cutoff, minimum=0, maximum=1, min_open=True, allow_none=True)


#: Suffixes of the ``adata.varm`` results of :func:`normalisr_sc.tl.de` read here.
DE_RESULTS = ("pvals", "log10p", "logfc", "gamma", "var")
#: Suffixes of its pair QC counts (absent after ``tl.de(..., min_nonzero=0)``).
PAIR_QC = ("n_nonzero_group", "n_nonzero_control")


def de_df(
    adata: AnnData,
    group: str | Sequence[str] | None = None,
    *,
    pairs: pd.DataFrame | Sequence[tuple[str, str]] | Literal["all"] | None = None,
    pval_cutoff: float | None = None,
    min_nonzero: int | None = None,
    key: str = "nsc_de",
) -> pd.DataFrame:
    """Differential expression results of :func:`normalisr_sc.tl.de` as a tidy table.

    The q-values are Benjamini-Hochberg adjusted p-values over a family of pairs, the
    same as ``pvals_adj`` of the ``rank_genes_groups`` layout that
    :func:`~normalisr_sc.tl.de` stores: by default, per group, over the genes of the
    group; with chosen pairs, over all those pairs together. Pairs excluded by the pair
    QC (fewer than ``min_nonzero`` cells with a nonzero count of the gene among the
    cells of the group, or among its control cells) are in no family: they are listed
    with ``qc_pass=False`` and a NaN ``qval``.

    Parameters
    ----------
    adata
        AnnData after :func:`normalisr_sc.tl.de`.
    group
        Group(s) to report; default all tested groups (with chosen pairs: all groups
        of the pairs). Choosing groups does not change the q-values.
    pairs
        Chosen (group, gene) pairs (a DataFrame with columns ``group`` and ``gene``, or
        SCEPTRE's ``grna_group`` and ``response_id``; or a list of ``(group, gene)``
        tuples): one row per pair, q-values over those pairs only. Default: the pairs
        given to :func:`normalisr_sc.tl.de` with ``pairs=``, else every gene of every
        group; ``'all'``: every gene of every group, even after ``tl.de(pairs=...)``.
        Pairs naming an untested group or an unknown gene are an error naming them.
    pval_cutoff
        Keep rows whose adjusted p-value (``qval``) is at most this, as in
        :func:`scanpy.get.rank_genes_groups_df`.
    min_nonzero
        Bound of the pair QC; default the ``min_nonzero`` of the
        :func:`normalisr_sc.tl.de` call (a different value gives q-values that differ
        from the stored layout's).
    key
        ``key_added`` of :func:`normalisr_sc.tl.de`.

    Returns
    -------
    DataFrame with one row per group and gene (or per chosen pair): ``group``
    (categorical, in the order of the tested groups), ``gene``, ``pval``, ``log10p``
    (``-log10`` p-value, exact beyond float underflow), ``qval`` (see above; NaN for
    pairs excluded by the QC), ``logfc`` (natural-log fold change of the log CPM,
    adjusted for the covariates), ``log2fc`` (the same in log2), ``gamma`` (the test's
    coefficient on the normalised scale, not a fold change), ``var`` (residual variance
    of the gene) and, when :func:`normalisr_sc.tl.de` ran the pair QC (``min_nonzero``
    above 0), ``n_nonzero_group`` and ``n_nonzero_control`` (cells with a nonzero count
    of the gene among the cells carrying the group in its test and among its control
    cells) and ``qc_pass``. Rows are sorted by group, then the pairs passing the QC
    before the excluded ones, each from most to least significant.

    Examples
    --------
    >>> nsc.tl.de(adata, "group", reference="control")
    >>> nsc.get.de_df(adata, "case", pval_cutoff=0.05).head()

    The cis pairs of a screen, q-values over those pairs only:

    >>> nsc.get.de_df(adata, pairs=adata.uns["pc_pairs"])
    """
    _check_cutoff("pval_cutoff", pval_cutoff)
    check_str("key", key)
    min_nonzero = check_int("min_nonzero", min_nonzero, minimum=0, allow_none=True)
    chosen = as_names("group", group)
    every = isinstance(pairs, str)
    if every and pairs != "all":
        msg = f"`pairs` must be a table of (group, gene) pairs or 'all', got {pairs!r}."
        raise ValueError(msg)
    given = None if pairs is None or every else read_pairs("pairs", pairs)
    for suffix in DE_RESULTS:
        require(adata, "varm", f"{key}_{suffix}", "nsc.tl.de")
    record, params = read_record(adata, key), read_params(adata, key)
    has_qc = all(f"{key}_{suffix}" in adata.varm for suffix in PAIR_QC)
    if min_nonzero is None:
        min_nonzero = int(params.get("min_nonzero", 0)) if has_qc else 0
    elif min_nonzero and not has_qc:
        msg = (
            f"adata.varm[{key + '_n_nonzero_group'!r}] not found: `nsc.tl.de` ran without "
            "the pair QC (min_nonzero=0); rerun it with `min_nonzero=` to filter pairs."
        )
        raise ValueError(msg)
    if given is None and not every and "pairs" in record:
        given = read_pairs(f"adata.uns[{key!r}]['pairs']", record["pairs"])
    pvals = adata.varm[f"{key}_pvals"]
    names = [str(c) for c in pvals.columns]
    unknown = [g for g in chosen if g not in names]
    if unknown:
        msg = f"group(s) {unknown} not among the tested groups {names[:20]}."
        raise ValueError(msg)

    def matrix(suffix: str) -> np.ndarray:
        return np.asarray(adata.varm[f"{key}_{suffix}"])

    if given is None:
        columns = [names.index(g) for g in chosen or names]
        n_genes = adata.n_vars
        column = np.repeat(columns, n_genes)
        row = np.tile(np.arange(n_genes), len(columns))
    else:
        column, row = locate_pairs(
            "pairs", *given, names, list(map(str, adata.var_names)), reference=()
        )
    passing = np.ones(row.size, dtype=bool)
    counts = {}
    if has_qc:
        counts = {suffix: matrix(suffix)[row, column] for suffix in PAIR_QC}
        passing = qc_pass(counts["n_nonzero_group"], counts["n_nonzero_control"], min_nonzero)
    pval = matrix("pvals")[row, column]
    if given is None:
        # One family per group: BH over the genes of each (reshaped groups x genes).
        shape = (len(columns), adata.n_vars)
        qval = family_qvalues(pval.reshape(shape), passing.reshape(shape), axis=1).ravel()
    else:
        qval = family_qvalues(pval, passing, axis=None)
    logfc = matrix("logfc")[row, column]
    table = pd.DataFrame(
        {
            "group": pd.Categorical(np.asarray(names, dtype=object)[column], categories=names),
            "gene": np.asarray(adata.var_names, dtype=object)[row],
            "pval": pval,
            "log10p": matrix("log10p")[row, column],
            "qval": qval,
            "logfc": logfc,
            "log2fc": logfc / np.log(2.0),
            "gamma": matrix("gamma")[row, column],
            "var": matrix("var")[row, column],
        }
    )
    if has_qc:
        for suffix in PAIR_QC:
            table[suffix] = counts[suffix]
        table["qc_pass"] = passing
    if chosen and given is not None:
        table = table[table["group"].isin(chosen)]
    present = chosen or [g for g in names if g in set(table["group"].astype(str))]
    table["group"] = table["group"].cat.set_categories(present)
    order = np.lexsort(
        (
            -np.abs(table["logfc"].to_numpy()),
            -table["log10p"].to_numpy(),
            ~passing[table.index.to_numpy()],
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
