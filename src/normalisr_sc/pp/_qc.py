"""Quality control: read-count bounds (METHOD 1) and variance-outlier cells (METHOD 6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._core._counts import ReadBounds, filter_reads, validate_counts
from .._core._normalize import variance_outliers
from .._docs import doc_chunked_counts, doc_params
from .._progress import progress
from .._utils import (
    ensure_actual,
    input_matrix,
    logger,
    matrix_name,
    record_params,
    require,
)

if TYPE_CHECKING:
    from anndata import AnnData


@doc_params(doc_chunked_counts=doc_chunked_counts)
def qc_reads(
    adata: AnnData,
    *,
    min_gene_counts: int = 0,
    min_gene_cells: int = 0,
    min_gene_cell_fraction: float = 0.0,
    min_cell_counts: int = 0,
    min_cell_genes: int = 0,
    min_cell_gene_fraction: float = 0.0,
    layer: str | None = None,
    inplace: bool = True,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Filter genes and cells by lower bounds on their read counts, iteratively.

    Gene and cell masks are computed together on the current matrix, applied at once,
    and the filtering repeats until nothing changes, so every kept gene and cell
    satisfies every bound in the final matrix. A bound of 0 is switched off.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw UMI counts.
    min_gene_counts
        Minimum total count of a gene.
    min_gene_cells
        Minimum number of cells in which a gene is detected (non-zero).
    min_gene_cell_fraction
        Minimum fraction of cells in which a gene is detected.
    min_cell_counts
        Minimum total count of a cell.
    min_cell_genes
        Minimum number of genes detected in a cell.
    min_cell_gene_fraction
        Minimum fraction of genes detected in a cell.
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    inplace
        Subset ``adata`` to the kept cells and genes (like :func:`scanpy.pp.filter_cells`).
        Otherwise return the masks and leave ``adata`` unchanged. A backed ``adata``
        cannot be subset in place; a dask ``X`` is subset lazily.
    {doc_chunked_counts}

    Returns
    -------
    ``None`` if ``inplace``, else boolean masks ``(cells_kept, genes_kept)``.

    Examples
    --------
    The bounds the Normalisr paper's recipe uses:

    >>> nsc.pp.qc_reads(adata, min_gene_cells=50, min_gene_cell_fraction=0.02,
    ...                 min_cell_counts=500, min_cell_genes=100)
    """
    bounds = ReadBounds(
        min_gene_counts, min_gene_cells, min_gene_cell_fraction,
        min_cell_counts, min_cell_genes, min_cell_gene_fraction,
    )
    for name, value in vars(bounds).items():
        if not np.isfinite(value) or value < 0:
            msg = f"{name} must be a non-negative number, got {value!r}."
            raise ValueError(msg)
    for name in ("min_gene_cell_fraction", "min_cell_gene_fraction"):
        if getattr(bounds, name) > 1:
            msg = f"{name} is a fraction and must be at most 1, got {getattr(bounds, name)}."
            raise ValueError(msg)
    if inplace and adata.isbacked:
        msg = (
            "adata is backed on disk and cannot be subset in place. Pass inplace=False to get "
            "the masks `cells, genes`, then write the kept data to a new backed file with "
            "`adata[cells, genes].copy(filename=...)`, or load it into memory with "
            "`adata[cells, genes].to_memory()`."
        )
        raise ValueError(msg)
    counts, size = input_matrix(adata, layer, chunked=chunked, chunk_size=chunk_size)
    validate_counts(counts, source=matrix_name(layer), block_cells=size, progress=progress)
    cells, genes, rounds = filter_reads(counts, bounds, block_cells=size, progress=progress)
    if not genes.any() or not cells.any():
        what = "gene" if not genes.any() else "cell"
        msg = (
            f"read-count QC removed every {what} ({adata.n_obs} cells x {adata.n_vars} genes "
            f"in); lower the bounds {vars(bounds)}."
        )
        raise ValueError(msg)
    logger.info(
        "qc_reads: removed %d/%d genes and %d/%d cells in %d rounds",
        (~genes).sum(), genes.size, (~cells).sum(), cells.size, rounds,
    )
    if not inplace:
        return cells, genes
    # One copy for cells and genes at once (anndata copies per call), lazy for a dask X.
    adata._init_as_actual(adata[cells, genes].copy())
    record_params(adata, "qc_reads", {**vars(bounds), "layer": layer, "rounds": rounds})
    return None


def qc_outlier(
    adata: AnnData,
    *,
    pcut: float = 1e-10,
    outrate: float = 0.02,
    weights_key: str = "nsc_weight",
    key_added: str = "nsc_outlier",
    inplace: bool = True,
) -> None:
    """Flag cells whose variance weight is an outlier, and drop them.

    A Normal distribution is fitted to the weights of the inlier cells, starting from
    the central ``1 - 2 * outrate`` quantile range; cells with a two-sided p-value below
    ``pcut`` divided by the number of cells (Bonferroni) are outliers; fit and test
    alternate until the inlier set is stable.

    Parameters
    ----------
    adata
        AnnData on which :func:`normalisr_sc.pp.compute_var` has run.
    pcut
        Bonferroni-corrected p-value cutoff, in (0, 1).
    outrate
        Expected outlier fraction on either side, in (0, 0.5): starts the fit, and more
        than ``2 * outrate`` outliers in total is an error.
    weights_key
        ``adata.obs`` column holding the cell weights.
    key_added
        ``adata.obs`` column receiving the boolean outlier flag.
    inplace
        Also remove the outlier cells from ``adata``.

    Returns
    -------
    Nothing; sets ``adata.obs[key_added]`` (``True`` for outliers) and records the
    parameters in ``adata.uns['normalisr']['qc_outlier']``.
    """
    if not 0 < pcut < 1:
        msg = f"pcut must be in (0, 1), got {pcut!r}."
        raise ValueError(msg)
    if not 0 < outrate < 0.5:
        msg = f"outrate must be in (0, 0.5), got {outrate!r}."
        raise ValueError(msg)
    require(adata, "obs", weights_key, "nsc.pp.compute_var")
    weights = adata.obs[weights_key].to_numpy(dtype=np.float64)
    if not (np.isfinite(weights) & (weights > 0)).all():
        msg = f"adata.obs[{weights_key!r}] must hold finite positive weights; rerun compute_var."
        raise ValueError(msg)
    outliers, iterations = variance_outliers(weights, pcut=pcut, outrate=outrate)
    if outliers.mean() > 2 * outrate:
        msg = (
            f"{outliers.sum()} of {outliers.size} cells ({outliers.mean():.1%}) are variance "
            f"outliers, more than 2 * outrate = {2 * outrate:.1%}: the cell variance fit is "
            "unreliable. Check read-count QC and covariates, or raise `outrate`."
        )
        raise ValueError(msg)
    logger.info("qc_outlier: %d/%d cells are variance outliers", outliers.sum(), outliers.size)
    ensure_actual(adata)
    adata.obs[key_added] = outliers
    if inplace:
        adata._inplace_subset_obs(~outliers)
    record_params(adata, "qc_outlier", {
        "pcut": pcut, "outrate": outrate, "n_outliers": int(outliers.sum()), "key_added": key_added,
        "iterations": iterations, "removed": inplace,
    })
