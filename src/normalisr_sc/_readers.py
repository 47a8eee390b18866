"""Readers of stored results, shared by ``tl``, ``get`` and ``pl``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._utils import require

if TYPE_CHECKING:
    from anndata import AnnData


def network_only(adata: AnnData, key: str) -> float | None:
    """Return the ``qcut`` of a :func:`coex` run under ``key`` that stored only the network."""
    record = adata.uns.get(key, {})
    if record.get("store") != "network":
        return None
    return record["binnet"]["qcut"]


def coex_block(adata: AnnData, key: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the indices of the genes covered by :func:`coex` and the dense block of one matrix."""
    varp_key = f"{key}_{name}"
    if network_only(adata, key) is not None:
        msg = (
            f"`nsc.tl.coex(..., store='network')` stored only the binary network "
            f"adata.varp[{key + '_net'!r}] under key {key!r}, not adata.varp[{varp_key!r}]; "
            "rerun `nsc.tl.coex` with store='all' (and dtype='float32' to halve its memory)."
        )
        raise ValueError(msg)
    require(adata, "varp", varp_key, "nsc.tl.coex")
    matrix = adata.varp[varp_key]
    genes = adata.uns.get(key, {}).get("genes")
    if genes is None:
        return np.arange(adata.n_vars), np.asarray(matrix)
    index = adata.var_names.get_indexer(np.asarray(genes, dtype=str))
    if (index < 0).any():
        msg = f"adata.uns[{key!r}]['genes'] names genes absent from adata; rerun `nsc.tl.coex`."
        raise ValueError(msg)
    return index, sparse.csr_matrix(matrix)[index][:, index].toarray()
