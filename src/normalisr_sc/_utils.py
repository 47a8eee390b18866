"""AnnData plumbing shared by the public functions: one door in, one door out."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import pandas as pd
from scipy import sparse

from ._core._blocks import (
    canonical,
    count_non_finite,
    count_non_finite_in,
    is_canonical,
    materialize,
    row_block,
)
from ._core._checks import name_source
from ._core._reduce import is_dask
from ._settings import settings
from ._types import COMPRESSED, is_sparse
from ._validate import check_bool

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from numpy.typing import ArrayLike

    from ._types import Block, Compressed, InputMatrix, SparseMatrix

logger = logging.getLogger("normalisr_sc")

#: A value checked by :func:`checked_finite` (returned as it is).
T = TypeVar("T", bound="ArrayLike | SparseMatrix")


def get_matrix(adata: AnnData, layer: str | None, *, what: str = "raw UMI counts") -> Any:
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
    keep_format: bool = False,
    finite_in_sums: bool = False,
) -> tuple[InputMatrix, int]:
    """Return the matrix a step reads, and the number of cells per block to read it in: the door in.

    Every step reads its cells x genes matrix through here, so that every step reads the
    same thing:

    - a shape with at least one cell and one gene, and a real dtype (bool, integer or
      float; complex and other dtypes are refused);
    - no NaN or infinite value (:func:`checked_finite`: checked now in memory, inside the
      pass that reads each block when streamed);
    - a sparse matrix in canonical form (sorted indices, duplicate entries summed): in
      memory a non-canonical matrix is made canonical on a copy once; streamed blocks
      (dask, backed) are made canonical one by one (:func:`~._core._blocks.materialize`);
    - nothing writable into the user's arrays: blocks sharing memory with them are
      read-only views.

    The matrix is streamed -- returned as a dask array chunked by cells, so that every
    pass runs as a dask graph and derived layers are stored lazily -- when ``chunked``
    is True, or when it is None and the matrix already is a dask array or ``adata`` is
    backed on disk. Otherwise it is returned in memory (CSC converted to CSR unless
    ``keep_format``).

    With ``finite_in_sums`` the matrix, in memory or streamed, is not checked here: the
    step's kernel finds NaN and infinity in the sums its pass makes anyway (every cell's
    squares; :func:`~._core._checks.check_finite_sums`) before the step writes anything,
    and names the matrix as it is named here (:func:`~._core._checks.name_source`).
    Streamed, that saves a read of every block in every pass.
    """
    check_bool("chunked", chunked, allow_none=True)
    size = chunk_cells(chunk_size)
    matrix = get_matrix(adata, layer, what=what)
    source = matrix_name(layer)
    check_real_matrix(matrix, source, what)
    fix = f"{what} must be finite: repair or remove those entries first."
    backed = adata.isbacked and layer is None
    lazy = is_dask(matrix) or backed
    if chunked is False and lazy:
        origin = "backed on disk" if backed else "a dask array"
        msg = (
            f"{source} is {origin}, which is read in chunks; drop `chunked=False` "
            "or load the data into memory first (`adata.to_memory()`)."
        )
        raise ValueError(msg)

    def checked(value: T) -> T:
        if finite_in_sums:
            name_source(value, source)
            return value
        return checked_finite(value, source, fix)

    if not (chunked or lazy):
        in_memory = (
            canonical_copy(matrix, source) if keep_format else canonical_rows(matrix, source)
        )
        return checked(in_memory), size
    if backed:
        from anndata.experimental import read_elem_lazy

        on_disk = adata._adata_ref if adata.is_view else adata
        lazy = read_elem_lazy(on_disk.file["X"], chunks=(size, on_disk.n_vars))
        if adata.is_view:
            # anndata keeps a view's cell and gene selection in these two indices.
            lazy = lazy[adata._oidx][:, adata._vidx].rechunk((size, -1))
        return checked(lazy), size
    import dask.array as da

    if is_dask(matrix):
        if sparse.issparse(getattr(matrix, "_meta", None)):
            # Blocks become canonical CSR before dask slices them to rechunk (COO blocks
            # cannot be sliced; duplicates must not be split across blocks unsummed).
            matrix = da.map_blocks(
                materialize,
                matrix,
                dtype=matrix.dtype,
                meta=sparse.csr_matrix((0, 0), dtype=matrix.dtype),
            )
        return checked(matrix.rechunk((size, -1))), size
    # In memory: checked now (not in every pass), or named for the kernels' sums.
    in_memory = canonical_rows(matrix, source)
    if not finite_in_sums:
        in_memory = checked_finite(in_memory, source, fix)
    meta = in_memory[:0, :0] if is_sparse(in_memory) else np.empty((0, 0), in_memory.dtype)
    streamed = da.from_array(_RowBlocks(in_memory), chunks=(size, -1), name=False, meta=meta)
    if finite_in_sums:
        name_source(streamed, source)
    return streamed, size


def check_real_matrix(matrix, source: str, what: str = "values") -> None:
    """Refuse a matrix without cells or genes, or whose dtype is not real numbers."""
    n_cells, n_genes = matrix.shape
    if n_cells == 0 or n_genes == 0:
        empty = " and ".join(
            name for name, n in (("no cells", n_cells), ("no genes", n_genes)) if n == 0
        )
        msg = (
            f"{source} has shape {tuple(matrix.shape)}: {empty}. normalisr_sc needs at "
            "least one cell and one gene; check how the AnnData was built or subset."
        )
        raise ValueError(msg)
    dtype = np.dtype(matrix.dtype)
    if dtype.kind not in "biuf":
        msg = (
            f"{source} has dtype {dtype}; {what} must be real numbers (bool, integer or "
            "float). Complex, text or object values are not supported."
        )
        raise ValueError(msg)


def canonical_rows(
    matrix: np.ndarray | SparseMatrix, source: str
) -> np.ndarray | sparse.csr_matrix | sparse.csr_array:
    """Return an in-memory matrix whose row blocks are cheap to slice and canonical.

    CSC and other sparse formats become CSR (see :func:`canonical_copy`).
    """
    if is_sparse(matrix) and not isinstance(matrix, sparse.csr_matrix | sparse.csr_array):
        matrix = sparse.csr_matrix(matrix)
        own = True
    else:
        own = False
    rows = canonical_copy(matrix, source, own=own)
    assert not isinstance(rows, sparse.csc_matrix | sparse.csc_array)  # CSR stays CSR
    return rows


def canonical_copy(
    matrix: np.ndarray | SparseMatrix, source: str, *, own: bool = False
) -> np.ndarray | Compressed:
    """``matrix`` if dense or a canonical CSR/CSC matrix, else a canonical copy of it.

    A sparse matrix with unsorted indices or duplicate entries is made canonical on a
    copy (duplicates summed) -- in place only if ``own`` (a conversion made by us) -- and
    an INFO log says so. The user's matrix is never changed.
    """
    if not is_sparse(matrix):
        return matrix
    if not isinstance(matrix, COMPRESSED):
        matrix, own = sparse.csr_matrix(matrix), True
    if is_canonical(matrix):
        return matrix
    logger.info(
        "%s has duplicate entries or unsorted indices; normalisr_sc reads a canonical copy "
        "(duplicates summed) and leaves it as it is. `%s.sum_duplicates()` avoids the copy.",
        source,
        source,
    )
    if own:
        matrix.sum_duplicates()
        return matrix
    return canonical(matrix)


def non_finite_message(where: str, count: int, fix: str) -> str:
    return f"{where} contains NaN or infinite values ({count} of them); " + (
        fix or "repair or remove them before this step."
    )


def _checked_block(block: T, where: str, fix: str) -> T:
    count = count_non_finite(block)
    if count:
        raise ValueError(non_finite_message(where, count, fix))
    return block


def checked_finite(value: T, where: str, fix: str = "") -> T:
    """``value``, refused with a ValueError naming ``where`` if it holds NaN or infinity.

    The one check of every value a step reads (matrices, covariates, columns, numbers).
    In memory the check runs now (block by block for a matrix, without a second copy).
    A dask array is returned with the check added to every block, so that it runs inside
    the first pass reading it, before the step writes anything.
    """
    if is_dask(value):
        import dask.array as da

        checked = da.map_blocks(
            _checked_block, value, where=where, fix=fix, dtype=value.dtype, meta=value._meta
        )
        return cast("T", checked)  # a dask array, as ``value`` is
    count: int | None
    if isinstance(value, pd.DataFrame | pd.Series):
        count = count_non_finite(value.to_numpy(dtype=np.float64, na_value=np.nan))
    elif is_sparse(value):
        count = count_non_finite(value)  # the stored values only, never a copy of them
    elif isinstance(value, np.ndarray) and value.ndim == 2:
        count = count_non_finite_in(value, settings.block_cells)
    else:
        count = count_non_finite(value)
    if count:
        raise ValueError(non_finite_message(where, count, fix))
    return value


def numeric_values(value, where: str, fix: str = "") -> np.ndarray:
    """Return a column or table read by a step as finite float64 numbers, refused otherwise.

    ``where`` names it in the message (e.g. ``"adata.obs['nsc_weight']"``).
    """
    frame = value if isinstance(value, pd.DataFrame | pd.Series) else None
    columns = (
        []
        if frame is None
        else [frame]
        if isinstance(frame, pd.Series)
        else [frame[c] for c in frame.columns]
    )
    for column in columns:
        if not (
            pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)
        ) or pd.api.types.is_complex_dtype(column):
            name = f" (column {column.name!r})" if isinstance(frame, pd.DataFrame) else ""
            msg = f"{where}{name} has dtype {column.dtype}; it must hold real numbers."
            raise ValueError(msg)
    if frame is not None:
        array = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            msg = f"{where} has dtype {array.dtype}; it must hold real numbers."
            raise ValueError(msg)
        array = array.astype(np.float64)
    checked_finite(array, where, fix)
    return array


class _RowBlocks:
    """An in-memory matrix as ``dask.array.from_array`` sees it: blocks of whole rows.

    ``from_array`` copies array-likes, and the dask array would keep that copy of the
    counts for as long as it (or a lazy layer made from it) lives; this wrapper is not
    array-like, and its blocks are zero-copy row slices (CSR too).
    """

    def __init__(self, matrix: np.ndarray | Compressed) -> None:
        self.matrix = matrix
        self.shape, self.dtype, self.ndim = matrix.shape, matrix.dtype, matrix.ndim

    def __getitem__(self, index: tuple[slice, slice]) -> Block:
        rows, _ = index  # chunks span all columns
        return row_block(self.matrix, rows)


def matrix_name(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def row_accessible(
    matrix: np.ndarray | SparseMatrix,
) -> np.ndarray | sparse.csr_matrix | sparse.csr_array:
    """Return the matrix canonical, in a form whose row blocks are cheap to slice (CSC: CSR)."""
    return canonical_rows(matrix, "the matrix")


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
    """Positions of ``genes`` in ``adata.var_names``.

    A ValueError names the genes not found, and the requested genes whose name is
    carried by several genes (ambiguous until ``adata.var_names_make_unique()``).
    """
    genes = list(genes)
    names = adata.var_names
    if not names.is_unique:
        repeated = set(names[names.duplicated()])
        ambiguous = sorted({g for g in genes if g in repeated})
        if ambiguous:
            msg = (
                f"{len(ambiguous)} requested gene name(s) occur more than once in "
                f"adata.var_names, e.g. {ambiguous[:5]}, so the gene meant is ambiguous. "
                "Run `adata.var_names_make_unique()` first (or select by position)."
            )
            raise ValueError(msg)
        first = pd.Index(names[~names.duplicated(keep=False)])
        found = first.get_indexer(genes)
        index = np.where(found >= 0, np.flatnonzero(~names.duplicated(keep=False))[found], -1)
    else:
        index = names.get_indexer(genes)
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
    """``adata.obsm[key]`` as a DataFrame of finite real numbers with unique column names."""
    where = f"adata.obsm[{key!r}]"
    frame = adata.obsm[key]
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(np.asarray(frame), index=adata.obs_names)
    names = [str(c) for c in frame.columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        msg = f"{where} has the column name(s) {repeated} more than once; rerun `nsc.pp.normcov`."
        raise ValueError(msg)
    numeric_values(frame, where, "rerun `nsc.pp.normcov` on finite covariates.")
    return frame


#: Float types a step may store its dense results as.
FLOAT_TYPES = ("float32", "float64")


def float_dtype(name: str, value, *, allow_none: bool = False) -> np.dtype | None:
    """Return the parameter ``name`` as a float dtype of :data:`FLOAT_TYPES`, or refuse it."""
    if value is None and allow_none:
        return None
    try:
        dtype = None if value is None or isinstance(value, bool) else np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in FLOAT_TYPES:
        accepted = f"one of {list(FLOAT_TYPES)}" + (" or None" if allow_none else "")
        msg = f"`{name}` must be {accepted} (a numpy float type), got {value!r}."
        raise ValueError(msg)
    return dtype
