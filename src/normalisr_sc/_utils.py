"""AnnData plumbing shared by the public functions: one door in, one door out."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from ._core._blocks import row_block
from ._core._reduce import is_dask
from ._settings import settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger("normalisr_sc")

#: Key of ``adata.uns`` holding the parameters of the normalisation steps.
UNS_KEY = "normalisr"


def get_matrix(adata: AnnData, layer: str | None, *, what: str = "raw UMI counts"):
    """``adata.X`` or ``adata.layers[layer]``, with a helpful error for unknown layers."""
    if layer is None:
        if adata.X is None:
            msg = f"adata.X is empty; pass `layer=` naming the layer that holds {what}."
            raise ValueError(msg)
        return adata.X
    if layer not in adata.layers:
        msg = (
            f"layer {layer!r} not found; available layers: {list(adata.layers)}. "
            "Pass layer=None to use adata.X."
        )
        raise ValueError(msg)
    return adata.layers[layer]


def chunk_cells(chunk_size: int | None) -> int:
    """Cells per block: ``chunk_size`` if given, else ``nsc.settings.block_cells``."""
    size = settings.block_cells if chunk_size is None else chunk_size
    if isinstance(size, bool) or int(size) != size or size < 1:
        msg = f"chunk_size must be a positive number of cells, got {chunk_size!r}."
        raise ValueError(msg)
    return int(size)


def input_matrix(
    adata: AnnData,
    layer: str | None,
    *,
    chunked: bool | None = None,
    chunk_size: int | None = None,
    what: str = "raw UMI counts",
) -> tuple[object, int]:
    """The matrix a step reads, and the number of cells per block to read it in.

    The matrix is streamed -- returned as a dask array chunked by cells, so that every
    pass runs as a dask graph and derived layers are stored lazily -- when ``chunked``
    is True, or when it is None and the matrix already is a dask array or ``adata`` is
    backed on disk. Otherwise it is returned as it is (CSC converted to CSR).
    """
    size = chunk_cells(chunk_size)
    matrix = get_matrix(adata, layer, what=what)
    backed = adata.isbacked and layer is None
    lazy = is_dask(matrix) or backed
    if chunked is False and lazy:
        source = "backed on disk" if backed else "a dask array"
        msg = (
            f"{matrix_name(layer)} is {source}, which is read in chunks; drop `chunked=False` "
            "or load the data into memory first (`adata.to_memory()`)."
        )
        raise ValueError(msg)
    if not (chunked or lazy):
        return row_accessible(matrix), size
    if backed:
        from anndata.experimental import read_elem_lazy

        on_disk = adata._adata_ref if adata.is_view else adata
        lazy = read_elem_lazy(on_disk.file["X"], chunks=(size, on_disk.n_vars))
        if adata.is_view:
            # anndata keeps a view's cell and gene selection in these two indices.
            lazy = lazy[adata._oidx][:, adata._vidx].rechunk((size, -1))
        return lazy, size
    if is_dask(matrix):
        return matrix.rechunk((size, -1)), size
    import dask.array as da

    matrix = row_accessible(matrix)
    meta = matrix[:0, :0] if sparse.issparse(matrix) else np.empty((0, 0), matrix.dtype)
    return da.from_array(_RowBlocks(matrix), chunks=(size, -1), name=False, meta=meta), size


class _RowBlocks:
    """An in-memory matrix as ``dask.array.from_array`` sees it: blocks of whole rows.

    ``from_array`` copies array-likes, and the dask array would keep that copy of the
    counts for as long as it (or a lazy layer made from it) lives; this wrapper is not
    array-like, and its blocks are zero-copy row slices (CSR too).
    """

    def __init__(self, matrix) -> None:
        self.matrix = matrix
        self.shape, self.dtype, self.ndim = matrix.shape, matrix.dtype, matrix.ndim

    def __getitem__(self, index: tuple[slice, slice]):
        rows, _ = index  # chunks span all columns
        return row_block(self.matrix, rows)


def matrix_name(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def row_accessible(matrix):
    """The matrix in a form whose row blocks are cheap to slice (CSC becomes CSR)."""
    if sparse.issparse(matrix) and matrix.format != "csr":
        return sparse.csr_matrix(matrix)
    return matrix


def require(adata: AnnData, where: str, key: str, made_by: str) -> None:
    """Raise a ValueError naming the ``nsc.pp`` call that creates a missing key."""
    container = getattr(adata, where)
    if key not in container:
        msg = f"adata.{where}[{key!r}] not found; run `{made_by}` first."
        raise ValueError(msg)


def ensure_actual(adata: AnnData) -> None:
    """Turn a view into an actual AnnData before writing to it, like scanpy does."""
    if adata.is_view:
        adata._init_as_actual(adata.copy())


#: Entry of ``adata.uns['normalisr']`` listing every key a step stored with ``key_added``.
WRITTEN = "keys_written"


def record_params(adata: AnnData, step: str, params: dict) -> None:
    """Store the parameters of one step in ``adata.uns['normalisr'][step]``.

    A ``key_added`` among them is also remembered in ``uns['normalisr']['keys_written']``,
    so later calls may overwrite what normalisr_sc wrote, and only that.
    """
    record = adata.uns.setdefault(UNS_KEY, {})
    record[step] = {k: v for k, v in params.items() if v is not None}
    key = params.get("key_added")
    if key is not None:
        written = list(record.get(WRITTEN, []))
        if key not in written:
            written.append(key)
        record[WRITTEN] = written


def check_new_layer(adata: AnnData, key: str) -> None:
    """Refuse to overwrite a layer that no earlier normalisr_sc call wrote."""
    ours = key in list(adata.uns.get(UNS_KEY, {}).get(WRITTEN, []))
    if key in adata.layers and not ours:
        msg = (
            f"adata.layers[{key!r}] already exists and was not written by normalisr_sc; pass "
            "another `key_added=` or delete that layer first."
        )
        raise ValueError(msg)


def obs_columns(adata: AnnData, columns: Sequence[str] | str | None) -> list[str]:
    """``columns`` as a list, checked to exist in ``adata.obs``."""
    columns = [columns] if isinstance(columns, str) else list(columns or [])
    unknown = [c for c in columns if c not in adata.obs.columns]
    if unknown:
        msg = (
            f"covariate column(s) {unknown} not found in adata.obs; available columns: "
            f"{list(adata.obs.columns)}."
        )
        raise ValueError(msg)
    return columns


def gene_positions(adata: AnnData, genes: Sequence[str]) -> np.ndarray:
    """Positions of ``genes`` in ``adata.var_names``; a ValueError names the missing ones."""
    index = adata.var_names.get_indexer(list(genes))
    if (index < 0).any():
        missing = [g for g, i in zip(genes, index, strict=True) if i < 0]
        msg = f"{len(missing)} gene(s) not in adata.var_names, e.g. {missing[:5]}."
        raise ValueError(msg)
    return index


def complete_obs_column(adata: AnnData, column: str, purpose: str) -> pd.Series:
    """``adata.obs[column]``, refusing missing values (``purpose`` completes the message)."""
    values = adata.obs[column]
    if values.isna().any():
        msg = (
            f"adata.obs[{column!r}] has {int(values.isna().sum())} missing values; fill them "
            f"or drop those cells before {purpose}."
        )
        raise ValueError(msg)
    return values


def covariate_frame(adata: AnnData, key: str) -> pd.DataFrame:
    frame = adata.obsm[key]
    if isinstance(frame, pd.DataFrame):
        return frame
    return pd.DataFrame(np.asarray(frame), index=adata.obs_names)
