"""Simple normalisations that keep sparse input sparse: counts per million and min-max."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from .._utils import check_new_layer, ensure_actual, get_matrix, logger, matrix_name, record_params

if TYPE_CHECKING:
    from anndata import AnnData


def _check_finite(matrix, source: str) -> None:
    values = matrix.data if sparse.issparse(matrix) else np.asarray(matrix)
    if not np.isfinite(values).all():
        msg = f"{source} contains NaN or infinite values; repair them first."
        raise ValueError(msg)


def _stored_index(matrix: sparse.spmatrix, axis: int) -> np.ndarray:
    """Row (``axis=0``) or column (``axis=1``) of each stored value of a CSR/CSC matrix."""
    compressed = {"csr": 0, "csc": 1}[matrix.format]
    if axis == compressed:
        return np.repeat(np.arange(matrix.shape[axis]), np.diff(matrix.indptr))
    return matrix.indices


def _as_compressed(matrix):
    if sparse.issparse(matrix) and matrix.format not in ("csr", "csc"):
        return sparse.csr_matrix(matrix)
    return matrix


def cpm(
    adata: AnnData,
    *,
    layer: str | None = None,
    key_added: str = "cpm",
    target_sum: float = 1e6,
) -> None:
    """Counts per million: scale each cell to a total of ``target_sum``.

    Sparse input stays sparse (CSR in, CSR out; CSC in, CSC out): only stored values
    are scaled. The result equals the dense computation exactly.

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

    Returns
    -------
    Nothing; sets ``adata.layers[key_added]`` (float64, same format as the input).
    """
    if not (np.isfinite(target_sum) and target_sum > 0):
        msg = f"target_sum must be a positive number, got {target_sum!r}."
        raise ValueError(msg)
    check_new_layer(adata, key_added)
    counts = _as_compressed(get_matrix(adata, layer))
    source = matrix_name(layer)
    _check_finite(counts, source)
    values = counts.data if sparse.issparse(counts) else np.asarray(counts)
    if values.size and values.min() < 0:
        msg = f"{source} contains negative values; counts per million need counts."
        raise ValueError(msg)
    totals = np.asarray(counts.sum(axis=1, dtype=np.float64)).ravel()
    if (totals == 0).any():
        msg = (
            f"{(totals == 0).sum()} cell(s) have zero total count, so their CPM is undefined; "
            "remove them first, e.g. `nsc.pp.qc_reads(adata, min_cell_counts=1)`."
        )
        raise ValueError(msg)
    factor = target_sum / totals
    if sparse.issparse(counts):
        result = counts.astype(np.float64, copy=True)
        result.data *= factor[_stored_index(result, axis=0)]
    else:
        result = np.asarray(counts, dtype=np.float64) * factor[:, None]
    ensure_actual(adata)
    adata.layers[key_added] = result
    record_params(adata, "cpm", {"layer": layer, "key_added": key_added, "target_sum": target_sum})
    logger.info("cpm: wrote adata.layers[%r]", key_added)


def minmax(
    adata: AnnData,
    *,
    layer: str | None = None,
    key_added: str = "minmax",
    feature_range: tuple[float, float] = (0.0, 1.0),
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

    Returns
    -------
    Nothing; sets ``adata.layers[key_added]`` (float64).
    """
    low, high = (float(v) for v in feature_range)
    if not (np.isfinite([low, high]).all() and low < high):
        msg = f"feature_range must be two finite numbers (low, high) with low < high, got {feature_range!r}."
        raise ValueError(msg)
    check_new_layer(adata, key_added)
    matrix = _as_compressed(get_matrix(adata, layer, what="the values to scale"))
    _check_finite(matrix, matrix_name(layer))
    lowest = np.asarray(matrix.min(axis=0).toarray() if sparse.issparse(matrix)
                        else matrix.min(axis=0), dtype=np.float64).ravel()
    highest = np.asarray(matrix.max(axis=0).toarray() if sparse.issparse(matrix)
                         else matrix.max(axis=0), dtype=np.float64).ravel()
    spread = highest - lowest
    factor = (high - low) / np.where(spread > 0, spread, 1.0)
    stays_sparse = low == 0 and not lowest.any()
    if sparse.issparse(matrix) and stays_sparse:
        result = matrix.astype(np.float64, copy=True)
        # (x - 0) * factor + 0 of the dense formula is exactly x * factor.
        result.data *= factor[_stored_index(result, axis=1)]
    else:
        if sparse.issparse(matrix):
            reason = ("feature_range starts at a non-zero value" if low != 0
                      else "some genes have a non-zero minimum")
            msg = (
                f"min-max scaling of a sparse matrix must densify because {reason}: its zero "
                "entries become non-zero. Use feature_range=(0, high) on non-negative data with "
                "a zero in every gene to keep it sparse."
            )
            warnings.warn(msg, UserWarning, stacklevel=2)
            matrix = matrix.toarray()
        result = (np.asarray(matrix, dtype=np.float64) - lowest) * factor + low
    ensure_actual(adata)
    adata.layers[key_added] = result
    record_params(adata, "minmax", {
        "layer": layer, "key_added": key_added, "feature_range": [low, high],
    })
