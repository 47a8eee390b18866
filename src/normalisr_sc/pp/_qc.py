"""Quality control: read-count bounds (METHOD 1) and variance-outlier cells (METHOD 6).

Both steps record what they removed, per criterion, in ``adata.uns['nsc_qc']
['summary']`` (read it as text with :func:`format_qc_summary`), and warn when more
than :data:`WARN_FRACTION` of the cells or genes go.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .._core._blocks import keep_rows_lazily
from .._core._counts import (
    ReadBounds,
    ReadFilter,
    ReadSums,
    read_filter,
    subset_counts,
)
from .._core._normalize import variance_outliers
from .._core._reduce import is_dask
from .._docs import doc_chunked_counts, doc_params
from .._progress import progress
from .._store import check_writable, read_record, side_key, store, subsetting
from .._utils import ensure_actual, input_matrix, logger, matrix_name, require
from .._validate import check_bool, check_int, check_number, check_str

if TYPE_CHECKING:
    from anndata import AnnData

#: Removing more than this fraction of the cells or of the genes is a logged WARNING.
WARN_FRACTION = 0.1
#: Key of ``adata.uns`` of the QC record: :func:`qc_reads`'s ``params`` and the
#: ``summary`` of what QC removed (updated by :func:`qc_outlier`).
QC_KEY = "nsc_qc"
#: Entry of ``adata.uns[QC_KEY]`` holding what QC removed.
SUMMARY = "summary"
#: Cell bounds, with what each bounds (for summaries and warnings).
CELL_BOUNDS = {
    "min_cell_counts": "total counts",
    "min_cell_genes": "genes detected",
    "min_cell_gene_fraction": "fraction of genes detected",
}
#: Gene bounds, with what each bounds.
GENE_BOUNDS = {
    "min_gene_counts": "total counts",
    "min_gene_cells": "cells detected in",
    "min_gene_cell_fraction": "fraction of cells detected in",
}
#: Bounds scaled to the genes measured when ``transcriptome_genes`` is given.
SCALED_BOUNDS = ("min_cell_counts", "min_cell_genes")
#: Removals that no single bound explains on the input matrix.
LATER_ROUNDS = "later_rounds"


def scaled_bounds(
    bounds: Mapping[str, float], n_genes: int, transcriptome_genes: int | None
) -> dict[str, float]:
    """``bounds`` with the cell count and cell gene bounds scaled to ``n_genes``.

    The bounds are meant for a whole transcriptome of ``transcriptome_genes`` genes and
    multiplied by ``min(1, n_genes / transcriptome_genes)``; ``None`` keeps them as given.
    """
    factor = 1.0 if transcriptome_genes is None else min(1.0, n_genes / transcriptome_genes)
    return {
        name: (value * factor if name in SCALED_BOUNDS else value) for name, value in bounds.items()
    }


def _first_round_failures(
    sums: ReadSums, bounds: ReadBounds
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per bound, the cells and genes failing it on the input matrix.

    From the sums of QC's first round, which are over all cells and genes.
    """
    cell_counts, cell_genes = sums.cells.values().T
    n_cells, n_genes = cell_counts.size, sums.gene_counts.size
    cells = {
        "min_cell_counts": cell_counts < bounds.min_cell_counts,
        "min_cell_genes": cell_genes < bounds.min_cell_genes,
        "min_cell_gene_fraction": cell_genes < bounds.min_cell_gene_fraction * n_genes,
    }
    genes = {
        "min_gene_counts": sums.gene_counts < bounds.min_gene_counts,
        "min_gene_cells": sums.gene_cells < bounds.min_gene_cells,
        "min_gene_cell_fraction": sums.gene_cells < bounds.min_gene_cell_fraction * n_cells,
    }
    return cells, genes


def _subset(adata: AnnData, cells: np.ndarray, genes: np.ndarray) -> AnnData:
    """Return ``adata[cells, genes].copy()``; a CSR ``X`` by a compiled kernel, dask by chunk.

    One copy for cells and genes at once (anndata copies per call), lazy for dask. The
    kernel's CSR matrix holds the same entries, in the same order, as scipy's indexing
    (:func:`~normalisr_sc._core._counts.subset_counts`), at a fraction of its cost.
    """
    counts = adata.X
    lazy = is_dask(counts)
    if adata.is_view or not (lazy or type(counts) is sparse.csr_matrix):
        return adata[cells, genes].copy()
    adata.X = None
    try:
        kept = adata[cells, genes].copy()
    finally:
        adata.X = counts
    # Lazily, each kept cell stays in its chunk (dask's indexing would regroup them).
    kept.X = keep_rows_lazily(counts, cells, genes) if lazy else subset_counts(counts, cells, genes)
    return kept


def _removed_by(
    failures: Mapping[str, np.ndarray], kept: np.ndarray, bounds: ReadBounds
) -> dict[str, int]:
    """Count the removed items per active bound (on the input), and those removed later."""
    removed = {
        name: int(fails.sum()) for name, fails in failures.items() if getattr(bounds, name) > 0
    }
    explained = np.zeros(kept.size, dtype=bool)
    for fails in failures.values():
        explained |= fails
    removed[LATER_ROUNDS] = int((~kept & ~explained).sum())
    return removed


def _read_summary(result: ReadFilter, bounds: ReadBounds) -> dict[str, Any]:
    cells, genes = result.cells, result.genes
    summary: dict[str, Any] = {
        "n_cells_in": int(cells.size),
        "n_genes_in": int(genes.size),
        "n_cells_kept": int(cells.sum()),
        "n_genes_kept": int(genes.sum()),
        "bounds": {name: float(value) for name, value in vars(bounds).items()},
    }
    if cells.all() and genes.all():
        failures_cells = {name: np.zeros(cells.size, dtype=bool) for name in CELL_BOUNDS}
        failures_genes = {name: np.zeros(genes.size, dtype=bool) for name in GENE_BOUNDS}
    else:
        failures_cells, failures_genes = _first_round_failures(result.first, bounds)
    summary["cells_removed"] = _removed_by(failures_cells, cells, bounds)
    summary["genes_removed"] = _removed_by(failures_genes, genes, bounds)
    return summary


def _warn_reads(summary: Mapping[str, Any], parameter: str) -> None:
    """Log a WARNING for each axis of which more than :data:`WARN_FRACTION` went."""
    for axis, names in (("cells", CELL_BOUNDS), ("genes", GENE_BOUNDS)):
        n_in, n_kept = summary[f"n_{axis}_in"], summary[f"n_{axis}_kept"]
        if n_in == 0 or (n_in - n_kept) <= WARN_FRACTION * n_in:
            continue
        removed = summary[f"{axis}_removed"]
        bounds = summary["bounds"]
        parts = [
            f"{removed[name]:,} below {name}={bounds[name]:g} ({what})"
            for name, what in names.items()
            if removed.get(name)
        ]
        if removed.get(LATER_ROUNDS):
            parts.append(
                f"{removed[LATER_ROUNDS]:,} in later rounds, after other cells or genes went"
            )
        culprits = [name for name in names if removed.get(name)] or list(names)
        logger.warning(
            "read-count QC removed %s of %s %s (%.1f%%): %s. To keep more, lower %s%s.",
            f"{n_in - n_kept:,}",
            f"{n_in:,}",
            axis,
            100 * (n_in - n_kept) / n_in,
            "; ".join(parts),
            " or ".join(f"`{name}`" for name in culprits),
            parameter,
        )


def _current_summary(adata: AnnData) -> dict[str, Any]:
    summary = read_record(adata, QC_KEY).get(SUMMARY)
    return dict(summary) if isinstance(summary, Mapping) else {}


def format_qc_summary(summary: Mapping) -> str:
    """Format what quality control removed as plain text (one line per criterion).

    Parameters
    ----------
    summary
        ``adata.uns['nsc_qc']['summary']``, as written by :func:`qc_reads`,
        :func:`qc_outlier` and :func:`normalize`.

    Returns
    -------
    Lines giving cells and genes in and kept, the cells and genes failing each active
    read-count bound on the input (one may fail several), those removed only in later
    rounds, and the variance outliers removed.

    Examples
    --------
    >>> print(nsc.pp.format_qc_summary(adata.uns["nsc_qc"]["summary"]))
    """
    if not isinstance(summary, Mapping):
        msg = f"`summary` must be a mapping (adata.uns['nsc_qc']['summary']), got {summary!r}."
        raise ValueError(msg)
    lines = []
    for axis in ("cells", "genes"):
        n_in, n_kept = summary.get(f"n_{axis}_in"), summary.get(f"n_{axis}_kept")
        if n_in is None or n_kept is None:
            continue
        share = f" ({100 * int(n_kept) / int(n_in):.1f}%)" if int(n_in) else ""
        lines.append(f"{axis}: {int(n_kept):,} of {int(n_in):,} kept{share}")
    bounds = summary.get("bounds", {})
    for axis, names in (("cells", CELL_BOUNDS), ("genes", GENE_BOUNDS)):
        removed = summary.get(f"{axis}_removed", {})
        for name, what in names.items():
            if name in removed:
                lines.append(
                    f"  {axis} below {name}={float(bounds.get(name, np.nan)):g} "
                    f"({what}): {int(removed[name]):,}"
                )
        if int(removed.get(LATER_ROUNDS, 0)):
            lines.append(f"  {axis} removed in later rounds: {int(removed[LATER_ROUNDS]):,}")
    if "outliers_removed" in summary:
        lines.append(f"  cells removed as variance outliers: {int(summary['outliers_removed']):,}")
    return "\n".join(lines) if lines else "no quality control recorded"


@doc_params(doc_chunked_counts=doc_chunked_counts)
def qc_reads(
    adata: AnnData,
    *,
    min_gene_counts: float = 0,
    min_gene_cells: float = 0,
    min_gene_cell_fraction: float = 0.0,
    min_cell_counts: float = 0,
    min_cell_genes: float = 0,
    min_cell_gene_fraction: float = 0.0,
    transcriptome_genes: int | None = None,
    layer: str | None = None,
    inplace: bool = True,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Filter genes and cells by lower bounds on their read counts, iteratively.

    Gene and cell masks are computed together on the current matrix, applied at once,
    and the filtering repeats until nothing changes, so every kept gene and cell
    satisfies every bound in the final matrix. A bound of 0 is switched off.

    With ``transcriptome_genes=N``, ``min_cell_counts`` and ``min_cell_genes`` are the
    bounds for a whole transcriptome of ``N`` genes and are multiplied by
    ``min(1, n_genes / N)``, so that a gene panel or a subset of genes is held to the
    same standard per gene measured (:func:`normalize`'s default).

    What was removed, per bound, goes to ``adata.uns['nsc_qc']['summary']``
    (:func:`format_qc_summary`); removing more than 10% of the cells or genes is a
    logged WARNING naming the bounds responsible.

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
    transcriptome_genes
        Number of genes of the whole transcriptome ``min_cell_counts`` and
        ``min_cell_genes`` are meant for; on fewer genes they shrink in proportion.
        ``None`` applies them as given.
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    inplace
        Subset ``adata`` to the kept cells and genes (like :func:`scanpy.pp.filter_cells`).
        Otherwise return the masks and leave ``adata`` unchanged. A backed ``adata``
        cannot be subset in place; a dask ``X`` is subset lazily.
    {doc_chunked_counts}

    Returns
    -------
    ``None`` if ``inplace``, else boolean masks ``(cells_kept, genes_kept)``. In place,
    the bounds applied are recorded in ``adata.uns['nsc_qc']['params']`` and the
    summary in ``adata.uns['nsc_qc']['summary']``.

    Examples
    --------
    The bounds the Normalisr paper's recipe uses:

    >>> nsc.pp.qc_reads(adata, min_gene_cells=50, min_gene_cell_fraction=0.02,
    ...                 min_cell_counts=500, min_cell_genes=100)
    """
    result = _qc_reads(
        adata,
        min_gene_counts=min_gene_counts,
        min_gene_cells=min_gene_cells,
        min_gene_cell_fraction=min_gene_cell_fraction,
        min_cell_counts=min_cell_counts,
        min_cell_genes=min_cell_genes,
        min_cell_gene_fraction=min_cell_gene_fraction,
        transcriptome_genes=transcriptome_genes,
        layer=layer,
        inplace=inplace,
        chunked=chunked,
        chunk_size=chunk_size,
    )
    return None if inplace else (result.cells, result.genes)


def _qc_reads(
    adata: AnnData,
    *,
    min_gene_counts: float = 0,
    min_gene_cells: float = 0,
    min_gene_cell_fraction: float = 0.0,
    min_cell_counts: float = 0,
    min_cell_genes: float = 0,
    min_cell_gene_fraction: float = 0.0,
    transcriptome_genes: int | None = None,
    layer: str | None = None,
    inplace: bool = True,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> ReadFilter:
    """Run :func:`qc_reads` and return the QC's outcome with the sums of its rounds.

    The sums of the last round are those of the kept cells and genes
    (:func:`kept_summaries`): :func:`normalize` hands them to :func:`lcpm`, which then
    reads the counts once less.
    """
    given = {
        "min_gene_counts": min_gene_counts,
        "min_gene_cells": min_gene_cells,
        "min_gene_cell_fraction": min_gene_cell_fraction,
        "min_cell_counts": min_cell_counts,
        "min_cell_genes": min_cell_genes,
        "min_cell_gene_fraction": min_cell_gene_fraction,
    }
    for name, value in given.items():
        check_number(name, value, minimum=0, maximum=1 if name.endswith("fraction") else None)
    transcriptome_genes = check_int(
        "transcriptome_genes", transcriptome_genes, minimum=1, allow_none=True
    )
    check_str("layer", layer, allow_none=True)
    check_bool("inplace", inplace)
    check_bool("chunked", chunked, allow_none=True)
    check_int("chunk_size", chunk_size, minimum=1, allow_none=True)
    if inplace and adata.isbacked:
        msg = (
            "adata is backed on disk and cannot be subset in place. Pass inplace=False to get "
            "the masks `cells, genes`, then write the kept data to a new backed file with "
            "`adata[cells, genes].copy(filename=...)`, or load it into memory with "
            "`adata[cells, genes].to_memory()`."
        )
        raise ValueError(msg)
    if inplace:
        check_writable(adata, {"uns": [QC_KEY]})
    bounds = ReadBounds(
        **scaled_bounds(
            {name: float(value) for name, value in given.items()},
            adata.n_vars,
            transcriptome_genes,
        )
    )
    counts, size = input_matrix(adata, layer, chunked=chunked, chunk_size=chunk_size)
    # The counts are checked in the pass of the first round (before anything changes).
    result = read_filter(
        counts, bounds, block_cells=size, progress=progress, source=matrix_name(layer)
    )
    cells, genes, rounds = result.cells, result.genes, result.rounds
    if not genes.any() or not cells.any():
        what = "gene" if not genes.any() else "cell"
        msg = (
            f"read-count QC removed every {what} ({adata.n_obs} cells x {adata.n_vars} genes "
            f"in); lower the bounds {vars(bounds)}."
        )
        raise ValueError(msg)
    summary = _read_summary(result, bounds)
    logger.info(
        "qc_reads: removed %d/%d genes and %d/%d cells in %d rounds",
        (~genes).sum(),
        genes.size,
        (~cells).sum(),
        cells.size,
        rounds,
    )
    _warn_reads(summary, " (in nsc.pp.normalize: the `qc=` mapping; `qc=None` skips QC)")
    if not inplace:
        return result
    params = {
        **summary["bounds"],
        "transcriptome_genes": transcriptome_genes,
        "layer": layer,
        "rounds": rounds,
    }
    if not (cells.all() and genes.all()):
        with subsetting(adata):
            adata._init_as_actual(_subset(adata, cells, genes))
    store(adata, QC_KEY, params, uns={QC_KEY: {SUMMARY: summary}})
    return result


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
    Nothing; sets ``adata.obs[key_added]`` (``True`` for outliers), records the
    parameters in ``adata.uns[key_added]['params']`` and the cells removed in
    ``adata.uns['nsc_qc']['summary']['outliers_removed']`` -- with another
    ``key_added`` than the default, in a copy of that QC record,
    ``adata.uns[key_added + '_qc']``, so that the default record is left as it was;
    ``adata.uns[key_added]['qc_key']`` names the QC record written. Removing more than
    10% of the cells is a logged WARNING.
    """
    check_number("pcut", pcut, minimum=0, maximum=1, min_open=True, max_open=True)
    check_number("outrate", outrate, minimum=0, maximum=0.5, min_open=True, max_open=True)
    check_str("weights_key", weights_key)
    check_str("key_added", key_added)
    check_bool("inplace", inplace)
    require(adata, "obs", weights_key, "nsc.pp.compute_var")
    qc_key = side_key(key_added, "nsc_outlier", QC_KEY, "qc")
    check_writable(adata, {"obs": [key_added], "uns": [key_added, qc_key]})
    weights = adata.obs[weights_key].to_numpy(dtype=np.float64)
    if not (np.isfinite(weights) & (weights > 0)).all():
        msg = f"adata.obs[{weights_key!r}] must hold finite positive weights; rerun compute_var."
        raise ValueError(msg)
    outliers, iterations = variance_outliers(weights, pcut=pcut, outrate=outrate)
    n_outliers = int(outliers.sum())
    if outliers.mean() > 2 * outrate:
        msg = (
            f"{n_outliers} of {outliers.size} cells ({outliers.mean():.1%}) are variance "
            f"outliers, more than 2 * outrate = {2 * outrate:.1%}: the cell variance fit is "
            "unreliable. Check read-count QC and covariates, or raise `outrate`."
        )
        raise ValueError(msg)
    logger.info("qc_outlier: %d/%d cells are variance outliers", n_outliers, outliers.size)
    if inplace and n_outliers > WARN_FRACTION * outliers.size:
        logger.warning(
            "variance-outlier QC removed %s of %s cells (%.1f%%) at pcut=%g; to keep more, "
            "lower `pcut` (or pass remove_outliers=False to nsc.pp.normalize).",
            f"{n_outliers:,}",
            f"{outliers.size:,}",
            100 * outliers.mean(),
            pcut,
        )
    params = {
        "pcut": pcut,
        "outrate": outrate,
        "n_outliers": n_outliers,
        "key_added": key_added,
        "iterations": iterations,
        "removed": inplace,
    }
    summary = _current_summary(adata)
    if summary.get("n_cells_kept") != adata.n_obs:  # no read-count QC of these cells
        summary = {
            "n_cells_in": adata.n_obs,
            "n_genes_in": adata.n_vars,
            "n_genes_kept": adata.n_vars,
        }
    summary["outliers_removed"] = n_outliers if inplace else 0
    summary["n_cells_kept"] = adata.n_obs - summary["outliers_removed"]
    flags = outliers
    if inplace:
        ensure_actual(adata)
        with subsetting(adata):
            adata._inplace_subset_obs(~outliers)
        flags = outliers[~outliers]
    qc_record = {**read_record(adata, QC_KEY), SUMMARY: summary}
    store(
        adata,
        key_added,
        params,
        obs={key_added: flags},
        uns={qc_key: qc_record, key_added: {"qc_key": qc_key}},
    )
