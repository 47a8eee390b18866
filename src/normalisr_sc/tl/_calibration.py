"""Calibration check on negative-control pairs: ``nsc.tl.calibration_check``.

Negative-control (NT) pairs are (group, gene) pairs whose group is built from the cells
of the non-targeting guides, so that no gene can respond to it: their p-values must be
uniform when the test is calibrated. They are tested with the design, covariates, layer
and ``dimreduce`` of the discovery analysis, in ONE kernel call for all NT groups:

- low MOI (and case-control with a reference): every NT group against the other NT
  cells, covariates removed on the NT cells (:func:`~.._core._association.case_control`
  restricted to them);
- high MOI: the NT groups as extra columns of the joint regression, beside every
  targeting group (:func:`~.._core._association.high_moi`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse, stats

from .._core._association import case_control, high_moi
from .._core._pair_qc import nonzero_counts, qc_pass
from .._core._pvalues import bh_qvalues, genomic_inflation
from .._docs import doc_chunked_layer, doc_params
from .._progress import progress
from .._store import check_writable, read_params, read_record, store
from .._utils import input_matrix, logger
from .._validate import as_names, check_bool, check_choice, check_int, check_number, check_str
from ._de import MIN_NONZERO, PAIR_QC
from ._groups import read_groups
from ._guides import _guide_to_group
from ._inputs import check_dimreduce, normalised_inputs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

Construction = Literal["auto", "guides", "random"]
CONSTRUCTIONS = ("auto", "guides", "random")
DESIGNS = ("case_control", "low_moi", "high_moi")
#: ``construction='auto'`` splits the NT cells by guide when at least this many NT
#: guides can be tested, else into random groups.
MIN_NT_GUIDES = 5
#: The check is reported as miscalibrated (a WARNING) above this inflation factor...
MAX_INFLATION = 1.2
#: ... or above this fraction of NT pairs with p < 0.05.
MAX_FRACTION_BELOW_05 = 0.1
#: Significance level of the reported fraction of small p-values.
ALPHA = 0.05
#: Combinations of NT guides are enumerated (not drawn one by one) up to this many.
ENUMERATE_UP_TO = 100_000
#: Names of NT groups listed in a message.
LISTED = 10


@dataclass(eq=False)
class Calibration:
    """Summary of a calibration check (:func:`calibration_check`).

    Attributes
    ----------
    inflation
        Genomic inflation factor ``lambda`` of the NT pairs' p-values (1 when calibrated).
    fraction_below_05
        Fraction of NT pairs with p < 0.05 (0.05 when calibrated).
    n_false_discoveries
        NT pairs with a Benjamini-Hochberg q-value (over the NT pairs) at most ``qcut``.
    ks_statistic, ks_pvalue
        Kolmogorov-Smirnov distance of the p-values to the uniform distribution, and its
        p-value.
    n_pairs, n_excluded, n_groups, n_cells
        NT pairs reported, NT pairs excluded by the pair QC, NT groups tested, NT cells
        they were drawn from.
    qcut
        Q-value cut of ``n_false_discoveries``.
    design, construction
        Design of the discovery analysis and how the NT groups were built
        (``'guides'`` or ``'random'``).
    calibrated
        Whether ``inflation <= 1.2`` and ``fraction_below_05 <= 0.1``.
    groups
        Per NT group: cells carrying it (``n_cells``), pairs reported (``n_pairs``),
        ``inflation`` and ``fraction_below_05`` over its pairs.
    """

    inflation: float
    fraction_below_05: float
    n_false_discoveries: int
    ks_statistic: float
    ks_pvalue: float
    n_pairs: int
    n_excluded: int
    n_groups: int
    n_cells: int
    qcut: float
    design: str
    construction: str
    calibrated: bool
    groups: pd.DataFrame = field(repr=False)

    def __str__(self) -> str:
        verdict = "calibrated" if self.calibrated else "MISCALIBRATED"
        return (
            f"calibration check ({self.design}, NT groups by {self.construction}): "
            f"{self.n_pairs} NT pairs of {self.n_groups} groups from {self.n_cells} NT cells"
            f"{f' ({self.n_excluded} excluded by the pair QC)' if self.n_excluded else ''}; "
            f"lambda = {self.inflation:.3f}, {self.fraction_below_05:.1%} below p = 0.05, "
            f"{self.n_false_discoveries} false discoveries at q <= {self.qcut:g}, "
            f"KS distance {self.ks_statistic:.3f}: {verdict}"
        )


@dataclass
class _Setup:
    """What the check needs from the discovery analysis, after overrides."""

    groupby: str
    design: str
    control: list[str]
    layer: str
    covariates_key: str
    dimreduce: int
    min_cells: int
    n_discovery_groups: int | None
    n_discovery_pairs: int | None
    typical_group_size: int | None
    min_nonzero: int
    counts_layer: str | None


def _family_size(adata: AnnData, key: str | None, record: Mapping, params: Mapping) -> int | None:
    """Pairs in the discovery analysis' multiple-testing family.

    Its tested groups x genes, or its chosen pairs (``tl.de(pairs=...)``), each restricted
    to the pairs passing its pair QC when it ran one.
    """
    groups = record.get("groups")
    if groups is None:
        return None
    names = [str(g) for g in np.atleast_1d(groups)]
    n_genes = adata.n_vars
    rows = np.repeat(np.arange(n_genes), len(names))
    columns = np.tile(np.arange(len(names)), n_genes)
    chosen = record.get("pairs")
    if isinstance(chosen, pd.DataFrame) and {"group", "gene"} <= set(chosen.columns):
        rows = adata.var_names.get_indexer(pd.Index(chosen["gene"].astype(str)))
        columns = pd.Index(names).get_indexer(pd.Index(chosen["group"].astype(str)))
        inside = (rows >= 0) & (columns >= 0)
        rows, columns = rows[inside], columns[inside]
    qc_keys = [f"{key}_{suffix}" for suffix in PAIR_QC]
    if params.get("min_nonzero") and all(k in adata.varm for k in qc_keys):
        n_group, n_control = (np.asarray(adata.varm[k]) for k in qc_keys)
        if n_group.shape == (n_genes, len(names)):
            passing = qc_pass(n_group, n_control, int(params["min_nonzero"]))
            return int(passing[rows, columns].sum())
    return int(rows.size)


def _discovery_setup(
    adata: AnnData,
    key: str | None,
    overrides: dict[str, Any],
) -> _Setup:
    """Read the discovery analysis' parameters (``adata.uns[key]``), overridden where given."""
    record: Mapping = {}
    params: Mapping = {}
    if key is not None:
        record, params = read_record(adata, key), read_params(adata, key)
        if "design" not in params or "groupby" not in params:
            msg = (
                f"no differential-expression results under adata.uns[{key!r}]: the check "
                f"repeats the design of a discovery analysis. Run `nsc.tl.de(adata, ..., "
                f"key_added={key!r})` first, pass the `key=` it used, or pass `key=None` "
                "with `groupby=`, `design=` and `control=`."
            )
            raise ValueError(msg)
    elif overrides["groupby"] is None or overrides["design"] is None:
        msg = "with `key=None` (no discovery analysis to follow), pass `groupby=` and `design=`."
        raise ValueError(msg)

    def pick(name: str, default: Any) -> Any:
        value = overrides[name]
        return value if value is not None else params.get(name, default)

    control = overrides["control"]
    if control is None:
        control = [str(c) for c in np.atleast_1d(params.get("reference_groups", []))]
    if not control:
        where = f"the discovery analysis under key {key!r}" if key else "the check"
        msg = (
            f"{where} has no non-targeting control: negative-control pairs are built from "
            "the cells of the non-targeting guides. Pass `control=` naming the "
            "non-targeting group(s) (e.g. control='non-targeting'), or rerun `nsc.tl.de` "
            "with `reference=` the non-targeting group."
        )
        raise ValueError(msg)
    design = str(pick("design", "low_moi"))
    check_choice("design", design, DESIGNS)
    n_cells = record.get("n_cells")
    typical = int(np.median(np.asarray(n_cells))) if n_cells is not None and len(n_cells) else None
    groups = record.get("groups")
    min_nonzero = overrides["min_nonzero"]
    if min_nonzero is None:
        min_nonzero = int(params.get("min_nonzero", MIN_NONZERO.get(design, 0)))
    counts_layer = overrides["counts_layer"] or params.get("counts_layer")
    n_pairs = _family_size(adata, key, record, params)
    return _Setup(
        groupby=str(pick("groupby", None)),
        design=design,
        control=list(control),
        layer=str(pick("layer", "normalisr")),
        covariates_key=str(pick("covariates_key", "nsc_covariates_norm")),
        dimreduce=int(pick("dimreduce", 0)),
        min_cells=int(pick("min_cells", 2)),
        n_discovery_groups=None if groups is None else len(groups),
        n_discovery_pairs=n_pairs,
        typical_group_size=typical,
        min_nonzero=int(min_nonzero),
        counts_layer=None if counts_layer is None else str(counts_layer),
    )


def _nt_guides(
    adata: AnnData,
    guides: str,
    nt_guides: object,
    control: list[str],
) -> tuple[sparse.csr_matrix, list[str]]:
    """Return the cells x NT guides 0/1 matrix of ``adata.obsm[guides]`` and the NT guide names."""
    found = read_groups(adata, guides, [], [])
    matrix, names = found.matrix, found.names
    if nt_guides is None:
        msg = (
            f"construction by guide needs to know which columns of adata.obsm[{guides!r}] "
            "are non-targeting guides: pass `nt_guides=`, their names or a guide -> group "
            "mapping (e.g. nt_guides='grna_group', the adata.uns key of the guide table)."
        )
        raise ValueError(msg)
    if isinstance(nt_guides, str) and nt_guides in adata.uns:
        nt_guides = adata.uns[nt_guides]
    if isinstance(nt_guides, Mapping | pd.Series | pd.DataFrame):
        mapping = _guide_to_group(adata, nt_guides)
        chosen = [name for name in names if mapping.get(name) in control]
        if not chosen:
            msg = (
                f"no guide of adata.obsm[{guides!r}] (e.g. {names[:3]}) maps to the control "
                f"group(s) {control} in `nt_guides`; check that the mapping names the guides "
                "as their assignment does."
            )
            raise ValueError(msg)
    else:
        chosen = as_names("nt_guides", nt_guides)
        unknown = [g for g in chosen if g not in names]
        if unknown:
            msg = (
                f"nt_guides {unknown[:LISTED]} are not columns of adata.obsm[{guides!r}] "
                f"(its guides: {names[:LISTED]})."
            )
            raise ValueError(msg)
    position = {name: j for j, name in enumerate(names)}
    columns = [position[name] for name in chosen]
    return matrix[:, columns].tocsr(), chosen


def _guide_groups(
    nt_matrix: sparse.csr_matrix,
    nt_names: list[str],
    pool: np.ndarray,
    per_group: int,
    n_groups: int | None,
    n_discovery: int | None,
    min_cells: int,
    seed: int,
) -> tuple[sparse.csr_matrix, list[str]]:
    """NT groups of ``per_group`` NT guides each, as cells (of ``pool``) x groups.

    One guide per group: every NT guide carried in the pool (or ``n_groups`` of them at
    random). More: ``n_groups`` distinct random combinations (default as many as the
    discovery analysis has groups, at most all combinations). Groups carried by fewer
    than ``min_cells`` pool cells, or by all of them, are left out (a warning names them).
    """
    rng = np.random.default_rng(seed)
    n_pool = int(pool.sum())
    carried = np.asarray(nt_matrix[pool].sum(axis=0)).ravel()
    present = np.flatnonzero(carried > 0)
    if per_group >= present.size and (per_group > 1 or present.size == 0):
        msg = (
            f"guides_per_group={per_group} needs more NT guides than the {present.size} "
            "carried by NT cells (the other NT guides' cells are the control); lower "
            "`guides_per_group=` or use construction='random'."
        )
        raise ValueError(msg)
    total = math.comb(present.size, per_group)
    default = total if per_group == 1 else min(total, n_discovery or total)
    count = default if n_groups is None else n_groups
    if count > total:
        msg = (
            f"n_groups={count} asks for more NT groups than the {total} distinct groups of "
            f"{per_group} of the {present.size} NT guides; lower `n_groups=`."
        )
        raise ValueError(msg)
    if count == total:
        combos = np.array(list(itertools.combinations(present, per_group)))
    elif total <= ENUMERATE_UP_TO:
        every = np.array(list(itertools.combinations(present, per_group)))
        combos = every[np.sort(rng.choice(total, count, replace=False))]
    else:
        drawn: set[tuple[int, ...]] = set()
        while len(drawn) < count:
            drawn.add(tuple(sorted(rng.choice(present, per_group, replace=False))))
        combos = np.array(sorted(drawn))
    membership = sparse.csr_matrix(
        (np.ones(combos.size), (combos.ravel(), np.repeat(np.arange(count), per_group))),
        shape=(nt_matrix.shape[1], count),
    )
    in_pool = sparse.csr_matrix(nt_matrix.multiply(pool[:, None]))
    columns = sparse.csr_matrix((in_pool @ membership) > 0, dtype=np.float64)
    names = np.array(["+".join(nt_names[j] for j in combo) for combo in combos], dtype=object)
    sizes = np.asarray(columns.sum(axis=0)).ravel()
    ok = (sizes >= min_cells) & (sizes < n_pool)
    if not ok.any():
        msg = (
            f"no NT group is carried by at least min_cells={min_cells} NT cells (and not "
            "by all of them); use construction='random'."
        )
        raise ValueError(msg)
    if not ok.all():
        logger.warning(
            "calibration_check: %d NT group(s) carried by fewer than min_cells=%d NT cells "
            "(or by all of them) are not tested: %s",
            int((~ok).sum()),
            min_cells,
            ", ".join(names[~ok][:LISTED]),
        )
    return columns[:, np.flatnonzero(ok)].tocsr(), list(names[ok])


def _random_groups(
    pool: np.ndarray, n_groups: int, size: int, seed: int
) -> tuple[sparse.csr_matrix, list[str]]:
    """``n_groups`` independent random sets of ``size`` cells of ``pool`` (cells mask)."""
    rng = np.random.default_rng(seed)
    cells = np.flatnonzero(pool)
    rows = np.concatenate([rng.choice(cells, size=size, replace=False) for _ in range(n_groups)])
    columns = np.repeat(np.arange(n_groups), size)
    matrix = sparse.csr_matrix((np.ones(rows.size), (rows, columns)), shape=(pool.size, n_groups))
    width = len(str(n_groups))
    return matrix, [f"random{j + 1:0{width}d}" for j in range(n_groups)]


def _pair_qc(
    adata: AnnData,
    columns: sparse.csr_matrix,
    used: np.ndarray,
    setup: _Setup,
    block: int,
    *,
    chunked: bool | None,
    chunk_size: int | None,
) -> np.ndarray:
    """Find the NT pairs passing the pair QC (NT groups x genes, boolean).

    A pair passes with ``min_nonzero`` expressing cells in the group and in its control
    cells (the other ``used`` cells), counted as :func:`normalisr_sc.tl.de` counts them.
    """
    counts, _ = input_matrix(
        adata, setup.counts_layer, chunked=chunked, chunk_size=chunk_size, what="raw UMI counts"
    )
    k = columns.shape[1]
    indicators = sparse.hstack(
        [sparse.csr_matrix(columns.multiply(used[:, None])), sparse.csr_matrix(used[:, None])],
        format="csr",
        dtype=np.int32,
    )
    found = nonzero_counts(
        indicators, counts, block_cells=block, progress=progress, what="the counts layer"
    )
    return qc_pass(found[:k], found[k] - found[:k], setup.min_nonzero)


def _summary_figures(pvals: np.ndarray, neg_log10: np.ndarray, qcut: float) -> dict:
    ks = stats.kstest(pvals, "uniform")
    return {
        "inflation": genomic_inflation(neg_log10),
        "fraction_below_05": float(np.mean(pvals < ALPHA)),
        "n_false_discoveries": int((bh_qvalues(pvals) <= qcut).sum()),
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
    }


@doc_params(doc_chunked_layer=doc_chunked_layer)
def calibration_check(
    adata: AnnData,
    key: str | None = "nsc_de",
    *,
    construction: Construction = "auto",
    guides: str | None = None,
    nt_guides: str | Sequence[str] | Mapping[str, str] | pd.Series | pd.DataFrame | None = None,
    control: str | Sequence[str] | None = None,
    guides_per_group: int = 1,
    n_groups: int | None = None,
    group_size: int | None = None,
    n_pairs: int | Literal["discovery"] | None = None,
    qcut: float = 0.1,
    seed: int = 0,
    groupby: str | None = None,
    design: Literal["case_control", "low_moi", "high_moi"] | None = None,
    layer: str | None = None,
    covariates_key: str | None = None,
    dimreduce: int | None = None,
    min_cells: int | None = None,
    min_nonzero: int | None = None,
    counts_layer: str | None = None,
    key_added: str = "nsc_calibration",
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> Calibration:
    """Check the calibration of a screen's tests on negative-control (NT) pairs.

    The cells of the non-targeting control group are split into NT groups, and every NT
    group is tested against every gene exactly as the discovery analysis tests a
    targeting group (same design, covariates, layer and ``dimreduce``, read from the
    :func:`normalisr_sc.tl.de` run under ``key``). No gene can respond to a group of
    non-targeting cells, so the p-values of these NT pairs are uniform when the tests are
    calibrated: about 5% below 0.05, an inflation factor near 1, no discovery.

    NT groups (``construction``):

    ``'guides'``
        One group per non-targeting guide (the columns ``nt_guides`` of the guide-level
        assignment ``adata.obsm[guides]``, e.g. from :func:`assign_guides` without
        ``groups=``); with ``guides_per_group=k > 1``, distinct random combinations of
        ``k`` NT guides (SCEPTRE's undercover groups, ``k`` there the median number of
        guides per target), as many as the discovery analysis has groups unless
        ``n_groups`` says otherwise. Groups carried by fewer than ``min_cells`` NT cells
        are left out.
    ``'random'``
        ``n_groups`` random sets of ``group_size`` NT cells each, drawn independently
        (a cell may be in several sets) with ``seed``: needs no guide-level
        assignment, and gives as many NT groups as wanted when the screen has few NT
        guides. Default: as many groups as the discovery analysis tested, of the median
        size of its groups (at most half of the NT cells).
    ``'auto'``
        ``'guides'`` when ``guides`` is given and at least 5 NT guides can be tested,
        else ``'random'``.

    The NT cells and the tests, by design:

    ``'low_moi'`` (and ``'case_control'`` with a reference)
        The NT cells carry a control group and no other group (in ``'guides'``
        construction also exactly one NT guide; other cells carrying a control group
        are left out, with a warning). Each NT group is tested against the other NT
        cells, with the covariates removed on the NT cells: all groups in one
        vectorised pass.
    ``'high_moi'``
        The NT cells carry a control group. The NT groups are extra columns of the one
        joint regression of the discovery analysis, beside every targeting group
        (control groups stay out of it, as in :func:`normalisr_sc.tl.de`), on the cells
        it used.

    NT pairs go through the discovery analysis' pair QC: a pair with fewer than
    ``min_nonzero`` cells with a nonzero count of the gene among the NT group's cells or
    among its control cells (the other NT cells in low MOI, the other cells of the
    regression in high MOI) is excluded, as :func:`normalisr_sc.tl.de` excludes such
    pairs from its q-values.

    Reported over the NT pairs (every NT group x every gene passing the pair QC, or a
    random subset of ``n_pairs`` of them): the inflation factor ``lambda`` (median chi-square / 0.455), the
    fraction of p-values below 0.05, the number of false discoveries (Benjamini-Hochberg
    q-value over the NT pairs at most ``qcut``) and the Kolmogorov-Smirnov distance to
    the uniform distribution. A WARNING is logged when the tests look miscalibrated:
    ``lambda > 1.2`` or more than 10% of the p-values below 0.05 (twice the nominal
    rate); NT pairs with q-values at most ``qcut`` are then false discoveries to expect
    among the real ones too.

    Parameters
    ----------
    adata
        Normalised AnnData on which :func:`normalisr_sc.tl.de` ran.
    key
        ``key_added`` of the discovery analysis whose design is followed; ``None`` to
        give ``groupby``, ``design`` and ``control`` explicitly.
    construction
        ``'auto'``, ``'guides'`` or ``'random'`` (see above).
    guides
        ``adata.obsm`` key of the cells x guides 0/1 assignment at guide level (names in
        ``adata.uns[guides]['names']`` or DataFrame columns), for ``'guides'``.
    nt_guides
        Which guides of ``guides`` are non-targeting: their name(s), or a guide -> group
        mapping (dict, Series, two-column DataFrame such as ``adata.uns['grna_group']``,
        or the ``adata.uns`` key of one) whose guides of the ``control`` group(s) are
        taken.
    control
        The non-targeting group(s) of ``groupby``; default the ``reference`` of the
        discovery analysis.
    guides_per_group
        NT guides pooled into each NT group (``'guides'`` only).
    n_groups
        Number of NT groups: for ``'random'`` default the number of groups the discovery
        analysis tested; for ``'guides'`` a random choice among the possible groups
        (default all NT guides when ``guides_per_group=1``).
    group_size
        Cells per random NT group (``'random'`` only); default the median number of cells
        carrying a tested group in the discovery analysis, at most half of the NT cells.
    n_pairs
        Report a random subset of this many NT pairs (drawn with ``seed``);
        ``'discovery'``: as many pairs as the discovery analysis tested (its pairs
        passing its pair QC), when there are more NT pairs; default all NT pairs.
    qcut
        Q-value cut at which NT pairs count as false discoveries, in (0, 1].
    seed
        Seed of the random NT groups and of the subset of pairs.
    groupby, design, layer, covariates_key, dimreduce, min_cells, min_nonzero, counts_layer
        Override the discovery analysis' parameters (see :func:`normalisr_sc.tl.de`);
        ``min_nonzero=0`` turns the pair QC off.
    key_added
        ``adata.uns`` key receiving the check.
    {doc_chunked_layer}

    Returns
    -------
    The summary (:class:`~normalisr_sc.tl.Calibration`; ``print`` it). Sets
    ``adata.uns[key_added]`` with the same figures (``inflation``,
    ``fraction_below_05``, ``n_false_discoveries``, ``ks_statistic``, ``ks_pvalue``,
    ``n_pairs``, ``n_excluded``, ``n_groups``, ``n_cells``, ``calibrated``), the NT pairs' ``pvals``
    and ``log10p`` (``-log10 p``, exact beyond underflow) with their ``group``
    (position in ``groups``, the NT group names) and ``gene`` (position in
    ``adata.var_names``), the per-group table ``per_group`` and ``params`` (those used):
    what :func:`normalisr_sc.pl.calibration` draws.

    Examples
    --------
    >>> nsc.tl.assign_guides(adata, "grna_counts", guide_names="grna_ids",
    ...                      groups="grna_group")
    >>> nsc.tl.assign_guides(adata, "grna_counts", guide_names="grna_ids",
    ...                      key_added="nsc_guide_ids")
    >>> nsc.pp.normalize(adata, covariates=["bio_rep"])
    >>> nsc.tl.de(adata, "nsc_guides", design="low_moi", reference="non-targeting")
    >>> print(nsc.tl.calibration_check(adata, guides="nsc_guide_ids",
    ...                                nt_guides="grna_group"))
    >>> nsc.pl.calibration(adata)
    """
    check_str("key", key, allow_none=True)
    check_choice("construction", construction, CONSTRUCTIONS)
    check_str("guides", guides, allow_none=True)
    if nt_guides is not None and not isinstance(
        nt_guides, str | Mapping | pd.Series | pd.DataFrame
    ):
        as_names("nt_guides", nt_guides)
    control = as_names("control", control) or None
    n_groups = check_int("n_groups", n_groups, minimum=1, allow_none=True)
    guides_per_group = check_int("guides_per_group", guides_per_group, minimum=1)
    group_size = check_int("group_size", group_size, minimum=1, allow_none=True)
    if not (n_pairs is None or n_pairs == "discovery"):
        n_pairs = check_int("n_pairs", n_pairs, minimum=1)
    qcut = check_number("qcut", qcut, minimum=0, maximum=1, min_open=True)
    seed = check_int("seed", seed, minimum=0)
    check_str("groupby", groupby, allow_none=True)
    if design is not None:
        check_choice("design", design, DESIGNS)
    check_str("layer", layer, allow_none=True)
    check_str("covariates_key", covariates_key, allow_none=True)
    if dimreduce is not None:
        dimreduce = check_dimreduce(dimreduce)
    min_cells = check_int("min_cells", min_cells, minimum=1, allow_none=True)
    min_nonzero = check_int("min_nonzero", min_nonzero, minimum=0, allow_none=True)
    check_str("counts_layer", counts_layer, allow_none=True)
    check_str("key_added", key_added)
    check_bool("chunked", chunked, allow_none=True)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1, allow_none=True)
    if construction == "guides" and guides is None:
        msg = "construction='guides' needs `guides=`, the adata.obsm key of the guide-level assignment."
        raise ValueError(msg)
    if n_pairs == "discovery" and key is None:
        msg = "n_pairs='discovery' needs the discovery analysis (`key=`)."
        raise ValueError(msg)
    check_writable(adata, {"uns": [key_added]})

    setup = _discovery_setup(
        adata,
        key,
        {
            "groupby": groupby,
            "design": design,
            "control": control,
            "layer": layer,
            "covariates_key": covariates_key,
            "dimreduce": dimreduce,
            "min_cells": min_cells,
            "min_nonzero": min_nonzero,
            "counts_layer": counts_layer,
        },
    )
    if setup.counts_layer is not None and setup.counts_layer not in adata.layers:
        msg = (
            f"counts_layer={setup.counts_layer!r} is not among the layers "
            f"{list(adata.layers)}; name the layer of raw counts (None: adata.X), or pass "
            "`min_nonzero=0` to skip the pair QC."
        )
        raise ValueError(msg)
    group_set = read_groups(adata, setup.groupby, setup.control, [])
    in_control = group_set.in_reference & group_set.labelled
    if not in_control.any():
        msg = (
            f"no cell carries the control group(s) {setup.control} of {setup.groupby!r}: "
            "there are no non-targeting cells to build negative-control pairs from. Check "
            "`control=` (the non-targeting group of the assignment)."
        )
        raise ValueError(msg)
    high = setup.design == "high_moi"
    others = np.diff(group_set.matrix.indptr) > 0
    pool = in_control if high else in_control & ~others

    nt_matrix: sparse.csr_matrix | None = None
    nt_names: list[str] = []
    if guides is not None and construction != "random":
        nt_matrix, nt_names = _nt_guides(adata, guides, nt_guides, setup.control)
    chosen = construction
    dropped = 0
    if nt_matrix is not None:
        carried = np.diff(nt_matrix.indptr)
        if not high:
            # One NT guide per NT cell: a cell with several cannot stand for one of them.
            usable = pool & (carried == 1)
            dropped = int((pool & ~usable).sum())
        else:
            usable = pool
        per_guide = np.asarray(nt_matrix[usable].sum(axis=0)).ravel()
        testable = (per_guide >= setup.min_cells) & (per_guide < usable.sum())
        if construction == "auto":
            chosen = "guides" if testable.sum() >= MIN_NT_GUIDES else "random"
            if chosen == "random":
                logger.info(
                    "calibration_check: %d NT guides can be tested (fewer than %d): "
                    "random NT groups instead.",
                    int(testable.sum()),
                    MIN_NT_GUIDES,
                )
    elif construction == "auto":
        chosen = "random"
    if chosen == "guides":
        if group_size is not None:
            msg = "`group_size=` applies to construction='random' only."
            raise ValueError(msg)
        if dropped:
            logger.warning(
                "calibration_check: %d cells of the control group carry no single NT guide "
                "of adata.obsm[%r] (several, or none) and are left out of the check.",
                dropped,
                guides,
            )
        pool = usable
        assert nt_matrix is not None  # the guides construction read the NT guides
        columns, names = _guide_groups(
            nt_matrix,
            nt_names,
            pool,
            guides_per_group,
            n_groups,
            setup.n_discovery_groups,
            setup.min_cells,
            seed,
        )
    else:
        if guides_per_group != 1:
            msg = (
                "`guides_per_group=` applies to construction='guides' (pass `guides=` and "
                "`nt_guides=`)."
            )
            raise ValueError(msg)
        n_pool = int(pool.sum())
        size = group_size
        if size is None:
            if setup.typical_group_size is None:
                msg = "pass `group_size=` (no tested group sizes under the discovery key)."
                raise ValueError(msg)
            size = min(setup.typical_group_size, n_pool // 2)
        count = n_groups if n_groups is not None else setup.n_discovery_groups
        if count is None:
            msg = "pass `n_groups=` (no tested groups under the discovery key)."
            raise ValueError(msg)
        if not setup.min_cells <= size < n_pool:
            msg = (
                f"random NT groups of {size} cells cannot be drawn from {n_pool} NT cells "
                f"and tested (need min_cells={setup.min_cells} <= group_size < {n_pool}); "
                "pass another `group_size=`."
            )
            raise ValueError(msg)
        columns, names = _random_groups(pool, count, size, seed)
    expression, block, covariates = normalised_inputs(
        adata, setup.layer, setup.covariates_key, chunked=chunked, chunk_size=chunk_size
    )
    options = {"dimreduce": setup.dimreduce, "block_cells": block, "progress": progress}
    n_nt = columns.shape[1]
    if high:
        joint = sparse.hstack([group_set.matrix, columns], format="csr")
        result = high_moi(joint, expression, covariates, cells=group_set.labelled, **options)
        rows = slice(group_set.matrix.shape[1], None)
    else:
        result = case_control(columns, expression, covariates, cells=pool, **options)
        rows = slice(None)
    pvals = result.pvals[rows].ravel()
    neg_log10 = result.neg_log10_pvals[rows].ravel()
    group_index = np.repeat(np.arange(n_nt, dtype=np.int32), adata.n_vars)
    gene_index = np.tile(np.arange(adata.n_vars, dtype=np.int32), n_nt)
    n_excluded = 0
    if setup.min_nonzero:
        used = group_set.labelled if high else pool
        passing = _pair_qc(
            adata, columns, used, setup, block, chunked=chunked, chunk_size=chunk_size
        ).ravel()
        n_excluded = int((~passing).sum())
        if n_excluded == passing.size:
            msg = (
                f"every NT pair has fewer than min_nonzero={setup.min_nonzero} cells with a "
                "nonzero count among the NT group's cells or its control cells; lower "
                "`min_nonzero=`."
            )
            raise ValueError(msg)
        pvals, neg_log10 = pvals[passing], neg_log10[passing]
        group_index, gene_index = group_index[passing], gene_index[passing]
    wanted = setup.n_discovery_pairs if n_pairs == "discovery" else n_pairs
    if wanted is not None and wanted < pvals.size:
        pick = np.sort(np.random.default_rng(seed + 1).choice(pvals.size, wanted, replace=False))
        pvals, neg_log10 = pvals[pick], neg_log10[pick]
        group_index, gene_index = group_index[pick], gene_index[pick]
    figures = _summary_figures(pvals, neg_log10, qcut)
    n_cells_group = np.asarray(columns[pool].sum(axis=0)).ravel().astype(np.int64)
    per_group = pd.DataFrame(
        {
            "n_cells": n_cells_group,
            "n_pairs": np.bincount(group_index, minlength=n_nt),
        },
        index=pd.Index(names, name="group"),
    )
    inflation, fraction = np.full(n_nt, np.nan), np.full(n_nt, np.nan)
    order = np.argsort(group_index, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(per_group["n_pairs"].to_numpy())])
    for j in range(n_nt):
        these = order[bounds[j] : bounds[j + 1]]
        if these.size:
            inflation[j] = genomic_inflation(neg_log10[these])
            fraction[j] = float(np.mean(pvals[these] < ALPHA))
    per_group["inflation"] = inflation
    per_group["fraction_below_05"] = fraction
    calibrated = (
        figures["inflation"] <= MAX_INFLATION
        and figures["fraction_below_05"] <= MAX_FRACTION_BELOW_05
    )
    summary = Calibration(
        **figures,
        n_pairs=int(pvals.size),
        n_excluded=n_excluded,
        n_groups=n_nt,
        n_cells=int(pool.sum()),
        qcut=qcut,
        design=setup.design,
        construction=chosen,
        calibrated=bool(calibrated),
        groups=per_group,
    )
    params = {
        "key": key,
        "groupby": setup.groupby,
        "design": setup.design,
        "control": setup.control,
        "construction": chosen,
        "guides": guides if chosen == "guides" else None,
        "guides_per_group": guides_per_group if chosen == "guides" else None,
        "layer": setup.layer,
        "covariates_key": setup.covariates_key,
        "dimreduce": setup.dimreduce,
        "min_cells": setup.min_cells,
        "min_nonzero": setup.min_nonzero,
        "counts_layer": setup.counts_layer,
        "qcut": qcut,
        "seed": seed,
        "n_pairs": n_pairs,
        "key_added": key_added,
    }
    if chosen == "random":
        params["n_groups"] = n_nt
        params["group_size"] = int(per_group["n_cells"].iloc[0])
    record = {
        **figures,
        "n_pairs": summary.n_pairs,
        "n_excluded": n_excluded,
        "n_groups": n_nt,
        "n_cells": summary.n_cells,
        "calibrated": summary.calibrated,
        "pvals": pvals,
        "log10p": neg_log10,
        "group": group_index,
        "gene": gene_index,
        "groups": list(names),
        "per_group": per_group,
    }
    store(adata, key_added, params, uns={key_added: record})
    if calibrated:
        logger.info("%s", summary)
    else:
        logger.warning(
            "%s. The NT pairs' p-values are not uniform (lambda > %g or more than %.0f%% "
            "below 0.05): discoveries of the same design are not to be trusted as they "
            "stand. Check the covariates (batch, depth) and the guide assignment; "
            "`nsc.pl.calibration` shows the QQ plot.",
            summary,
            MAX_INFLATION,
            100 * MAX_FRACTION_BELOW_05,
        )
    return summary
