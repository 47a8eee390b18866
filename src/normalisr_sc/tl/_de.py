"""Differential expression in three designs (METHOD 8): ``nsc.tl.de``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._core._association import case_control, exclusive_class, high_moi, low_moi
from .._docs import doc_chunked_layer, doc_params
from .._progress import progress
from .._utils import ensure_actual, logger
from ._groups import read_groups
from ._inputs import check_dimreduce, normalised_inputs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from ._groups import Groups

Design = Literal["case_control", "low_moi", "high_moi"]

_KERNELS = {"case_control": case_control, "low_moi": low_moi, "high_moi": high_moi}
#: Minimum number of cells carrying a tested group.
MIN_GROUP_CELLS = 2


def _cells_per_group(groups: Groups, design: Design) -> tuple[np.ndarray, np.ndarray]:
    """Cells carrying each group in its test, and cells used by its test."""
    n_cells = groups.matrix.shape[0]
    if design == "low_moi":
        counts = np.bincount(exclusive_class(groups.matrix) + 1, minlength=len(groups.names) + 2)
        carrying = counts[2:]
        return carrying, counts[1] + carrying
    carrying = np.diff(groups.matrix.tocsc().indptr)
    return carrying, np.full(carrying.size, n_cells)


def _check_group_sizes(groups: Groups, design: Design, carrying: np.ndarray,
                       used: np.ndarray) -> None:
    names = np.array(groups.names, dtype=object)[groups.tested]
    carrying, used = carrying[groups.tested], used[groups.tested]
    few = names[carrying < MIN_GROUP_CELLS]
    if few.size:
        where = " alone (cells with several groups are not used)" if design == "low_moi" else ""
        msg = (
            f"group(s) {list(few[:10])} are carried{where} by fewer than {MIN_GROUP_CELLS} "
            "cells; leave them out with `groups=` or merge them."
        )
        raise ValueError(msg)
    everywhere = names[carrying == used]
    if everywhere.size:
        hint = ("no cell is without a group: name the baseline group(s) with `reference=`"
                if design == "low_moi" else "a constant indicator cannot be tested")
        msg = f"group(s) {list(everywhere[:10])} are present in every cell of their test; {hint}."
        raise ValueError(msg)


@doc_params(doc_chunked_layer=doc_chunked_layer)
def de(
    adata: AnnData,
    groupby: str,
    *,
    design: Design = "case_control",
    reference: str | Sequence[str] | None = None,
    groups: str | Sequence[str] | None = None,
    layer: str = "normalisr",
    covariates_key: str = "nsc_covariates_norm",
    key_added: str = "nsc_de",
    dimreduce: int = 0,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> None:
    """Test differential expression of every gene between groups of cells.

    For each group ``x`` (0/1 indicator over cells) and gene ``y`` the model is
    ``y = gamma * x + alpha . C + noise`` with the normalised covariates ``C`` removed by
    least squares; the p-value of ``gamma = 0`` is exact (a two-sided t-test on the
    covariate-removed data, ``df = cells - 1 - rank(C) - dimreduce``). Because the
    normalised expression is on the natural-log scale, ``gamma`` is the natural-log
    fold change (divide by ``log(2)`` for log2).

    Designs:

    ``'case_control'``
        Each group indicator against all other cells (all cells are used).
    ``'low_moi'``
        The test of group ``x`` uses only the cells carrying ``x`` alone or no group at
        all (cells with other groups are dropped) and removes the covariates on that
        subset: a low-MOI CRISPR screen with the reference (e.g. non-targeting) cells as
        baseline. On an ``obs`` column with ``reference=``, each group is compared with
        the reference cells only, like scanpy's ``reference=``.
    ``'high_moi'``
        Every other group is a covariate of the test of ``x`` (competition-aware,
        for cells carrying several guides). Computed as ONE multiple regression per gene
        on all groups and covariates; a group that is in the span of the other groups
        and covariates (e.g. identical to another group) cannot be separated from them
        and gets p = 1, logfc = 0.

    Parameters
    ----------
    adata
        Normalised AnnData (:func:`normalisr_sc.pp.normalize` or
        :func:`normalisr_sc.pp.normvar`).
    groupby
        An ``adata.obs`` column (one group per level) or an ``adata.obsm`` key holding a
        cells x groups 0/1 matrix (dense, sparse or a DataFrame whose columns name the
        groups; for arrays, names are read from ``adata.uns[groupby]['names']`` as
        written by :func:`assign_guides`).
    design
        ``'case_control'``, ``'low_moi'`` or ``'high_moi'`` (see above).
    reference
        Group(s) forming the baseline: they are not tested and their cells count as
        carrying no group.
    groups
        Groups to test and report (default: all non-reference groups). The other groups
        still shape the test in the ``low_moi`` and ``high_moi`` designs.
    layer
        Layer holding the normalised expression.
    covariates_key
        ``adata.obsm`` key of the normalised covariates (with the intercept).
    key_added
        Prefix of the result keys.
    dimreduce
        Extra degrees of freedom already used up by the expression (e.g. when covariates
        were removed from it beforehand).
    {doc_chunked_layer}

    Returns
    -------
    Nothing; sets, as genes x groups DataFrames (columns = tested groups):

    - ``adata.varm[key_added + '_pvals']``: p-values (never 0 unless below 1e-323);
    - ``adata.varm[key_added + '_log10p']``: ``-log10`` p-values, exact even when the
      p-value underflows (a p-value of 1e-400 reads 400);
    - ``adata.varm[key_added + '_logfc']``: ``gamma``, the natural-log fold change;
    - ``adata.varm[key_added + '_var']``: residual variance of each gene in each test;

    and ``adata.uns[key_added]`` with ``design``, ``groupby``, ``groups``,
    ``reference``, ``n_cells`` (cells carrying each group in its test), ``n_cells_test``
    (cells used by each test), ``df`` (residual degrees of freedom), ``var_group``
    (residual variance of each group indicator) and the other parameters.

    Examples
    --------
    >>> nsc.pp.normalize(adata, covariates=["batch"])
    >>> nsc.tl.de(adata, "group", reference="control")
    >>> nsc.get.de_df(adata, "case").head()

    A low-MOI CRISPR screen with guide counts in ``obsm``:

    >>> nsc.tl.assign_guides(adata, "grna_counts", mode="max", groups=guide_to_target)
    >>> nsc.tl.de(adata, "nsc_guides", design="low_moi", reference="non-targeting")
    """
    if design not in _KERNELS:
        msg = f"design must be one of {list(_KERNELS)}, got {design!r}."
        raise ValueError(msg)
    check_dimreduce(dimreduce)
    expression, size, covariates = normalised_inputs(
        adata, layer, covariates_key, chunked=chunked, chunk_size=chunk_size
    )
    group_set = read_groups(adata, groupby, reference, groups)
    carrying, used = _cells_per_group(group_set, design)
    _check_group_sizes(group_set, design, carrying, used)

    matrix, rows = group_set.matrix, group_set.tested
    if design == "case_control":
        matrix = matrix[:, rows]
    if design == "case_control" or np.array_equal(rows, np.arange(matrix.shape[1])):
        # A slice selects the results without copying them (groups x genes each).
        rows = slice(None)
    result = _KERNELS[design](
        matrix, expression, covariates, dimreduce=int(dimreduce),
        block_cells=size, progress=progress,
    )
    names = group_set.tested_names

    def frame(values: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(values[rows].T, index=adata.var_names.copy(), columns=names)

    tested = group_set.tested
    ensure_actual(adata)
    adata.varm[f"{key_added}_pvals"] = frame(result.pvals)
    adata.varm[f"{key_added}_log10p"] = frame(result.neg_log10_pvals)
    adata.varm[f"{key_added}_logfc"] = frame(result.gamma)
    adata.varm[f"{key_added}_var"] = frame(result.var_y)
    adata.uns[key_added] = {
        "design": design,
        "groupby": groupby,
        "groups": names,
        "reference": group_set.reference,
        "n_cells": carrying[tested],
        "n_cells_test": used[tested],
        "df": result.df[rows],
        "var_group": result.var_x[rows],
        "layer": layer,
        "covariates_key": covariates_key,
        "dimreduce": int(dimreduce),
    }
    logger.info("de (%s): %d groups x %d genes tested on %s", design, len(names), adata.n_vars,
                groupby)

