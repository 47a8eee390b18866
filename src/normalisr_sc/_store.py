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
survive an h5ad round trip, so results read back from disk remain replaceable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from contextlib import contextmanager
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from anndata import AnnData

#: Key of ``adata.uns`` holding the writer's bookkeeping: container -> key ->
#: fingerprint of every value normalisr_sc wrote (nothing else).
WRITTEN = "nsc_written"
#: Entry of ``adata.uns[key]`` holding the parameters of the step that wrote ``key``.
PARAMS = "params"
#: The AnnData containers results go to.
CONTAINERS = ("layers", "obs", "var", "obsm", "varm", "varp", "uns")
#: Entries hashed at a time: the fingerprint of a large array never copies it whole.
_CHUNK = 1 << 18


# --- fingerprints --------------------------------------------------------------------


def _feed_numbers(digest: hashlib.blake2b, array: np.ndarray) -> None:
    """Feed numbers as float64 (one NaN pattern), a chunk of entries at a time."""
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        numbers = flat[start : start + _CHUNK].astype(np.float64)
        numbers[np.isnan(numbers)] = np.nan  # one bit pattern for every NaN
        digest.update(numbers.tobytes())


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
            rows = array[start : start + step].tolist()
            _feed_items(digest, list(chain.from_iterable(rows)))
        return
    packed = array.dtype.itemsize == len(fields) * field.itemsize and [
        offset for _, offset, *_ in fields
    ] == [i * field.itemsize for i in range(len(fields))]
    view = (
        np.ascontiguousarray(array)
        if packed
        else array.astype([(n, field) for n in array.dtype.names])
    )
    _feed_numbers(digest, view.view(field).reshape(array.shape[0], len(fields)))


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


def _feed_frame(digest: hashlib.blake2b, value: pd.DataFrame) -> None:
    """Feed a DataFrame's columns and a sample of its rows (the index is the AnnData's)."""
    _feed_objects(digest, np.asarray(value.columns, dtype=object))
    _feed_values(digest, [len(value)])
    sample = value.iloc[_sample_rows(len(value))]
    kinds = {dtype.kind for dtype in sample.dtypes}
    if kinds <= set("biuf"):  # all numeric: one block, whatever the column dtypes
        _feed_values(digest, sample.to_numpy(dtype=np.float64))
        return
    for column in range(sample.shape[1]):
        _feed_values(digest, sample.iloc[:, column].to_numpy())


def _feed(digest: hashlib.blake2b, value: Any) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            digest.update(f"\x1e{key}\x1d".encode())
            _feed(digest, value[key])
    elif isinstance(value, pd.DataFrame):
        _feed_frame(digest, value)
    elif isinstance(value, pd.Series | pd.Index):
        _feed_values(digest, value.to_numpy())
    elif getattr(value, "ndim", 0) >= 2 and hasattr(value, "shape"):
        # A matrix (dense, sparse, dask): its shape and a few whole rows, so that a lazy
        # layer computes only a few blocks.
        rows = _sample_rows(value.shape[0])
        sample = value[rows]
        if hasattr(sample, "compute"):
            sample = sample.compute()
        if hasattr(sample, "toarray"):  # scipy sparse
            sample = sample.toarray()
        digest.update(repr(tuple(value.shape)).encode())
        _feed_values(digest, sample)
    else:
        _feed_values(digest, value)


def fingerprint(value: Any) -> str:
    """Return a short hex digest identifying ``value`` (the same after an h5ad round trip).

    Matrices and DataFrames are identified by their shape and a few rows, other arrays
    by all their values, hashed a chunk at a time (never copied whole).
    """
    digest = hashlib.blake2b(digest_size=12)
    _feed(digest, value)
    return digest.hexdigest()


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
    return (
        recorded is not None
        and _has(adata, container, key)
        and str(recorded) == fingerprint(_stored(adata, container, key))
    )


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
            written.setdefault(container, {})[name] = fingerprint(target[name])
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
                written[container][key] = fingerprint(_stored(adata, container, key))
            else:
                del written[container][key]
    adata.uns[WRITTEN] = written


def owned_keys(adata: AnnData) -> dict[str, list[str]]:
    """Container -> keys that currently hold what normalisr_sc wrote."""
    return {
        container: [key for key in keys if owned(adata, container, key)]
        for container, keys in _written(adata).items()
    }
