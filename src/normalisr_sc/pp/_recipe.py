"""The whole Normalisr normalisation in one call, like scanpy's ``recipe_*``."""

from __future__ import annotations

from collections.abc import Mapping
from copy import deepcopy
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core._blocks import compact_rows, keep_rows_lazily
from .._core._counts import kept_summaries
from .._core._reduce import alternating_scans, is_dask
from .._store import (
    PARAMS,
    check_writable,
    owned_keys,
    read_record,
    store,
    subsetting,
    working,
)
from .._utils import ensure_actual, float_dtype, input_matrix, logger, obs_columns
from .._validate import as_names, check_bool, check_int, check_keys, check_number, check_str
from ._covariates import normcov
from ._lcpm import _lcpm
from ._qc import QC_KEY, SUMMARY, WARN_FRACTION, _qc_reads, qc_outlier
from ._variance import compute_var, normvar

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import DTypeLike

#: Read-count QC bounds of the Normalisr paper's recipe (METHOD 1), with the cell bounds
#: (500 counts, 100 genes) meant for a whole transcriptome of 20,000 genes and scaled
#: down in proportion on fewer genes (a panel, a subset).
DEFAULT_QC = MappingProxyType(
    {
        "min_gene_cells": 50,
        "min_gene_cell_fraction": 0.02,
        "min_cell_counts": 500,
        "min_cell_genes": 100,
        "transcriptome_genes": 20_000,
    }
)
#: Keys a ``qc`` mapping may hold (keyword arguments of :func:`qc_reads`).
QC_KEYS = (
    "min_gene_counts",
    "min_gene_cells",
    "min_gene_cell_fraction",
    "min_cell_counts",
    "min_cell_genes",
    "min_cell_gene_fraction",
    "transcriptome_genes",
)

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
        obs=work.obs[keep],
        var=work.var,
        uns=work.uns,
        obsm={key: value[keep] for key, value in work.obsm.items()},
        layers={
            "lcpm": keep_rows_lazily(lcpm_layer, keep)
            if is_dask(lcpm_layer)
            else compact_rows(lcpm_layer, keep, block_rows)
        },
    )


def _subset_cells(adata: AnnData, positions: np.ndarray) -> None:
    """Subset ``adata`` in place to the cells at ``positions`` (ascending).

    Its dask matrices keep their chunks (:func:`keep_rows_lazily`), not regrouped by
    anndata's indexing, so that later passes read them block by block.
    """
    keep = np.zeros(adata.n_obs, dtype=bool)
    keep[positions] = True
    lazy = {
        key: keep_rows_lazily(value, keep) for key, value in adata.layers.items() if is_dask(value)
    }
    counts = keep_rows_lazily(adata.X, keep) if is_dask(adata.X) else None
    adata._inplace_subset_obs(positions)
    for key, value in lazy.items():
        adata.layers[key] = value
    if counts is not None:
        adata.X = counts


def _detached(adata: AnnData, counts) -> AnnData:
    """Return an in-memory copy of a backed ``adata`` whose X, ``counts``, stays on disk."""
    return AnnData(
        X=counts,
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        uns=deepcopy(dict(adata.uns)),
        obsm={key: value.copy() for key, value in adata.obsm.items()},
        varm={key: value.copy() for key, value in adata.varm.items()},
    )


def _as_dtype(matrix, dtype: np.dtype):
    """Return a dense in-memory or dask layer as ``dtype`` (lazily for dask)."""
    return matrix.astype(dtype) if is_dask(matrix) else np.asarray(matrix, dtype=dtype)


def _validated_qc(qc: Mapping[str, float] | None) -> dict[str, float] | None:
    """``qc`` checked key by key before any work (:func:`qc_reads` checks it again)."""
    if qc is None:
        return None
    check_keys("qc", qc, QC_KEYS)
    qc = dict(qc)
    for name, value in qc.items():
        if name == "transcriptome_genes":
            check_int(f"qc[{name!r}]", value, minimum=1, allow_none=True)
        else:
            check_number(
                f"qc[{name!r}]", value, minimum=0, maximum=1 if name.endswith("fraction") else None
            )
    return qc


def _writes(remove_outliers: bool) -> dict[str, list[str]]:
    """Return the keys the recipe's steps write with their defaults, checked before any work."""
    return {
        "layers": ["lcpm", "normalisr"],
        "obs": ["nsc_weight", *(["nsc_outlier"] if remove_outliers else [])],
        "var": ["nsc_scale"],
        "obsm": ["nsc_cov", "nsc_covariates", "nsc_covariates_norm"],
        "varm": ["nsc_normvar"],
        "uns": [
            "lcpm",
            "normalisr",
            "nsc_covariates",
            "nsc_weight",
            *(["nsc_outlier"] if remove_outliers else []),
            QC_KEY,
        ],
    }


def _results(work: AnnData) -> dict[str, dict]:
    """Return everything the steps stored in ``work``, by container, as the writer takes it.

    That is what ``work``'s record lists as written (:func:`owned_keys`).
    """
    keys = owned_keys(work)
    results: dict[str, dict] = {}
    for container, names in keys.items():
        source = getattr(work, container)
        values = {
            key: (source[key].to_numpy() if container in ("obs", "var") else source[key])
            for key in names
        }
        if values:
            results[container] = values
    return results


def _summary(work: AnnData, n_cells: int, n_genes: int, n_outliers: int | None) -> dict:
    """Return the QC summary of the whole recipe, in terms of the user's cells and genes."""
    summary = dict(read_record(work, QC_KEY).get(SUMMARY, {}))
    summary.update(
        n_cells_in=n_cells, n_genes_in=n_genes, n_genes_kept=work.n_vars, n_cells_kept=work.n_obs
    )
    if n_outliers is not None:
        summary["outliers_removed"] = n_outliers
    return summary


@alternating_scans()
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
    dtype: DTypeLike = "float64",
    copy: bool = False,
) -> AnnData | None:
    """Run the Normalisr normalisation from raw counts to test-ready expression.

    The steps, in order: :func:`qc_reads` (with ``qc``) -> :func:`lcpm` ->
    :func:`normcov` (summary covariates plus ``covariates``) -> :func:`compute_var` ->
    :func:`qc_outlier` (if ``remove_outliers``) -> :func:`normvar`.

    The steps run on a lightweight AnnData holding only the counts and the covariate
    columns; ``adata`` is changed only once every step has succeeded, so a failure
    leaves it exactly as it was.

    Default read-count QC is the Normalisr paper's, with the cell bounds scaled to the
    genes measured: a gene must be detected in at least 50 cells and 2% of cells, and a
    cell needs at least 500 counts and 100 detected genes per 20,000 genes measured
    (so a whole transcriptome is held to the paper's bounds and a 300-gene panel to
    7.5 counts and 1.5 genes). What QC removed, per criterion, is in
    ``adata.uns['nsc_qc']['summary']`` (:func:`format_qc_summary`); removing more
    than 10% of the cells or genes is a logged WARNING saying by which bound.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw UMI counts.
    covariates
        ``adata.obs`` columns to remove as confounders (batch, replicate, ...).
    qc
        Keyword arguments of :func:`qc_reads` (bounds and ``transcriptome_genes``);
        default :data:`DEFAULT_QC`, described above. Bounds left out are off, and
        without ``transcriptome_genes`` the bounds apply as given. ``None`` skips
        read-count QC.
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
    dtype
        Float type of the two stored cells x genes layers, ``'float64'`` (default) or
        ``'float32'`` (half the memory and h5ad size). Every computation runs in float64
        whatever ``dtype``: the log CPM the later steps read stays float64 during the
        recipe and each layer is rounded once, when stored, so a float32 layer is the
        float64 result rounded to float32 (relative error at most 6e-8). Covariates,
        weights and fitted parameters are float64 either way.
    copy
        Return a new AnnData instead of changing ``adata``. Required for a backed
        ``adata`` (which cannot be subset in place); the copy is in memory except its
        counts, which stay on disk and are read lazily.

    Returns
    -------
    A new AnnData if ``copy``, else ``None``. ``adata`` is subset to the cells and
    genes passing QC and receives every result of the steps: ``layers['lcpm']``,
    ``layers['normalisr']``, ``obsm['nsc_cov']``, ``obsm['nsc_covariates']``,
    ``obsm['nsc_covariates_norm']``, ``obs['nsc_weight']``, ``obs['nsc_outlier']``,
    ``var['nsc_scale']``, ``varm['nsc_normvar']``, the parameters of each step under
    the key of its output (``uns['lcpm']['params']``, ``uns['nsc_covariates']['params']``,
    ``uns['nsc_weight']['params']``, ``uns['nsc_outlier']['params']``,
    ``uns['normalisr']['params']``) and the QC record ``uns['nsc_qc']`` (``params`` of
    the read-count QC and the ``summary``).

    Examples
    --------
    >>> adata = nsc.datasets.simulate()
    >>> nsc.pp.normalize(adata, covariates=["batch"])
    >>> adata.layers["normalisr"].shape == adata.shape
    True
    """
    columns = obs_columns(adata, as_names("covariates", covariates))
    qc = _validated_qc(qc)
    check_bool("remove_outliers", remove_outliers)
    check_str("layer", layer, allow_none=True)
    check_int("stepmax", stepmax, minimum=1)
    check_bool("keepvar", keepvar)
    check_bool("chunked", chunked, allow_none=True)
    check_int("chunk_size", chunk_size, minimum=1, allow_none=True)
    checked = float_dtype("dtype", dtype)
    assert checked is not None  # allow_none is False
    dtype = checked
    check_bool("copy", copy)
    writes = _writes(remove_outliers)
    if not copy:
        check_writable(adata, writes)
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
    var = pd.DataFrame({_POSITION: np.arange(adata.n_vars)}, index=_unique_names(adata.var_names))
    work = AnnData(X=counts, obs=obs, var=var)
    with working(work):
        counted = None
        if qc is not None:
            # The last QC round summed the kept counts: lcpm needs not read them again.
            bounds: dict[str, Any] = qc  # floats, and transcriptome_genes an int or None
            counted = kept_summaries(_qc_reads(work, **bounds, chunk_size=size))
        _lcpm(work, chunk_size=size, counted=counted)
        work.X = None  # the remaining steps need no counts
        normcov(work, columns)
        compute_var(work, stepmax=stepmax, chunk_size=size)
        n_outliers = None
        if remove_outliers:
            qc_outlier(work, inplace=False)
            outliers = work.obs["nsc_outlier"].to_numpy()
            n_outliers = int(outliers.sum())
            if n_outliers > WARN_FRACTION * outliers.size:
                logger.warning(
                    "normalize removed %s of %s cells (%.1f%%) as variance outliers; pass "
                    "remove_outliers=False to keep them.",
                    f"{n_outliers:,}",
                    f"{outliers.size:,}",
                    100 * outliers.mean(),
                )
            with subsetting(work):
                work._init_as_actual(_drop_cells(work, ~outliers, size))
        normvar(work, keepvar=keepvar, dtype=dtype, chunk_size=size)

        summary = _summary(work, adata.n_obs, adata.n_vars, n_outliers)
        results = _results(work)
    records = results["uns"] = {key: deepcopy(dict(value)) for key, value in results["uns"].items()}
    if remove_outliers:
        records["nsc_outlier"][PARAMS]["removed"] = True
    records[QC_KEY] = {**records.get(QC_KEY, {}), SUMMARY: summary}
    if dtype != np.float64:
        # normvar read the float64 log CPM; its stored copy is rounded only now.
        log_cpm = results["layers"].pop("lcpm")
        del work.layers["lcpm"]
        results["layers"]["lcpm"] = _as_dtype(log_cpm, dtype)
        del log_cpm
        records["lcpm"][PARAMS]["dtype"] = dtype.name
    if copy:
        adata = _detached(adata, counts) if adata.isbacked else adata.copy()
    check_writable(adata, {container: list(values) for container, values in results.items()})
    ensure_actual(adata)
    with subsetting(adata):
        if work.n_obs != adata.n_obs:
            _subset_cells(adata, work.obs[_POSITION].to_numpy())
        if work.n_vars != adata.n_vars:
            adata._inplace_subset_var(work.var[_POSITION].to_numpy())
    store(adata, None, None, **results)
    logger.info("normalize: %d cells x %d genes normalised", adata.n_obs, adata.n_vars)
    return adata if copy else None
