"""The one door out: every step stores its results in the AnnData through :func:`store`.

The writer keeps, in ``adata.uns['normalisr']['written']``, a fingerprint of every value
it stored (container -> key -> fingerprint). A key that already exists may be replaced
only when normalisr_sc wrote it *and* it still holds what was written: a user's own
data -- a key normalisr_sc never wrote, or one the user has since replaced or edited --
is refused with an error naming the key, before anything is changed. Fingerprints
survive an h5ad round trip, so results read back from disk remain replaceable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from anndata import AnnData

#: Key of ``adata.uns`` holding normalisr_sc's record: the parameters of each step and
#: the fingerprints of the values written.
RECORD = "normalisr"
#: Entry of the record: container -> key -> fingerprint of every value written.
WRITTEN = "written"
#: The AnnData containers results go to.
CONTAINERS = ("layers", "obs", "var", "obsm", "varm", "varp", "uns")


# --- fingerprints --------------------------------------------------------------------


def _feed_values(digest: hashlib.blake2b, values: Any) -> None:
    """Feed an array's shape and values, in a form that an h5ad round trip keeps."""
    array = np.asarray(values)
    digest.update(repr(array.shape).encode())
    if array.dtype.names is not None:
        # A record array (scanpy's rank_genes_groups layout): field by field, each in
        # one vectorised piece, not one Python string per record.
        for name in array.dtype.names:
            digest.update(f"\x1c{name}".encode())
            _feed_values(digest, array[name])
    elif array.dtype.kind in "biuf":
        numbers = array.astype(np.float64)
        numbers[np.isnan(numbers)] = np.nan  # one bit pattern for every NaN
        digest.update(numbers.tobytes())
    else:
        digest.update("\x1f".join(map(str, array.ravel())).encode())


def _sample_rows(n_rows: int) -> list[int]:
    return sorted({0, n_rows // 2, n_rows - 1}) if n_rows else []


def _feed(digest: hashlib.blake2b, value: Any) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            digest.update(f"\x1e{key}\x1d".encode())
            _feed(digest, value[key])
    elif isinstance(value, pd.DataFrame):
        # Columns and a sample of rows; the index is the AnnData's names, not the value.
        digest.update("\x1f".join(map(str, value.columns)).encode())
        _feed_values(digest, [len(value)])
        for column in value.columns:
            _feed_values(digest, value[column].to_numpy()[_sample_rows(len(value))])
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
    """Return a short hex digest identifying ``value`` (the same after an h5ad round trip)."""
    digest = hashlib.blake2b(digest_size=12)
    _feed(digest, value)
    return digest.hexdigest()


# --- ownership -----------------------------------------------------------------------


def _container(adata: AnnData, name: str):
    return getattr(adata, name)


def _has(adata: AnnData, container: str, key: str) -> bool:
    target = _container(adata, container)
    return key in (target.columns if container in ("obs", "var") else target)


def _stored(adata: AnnData, container: str, key: str) -> Any:
    target = _container(adata, container)
    return target[key]


def _written(adata: AnnData) -> Mapping[str, Mapping[str, str]]:
    record = adata.uns.get(RECORD, {})
    written = record.get(WRITTEN, {}) if isinstance(record, Mapping) else {}
    return written if isinstance(written, Mapping) else {}


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
    record = adata.uns.get(RECORD)
    if record is not None and not (
        isinstance(record, Mapping) and isinstance(record.get(WRITTEN, {}), Mapping)
    ):
        msg = (
            f"adata.uns[{RECORD!r}] holds something normalisr_sc did not write "
            f"({type(record).__name__}); normalisr_sc keeps its record of parameters and "
            f"results there. Move it to another key first (`adata.uns['mine'] = "
            f"adata.uns.pop({RECORD!r})`)."
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
            if container == "uns" and key == RECORD:
                msg = (
                    f"adata.uns[{RECORD!r}] holds normalisr_sc's record of parameters and "
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
        if len(value) == len(names):
            return value.set_axis(names.copy())
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
    step: str | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    drop: Mapping[str, Iterable[str]] | None = None,
    **results: Mapping[str, Any],
) -> None:
    """Write a step's results into ``adata`` and record them; the only writer.

    Parameters
    ----------
    adata
        The AnnData receiving the results (a view becomes an actual AnnData first).
    step
        Name of the step; its ``params`` go to ``adata.uns['normalisr'][step]``.
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
    drop = {c: [k for k in keys if _has(adata, c, k)] for c, keys in (drop or {}).items()}
    check_writable(adata, {container: list(values) for container, values in results.items()})
    check_writable(adata, drop)
    if adata.is_view:
        adata._init_as_actual(adata.copy())
    record = dict(adata.uns.get(RECORD, {}))
    written = {c: dict(keys) for c, keys in _written(adata).items()}
    for container, keys in drop.items():
        target = _container(adata, container)
        for key in keys:
            del target[key]
            written.get(container, {}).pop(key, None)
    for container, values in results.items():
        target = _container(adata, container)
        for key, value in values.items():
            target[key] = _aligned(adata, container, value)
            written.setdefault(container, {})[key] = fingerprint(target[key])
    if step is not None:
        record[step] = _plain(params or {})
    record[WRITTEN] = written
    adata.uns[RECORD] = record


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
    record = dict(adata.uns.get(RECORD, {}))
    record[WRITTEN] = written
    adata.uns[RECORD] = record


def owned_keys(adata: AnnData) -> dict[str, list[str]]:
    """Container -> keys that currently hold what normalisr_sc wrote."""
    return {
        container: [key for key in keys if owned(adata, container, key)]
        for container, keys in _written(adata).items()
    }
