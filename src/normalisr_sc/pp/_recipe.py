"""The whole Normalisr normalisation in one call, like scanpy's ``recipe_*``."""

from __future__ import annotations

from copy import deepcopy
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core._blocks import compact_rows
from .._core._reduce import is_dask
from .._utils import (
    UNS_KEY,
    check_new_layer,
    ensure_actual,
    input_matrix,
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


def _drop_cells(work: AnnData, keep: np.ndarray, block_rows: int) -> AnnData:
    """``work`` (holding no counts) restricted to the cells in ``keep``.

    Unlike ``work[keep].copy()``, an in-memory log CPM layer is compacted in place
    rather than copied, so that the whole recipe never holds two copies of it; a lazy
    (dask) one is subset lazily.
    """
    lcpm_layer = work.layers["lcpm"]
    return AnnData(
        obs=work.obs[keep], var=work.var, uns=work.uns,
        obsm={key: value[keep] for key, value in work.obsm.items()},
        layers={"lcpm": lcpm_layer[keep] if is_dask(lcpm_layer)
                else compact_rows(lcpm_layer, keep, block_rows)},
    )


def _detached(adata: AnnData, counts) -> AnnData:
    """An in-memory copy of a backed ``adata`` whose X is ``counts``, read lazily from disk."""
    return AnnData(
        X=counts, obs=adata.obs.copy(), var=adata.var.copy(), uns=deepcopy(dict(adata.uns)),
        obsm={key: value.copy() for key, value in adata.obsm.items()},
        varm={key: value.copy() for key, value in adata.varm.items()},
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
    chunked: bool | None = None,
    chunk_size: int | None = None,
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
    chunked
        Stream the counts in blocks of ``chunk_size`` cells as a dask array: every step
        is a few passes over blocks accumulating small statistics, the counts stay
        sparse (or on disk), and ``layers['lcpm']`` and ``layers['normalisr']`` are
        stored as lazy dask arrays recomputed block by block from the counts and the
        fitted parameters whenever they are read -- no dense cells x genes matrix is
        ever held. With a ``dask.distributed`` client active, the passes run on its
        cluster. Default: when the counts already are a dask array or ``adata`` is
        backed. Results equal those of the in-memory path.
    chunk_size
        Cells per block; default ``nsc.settings.block_cells``. Memory grows linearly
        with it: a few dense float64 blocks of ``chunk_size`` x genes are alive at once
        per dask thread.
    copy
        Return a new AnnData instead of changing ``adata``. Required for a backed
        ``adata`` (which cannot be subset in place); the copy is in memory except its
        counts, which stay on disk and are read lazily.

    Returns
    -------
    A new AnnData if ``copy``, else ``None``. ``adata`` is subset to the cells and
    genes passing QC and receives ``layers['lcpm']``, ``layers['normalisr']``,
    ``obsm['nsc_cov']``, ``obsm['nsc_covariates']``, ``obsm['nsc_covariates_norm']``,
    ``obs['nsc_weight']``, ``obs['nsc_outlier']``, ``var['nsc_scale']``,
    ``varm['nsc_normvar']`` and ``uns['normalisr']``.

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
    if adata.isbacked and not copy:
        msg = (
            "a backed AnnData cannot be subset in place to the cells and genes passing QC; "
            "pass copy=True (the result keeps the counts on disk and reads them lazily)."
        )
        raise ValueError(msg)
    counts, size = input_matrix(adata, layer, chunked=chunked, chunk_size=chunk_size)
    # The working object keeps the user's names if unique (error messages name cells) and
    # carries each cell's and gene's position for the way back to ``adata``.
    obs = adata.obs[columns].set_axis(_unique_names(adata.obs_names))
    obs[_POSITION] = np.arange(adata.n_obs)
    var = pd.DataFrame({_POSITION: np.arange(adata.n_vars)},
                       index=_unique_names(adata.var_names))
    work = AnnData(X=counts, obs=obs, var=var)
    if qc is not None:
        qc_reads(work, **qc, chunk_size=size)
    lcpm(work, chunk_size=size)
    work.X = None  # the remaining steps need no counts
    normcov(work, columns)
    compute_var(work, stepmax=stepmax, chunk_size=size)
    if remove_outliers:
        qc_outlier(work, inplace=False)
        work = _drop_cells(work, ~work.obs["nsc_outlier"].to_numpy(), size)
        work.uns[UNS_KEY]["qc_outlier"]["removed"] = True
    normvar(work, keepvar=keepvar, chunk_size=size)

    if copy:
        adata = _detached(adata, counts) if adata.isbacked else adata.copy()
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
    adata.varm["nsc_normvar"] = work.varm["nsc_normvar"].set_axis(adata.var_names)
    adata.uns[UNS_KEY] = {**adata.uns.get(UNS_KEY, {}), **work.uns[UNS_KEY]}
    logger.info("normalize: %d cells x %d genes normalised", adata.n_obs, adata.n_vars)
    return adata if copy else None
