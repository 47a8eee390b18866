"""The whole Normalisr normalisation in one call, like scanpy's ``recipe_*``."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core._blocks import compact_rows
from .._utils import (
    UNS_KEY,
    block_cells,
    check_new_layer,
    ensure_actual,
    get_matrix,
    logger,
    obs_columns,
)
from ._covariates import normcov
from ._lcpm import lcpm
from ._qc import qc_outlier, qc_reads
from ._variance import compute_var, normvar

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Read-count QC bounds of the Normalisr paper's recipe (METHOD 1).
DEFAULT_QC = MappingProxyType({
    "min_gene_cells": 50,
    "min_gene_cell_fraction": 0.02,
    "min_cell_counts": 500,
    "min_cell_genes": 100,
})

#: Column of the working object's obs/var holding positions in the user's AnnData.
_POSITION = "_nsc_position"


def _unique_names(names: pd.Index) -> pd.Index:
    """``names``, or positions as names if they are not unique."""
    return names if names.is_unique else pd.Index(np.arange(names.size).astype(str))


def _drop_cells(work: AnnData, keep: np.ndarray) -> AnnData:
    """``work`` (holding no counts) restricted to the cells in ``keep``.

    Unlike ``work[keep].copy()``, the log CPM layer is compacted in place rather than
    copied, so that the whole recipe never holds two copies of it.
    """
    return AnnData(
        obs=work.obs[keep], var=work.var, uns=work.uns,
        obsm={key: value[keep] for key, value in work.obsm.items()},
        layers={"lcpm": compact_rows(work.layers["lcpm"], keep, block_cells())},
    )


def normalize(
    adata: AnnData,
    covariates: Sequence[str] | str | None = None,
    *,
    qc: Mapping[str, float] | None = DEFAULT_QC,
    remove_outliers: bool = True,
    layer: str | None = None,
    stepmax: int = 1,
    keepvar: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Run the Normalisr normalisation from raw counts to test-ready expression.

    The steps, in order: :func:`qc_reads` (with ``qc``) -> :func:`lcpm` ->
    :func:`normcov` (summary covariates plus ``covariates``) -> :func:`compute_var` ->
    :func:`qc_outlier` (if ``remove_outliers``) -> :func:`normvar`.

    The steps run on a lightweight AnnData holding only the counts and the covariate
    columns; ``adata`` is changed only once every step has succeeded, so a failure
    leaves it exactly as it was.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw UMI counts.
    covariates
        ``adata.obs`` columns to remove as confounders (batch, replicate, ...).
    qc
        Keyword arguments of :func:`qc_reads`; default: genes detected in at least 50
        cells and 2% of cells, cells with at least 500 counts and 100 genes. ``None``
        skips read-count QC.
    remove_outliers
        Drop variance-outlier cells (:func:`qc_outlier`).
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    stepmax
        Passed to :func:`compute_var`.
    keepvar
        Passed to :func:`normvar`.
    copy
        Return a new AnnData instead of changing ``adata``.

    Returns
    -------
    A new AnnData if ``copy``, else ``None``. ``adata`` is subset to the cells and
    genes passing QC and receives ``layers['lcpm']``, ``layers['normalisr']``,
    ``obsm['nsc_cov']``, ``obsm['nsc_covariates']``, ``obsm['nsc_covariates_norm']``,
    ``obs['nsc_weight']``, ``obs['nsc_outlier']``, ``var['nsc_scale']`` and
    ``uns['normalisr']``.

    Examples
    --------
    >>> adata = nsc.datasets.simulate()
    >>> nsc.pp.normalize(adata, covariates=["batch"])
    >>> adata.layers["normalisr"].shape == adata.shape
    True
    """
    columns = obs_columns(adata, covariates)
    for key in ("lcpm", "normalisr"):
        check_new_layer(adata, key)
    # The working object keeps the user's names if unique (error messages name cells) and
    # carries each cell's and gene's position for the way back to ``adata``.
    obs = adata.obs[columns].set_axis(_unique_names(adata.obs_names))
    obs[_POSITION] = np.arange(adata.n_obs)
    var = pd.DataFrame({_POSITION: np.arange(adata.n_vars)},
                       index=_unique_names(adata.var_names))
    work = AnnData(X=get_matrix(adata, layer), obs=obs, var=var)
    if qc is not None:
        qc_reads(work, **qc)
    lcpm(work)
    work.X = None  # the remaining steps need no counts
    normcov(work, columns)
    compute_var(work, stepmax=stepmax)
    if remove_outliers:
        qc_outlier(work, inplace=False)
        work = _drop_cells(work, ~work.obs["nsc_outlier"].to_numpy())
        work.uns[UNS_KEY]["qc_outlier"]["removed"] = True
    normvar(work, keepvar=keepvar)

    if copy:
        adata = adata.copy()
    ensure_actual(adata)
    if work.n_obs != adata.n_obs:
        adata._inplace_subset_obs(work.obs[_POSITION].to_numpy())
    if work.n_vars != adata.n_vars:
        adata._inplace_subset_var(work.var[_POSITION].to_numpy())
    for key in ("lcpm", "normalisr"):
        adata.layers[key] = work.layers[key]
    for key in ("nsc_cov", "nsc_covariates", "nsc_covariates_norm"):
        adata.obsm[key] = work.obsm[key].set_axis(adata.obs_names)
    for key in ("nsc_weight", "nsc_outlier"):
        if key in work.obs:
            adata.obs[key] = work.obs[key].to_numpy()
    adata.var["nsc_scale"] = work.var["nsc_scale"].to_numpy()
    adata.uns[UNS_KEY] = {**adata.uns.get(UNS_KEY, {}), **work.uns[UNS_KEY]}
    logger.info("normalize: %d cells x %d genes normalised", adata.n_obs, adata.n_vars)
    return adata if copy else None
