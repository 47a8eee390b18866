"""Simple normalisations that keep sparse input sparse: counts per million and min-max."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from .._core._blocks import materialize
from .._core._reduce import PerCell, accumulate, is_dask
from .._docs import doc_params
from .._progress import progress
from .._store import check_writable, store
from .._types import COMPRESSED, is_sparse
from .._utils import float_dtype, input_matrix, logger, matrix_name
from .._validate import check_number, check_str
from ._lcpm import check_chunking

if TYPE_CHECKING:
    from anndata import AnnData
    from numpy.typing import DTypeLike

    from .._types import Compressed

_CHUNKED = """\
chunked
        Read {what} as a dask array in blocks of ``chunk_size`` cells and store the
        result as a lazy dask array (sparse blocks stay sparse), computed block by block
        whenever it is read. Default: when {what} is already a dask array or ``adata`` is
        backed. Results are the same either way.
    chunk_size
        Cells per block; default ``nsc.settings.block_cells``."""

_DTYPE = """\
dtype
        Float type of the stored layer, ``'float64'`` (default) or ``'float32'``. The
        values are computed in float64 and rounded once, when stored."""


def _stored_index(matrix: Compressed, axis: int) -> np.ndarray:
    """Row (``axis=0``) or column (``axis=1``) of each stored value of a CSR/CSC matrix."""
    compressed = {"csr": 0, "csc": 1}[matrix.format]
    if axis == compressed:
        return np.repeat(np.arange(matrix.shape[axis]), np.diff(matrix.indptr))
    return matrix.indices


def _stored_values(block: object) -> np.ndarray:
    """Return the stored values of a sparse block, or the values of a dense one."""
    if isinstance(block, COMPRESSED):
        return block.data
    if is_sparse(block):
        return sparse.csr_matrix(block).data
    return np.asarray(block)


class _RowTotals:
    """Per cell: total of the row; over all cells: the smallest value."""

    def __init__(self) -> None:
        self.totals = PerCell()
        self.minimum = np.inf

    def add(self, rows: slice, block) -> None:
        self.totals.add(rows, np.asarray(block.sum(axis=1, dtype=np.float64)).ravel())
        values = _stored_values(block)
        if values.size:
            self.minimum = min(self.minimum, float(values.min()))

    def merge(self, other: _RowTotals) -> _RowTotals:
        self.totals.merge(other.totals)
        self.minimum = min(self.minimum, other.minimum)
        return self


class _ColumnRange:
    """Per gene: smallest and largest value (implicit zeros of sparse blocks included)."""

    def __init__(self, n_genes: int) -> None:
        self.lowest = np.full(n_genes, np.inf)
        self.highest = np.full(n_genes, -np.inf)

    def add(self, rows: slice, block) -> None:
        if block.shape[0] == 0:
            return
        low, high = block.min(axis=0), block.max(axis=0)
        if is_sparse(block):
            low, high = low.toarray(), high.toarray()
        np.minimum(self.lowest, np.asarray(low, dtype=np.float64).ravel(), out=self.lowest)
        np.maximum(self.highest, np.asarray(high, dtype=np.float64).ravel(), out=self.highest)

    def merge(self, other: _ColumnRange) -> _ColumnRange:
        np.minimum(self.lowest, other.lowest, out=self.lowest)
        np.maximum(self.highest, other.highest, out=self.highest)
        return self


def _scaled(block, factor: np.ndarray, axis: int, dtype: DTypeLike = np.float64):
    """``block`` with row (``axis=0``) or column (``axis=1``) ``i`` times ``factor[i]``.

    Computed in float64 and returned as ``dtype``. Sparse blocks stay sparse; the values
    are new arrays.
    """
    if is_sparse(block):
        result = block.astype(np.float64, copy=True)
        assert isinstance(result, COMPRESSED)  # CSR or CSC: _stored_index needs one
        result.data *= factor[_stored_index(result, axis=axis)]
        return result.astype(dtype, copy=False)
    shape = (-1, 1) if axis == 0 else (1, -1)
    scaled = np.asarray(block, dtype=np.float64) * factor.reshape(shape)
    return scaled.astype(dtype, copy=False)


def _shifted(dense, lowest: np.ndarray, factor: np.ndarray, low: float, dtype: np.dtype):
    """``(dense - lowest) * factor + low`` computed in float64, returned as ``dtype``."""
    values = (np.asarray(dense, dtype=np.float64) - lowest) * factor + low
    return values.astype(dtype, copy=False)


def _cpm_chunk(block, factor: np.ndarray, dtype_out: np.dtype):
    return _scaled(materialize(block), factor, axis=0, dtype=dtype_out)


def _minmax_chunk(
    block,
    lowest: np.ndarray,
    factor: np.ndarray,
    low: float,
    stays_sparse: bool,
    dtype_out: np.dtype,
):
    block = materialize(block)
    if stays_sparse:
        return _scaled(block, factor, axis=1, dtype=dtype_out)
    dense = block.toarray() if is_sparse(block) else block
    return _shifted(dense, lowest, factor, low, dtype_out)


def _result_meta(matrix, dtype: np.dtype, stays_sparse: bool = True):
    if stays_sparse and is_sparse(getattr(matrix, "_meta", None)):
        return sparse.csr_matrix((0, 0), dtype=dtype)
    return np.empty((0, 0), dtype=dtype)


@doc_params(doc_chunked=_CHUNKED.format(what="the counts"), doc_dtype=_DTYPE)
def cpm(
    adata: AnnData,
    *,
    layer: str | None = None,
    key_added: str = "cpm",
    target_sum: float = 1e6,
    dtype: DTypeLike = "float64",
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> None:
    """Scale each cell to a total of ``target_sum``: counts per million.

    Sparse input stays sparse (CSR in, CSR out; CSC in, CSC out): only stored values
    are scaled. The result equals the dense computation exactly. A sparse matrix with
    duplicate entries is read as their sum.

    Parameters
    ----------
    adata
        Cells x genes AnnData with non-negative counts.
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    key_added
        Layer receiving the result.
    target_sum
        Total of each cell after scaling.
    {doc_dtype}
    {doc_chunked}

    Returns
    -------
    Nothing; sets ``adata.layers[key_added]`` (``dtype``, same format as the input; a
    lazy dask array when streamed), and its parameters in
    ``adata.uns[key_added]['params']``.
    """
    check_str("layer", layer, allow_none=True)
    check_str("key_added", key_added)
    target_sum = check_number("target_sum", target_sum, minimum=0, min_open=True)
    checked = float_dtype("dtype", dtype)
    assert checked is not None  # allow_none is False
    dtype = checked
    check_chunking(chunked, chunk_size)
    check_writable(adata, {"layers": [key_added], "uns": [key_added]})
    counts, size = input_matrix(
        adata, layer, chunked=chunked, chunk_size=chunk_size, what="counts", keep_format=True
    )
    source = matrix_name(layer)
    if is_dask(counts):
        sums = accumulate(_RowTotals, counts, block_cells=size, progress=progress, desc="cpm")
        totals, minimum = sums.totals.values(), sums.minimum
    else:
        values = counts.data if is_sparse(counts) else np.asarray(counts)
        minimum = float(values.min()) if values.size else 0.0
        totals = np.asarray(counts.sum(axis=1, dtype=np.float64)).ravel()
    if minimum < 0:
        msg = f"{source} contains negative values; counts per million need counts."
        raise ValueError(msg)
    if (totals == 0).any():
        msg = (
            f"{(totals == 0).sum()} cell(s) have zero total count, so their CPM is undefined; "
            "remove them first, e.g. `nsc.pp.qc_reads(adata, min_cell_counts=1)`."
        )
        raise ValueError(msg)
    factor = target_sum / totals
    if is_dask(counts):
        import dask.array as da

        result = da.blockwise(
            _cpm_chunk,
            "ij",
            counts,
            "ij",
            da.from_array(factor, chunks=(counts.chunks[0],)),
            "i",
            concatenate=True,
            dtype=dtype,
            meta=_result_meta(counts, dtype),
            dtype_out=dtype,
        )
    else:
        result = _scaled(counts, factor, axis=0, dtype=dtype)
    store(
        adata,
        key_added,
        {"layer": layer, "key_added": key_added, "target_sum": target_sum, "dtype": dtype.name},
        layers={key_added: result},
    )
    logger.info("cpm: wrote adata.layers[%r]", key_added)


def _feature_range(value) -> tuple[float, float]:
    accepted = "two finite numbers (low, high) with low < high"
    try:
        low, high = value
    except (TypeError, ValueError):
        low = high = None
    if isinstance(value, str | bytes) or low is None:
        msg = f"`feature_range` must be {accepted}, got {value!r}."
        raise ValueError(msg)
    for end in (low, high):
        if (
            isinstance(end, bool | np.bool_)
            or not isinstance(end, int | float | np.number)
            or not np.isfinite(end)
        ):
            msg = f"`feature_range` must be {accepted}, got {value!r}."
            raise ValueError(msg)
    if not low < high:
        msg = f"`feature_range` must be {accepted}, got {value!r}."
        raise ValueError(msg)
    return float(low), float(high)


@doc_params(doc_chunked=_CHUNKED.format(what="``layer``"), doc_dtype=_DTYPE)
def minmax(
    adata: AnnData,
    *,
    layer: str | None = None,
    key_added: str = "minmax",
    feature_range: tuple[float, float] = (0.0, 1.0),
    dtype: DTypeLike = "float64",
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> None:
    """Scale each gene linearly so its minimum and maximum map to ``feature_range``.

    A gene with a single value maps to ``feature_range[0]``. Sparse input stays sparse
    when the lower end of ``feature_range`` is 0 and every gene's minimum is 0 (true
    for counts with a zero in each gene), because zeros then stay zeros. Otherwise the
    zeros would all become non-zero, so the result is necessarily dense: a warning says
    so and a dense array is stored. The result equals the dense computation exactly.

    Parameters
    ----------
    adata
        Cells x genes AnnData.
    layer
        Layer to scale; ``None`` uses ``adata.X``.
    key_added
        Layer receiving the result.
    feature_range
        ``(low, high)`` with ``low < high``.
    {doc_dtype}
    {doc_chunked}

    Returns
    -------
    Nothing; sets ``adata.layers[key_added]`` (``dtype``; a lazy dask array when
    streamed), and its parameters in ``adata.uns[key_added]['params']``.
    """
    check_str("layer", layer, allow_none=True)
    check_str("key_added", key_added)
    low, high = _feature_range(feature_range)
    checked = float_dtype("dtype", dtype)
    assert checked is not None  # allow_none is False
    dtype = checked
    check_chunking(chunked, chunk_size)
    check_writable(adata, {"layers": [key_added], "uns": [key_added]})
    matrix, size = input_matrix(
        adata,
        layer,
        chunked=chunked,
        chunk_size=chunk_size,
        what="the values to scale",
        keep_format=True,
    )
    streamed = is_dask(matrix)
    span = (
        accumulate(
            lambda: _ColumnRange(matrix.shape[1]),
            matrix,
            block_cells=size,
            progress=progress,
            desc="minmax",
        )
        if streamed
        else None
    )
    if span is None:
        span = _ColumnRange(matrix.shape[1])
        span.add(slice(0, matrix.shape[0]), matrix)
    lowest, highest = span.lowest, span.highest
    spread = highest - lowest
    factor = (high - low) / np.where(spread > 0, spread, 1.0)
    sparse_input = is_sparse(matrix) or is_sparse(getattr(matrix, "_meta", None))
    stays_sparse = sparse_input and low == 0 and not lowest.any()
    if sparse_input and not stays_sparse:
        reason = (
            "feature_range starts at a non-zero value"
            if low != 0
            else "some genes have a non-zero minimum"
        )
        msg = (
            f"min-max scaling of a sparse matrix must densify because {reason}: its zero "
            "entries become non-zero. Use feature_range=(0, high) on non-negative data with "
            "a zero in every gene to keep it sparse."
        )
        warnings.warn(msg, UserWarning, stacklevel=2)
    if is_dask(matrix):
        import dask.array as da

        result = da.map_blocks(
            _minmax_chunk,
            matrix,
            lowest=lowest,
            factor=factor,
            low=low,
            stays_sparse=stays_sparse,
            dtype_out=dtype,
            dtype=dtype,
            meta=_result_meta(matrix, dtype, stays_sparse),
        )
    elif stays_sparse:
        # (x - 0) * factor + 0 of the dense formula is exactly x * factor.
        result = _scaled(matrix, factor, axis=1, dtype=dtype)
    else:
        dense = matrix.toarray() if is_sparse(matrix) else matrix
        result = _shifted(dense, lowest, factor, low, dtype)
    store(
        adata,
        key_added,
        {
            "layer": layer,
            "key_added": key_added,
            "feature_range": [low, high],
            "dtype": dtype.name,
        },
        layers={key_added: result},
    )
