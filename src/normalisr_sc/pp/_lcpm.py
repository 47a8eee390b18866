"""Bayesian log CPM (METHOD 2) and the gene scaling factor (METHOD 3)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._blocks import n_blocks, row_block, row_slices
from .._core._counts import (
    SCALING_VARIABLES,
    CountSummaries,
    GeneStatistics,
    check_count_dtype,
    lcpm_block,
    lcpm_chunk,
    scaling_factor_values,
    summary_covariates,
)
from .._core._moments import in_parts
from .._core._reduce import accumulate, is_dask, thread_count
from .._docs import doc_chunked_counts, doc_params
from .._progress import progress
from .._store import check_writable, side_key, store
from .._utils import float_dtype, input_matrix, logger, matrix_name
from .._validate import check_bool, check_choice, check_int, check_number, check_str

if TYPE_CHECKING:
    from anndata import AnnData
    from numpy.typing import DTypeLike

#: Column names of ``adata.obsm['nsc_cov']``, the cellular summary covariates.
SUMMARY_COLUMNS = ("log_total_counts", "n_zero_genes", "log_total_counts_sq")
#: Keys :func:`lcpm` writes besides its layer.
COV_KEY, SCALE_KEY = "nsc_cov", "nsc_scale"


def _summarise_counts(
    adata: AnnData,
    counts,
    layer: str | None,
    block_cells: int,
    desc: str,
    *,
    proportions: bool = True,
) -> tuple[np.ndarray, np.ndarray, GeneStatistics]:
    """One pass over valid counts: per-cell totals and zero-gene counts, per-gene sums.

    Invalid counts and cells without any count are refused. Without ``proportions``
    the genes' sums of proportions are left out (NaN) and the other sums, exact in any
    order, are made on threads in memory.
    """
    source = matrix_name(layer)
    check_count_dtype(counts.dtype, source=source)
    n_jobs = 1 if is_dask(counts) or proportions else thread_count()
    summaries = accumulate(
        partial(CountSummaries, adata.n_vars, proportions=proportions, n_jobs=n_jobs),
        counts,
        block_cells=block_cells,
        progress=progress,
        desc=desc,
    )
    summaries.check.raise_if_invalid(source)
    totals, zeros = summaries.cells.values().T
    _refuse_empty_cells(adata, totals)
    return totals, zeros, summaries.genes


def _refuse_empty_cells(adata: AnnData, totals: np.ndarray) -> None:
    """Refuse cells without any count (Bayesian log CPM needs one)."""
    if (totals == 0).any():
        empty = adata.obs_names[totals == 0]
        msg = (
            f"{empty.size} cell(s) have zero total count (e.g. {list(empty[:3])}); Bayesian "
            "log CPM needs at least one count per cell. Remove them first, e.g. "
            "`nsc.pp.qc_reads(adata, min_cell_counts=1)`."
        )
        raise ValueError(msg)


def _lcpm_in_memory(
    counts, total: float, varscale: float, seed: int | None, dtype: np.dtype, block_cells: int
) -> np.ndarray:
    """Compute the dense log CPM block by block."""
    n_cells, n_genes = counts.shape
    rng = np.random.default_rng(seed) if varscale > 0 else None
    log_cpm = np.empty((n_cells, n_genes), dtype=dtype)
    # float64 blocks are computed in place, others in a buffer and then converted.
    buffer = None
    if dtype != np.float64:
        buffer = np.empty((min(block_cells, n_cells), n_genes))
    # Without resampling each cell's values depend on its counts only: parts of a block's
    # cells are computed on several threads, exactly as by one.
    n_jobs = 1 if rng is not None else thread_count()
    blocks = row_slices(n_cells, block_cells)
    for rows in progress(blocks, n_blocks(n_cells, block_cells), "lcpm"):
        block = row_block(counts, rows)
        out = log_cpm[rows] if buffer is None else buffer[: block.shape[0]]
        if rng is None:

            def cells(part: slice, block=block, out=out, rows=rows) -> None:
                lcpm_block(row_block(block, part), total, out=out[part])
                if buffer is not None:
                    log_cpm[rows][part] = out[part]

            in_parts(cells, block.shape[0], n_genes, n_jobs)
        else:
            lcpm_block(block, total, varscale=varscale, rng=rng, out=out)
            if buffer is not None:
                log_cpm[rows] = out
    return log_cpm


@doc_params(doc_chunked_counts=doc_chunked_counts)
def lcpm(
    adata: AnnData,
    *,
    layer: str | None = None,
    key_added: str = "lcpm",
    varscale: float = 0.0,
    seed: int | None = None,
    dtype: DTypeLike = "float64",
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> None:
    """Bayesian log counts per million, cellular summary covariates and gene scaling factor.

    Each count ``k`` is replaced by the posterior mean of its log proportion under a
    binomial sampling model with a uniform prior, ``digamma(k + 1) - digamma(T + 2)``
    with ``T`` the total count of the matrix, evaluated once per distinct count value.
    Each cell is then shifted so that its proportions sum to one million. Zero counts
    get a finite value, so the result is dense; a sparse input is never densified as
    integers, only the float result is built, one block of cells at a time. Duplicate
    entries of a sparse matrix count as their sum (read from a canonical copy when
    needed: the counts themselves are never changed).

    Streamed (see ``chunked``), the log CPM is not computed here but stored as a lazy
    dask array, recomputed block by block from the counts and the matrix total
    whenever it is read (by the next steps, or when the AnnData is written).
    Resampling (``varscale > 0``) is then refused: it would draw new noise at every
    read.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw UMI counts (dense, CSR or CSC).
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    key_added
        Layer receiving the log CPM. The side outputs keep their names
        (``obsm['nsc_cov']``, ``var['nsc_scale']``) with the default ``'lcpm'`` and
        are keyed by any other (``obsm[key_added + '_cov']``,
        ``var[key_added + '_scale']``), as scanpy's ``neighbors`` does; the record
        ``uns[key_added]`` names them (``'cov_key'``, ``'scale_key'``), which is how
        :func:`~normalisr_sc.pp.normcov` and :func:`~normalisr_sc.pp.normvar` find them.
    varscale
        If positive, resample each entry from a Normal with ``varscale`` times the
        posterior variance (``trigamma(k + 1) - trigamma(T + 2)``) around the mean.
    seed
        Seed of the resampling.
    dtype
        Float type of the stored layer, ``'float64'`` (default) or ``'float32'`` (half
        the memory). Computation is float64 throughout, block by block; each value is
        rounded once, when stored.
    {doc_chunked_counts}

    Returns
    -------
    Nothing; sets

    ``adata.layers[key_added]``
        Dense log CPM, cells x genes (a lazy dask array when streamed).
    ``adata.obsm['nsc_cov']`` (``key_added + '_cov'`` under another key)
        DataFrame of the cellular summary covariates ``log_total_counts``,
        ``n_zero_genes`` and ``log_total_counts_sq``.
    ``adata.var['nsc_scale']`` (``key_added + '_scale'`` under another key)
        Gene scaling factor in [0, 1] (zero-count fraction, maximum mapped to 1), see
        :func:`normalisr_sc.pp.scaling_factor`.
    ``adata.uns[key_added]``
        ``cov_key`` and ``scale_key``, the keys of the two above; ``params``:
        parameters and the matrix total.

    Examples
    --------
    >>> nsc.pp.lcpm(adata)
    >>> adata.layers["lcpm"].shape == adata.shape
    True
    """
    _lcpm(
        adata,
        layer=layer,
        key_added=key_added,
        varscale=varscale,
        seed=seed,
        dtype=dtype,
        chunked=chunked,
        chunk_size=chunk_size,
    )


def _lcpm(
    adata: AnnData,
    *,
    layer: str | None = None,
    key_added: str = "lcpm",
    varscale: float = 0.0,
    seed: int | None = None,
    dtype: DTypeLike = "float64",
    chunked: bool | None = None,
    chunk_size: int | None = None,
    counted: tuple[np.ndarray, np.ndarray, GeneStatistics] | None = None,
) -> None:
    """Run :func:`lcpm`; with ``counted``, on the count summaries given rather than read.

    ``counted`` holds the cell totals, zero-gene counts and :class:`GeneStatistics` of
    the counts as :func:`_summarise_counts` would find them, counts already checked:
    :func:`normalize` hands over those of the read-count QC's last round
    (:func:`~normalisr_sc._core._counts.kept_summaries`), so that the counts are not
    read once more for them.
    """
    check_str("layer", layer, allow_none=True)
    check_str("key_added", key_added)
    varscale = check_number("varscale", varscale, minimum=0)
    seed = check_int("seed", seed, minimum=0, allow_none=True)
    checked = float_dtype("dtype", dtype)
    assert checked is not None  # allow_none is False
    dtype = checked
    check_chunking(chunked, chunk_size)
    cov_key = side_key(key_added, "lcpm", COV_KEY, "cov")
    scale_key = side_key(key_added, "lcpm", SCALE_KEY, "scale")
    check_writable(
        adata,
        {"layers": [key_added], "obsm": [cov_key], "var": [scale_key], "uns": [key_added]},
    )
    counts, size = input_matrix(adata, layer, chunked=chunked, chunk_size=chunk_size)
    streamed = is_dask(counts)
    if streamed and varscale > 0:
        msg = (
            "varscale > 0 resamples the log CPM at random, but streamed (chunked) lcpm stores "
            "it lazily and would draw new noise at every read. Use varscale=0, or load the "
            "counts into memory (e.g. `adata = adata.to_memory()`, or "
            "`adata.X = adata.X.compute()` for a dask array) and pass chunked=False."
        )
        raise ValueError(msg)
    if counted is None:
        # The default scaling factor (zero fraction) needs no sums of proportions.
        totals, zeros, gene_stats = _summarise_counts(
            adata, counts, layer, size, "lcpm: counts", proportions=False
        )
    else:
        totals, zeros, gene_stats = counted
        if totals.shape != (adata.n_obs,) or zeros.shape != (adata.n_obs,):
            msg = "lcpm: the count summaries handed over are not those of these cells."
            raise ValueError(msg)
        _refuse_empty_cells(adata, totals)
    total = float(totals.sum())
    scale = scaling_factor_values(gene_stats)
    if is_dask(counts):
        import dask.array as da

        log_cpm = da.map_blocks(
            lcpm_chunk,
            counts,
            total=total,
            float_type=dtype,
            dtype=dtype,
            meta=np.empty((0, 0), dtype=dtype),
        )
    else:
        log_cpm = _lcpm_in_memory(counts, total, varscale, seed, dtype, size)
    cov = pd.DataFrame(
        summary_covariates(totals, zeros), index=adata.obs_names, columns=list(SUMMARY_COLUMNS)
    )
    store(
        adata,
        key_added,
        {
            "layer": layer,
            "key_added": key_added,
            "varscale": varscale,
            "seed": seed,
            "dtype": dtype.name,
            "total_counts": total,
        },
        layers={key_added: log_cpm},
        obsm={cov_key: cov},
        var={scale_key: scale},
        uns={key_added: {"cov_key": cov_key, "scale_key": scale_key}},
    )
    logger.info("lcpm: wrote adata.layers[%r] (%d cells x %d genes)", key_added, *adata.shape)


@doc_params(doc_chunked_counts=doc_chunked_counts)
def scaling_factor(
    adata: AnnData,
    *,
    variable: str = "zero_fraction",
    zero_at: float | str = 0.0,
    one_at: float | str = "max",
    layer: str | None = None,
    key_added: str = "nsc_scale",
    inplace: bool = True,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> np.ndarray | None:
    """Per-gene exponent of the variance normalisation.

    Lowly expressed genes are confounded by sequencing depth and need the full cell
    variance weight; well measured genes need little. The scaling factor is a gene-level
    variable mapped linearly so that ``zero_at`` becomes 0 and ``one_at`` becomes 1.
    :func:`normalisr_sc.pp.lcpm` already stores the default; call this to use another.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw UMI counts.
    variable
        ``'zero_fraction'`` (default: fraction of cells where the gene has zero count),
        ``'log_zero_fraction'``, ``'log_detected_fraction'``, ``'log_mean_proportion'``
        (log of the gene's share of all counts) or ``'log_mean_cell_proportion'`` (log of
        the gene's mean proportion per cell).
    zero_at, one_at
        Values of ``variable`` mapped to 0 and 1: numbers, ``'min'`` or ``'max'``.
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    key_added
        ``adata.var`` column receiving the factor.
    inplace
        Store the factor; otherwise return it.
    {doc_chunked_counts}

    Returns
    -------
    The factor per gene if not ``inplace``; else ``None``, and sets
    ``adata.var[key_added]`` and the parameters in ``adata.uns[key_added]['params']``.
    """
    check_choice("variable", variable, list(SCALING_VARIABLES))
    zero_at, one_at = _mapping_end("zero_at", zero_at), _mapping_end("one_at", one_at)
    check_str("layer", layer, allow_none=True)
    check_str("key_added", key_added)
    check_bool("inplace", inplace)
    check_chunking(chunked, chunk_size)
    if inplace:
        check_writable(adata, {"var": [key_added], "uns": [key_added]})
    counts, size = input_matrix(adata, layer, chunked=chunked, chunk_size=chunk_size)
    *_, gene_stats = _summarise_counts(adata, counts, layer, size, "scaling factor")
    scale = scaling_factor_values(gene_stats, variable, zero_at=zero_at, one_at=one_at)
    if not inplace:
        return scale
    store(
        adata,
        key_added,
        {
            "variable": variable,
            "zero_at": zero_at,
            "one_at": one_at,
            "layer": layer,
            "key_added": key_added,
        },
        var={key_added: scale},
    )
    return None


def _mapping_end(name: str, value: float | str) -> float | str:
    """``zero_at``/``one_at``: ``'min'``, ``'max'`` or a finite number."""
    if isinstance(value, str):
        check_choice(name, value, ("min", "max"))
        return value
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        msg = f"`{name}` must be a finite number, 'min' or 'max', got {value!r}."
        raise ValueError(msg)
    return check_number(name, value)


def check_chunking(chunked: bool | None, chunk_size: int | None) -> None:
    """Validate the ``chunked`` and ``chunk_size`` parameters shared by the streamed steps."""
    check_bool("chunked", chunked, allow_none=True)
    check_int("chunk_size", chunk_size, minimum=1, allow_none=True)
