"""Guide (gRNA) assignment of cells from guide UMI counts: ``nsc.tl.assign_guides``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

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
    from mudata import MuData

GuideMap = Mapping[str, str] | pd.Series | pd.DataFrame | str


def _guide_names(
    adata: AnnData, obsm_key: str, guide_names: Sequence[str] | str | None, n_guides: int
) -> list[str]:
    if guide_names is None:
        return obsm_group_names(adata, obsm_key)
    if isinstance(guide_names, str):
        if guide_names not in adata.uns:
            msg = f"guide_names={guide_names!r} is not an adata.uns key; pass the names as a list."
            raise ValueError(msg)
        names = as_names("guide_names", np.asarray(adata.uns[guide_names]).ravel())
    else:
        names = as_names("guide_names", guide_names)
    if len(names) != n_guides:
        msg = f"{len(names)} guide names given for the {n_guides} columns of adata.obsm[{obsm_key!r}]."
        raise ValueError(msg)
    return names


def _name_hint(
    adata: AnnData, obsm_key: str, guide_names: object, n_guides: int, mapping: dict[str, str]
) -> str:
    """Say what to pass when no guide name is in the mapping: ``guide_names=``, candidates."""
    if guide_names is not None:
        return "check that `guide_names=` names the guide columns as the mapping does."
    candidates = [
        key
        for key, value in adata.uns.items()
        if isinstance(value, list | np.ndarray | pd.Index)
        and np.asarray(value).size == n_guides
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
    table: Any = groups
    if isinstance(groups, str):
        if groups not in adata.uns:
            msg = f"groups={groups!r} is not an adata.uns key; pass the guide -> group mapping."
            raise ValueError(msg)
        table = adata.uns[groups]
    if isinstance(table, pd.DataFrame):
        if table.shape[1] < 2:
            msg = "a guide -> group DataFrame needs two columns: guide name, then group name."
            raise ValueError(msg)
        table = pd.Series(table.iloc[:, 1].to_numpy(), index=table.iloc[:, 0].to_numpy())
    return {str(guide): str(group) for guide, group in dict(table).items()}


#: Names of the guide-count modality of a MuData: pertpy's and pysceptre's.
GUIDE_MODALITIES = ("gdo", "grna")


def _is_mudata(data: object) -> bool:
    return hasattr(data, "mod") and hasattr(data, "n_mod")


def _mudata_counts(mdata: MuData, rna_mod: str, guide_mod: str | None):
    """Return the expression modality and its cells' guide counts (matched by name).

    Also where the counts came from, and the guide modality's ``var``.
    """
    modalities = list(mdata.mod)
    if guide_mod is None:
        found = [m for m in GUIDE_MODALITIES if m in mdata.mod]
        if len(found) != 1:
            msg = (
                f"cannot tell the guide-count modality of the MuData among {modalities}; "
                "pass `guide_mod=`."
            )
            raise ValueError(msg)
        guide_mod = found[0]
    for name, role in ((rna_mod, "rna_mod"), (guide_mod, "guide_mod")):
        if name not in mdata.mod:
            msg = f"the MuData has no modality {name!r} (`{role}`); modalities: {modalities}."
            raise ValueError(msg)
    rna, guides = mdata.mod[rna_mod], mdata.mod[guide_mod]
    where = f"mdata[{guide_mod!r}].X"
    for modality, name in ((rna, rna_mod), (guides, guide_mod)):
        if not modality.obs_names.is_unique:
            msg = (
                f"the cell names of mdata[{name!r}] are not unique, so cells cannot be "
                "matched between modalities."
            )
            raise ValueError(msg)
    source = guides.X
    if source is None or np.dtype(source.dtype).kind not in "biuf":
        msg = f"{where} must hold real guide UMI counts."
        raise ValueError(msg)
    position = guides.obs_names.get_indexer(rna.obs_names)
    present = np.flatnonzero(position >= 0)
    if present.size == 0:
        msg = (
            f"no cell of mdata[{rna_mod!r}] is in mdata[{guide_mod!r}]: the cell names "
            "do not match."
        )
        raise ValueError(msg)
    if present.size < rna.n_obs:
        logger.warning(
            "assign_guides: %d of %d cells of mdata[%r] are absent from "
            "mdata[%r] and carry no guide.",
            rna.n_obs - present.size,
            rna.n_obs,
            rna_mod,
            guide_mod,
        )
    # The guide counts of each expression cell (zero rows for absent cells), by a
    # selection product: the guide modality's matrix is read, never reordered in place.
    select = sparse.csr_matrix(
        (np.ones(present.size), (present, position[present])), shape=(rna.n_obs, guides.n_obs)
    )
    counts = select @ sparse.csr_matrix(source, dtype=np.float64)
    return rna, counts, where, guides.var


def _canonical_counts(raw, where: str) -> sparse.csr_matrix:
    """Guide counts as a canonical float64 CSR copy, checked."""
    raw = raw.to_numpy() if isinstance(raw, pd.DataFrame) else raw
    if np.dtype(raw.dtype).kind not in "biuf":
        msg = f"{where} must hold real guide UMI counts, found dtype {raw.dtype}."
        raise ValueError(msg)
    if raw.ndim != 2 or raw.shape[1] == 0:
        msg = f"{where} holds no guide column (shape {raw.shape})."
        raise ValueError(msg)
    # A copy in canonical form: the user's matrix is never summed or sorted in place.
    counts = sparse.csr_matrix(raw, dtype=np.float64, copy=True)
    counts.sum_duplicates()
    if counts.nnz and (not np.isfinite(counts.data).all() or counts.data.min() < 0):
        msg = f"{where} must hold non-negative finite guide counts."
        raise ValueError(msg)
    return counts


def assign_guides(
    adata: AnnData | MuData,
    obsm_key: str = "grna_counts",
    *,
    mode: Literal["max", "threshold", "mixture"] = "max",
    threshold: float = 5,
    min_posterior: float = 0.5,
    posterior: bool = False,
    groups: GuideMap | None = None,
    guide_names: Sequence[str] | str | None = None,
    key_added: str = "nsc_guides",
    rna_mod: str = "rna",
    guide_mod: str | None = None,
) -> None:
    """Assign guides (gRNAs) to cells from their UMI counts.

    ``mode='max'`` gives each cell the single guide with its largest count (the customary
    low-MOI assignment; ties go to the first such guide, cells without any guide count
    get none). ``mode='threshold'`` gives each cell every guide with at least
    ``threshold`` UMIs (the customary high-MOI assignment). With ``groups``, guides are
    pooled by target: a cell carries a group if it carries any of its guides.

    A screen held as a MuData (as pertpy's loaders and pysceptre give it) is read from
    its guide-count modality and the assignment written into its expression modality, so
    that ``nsc.pp.normalize(mdata["rna"])`` and ``nsc.tl.de(mdata["rna"], "nsc_guides",
    ...)`` follow as usual.

    Parameters
    ----------
    adata
        AnnData with guide counts in ``adata.obsm[obsm_key]`` (cells x guides), or a
        MuData with an expression and a guide-count modality (``rna_mod``,
        ``guide_mod``; ``obsm_key`` is then not used).
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
    rna_mod
        For a MuData: the expression modality, which receives the assignment.
    guide_mod
        For a MuData: the guide-count modality (its ``X``: cells x guides UMI counts,
        guide names in its ``var_names``); default whichever of ``'gdo'`` (pertpy) and
        ``'grna'`` (pysceptre) it has. ``groups`` may then name a column of its ``var``
        holding each guide's target (e.g. ``'target_gene_name'``). Cells are matched by
        name; cells of the expression modality absent from the guide modality carry no
        guide (a warning counts them).

    Returns
    -------
    Nothing; sets (for a MuData, in its expression modality) ``adata.obsm[key_added]`` (CSR boolean, cells x guides or groups) and
    ``adata.uns[key_added]`` with ``names`` (the column names, read by
    :func:`normalisr_sc.tl.de`) and ``params``. Cells per column are not stored,
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

    A MuData screen whose guide modality's ``var`` names each guide's target:

    >>> nsc.tl.assign_guides(mdata, groups="target_gene_name")
    >>> nsc.pp.normalize(mdata["rna"])
    """
    check_str("obsm_key", obsm_key)
    check_choice("mode", mode, ("max", "threshold", "mixture"))
    threshold = check_number("threshold", threshold, minimum=0, min_open=True)
    min_posterior = check_number(
        "min_posterior", min_posterior, minimum=0, maximum=1, min_open=True, max_open=True
    )
    check_bool("posterior", posterior)
    posterior_key = f"{key_added}_posterior"
    check_str("key_added", key_added)
    if not (guide_names is None or isinstance(guide_names, str)):
        as_names("guide_names", guide_names)
    if groups is not None and not isinstance(groups, str | Mapping | pd.Series | pd.DataFrame):
        msg = (
            "`groups` must be a guide -> group mapping (dict, Series, two-column "
            f"DataFrame) or the adata.uns key of one, got {type(groups).__name__}."
        )
        raise ValueError(msg)
    check_str("rna_mod", rna_mod)
    check_str("guide_mod", guide_mod, allow_none=True)
    if _is_mudata(adata):
        adata, raw, where, guide_var = _mudata_counts(adata, rna_mod, guide_mod)
    else:
        if obsm_key not in adata.obsm:
            msg = f"adata.obsm[{obsm_key!r}] not found; available keys: {list(adata.obsm)}."
            raise ValueError(msg)
        raw, where, guide_var = adata.obsm[obsm_key], f"adata.obsm[{obsm_key!r}]", None
    check_writable(
        adata, {"obsm": [key_added, *([posterior_key] if posterior else [])], "uns": [key_added]}
    )
    counts = _canonical_counts(raw, where)
    if mode == "mixture" and (counts.data != np.round(counts.data)).any():
        msg = (
            f"mode='mixture' needs integer UMI counts; {where} holds non-integer "
            "values. Pass the raw guide UMI counts."
        )
        raise ValueError(msg)
    if guide_var is None:
        names = _guide_names(adata, obsm_key, guide_names, counts.shape[1])
    else:
        names = (
            [str(n) for n in guide_var.index]
            if guide_names is None
            else _guide_names(adata, obsm_key, guide_names, counts.shape[1])
        )
    if guide_var is not None and isinstance(groups, str) and groups in guide_var.columns:
        targets = guide_var[groups]
        mapping: dict[str, str] | None = {
            str(g): str(t) for g, t in zip(guide_var.index, targets, strict=True) if pd.notna(t)
        }
    else:
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
            logger.warning(
                "assign_guides: %d of %d guides get no cell (no count, or no "
                "component above the background): %s",
                len(unfitted),
                len(names),
                list(unfitted[:5]),
            )
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
    params = {
        "obsm_key": obsm_key,
        "mode": mode,
        "key_added": key_added,
        "pooled": mapping is not None,
        **({"threshold": threshold} if mode == "threshold" else {}),
        **({"min_posterior": min_posterior} if mode == "mixture" else {}),
    }
    obsm: dict[str, Any] = {key_added: assigned}
    uns: dict[str, Any] = {NAMES: list(columns)}
    if mode == "mixture":
        uns["mixture"] = mixture
        if posterior:
            obsm[posterior_key] = fit.posterior
    stale = [] if mode == "mixture" and posterior else [posterior_key]
    store(adata, key_added, params, drop={"obsm": stale}, obsm=obsm, uns={key_added: uns})
    logger.info(
        "assign_guides: %d cells carry at least one of %d %s",
        int((np.diff(assigned.indptr) > 0).sum()),
        len(columns),
        "groups" if mapping else "guides",
    )
