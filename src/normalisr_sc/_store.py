"""The one door out: every step stores its results in the AnnData through :func:`store`.

Layout (scanpy's): a step's results go under its ``key_added`` in their container, and
its parameters under ``adata.uns[key]['params']``, ``key`` being the step's main output
key (``uns[key]`` holds the results of steps that store a record there; a step whose
output is a layer or an ``obs``/``var``/``obsm`` entry stores ``uns[key] = {'params':
...}``, as scanpy's ``uns['log1p']``). :func:`read_params` and :func:`read_record` read
them back. The table of keys is in the docs ("Storage").

The writer keeps, in ``adata.uns['nsc_written']``, a fingerprint of every value it
stored (container -> key -> fingerprint). A key that already exists may be replaced
only when normalisr_sc wrote it *and* it still holds what was written: a user's own
data -- a key normalisr_sc never wrote, or one the user has since replaced or edited --
is refused with an error naming the key, before anything is changed. Fingerprints
survive an h5ad round trip, so results read back from disk remain replaceable. An
in-memory value (numpy, scipy sparse, DataFrame) is fingerprinted from all its entries,
so any edit is noticed; a lazy one (dask, backed) from its shape and a few rows only, so
an edit elsewhere in it goes unnoticed (see :func:`fingerprint`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from ._core._fingerprint import dense_bit_sums, entry_bit_sums

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from anndata import AnnData

#: Key of ``adata.uns`` holding the writer's bookkeeping: container -> key ->
#: fingerprint of every value normalisr_sc wrote (nothing else).
WRITTEN = "nsc_written"
#: Key of ``adata.uns`` where earlier normalisr_sc layouts kept their record (with the
#: fingerprints under ``'written'``); recognised only to explain a refusal.
OLD_RECORD = "normalisr"
#: Entry of ``adata.uns[key]`` holding the parameters of the step that wrote ``key``.
PARAMS = "params"
#: The AnnData containers results go to.
CONTAINERS = ("layers", "obs", "var", "obsm", "varm", "varp", "uns")
#: Entries hashed at a time: the fingerprint of a large array never copies it whole.
_CHUNK = 1 << 18
#: Entries of a DataFrame's numeric columns summed at a time: each block of columns is
#: a view of the frame's float64 data, or a copy of at most 128 MB.
_FRAME_CHUNK = 1 << 24


#: Stands for the fingerprint of a value stored into a working object (:func:`working`).
UNCHECKED = "unchecked"
#: ``id`` of the working objects of the steps running now (:func:`working`).
_WORKING: ContextVar[frozenset[int]] = ContextVar("nsc_working", default=frozenset())


# --- fingerprints --------------------------------------------------------------------


def _feed_numbers(digest: hashlib.blake2b, array: np.ndarray) -> None:
    """Feed numbers as float64 (one NaN pattern), a chunk of entries at a time."""
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        numbers = flat[start : start + _CHUNK]
        if numbers.dtype != np.float64 or np.isnan(numbers).any():
            numbers = numbers.astype(np.float64)
            numbers[np.isnan(numbers)] = np.nan  # one bit pattern for every NaN
        # float64 without NaN: hashed as it is, copied only if strided
        digest.update(np.ascontiguousarray(numbers).data)


def _feed_items(digest: hashlib.blake2b, items: list[Any]) -> None:
    """Feed one chunk of strings (or other objects, by their ``str``)."""
    try:
        text = "\x1f".join(items)
    except TypeError:  # not all strings
        text = "\x1f".join(map(str, items))
    digest.update(text.encode(errors="surrogatepass"))
    digest.update(b"\x1e")


def _feed_objects(digest: hashlib.blake2b, array: np.ndarray) -> None:
    """Feed strings (or other objects by their ``str``), a chunk of entries at a time."""
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        _feed_items(digest, flat[start : start + _CHUNK].tolist())


def _feed_records(digest: hashlib.blake2b, array: np.ndarray) -> None:
    """Feed a 1-D record array whose fields share one dtype as a rows x fields block."""
    assert array.dtype.names is not None
    assert array.dtype.fields is not None
    fields = [array.dtype.fields[name] for name in array.dtype.names]
    field = fields[0][0]
    digest.update(b"\x1b")
    if field.kind == "O":  # strings: row by row, a chunk of rows at a time
        step = max(1, _CHUNK // len(fields))
        for start in range(0, array.shape[0], step):
            chunk = array[start : start + step]
            # rows x fields, row-major: the rows' items in order, without a tuple per row
            block = np.empty((chunk.shape[0], len(fields)), dtype=object)
            for column, name in enumerate(array.dtype.names):
                block[:, column] = chunk[name]
            _feed_items(digest, block.reshape(-1).tolist())
        return
    packed = array.dtype.itemsize == len(fields) * field.itemsize and [
        offset for _, offset, *_ in fields
    ] == [i * field.itemsize for i in range(len(fields))]
    view = (
        np.ascontiguousarray(array)
        if packed
        else array.astype([(n, field) for n in array.dtype.names])
    )
    # The numbers are fingerprinted as a matrix is (a few rows, every row and column
    # sum): one compiled pass, several times faster than hashing every byte.
    block = view.view(field).reshape(array.shape[0], len(fields))
    _feed_numbers(digest, block[_sample_rows(block.shape[0])])
    if block.size:
        _feed_dense_sums(digest, block)


def _feed_values(digest: hashlib.blake2b, values: Any) -> None:
    """Feed an array's shape and values, in a form that an h5ad round trip keeps."""
    array = np.asarray(values)
    digest.update(repr(array.shape).encode())
    if array.dtype.names is not None:
        # A record array (scanpy's rank_genes_groups layout): the field names, then
        # the fields as one rows x fields block when they share a dtype (one vectorised
        # piece, not one piece per field), else field by field.
        assert array.dtype.fields is not None
        digest.update("\x1c".join(array.dtype.names).encode())
        dtypes = {array.dtype.fields[name][0] for name in array.dtype.names}
        field = next(iter(dtypes)) if len(dtypes) == 1 else None
        if array.ndim == 1 and field is not None and field.kind in "biufO":
            _feed_records(digest, array)
            return
        for name in array.dtype.names:
            digest.update(f"\x1c{name}".encode())
            _feed_values(digest, array[name])
    else:
        _feed_array(digest, array)


def _feed_array(digest: hashlib.blake2b, array: np.ndarray) -> None:
    if array.dtype.kind in "biuf":
        _feed_numbers(digest, array)
    else:
        _feed_objects(digest, array)


def _sample_rows(n_rows: int) -> list[int]:
    return sorted({0, n_rows // 2, n_rows - 1}) if n_rows else []


def _bits(values: Any) -> np.ndarray:
    """Return numbers as the bit patterns of their float64 values (one NaN, one zero)."""
    numbers = np.asarray(values, dtype=np.float64) + 0.0  # -0.0 -> 0.0
    numbers[np.isnan(numbers)] = np.nan
    return numbers.view(np.uint64)


def _feed_sums(digest: hashlib.blake2b, rows: np.ndarray, columns: np.ndarray) -> None:
    digest.update(b"\x1a")
    digest.update(np.ascontiguousarray(rows, dtype=np.uint64).tobytes())
    digest.update(np.ascontiguousarray(columns, dtype=np.uint64).tobytes())


def _feed_dense_sums(digest: hashlib.blake2b, array: np.ndarray) -> None:
    """Feed the per-row and per-column sums of an in-memory numeric matrix.

    The sums are of the float64 bit patterns taken as integers modulo 2**64
    (:mod:`._core._fingerprint`): exact and independent of the order of summation (so a
    sparse and a dense copy agree), and changed by any edit of a single entry.
    """
    _feed_sums(digest, *dense_bit_sums(array.reshape(array.shape[0], -1)))


def _feed_sparse_sums(digest: hashlib.blake2b, matrix: Any) -> None:
    """Feed the sums of :func:`_feed_dense_sums` for a scipy sparse matrix."""
    coo = sparse.coo_matrix(matrix)
    _feed_sums(digest, *entry_bit_sums(coo.row, coo.col, coo.data, coo.shape))


def _feed_lazy_sums(digest: hashlib.blake2b, matrix: Any) -> None:
    """Feed the sums of :func:`_feed_dense_sums` for a 2-D dask array (one pass)."""
    import dask

    bits = matrix.map_blocks(_bits, dtype=np.uint64)
    rows, columns = dask.compute(
        bits.sum(axis=1, dtype=np.uint64), bits.sum(axis=0, dtype=np.uint64)
    )
    _feed_sums(digest, np.asarray(rows), np.asarray(columns))


def _numeric(dtype: Any) -> bool:
    return getattr(dtype, "kind", "O") in "biuf"


def _feed_frame(digest: hashlib.blake2b, value: pd.DataFrame, whole: bool) -> None:
    """Feed a DataFrame's columns, a sample of its rows and its row and column sums.

    The index is the AnnData's. Numeric columns enter the sums of
    :func:`_feed_dense_sums` a block of columns at a time (a view of float64 columns,
    else a copy of at most :data:`_FRAME_CHUNK` entries), other columns are hashed whole.
    """
    _feed_objects(digest, np.asarray(value.columns, dtype=object))
    _feed_values(digest, [len(value)])
    sample = value.iloc[_sample_rows(len(value))]
    kinds = {dtype.kind for dtype in sample.dtypes}
    if kinds <= set("biuf"):  # all numeric: one block, whatever the column dtypes
        _feed_values(digest, sample.to_numpy(dtype=np.float64))
    else:
        for column in range(sample.shape[1]):
            _feed_values(digest, sample.iloc[:, column].to_numpy())
    if not whole:
        return
    rows = np.zeros(len(value), dtype=np.uint64)
    columns = np.zeros(value.shape[1], dtype=np.uint64)
    step = max(1, _FRAME_CHUNK // max(1, len(value)))
    for start in range(0, value.shape[1], step):
        chunk = value.iloc[:, start : start + step]
        if all(_numeric(dtype) for dtype in chunk.dtypes):  # a block of columns at once
            chunk_rows, columns[start : start + step] = dense_bit_sums(
                chunk.to_numpy(dtype=np.float64)
            )
            rows += chunk_rows
            continue
        for j, (_, series) in enumerate(chunk.items(), start=start):
            if _numeric(series.dtype):
                column_rows, columns[j : j + 1] = dense_bit_sums(series.to_numpy()[:, None])
                rows += column_rows
            else:
                digest.update(f"\x19{j}".encode())
                _feed_values(digest, series.to_numpy())
    _feed_sums(digest, rows, columns)


def _feed(digest: hashlib.blake2b, value: Any, whole: bool | None) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            digest.update(f"\x1e{key}\x1d".encode())
            _feed(digest, value[key], whole)
    elif isinstance(value, pd.DataFrame):
        _feed_frame(digest, value, whole is not False)
    elif isinstance(value, pd.Series | pd.Index):
        _feed_values(digest, value.to_numpy())
    elif getattr(value, "ndim", 0) >= 2 and hasattr(value, "shape"):
        # A matrix: its shape and a few whole rows; in memory (numpy, scipy sparse) also
        # every row and column sum, while a lazy one (dask, backed) is identified by
        # its sampled rows only, so that only a few of its blocks are computed.
        rows = _sample_rows(value.shape[0])
        sample = value[rows]
        if hasattr(sample, "compute"):
            sample = sample.compute()
        if hasattr(sample, "toarray"):  # scipy sparse
            sample = sample.toarray()
        digest.update(repr(tuple(value.shape)).encode())
        _feed_values(digest, sample)
        in_memory = sparse.issparse(value) or isinstance(value, np.ndarray)
        if not _numeric(value.dtype) or not value.size or not (whole or in_memory):
            return
        if whole is False:
            return
        if sparse.issparse(value):
            _feed_sparse_sums(digest, value)
        elif isinstance(value, np.ndarray):
            _feed_dense_sums(digest, value)
        elif hasattr(value, "map_blocks"):  # dask, asked for whole: one pass over it
            _feed_lazy_sums(digest, value)
    else:
        _feed_values(digest, value)


def fingerprint(value: Any, whole: bool | None = None) -> str:
    """Return a short hex digest identifying ``value`` (the same after an h5ad round trip).

    Arrays are identified by all their values, hashed a chunk at a time (never copied
    whole). In-memory matrices (numpy, scipy sparse), DataFrames and the numbers of
    record arrays (rows x fields, as scanpy's rankings) by their shape, a few whole rows
    and every row and column sum (exact sums of the values' float64 bit
    patterns, so any single edit changes them, sparse and dense copies agree, and an
    h5ad round trip keeps them); lazy matrices (dask, backed) by their shape and the
    few rows only, so that fingerprinting computes only a few blocks. ``whole=True``
    takes the sums of a dask matrix too (one pass over it), ``whole=False`` leaves them
    out for every matrix and DataFrame: the digest a lazy value has by default.
    """
    digest = hashlib.blake2b(digest_size=12)
    _feed(digest, value, whole)
    return digest.hexdigest()


def _matches(recorded: str, value: Any) -> bool:
    """Whether ``value`` has the fingerprint ``recorded``, in either form.

    A value recorded while lazy (sampled) and now in memory, or the other way round
    (an h5ad written in memory and read back lazily), is compared in the form recorded.
    """
    if recorded == fingerprint(value):
        return True
    lazy = not (sparse.issparse(value) or isinstance(value, np.ndarray | pd.DataFrame | Mapping))
    if lazy:
        return getattr(value, "ndim", 0) >= 2 and recorded == fingerprint(value, whole=True)
    return recorded == fingerprint(value, whole=False)


@contextmanager
def working(adata: AnnData) -> Iterator[AnnData]:
    """Run steps on ``adata``, a working object no one else holds, without fingerprints.

    A recipe runs its steps on a working AnnData of its own and then stores what they
    wrote into the user's one (fingerprinted there, once). Within the block the steps'
    results in ``adata`` are recorded as :data:`UNCHECKED` and taken as still holding
    what was written, since nothing but the steps can have changed them: the cells x
    genes layers are not hashed again at every step.
    """
    token = _WORKING.set(_WORKING.get() | {id(adata)})
    try:
        yield adata
    finally:
        _WORKING.reset(token)


def _is_working(adata: AnnData) -> bool:
    return id(adata) in _WORKING.get()


def _fingerprint_in(adata: AnnData, value: Any) -> str:
    """Return the fingerprint recorded for ``value`` stored into ``adata``."""
    return UNCHECKED if _is_working(adata) else fingerprint(value)


# --- reading -------------------------------------------------------------------------


def read_record(adata: AnnData, key: str) -> Mapping[str, Any]:
    """Return ``adata.uns[key]`` (a step's results and ``params``), or ``{}`` if absent."""
    record = adata.uns.get(key)
    return record if isinstance(record, Mapping) else {}


def read_params(adata: AnnData, key: str) -> Mapping[str, Any]:
    """Return the parameters of the step that wrote ``key`` (``adata.uns[key]['params']``).

    ``{}`` when there are none (the step has not run, or ``uns[key]`` is not a record).
    """
    params = read_record(adata, key).get(PARAMS)
    return params if isinstance(params, Mapping) else {}


def side_key(key_added: str, default_key: str, historic: str, suffix: str) -> str:
    """Return the key of a step's side output (scanpy's rule, as for ``neighbors``).

    With the step's default ``key_added`` (``default_key``) the historic name
    ``historic``; with any other, ``f'{key_added}_{suffix}'``, so that runs under
    different keys never overwrite each other's side outputs. The step names the key in
    its record (:func:`written_key` reads it back).
    """
    return historic if key_added == default_key else f"{key_added}_{suffix}"


def written_key(adata: AnnData, key: str, entry: str, historic: str) -> str:
    """Return the key of a side output, as named by the record of the step that wrote it.

    ``key`` is that step's main output key (its ``key_added``), ``entry`` the entry of
    its record ``adata.uns[key]`` naming the side output (e.g. lcpm's ``'cov_key'``).
    ``historic`` when the record names none (the step ran with its default key, or
    before records named their keys).
    """
    named = read_record(adata, key).get(entry)
    return named if isinstance(named, str) and named else historic


def recorded_params(adata: AnnData) -> dict[str, Mapping[str, Any]]:
    """Return ``uns`` key -> parameters of every step whose record normalisr_sc wrote."""
    keys = _written(adata).get("uns", {})
    return {key: params for key in keys if (params := read_params(adata, key))}


# --- ownership -----------------------------------------------------------------------


def _container(adata: AnnData, name: str) -> Any:
    return getattr(adata, name)


def _has(adata: AnnData, container: str, key: str) -> bool:
    target = _container(adata, container)
    return key in (target.columns if container in ("obs", "var") else target)


def _stored(adata: AnnData, container: str, key: str) -> Any:
    target = _container(adata, container)
    return target[key]


def _written(adata: AnnData) -> Mapping[str, Mapping[str, str]]:
    written = adata.uns.get(WRITTEN, {})
    return written if isinstance(written, Mapping) else {}


def fingerprints(adata: AnnData) -> Mapping[str, Mapping[str, str]]:
    """Return the fingerprints of what normalisr_sc wrote: container -> key -> digest."""
    return _written(adata)


def owned(adata: AnnData, container: str, key: str) -> bool:
    """Whether ``adata.<container>[key]`` holds exactly what normalisr_sc last wrote there."""
    recorded = _written(adata).get(container, {}).get(key)
    if recorded is None or not _has(adata, container, key):
        return False
    return _is_working(adata) or _matches(str(recorded), _stored(adata, container, key))


def _old_layout(adata: AnnData) -> bool:
    """Whether ``adata`` holds the record of the layout before ``uns['nsc_written']``."""
    record = adata.uns.get(OLD_RECORD)
    return isinstance(record, Mapping) and isinstance(record.get("written"), Mapping)


def _where(container: str, key: str) -> str:
    return f"adata.{container}[{key!r}]"


def check_writable(adata: AnnData, keys: Mapping[str, Iterable[str]]) -> None:
    """Refuse, before anything changes, to write a key holding the user's own data.

    ``keys`` maps container names (``'layers'``, ``'obs'``, ...) to the keys a step is
    about to write. A ValueError names the first key that exists and was not written by
    normalisr_sc, or no longer holds what it wrote.
    """
    written = adata.uns.get(WRITTEN)
    if written is not None and not (
        isinstance(written, Mapping) and all(isinstance(v, Mapping) for v in written.values())
    ):
        msg = (
            f"adata.uns[{WRITTEN!r}] holds something normalisr_sc did not write "
            f"({type(written).__name__}); normalisr_sc keeps the fingerprints of its "
            f"results there. Move it to another key first (`adata.uns['mine'] = "
            f"adata.uns.pop({WRITTEN!r})`)."
        )
        raise ValueError(msg)
    for container, names in keys.items():
        if container not in CONTAINERS:
            msg = f"unknown AnnData container {container!r}; use one of {CONTAINERS}."
            raise ValueError(msg)
        names = list(names)
        repeated = {n for n in names if names.count(n) > 1}
        if repeated:
            msg = f"{sorted(repeated)} would be written twice into adata.{container}."
            raise ValueError(msg)
        for key in names:
            if not isinstance(key, str) or not key or "/" in key:
                msg = (
                    f"result key {key!r} for adata.{container} must be a non-empty string "
                    "without '/' (h5ad cannot store it); pass another `key_added=`."
                )
                raise ValueError(msg)
            if container == "uns" and key == WRITTEN:
                msg = (
                    f"adata.uns[{WRITTEN!r}] holds normalisr_sc's fingerprints of its "
                    "results; pass another `key_added=`."
                )
                raise ValueError(msg)
            if _has(adata, container, key) and not owned(adata, container, key):
                was_ours = key in _written(adata).get(container, {})
                if not was_ours and _old_layout(adata):
                    msg = (
                        f"{_where(container, key)} already exists and was written by an "
                        f"earlier normalisr_sc layout (its record, "
                        f"adata.uns[{OLD_RECORD!r}]['written'], is no longer read), so "
                        "it is not replaced. Re-run the steps from the counts on a fresh "
                        "AnnData, or delete the old results first (`del "
                        f"{_where(container, key)}` and the other keys listed in "
                        f"adata.uns[{OLD_RECORD!r}]['written'], then `del "
                        f"adata.uns[{OLD_RECORD!r}]`)."
                    )
                    raise ValueError(msg)
                why = (
                    "was changed since normalisr_sc wrote it"
                    if was_ours
                    else "was not written by normalisr_sc"
                )
                msg = (
                    f"{_where(container, key)} already exists and {why}, so it is not "
                    f"replaced. Pass another `key_added=` or delete it first "
                    f"(`del {_where(container, key)}`)."
                )
                raise ValueError(msg)


# --- writing -------------------------------------------------------------------------


def _aligned(adata: AnnData, container: str, value: Any) -> Any:
    """``value`` indexed like ``adata`` where the container is indexed by cells or genes."""
    if container in ("obs", "var"):
        return value.to_numpy() if isinstance(value, pd.Series | pd.Index) else value
    if container in ("obsm", "varm") and isinstance(value, pd.DataFrame):
        names = adata.obs_names if container == "obsm" else adata.var_names
        if len(value) == len(names) and not value.index.equals(names):
            # A new index only: the values are not copied.
            value = value.copy(deep=False)
            value.index = names.copy()
    return value


def _plain(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters h5ad can store: ``None`` dropped, nested mappings kept."""
    return {
        str(k): (_plain(v) if isinstance(v, Mapping) else v)
        for k, v in params.items()
        if v is not None
    }


def store(
    adata: AnnData,
    key: str | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    drop: Mapping[str, Iterable[str]] | None = None,
    **results: Mapping[str, Any],
) -> None:
    """Write a step's results and parameters into ``adata``; the only writer.

    Parameters
    ----------
    adata
        The AnnData receiving the results (a view becomes an actual AnnData first).
    key
        The step's main output key: its ``params`` go to ``adata.uns[key]['params']``,
        beside the record ``uns[key]`` of the step's results if ``results['uns']`` has
        one, else alone (``uns[key] = {'params': params}``, for a step whose output is
        a layer or a column). ``None``: no parameters (results only).
    params
        Parameters of the step (``None`` values are dropped).
    drop
        Per container, keys of earlier results that this call makes stale (e.g. the
        matrices a network-only run replaces); removed if present, under the same rule
        as keys written.
    **results
        Per container (``layers``, ``obs``, ``var``, ``obsm``, ``varm``, ``varp``,
        ``uns``), a mapping of keys to values. ``obs``/``var`` values are columns (one
        value per cell/gene); ``obsm``/``varm`` DataFrames are given the AnnData's names.

    Every key is checked with :func:`check_writable` before anything is written, so a
    refused call leaves ``adata`` unchanged.
    """
    writes: dict[str, dict[str, Any]] = {c: dict(values) for c, values in results.items()}
    if key is not None:
        uns = writes.setdefault("uns", {})
        record = dict(uns.get(key, {}))
        record[PARAMS] = _plain(params or {})
        uns[key] = record
    drop = {c: [k for k in keys if _has(adata, c, k)] for c, keys in (drop or {}).items()}
    check_writable(adata, {container: list(values) for container, values in writes.items()})
    check_writable(adata, drop)
    if adata.is_view:
        adata._init_as_actual(adata.copy())
    written = {c: dict(keys) for c, keys in _written(adata).items()}
    for container, keys in drop.items():
        target = _container(adata, container)
        for name in keys:
            del target[name]
            written.get(container, {}).pop(name, None)
    for container, values in writes.items():
        target = _container(adata, container)
        for name, value in values.items():
            target[name] = _aligned(adata, container, value)
            written.setdefault(container, {})[name] = _fingerprint_in(adata, target[name])
    adata.uns[WRITTEN] = written


@contextmanager
def subsetting(adata: AnnData) -> Iterator[None]:
    """Keep the record true while a normalisr_sc step subsets ``adata`` in place.

    Subsetting cells or genes changes every cells- or genes-indexed value; the keys that
    held what normalisr_sc wrote before the subset are fingerprinted again after it
    (keys the user had changed stay the user's).
    """
    keep = owned_keys(adata)
    yield
    written = {c: dict(keys) for c, keys in _written(adata).items()}
    for container, keys in keep.items():
        for key in keys:
            if _has(adata, container, key):
                written[container][key] = _fingerprint_in(adata, _stored(adata, container, key))
            else:
                del written[container][key]
    adata.uns[WRITTEN] = written


def owned_keys(adata: AnnData) -> dict[str, list[str]]:
    """Container -> keys that currently hold what normalisr_sc wrote."""
    return {
        container: [key for key in keys if owned(adata, container, key)]
        for container, keys in _written(adata).items()
    }
