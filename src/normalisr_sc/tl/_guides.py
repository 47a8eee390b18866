"""Guide (gRNA) assignment of cells from guide UMI counts: ``nsc.tl.assign_guides``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .._core._guide_mixture import assign_mixture
from .._store import check_writable, store
from .._utils import logger
from .._validate import as_names, check_bool, check_choice, check_number, check_str
from ._groups import NAMES, obsm_group_names

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

GuideMap = Mapping[str, str] | pd.Series | pd.DataFrame | str


def _guide_names(adata: AnnData, obsm_key: str, guide_names: Sequence[str] | str | None,
                 n_guides: int) -> list[str]:
    if guide_names is None:
        return obsm_group_names(adata, obsm_key)
    if isinstance(guide_names, str):
        if guide_names not in adata.uns:
            msg = f"guide_names={guide_names!r} is not an adata.uns key; pass the names as a list."
            raise ValueError(msg)
        guide_names = np.asarray(adata.uns[guide_names]).ravel()
    names = as_names("guide_names", guide_names)
    if len(names) != n_guides:
        msg = f"{len(names)} guide names given for the {n_guides} columns of adata.obsm[{obsm_key!r}]."
        raise ValueError(msg)
    return names


def _name_hint(adata: AnnData, obsm_key: str, guide_names: object, n_guides: int,
               mapping: dict[str, str]) -> str:
    """What to pass when no guide name is in the mapping: ``guide_names=`` and its candidates."""
    if guide_names is not None:
        return "check that `guide_names=` names the guide columns as the mapping does."
    candidates = [
        key for key, value in adata.uns.items()
        if isinstance(value, list | np.ndarray | pd.Index) and np.asarray(value).size == n_guides
        and any(str(v) in mapping for v in np.asarray(value).ravel())
    ]
    example = repr(candidates[0]) if candidates else "'grna_ids'"
    found = f" (adata.uns[{candidates[0]!r}] holds such names)" if candidates else ""
    return (
        f"the columns of adata.obsm[{obsm_key!r}] have no names (it is not a DataFrame), so "
        "they are called by position; pass the guide names with `guide_names=`, a list or "
        f"the adata.uns key holding them, e.g. `guide_names={example}`{found}."
    )


def _guide_to_group(adata: AnnData, groups: GuideMap) -> dict[str, str]:
    if isinstance(groups, str):
        if groups not in adata.uns:
            msg = f"groups={groups!r} is not an adata.uns key; pass the guide -> group mapping."
            raise ValueError(msg)
        groups = adata.uns[groups]
    if isinstance(groups, pd.DataFrame):
        if groups.shape[1] < 2:
            msg = "a guide -> group DataFrame needs two columns: guide name, then group name."
            raise ValueError(msg)
        groups = pd.Series(groups.iloc[:, 1].to_numpy(), index=groups.iloc[:, 0].to_numpy())
    return {str(guide): str(group) for guide, group in dict(groups).items()}


def assign_guides(
    adata: AnnData,
    obsm_key: str = "grna_counts",
    *,
    mode: Literal["max", "threshold", "mixture"] = "max",
    threshold: float = 5,
    min_posterior: float = 0.5,
    posterior: bool = False,
    groups: GuideMap | None = None,
    guide_names: Sequence[str] | str | None = None,
    key_added: str = "nsc_guides",
) -> None:
    """Assign guides (gRNAs) to cells from their UMI counts.

    ``mode='max'`` gives each cell the single guide with its largest count (the customary
    low-MOI assignment; ties go to the first such guide, cells without any guide count
    get none). ``mode='threshold'`` gives each cell every guide with at least
    ``threshold`` UMIs (the customary high-MOI assignment). With ``groups``, guides are
    pooled by target: a cell carries a group if it carries any of its guides.

    Parameters
    ----------
    adata
        AnnData with guide counts in ``adata.obsm[obsm_key]`` (cells x guides).
    obsm_key
        ``adata.obsm`` key of the guide UMI counts (dense, sparse or DataFrame).
    mode
        ``'max'``, ``'threshold'`` or ``'mixture'``.
    threshold
        Minimum UMI count of an assigned guide in ``'threshold'`` mode.
    min_posterior
        Posterior probability of carrying a guide needed in ``'mixture'`` mode, in (0, 1).
    posterior
        In ``'mixture'`` mode, also store the posterior probabilities at the nonzero
        counts in ``adata.obsm[key_added + '_posterior']`` (CSR, cells x guides, not
        pooled); a cell with no UMI of a guide has a posterior below 1e-3 (the fitted
        value is ``adata.uns[key_added]['mixture']['posterior_at_zero']``).
    groups
        Guide -> group mapping: a dict or Series, a DataFrame whose first two columns are
        guide and group (e.g. ``adata.uns['grna_group']``), or the ``adata.uns`` key of
        one. Guides absent from the mapping are dropped.
    guide_names
        Names of the guide columns (a list or an ``adata.uns`` key) when the counts are
        not a DataFrame; default ``adata.uns[obsm_key]['names']`` or the positions.
    key_added
        Key receiving the assignment.

    Returns
    -------
    Nothing; sets ``adata.obsm[key_added]`` (CSR boolean, cells x guides or groups) and
    ``adata.uns[key_added]`` with ``names`` (the column names, read by
    :func:`normalisr_sc.tl.de`) and the parameters. Cells per column are not stored,
    since they change when cells are filtered: count them from the matrix
    (``adata.obsm[key_added].sum(axis=0)``); :func:`normalisr_sc.tl.de` counts the cells
    of each test itself. In ``'mixture'`` mode, ``adata.uns[key_added]['mixture']`` holds
    the fit of each guide (DataFrame: mixing weight ``pi``, ``background_mean``,
    ``background_size``, ``log_mean``, ``log_sd`` of the carried counts, ``status``).

    Examples
    --------
    >>> nsc.tl.assign_guides(adata, "grna_counts", guide_names="grna_ids",
    ...                      groups="grna_group")
    >>> nsc.tl.de(adata, "nsc_guides", design="low_moi", reference="non-targeting")
    """
    check_str("obsm_key", obsm_key)
    check_choice("mode", mode, ("max", "threshold", "mixture"))
    threshold = check_number("threshold", threshold, minimum=0, min_open=True)
    min_posterior = check_number("min_posterior", min_posterior, minimum=0, maximum=1,
                                 min_open=True, max_open=True)
    check_bool("posterior", posterior)
    posterior_key = f"{key_added}_posterior"
    check_str("key_added", key_added)
    if not (guide_names is None or isinstance(guide_names, str)):
        as_names("guide_names", guide_names)
    if groups is not None and not isinstance(groups, str | Mapping | pd.Series | pd.DataFrame):
        msg = ("`groups` must be a guide -> group mapping (dict, Series, two-column "
               f"DataFrame) or the adata.uns key of one, got {type(groups).__name__}.")
        raise ValueError(msg)
    check_writable(adata, {"obsm": [key_added, *([posterior_key] if posterior else [])],
                           "uns": [key_added]})
    if obsm_key not in adata.obsm:
        msg = f"adata.obsm[{obsm_key!r}] not found; available keys: {list(adata.obsm)}."
        raise ValueError(msg)
    raw = adata.obsm[obsm_key]
    raw = raw.to_numpy() if isinstance(raw, pd.DataFrame) else raw
    if np.dtype(raw.dtype).kind not in "biuf":
        msg = (f"adata.obsm[{obsm_key!r}] must hold real guide UMI counts, found dtype "
               f"{raw.dtype}.")
        raise ValueError(msg)
    if raw.ndim != 2 or raw.shape[1] == 0:
        msg = f"adata.obsm[{obsm_key!r}] holds no guide column (shape {raw.shape})."
        raise ValueError(msg)
    # A copy in canonical form: the user's matrix is never summed or sorted in place.
    counts = sparse.csr_matrix(raw, dtype=np.float64, copy=True)
    counts.sum_duplicates()
    if counts.nnz and (not np.isfinite(counts.data).all() or counts.data.min() < 0):
        msg = f"adata.obsm[{obsm_key!r}] must hold non-negative finite guide counts."
        raise ValueError(msg)
    if mode == "mixture" and (counts.data != np.round(counts.data)).any():
        msg = (f"mode='mixture' needs integer UMI counts; adata.obsm[{obsm_key!r}] holds "
               "non-integer values. Pass the raw guide UMI counts.")
        raise ValueError(msg)
    names = _guide_names(adata, obsm_key, guide_names, counts.shape[1])
    mapping = None if groups is None else _guide_to_group(adata, groups)

    if mode == "max":
        top = np.asarray(counts.argmax(axis=1)).ravel()
        has = np.asarray(counts.max(axis=1).toarray()).ravel() > 0
        cells = np.flatnonzero(has)
        assigned = sparse.csr_matrix(
            (np.ones(cells.size, dtype=bool), (cells, top[has])), shape=counts.shape
        )
    elif mode == "threshold":
        assigned = sparse.csr_matrix(counts >= threshold)
    else:
        fit = assign_mixture(counts, threshold=min_posterior, posterior=posterior)
        assigned = fit.assigned
        mixture = pd.DataFrame(fit.params, index=pd.Index(names, name="guide"))
        unfitted = mixture.index[mixture["status"] != "fitted"]
        if len(unfitted):
            logger.warning("assign_guides: %d of %d guides get no cell (no count, or no "
                           "component above the background): %s", len(unfitted),
                           len(names), list(unfitted[:5]))
    columns = names
    if mapping is not None:
        known = [i for i, name in enumerate(names) if name in mapping]
        if not known:
            hint = _name_hint(adata, obsm_key, guide_names, len(names), mapping)
            msg = f"no guide name (e.g. {names[:3]}) is in the guide -> group mapping: {hint}"
            raise ValueError(msg)
        columns = sorted({mapping[names[i]] for i in known})
        position = {group: j for j, group in enumerate(columns)}
        pool = sparse.csr_matrix(
            (np.ones(len(known)), (known, [position[mapping[names[i]]] for i in known])),
            shape=(len(names), len(columns)),
        )
        assigned = sparse.csr_matrix((assigned.astype(np.float64) @ pool) > 0)
    assigned = assigned.astype(bool)
    params = {"obsm_key": obsm_key, "mode": mode, "key_added": key_added,
              "pooled": mapping is not None,
              **({"threshold": threshold} if mode == "threshold" else {}),
              **({"min_posterior": min_posterior} if mode == "mixture" else {})}
    obsm = {key_added: assigned}
    uns = {NAMES: list(columns), **params}
    if mode == "mixture":
        uns["mixture"] = mixture
        if posterior:
            obsm[posterior_key] = fit.posterior
    stale = [] if mode == "mixture" and posterior else [posterior_key]
    store(adata, "assign_guides", params, drop={"obsm": stale}, obsm=obsm,
          uns={key_added: uns})
    logger.info("assign_guides: %d cells carry at least one of %d %s",
                int((np.diff(assigned.indptr) > 0).sum()), len(columns),
                "groups" if mapping else "guides")
