"""Reading a cells x groups 0/1 matrix from ``obs`` or ``obsm``, with its group names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from .._store import read_record

if TYPE_CHECKING:
    from anndata import AnnData

#: ``adata.uns[obsm_key][NAMES]`` names the columns of a sparse or array group matrix.
NAMES = "names"


@dataclass
class Groups:
    """Group indicators of all non-reference groups and which of them are tested.

    ``labelled`` marks the cells with a group label (an ``obs`` column's missing values
    are not); ``in_reference`` the cells carrying a reference group; ``explicit`` tells
    whether the tested groups were named with ``groups=``.
    """

    matrix: sparse.csr_matrix
    names: list[str]
    tested: np.ndarray
    reference: list[str]
    labelled: np.ndarray
    in_reference: np.ndarray
    explicit: bool

    @property
    def tested_names(self) -> list[str]:
        return [self.names[i] for i in self.tested]


def obsm_group_names(adata: AnnData, key: str) -> list[str]:
    """Column names of ``adata.obsm[key]``: DataFrame columns, ``uns[key]['names']`` or positions."""
    matrix = adata.obsm[key]
    if isinstance(matrix, pd.DataFrame):
        return [str(c) for c in matrix.columns]
    stored = read_record(adata, key)
    if NAMES in stored:
        names = [str(n) for n in np.asarray(stored[NAMES])]
        if len(names) == matrix.shape[1]:
            return names
    return [str(i) for i in range(matrix.shape[1])]


def _indicators_from_obs(adata: AnnData, column: str) -> tuple[sparse.csr_matrix, list[str]]:
    """One indicator per level; cells with a missing value carry none."""
    categories = adata.obs[column].astype("category").cat.remove_unused_categories()
    codes = categories.cat.codes.to_numpy()
    names = [str(c) for c in categories.cat.categories]
    cells = np.flatnonzero(codes >= 0)
    matrix = sparse.csr_matrix(
        (np.ones(cells.size), (cells, codes[cells])), shape=(codes.size, len(names))
    )
    return matrix, names


def _indicators_from_obsm(adata: AnnData, key: str) -> tuple[sparse.csr_matrix, list[str]]:
    raw = adata.obsm[key]
    values = raw.to_numpy() if isinstance(raw, pd.DataFrame) else raw
    matrix = sparse.csr_matrix(values, dtype=np.float64)
    matrix.eliminate_zeros()
    if matrix.ndim != 2 or matrix.shape[0] != adata.n_obs:
        msg = f"adata.obsm[{key!r}] must be cells x groups, got shape {matrix.shape}."
        raise ValueError(msg)
    if not (matrix.data == 1).all():
        bad = matrix.data[matrix.data != 1][0]
        msg = (
            f"adata.obsm[{key!r}] must hold 0/1 group indicators, found the value {bad:g}; "
            "turn guide counts into assignments with `nsc.tl.assign_guides`."
        )
        raise ValueError(msg)
    return matrix, obsm_group_names(adata, key)


def read_groups(
    adata: AnnData,
    groupby: str,
    reference: list[str],
    groups: list[str],
) -> Groups:
    """Build the indicators of the non-reference groups of ``groupby``, validated.

    ``groupby`` is an ``obs`` column (one indicator per level; cells with a missing
    value are not labelled) or an ``obsm`` key (a 0/1 matrix, every cell labelled).
    Reference groups are dropped from the matrix: their cells carry no group (the
    baseline). ``groups`` restricts the tested groups; the others keep their indicators.
    """
    labelled = np.ones(adata.n_obs, dtype=bool)
    if groupby in adata.obs.columns:
        matrix, names = _indicators_from_obs(adata, groupby)
        labelled = adata.obs[groupby].notna().to_numpy()
    elif groupby in adata.obsm:
        matrix, names = _indicators_from_obsm(adata, groupby)
    else:
        msg = (
            f"groupby={groupby!r} is neither an adata.obs column ({list(adata.obs.columns)}) "
            f"nor an adata.obsm key ({list(adata.obsm)})."
        )
        raise ValueError(msg)
    if len(set(names)) != len(names):
        msg = f"the groups of {groupby!r} have duplicate names; give each group a unique name."
        raise ValueError(msg)
    chosen = groups
    known = set(names)  # sets and a dict: 10,000 groups are not 10^8 list comparisons
    unknown = [g for g in reference + chosen if g not in known]
    if unknown:
        msg = f"group(s) {unknown} not found in {groupby!r}; available groups: {names[:20]}."
        raise ValueError(msg)
    both = sorted(set(reference) & set(chosen))
    if both:
        msg = f"group(s) {both} are both tested (`groups=`) and reference (`reference=`)."
        raise ValueError(msg)
    references = set(reference)
    keep = [i for i, name in enumerate(names) if name not in references]
    kept_names = [names[i] for i in keep]
    if not keep:
        msg = f"every group of {groupby!r} is a reference group; nothing is left to test."
        raise ValueError(msg)
    position = {name: i for i, name in enumerate(kept_names)}
    tested = (
        np.array([position[g] for g in chosen], dtype=np.int64)
        if chosen
        else np.arange(len(kept_names))
    )
    dropped = [i for i, name in enumerate(names) if name in references]
    in_reference = np.asarray(matrix[:, dropped].sum(axis=1)).ravel() > 0
    return Groups(
        matrix[:, keep].tocsr(), kept_names, tested, reference, labelled, in_reference, bool(chosen)
    )
