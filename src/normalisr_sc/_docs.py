"""Docstring pieces shared by the public functions, filled in by :func:`doc_params`."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def doc_params(**pieces: str):
    """Fill ``{name}`` fields of a docstring with shared pieces (like scanpy's ``_doc_params``)."""

    def fill(obj: T) -> T:
        if obj.__doc__ is not None:  # None under python -OO
            obj.__doc__ = obj.__doc__.format_map(pieces)
        return obj

    return fill


_CHUNKED = """\
chunked
        Read {what} as a dask array in blocks of ``chunk_size`` cells: each pass over
        the cells is a dask graph (run on a ``dask.distributed`` cluster if a client is
        active), and no dense cells x genes matrix is held.{stored}
        Default: when {what} {be} already a dask array or ``adata`` is backed. Results
        are the same either way.
    chunk_size
        Cells per block; default ``nsc.settings.block_cells`` (see the Large data page)."""

#: ``chunked`` and ``chunk_size`` of the functions reading raw counts.
doc_chunked_counts = _CHUNKED.format(
    what="the counts", be="are", stored="\n        Derived layers are stored as lazy dask arrays."
)
#: ``chunked`` and ``chunk_size`` of the functions reading a normalised layer.
doc_chunked_layer = _CHUNKED.format(what="``layer``", be="is", stored="")
