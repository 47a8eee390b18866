"""Differential expression in three designs (METHOD 8): ``nsc.tl.de``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .._core._association import (
    case_control,
    class_design,
    exclusive_class,
    high_moi,
)
from .._core._pair_qc import (
    family_qvalues,
    locate_pairs,
    nonzero_counts,
    qc_pass,
    read_pairs,
    top_order,
)
from .._core._reduce import alternating_scans, is_dask, thread_count
from .._docs import doc_chunked_layer, doc_params
from .._progress import progress
from .._store import check_writable, store
from .._utils import input_matrix, logger
from .._validate import (
    as_names,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_str,
)
from ._groups import read_groups
from ._inputs import check_dimreduce, effect_inputs, layer_inputs, normalised_inputs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from .._types import RowSliceable
    from ._groups import Groups

Design = Literal["case_control", "low_moi", "high_moi"]
DESIGNS = ("case_control", "low_moi", "high_moi")
#: Suffixes of the ``adata.varm`` results, genes x tested groups each.
RESULTS = ("pvals", "log10p", "logfc", "gamma", "var")
#: Default ``min_nonzero`` of each design (SCEPTRE's bound in the screen designs; no pair
#: QC in case-control DE, where a marker gene silent in one cell type is a strong and
#: reliable difference, not a pair without information).
MIN_NONZERO = {"low_moi": 7, "high_moi": 7, "case_control": 0}
#: Suffixes of the ``adata.varm`` pair QC counts (genes x tested groups, int32).
PAIR_QC = ("n_nonzero_group", "n_nonzero_control")
#: Names of groups listed in a message or a warning.
LISTED = 10
#: With ``n_genes=None``, scanpy's layout holds every gene for up to this many groups,
#: else the top this many genes of each group.
RANK_ALL_UP_TO = 100
#: Elements (groups x genes) of each block of :func:`rank_genes_layout`: its temporaries
#: stay in the cache (4M-element blocks took 1.5 times longer at 8,000 genes).
LAYOUT_BLOCK = 1 << 16


def _scores(gamma: np.ndarray, var_y: np.ndarray, var_x: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Signed t statistics of the tests: ``t = gamma sqrt(var_x / var_y) sqrt(df / (1 - R^2))``.

    With ``R^2 = gamma^2 var_x / var_y`` (residual variances over the same cells).
    Computed in place in two arrays of the result's shape (the same operations, in the
    same order, as the formula).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.divide(var_x, var_y)
        ratio[~(var_y > 0)] = 0.0
        factor = np.square(gamma)
        factor *= ratio
        np.clip(factor, 0.0, 1.0, out=factor)
        np.subtract(1.0, factor, out=factor)
        np.divide(df, factor, out=factor)
        np.sqrt(factor, out=factor)
        t = np.sqrt(ratio, out=ratio)
        np.multiply(gamma, t, out=t)
        t *= factor
    largest = float(np.finfo(np.float32).max)
    # np.nan_to_num(t, nan=0, posinf=largest, neginf=-largest), in place
    np.copyto(t, 0.0, where=np.isnan(t))
    np.copyto(t, largest, where=t == np.inf)
    np.copyto(t, -largest, where=t == -np.inf)
    return t


def _gather(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Return ``np.take_along_axis(values, order, axis=1)`` (one flat take if contiguous)."""
    if not values.flags.c_contiguous:
        return np.take_along_axis(values, order, axis=1)
    offsets = np.arange(0, values.size, values.shape[1], dtype=np.int64)[:, None]
    return values.reshape(-1)[order + offsets]


def _records(values: np.ndarray, names: list[str]) -> np.recarray:
    """Return the rows x groups array as a record array with one field per group.

    As scanpy's ``rank_genes_groups`` stores them; numbers are a view of ``values``
    (C-contiguous), which holds the fields of each row side by side.
    """
    dtype = np.dtype([(name, values.dtype) for name in names])
    return values.view(dtype).reshape(values.shape[0]).view(np.recarray)


def rank_genes_layout(
    genes: pd.Index,
    names: list[str],
    result: dict[str, np.ndarray],
    n_genes: int,
    *,
    rankby_abs: bool = False,
) -> dict[str, np.recarray]:
    """Build scanpy's ``rank_genes_groups`` arrays of the top ``n_genes`` of each group.

    Per group: t scores, log2 fold changes, p-values and adjusted p-values.

    Genes are ranked as scanpy ranks them, by their signed score: the most significant
    up-regulated gene first, the most significant down-regulated gene last; with
    ``rankby_abs``, by significance whatever the sign. Significance is ``-log10 p``
    (exact beyond float underflow, where t scores saturate), ties broken by ``|logfc|``.
    ``result`` holds genes x groups arrays ``log10p``, ``pvals``, ``logfc``, ``gamma``
    and ``var``, and per group ``var_group`` and ``df``; optionally ``qvals``, the
    adjusted p-values (NaN for pairs outside the multiple-testing family: excluded by
    the pair QC, or not among the chosen pairs), whose NaN pairs are ranked after all
    others. Without ``qvals``, Benjamini-Hochberg over all genes of each group.
    """
    gene_names = np.asarray(genes, dtype=object)
    n_groups = len(names)
    n = min(n_genes, gene_names.size)
    qvals = result.get("qvals")
    if qvals is None:
        qvals = family_qvalues(result["pvals"], axis=0)
    var_group = np.asarray(result["var_group"], dtype=np.float64)
    df = np.asarray(result["df"], dtype=np.float64)
    # Groups x genes views of the genes x groups arrays; a block of groups at a time.
    log10p, logfc = result["log10p"].T, result["logfc"].T
    gamma, var, pvals, adjusted = result["gamma"].T, result["var"].T, result["pvals"].T, qvals.T
    # Rows x groups, each row's fields side by side (the record arrays' layout); the
    # names straight into their record array, a field at a time (from np.zeros: numpy
    # fills a structured array of objects with None ten times slower).
    names_out = np.zeros(n, dtype=[(name, object) for name in names]).view(np.recarray)
    columns: dict[str, np.ndarray] = {
        "scores": np.empty((n, n_groups), dtype=np.float32),
        "logfoldchanges": np.empty((n, n_groups), dtype=np.float32),
        "pvals": np.empty((n, n_groups)),
        "pvals_adj": np.empty((n, n_groups)),
    }

    def fill(block: slice) -> None:
        scores = _scores(gamma[block], var[block], var_group[block, None], df[block, None])
        rank = log10p[block] if rankby_abs else np.sign(scores) * log10p[block]
        order = top_order([-np.abs(logfc[block]), -rank, np.isnan(adjusted[block])], n)
        for j, name in enumerate(names[block]):
            names_out[name] = gene_names[order[j]]
        columns["scores"][:, block] = _gather(scores, order).T
        columns["logfoldchanges"][:, block] = (_gather(logfc[block], order) / np.log(2.0)).T
        columns["pvals"][:, block] = _gather(pvals[block], order).T
        columns["pvals_adj"][:, block] = _gather(adjusted[block], order).T

    # Blocks of groups small enough for the temporaries to stay in the cache, in
    # threads (numpy releases the GIL); each block writes its own columns.
    step = max(1, LAYOUT_BLOCK // max(1, gene_names.size))
    blocks = [slice(lo, min(lo + step, n_groups)) for lo in range(0, n_groups, step)]
    threads = min(thread_count(), len(blocks))
    if threads <= 1:
        for block in blocks:
            fill(block)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(fill, blocks))
    return {"names": names_out} | {key: _records(values, names) for key, values in columns.items()}


@dataclass
class _Plan:
    """Which cells each test uses, as the kernels take it.

    ``kind`` is ``'all'`` (each indicator against the other used cells), ``'classes'``
    (each class against class 0, :func:`class_design`) or ``'joint'`` (one regression
    on all indicators). ``label`` gives the cells' classes, ``cells`` the cells used by
    the other two kinds; ``carrying``/``used`` count, per group, the cells carrying it
    in its test and the cells of its test.
    """

    kind: str
    cells: np.ndarray
    label: np.ndarray | None
    carrying: np.ndarray
    used: np.ndarray


def _plan(group_set: Groups, design: Design) -> _Plan:
    matrix = group_set.matrix
    cells = group_set.labelled
    if design == "low_moi" or (design == "case_control" and group_set.reference):
        label = exclusive_class(matrix)
        if design == "case_control":
            several = int(((label == -1) & cells).sum())
            if several:
                logger.warning(
                    "de: %d cells carry several non-reference groups; with `reference=` the "
                    "case-control test of a group compares its cells with the reference "
                    "cells, so these cells are left out of every test.",
                    several,
                )
            # Cells carrying no group are the baseline only if they carry a reference group.
            label[(label == 0) & ~group_set.in_reference] = -1
        label[~cells] = -1
        counts = np.bincount(label + 1, minlength=len(group_set.names) + 2)
        carrying = counts[2:]
        return _Plan("classes", cells, label, carrying, counts[1] + carrying)
    carrying = np.diff(matrix[cells].tocsc().indptr)
    used = np.full(carrying.size, int(cells.sum()))
    return _Plan("all" if design == "case_control" else "joint", cells, None, carrying, used)


def _tested_groups(
    group_set: Groups, plan: _Plan, design: Design, min_cells: int
) -> tuple[np.ndarray, list[str]]:
    """Return the groups to test (positions) and the names of those skipped as too small."""
    names = np.array(group_set.names, dtype=object)
    tested = group_set.tested
    alone = " alone (cells with several groups are not used)" if design == "low_moi" else ""
    few = tested[plan.carrying[tested] < min_cells]
    if few.size and group_set.explicit:
        listed = [f"{names[i]} ({plan.carrying[i]})" for i in few[:LISTED]]
        msg = (
            f"group(s) {listed} requested with `groups=` (or named in `pairs=` or "
            f"`positive_controls=`) are carried{alone} by fewer than "
            f"min_cells={min_cells} cells in their test; leave them out of `groups=`, merge "
            "them, or lower `min_cells=`."
        )
        raise ValueError(msg)
    skipped = [str(names[i]) for i in few]
    if skipped:
        logger.warning(
            "de: %d group(s) carried%s by fewer than min_cells=%d cells are not tested: %s%s",
            len(skipped),
            alone,
            min_cells,
            ", ".join(skipped[:LISTED]),
            " ..." if len(skipped) > LISTED else "",
        )
    tested = tested[plan.carrying[tested] >= min_cells]
    if not tested.size:
        msg = (
            f"no group is carried{alone} by at least min_cells={min_cells} cells in its test; "
            "lower `min_cells=`."
        )
        raise ValueError(msg)
    if plan.kind == "classes" and plan.used[0] == plan.carrying[0]:
        if design == "case_control":
            msg = (
                f"no used cell carries the reference group(s) {group_set.reference}; "
                "nothing to compare with."
            )
        else:
            msg = (
                "no used cell is without a group, so the tests have no baseline: name "
                "the baseline group(s) with `reference=`."
            )
        raise ValueError(msg)
    everywhere = names[tested[plan.carrying[tested] == plan.used[tested]]]
    if everywhere.size:
        msg = (
            f"group(s) {list(everywhere[:LISTED])} are present in every cell of their "
            "test; a constant indicator cannot be tested."
        )
        raise ValueError(msg)
    return tested, skipped


def _tested_classes(plan: _Plan, n_groups: int, tested: np.ndarray) -> np.ndarray:
    """Return the cells' classes with the tested groups only: ``j + 1`` for ``tested[j]``.

    The cells of the other groups are used by no test (-1); class 0 is unchanged.
    """
    column = np.full(n_groups + 1, -1, dtype=np.int64)
    column[0] = 0
    column[tested + 1] = np.arange(1, tested.size + 1)
    label = plan.label
    assert label is not None  # a plan of classes
    return np.where(label >= 0, column[np.maximum(label, 0)], -1)


def _run(
    plan: _Plan,
    matrix: sparse.csr_matrix,
    tested: np.ndarray,
    expression: object,
    covariates: np.ndarray,
    effect: object,
    dimreduce: int,
    size: int,
    counts: object = None,
):
    """Run the kernel; return its result and the rows of it holding the tested groups.

    With classes, ``counts`` (raw counts read in the same pass) gives the pair QC
    counts in ``result.n_nonzero`` and ``result.n_nonzero_base``.
    """
    options = {"dimreduce": dimreduce, "block_cells": size, "progress": progress, "effect": effect}
    if plan.kind == "classes":
        label = _tested_classes(plan, matrix.shape[1], tested)
        result = class_design(label, tested.size, expression, covariates, counts=counts, **options)
        return result, np.arange(tested.size)
    if plan.kind == "all":
        result = case_control(
            matrix[:, tested], expression, covariates, cells=plan.cells, **options
        )
        return result, np.arange(tested.size)
    return high_moi(matrix, expression, covariates, cells=plan.cells, **options), tested


def _pair_counts(
    plan: _Plan, matrix: sparse.csr_matrix, tested: np.ndarray, counts: RowSliceable, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Count the cells with a nonzero count among each group's cells and its controls.

    Returns groups x genes arrays (tested groups): the counts among the cells carrying
    the group in its test, and among the control cells of its test.

    ONE sparse product of a cells x sets indicator with the counts' nonzero pattern:
    with classes, the sets are the baseline class and the classes of the tested groups
    (the control cells are the baseline); otherwise the tested groups on the used cells
    and, as the kernel's extra set ``cells``, the used cells themselves (the control
    cells are the used cells without the group).
    """
    n_cells = matrix.shape[0]
    k = tested.size
    if plan.kind == "classes":
        assert plan.label is not None  # a class design labels every cell
        column = np.full(matrix.shape[1] + 1, -1, dtype=np.int64)
        column[0] = 0
        column[tested + 1] = np.arange(1, k + 1)
        which = np.where(plan.label >= 0, column[np.maximum(plan.label, 0)], -1)
        cells = np.flatnonzero(which >= 0)
        indicators = sparse.csr_matrix(
            (np.ones(cells.size, dtype=np.int32), (cells, which[cells])), shape=(n_cells, k + 1)
        )
    else:
        used = plan.cells.astype(np.int32)
        indicators = sparse.csr_matrix(
            sparse.diags(used, dtype=np.int32) @ matrix[:, tested], dtype=np.int32
        )
    found = nonzero_counts(
        indicators,
        counts,
        block_cells=size,
        progress=progress,
        what="the counts layer",
        cells=None if plan.kind == "classes" else plan.cells,
    )
    sizes = np.asarray(indicators.sum(axis=0)).ravel()
    if plan.kind != "classes":
        sizes = np.append(sizes, plan.cells.sum())
    if plan.kind == "classes":
        own, control = sizes[1:], plan.used[tested] - sizes[1:]
        n_group, n_control = found[1:], np.broadcast_to(found[0], (k, found.shape[1]))
    else:
        own, control = sizes[:k], sizes[k] - sizes[:k]
        n_group, n_control = found[:k], found[k] - found[:k]
    if not (
        np.array_equal(own, plan.carrying[tested])
        and np.array_equal(own + control, plan.used[tested])
    ):  # pragma: no cover - a bug
        msg = "internal error: the cells of the pair QC differ from the cells of the tests."
        raise AssertionError(msg)
    return n_group, np.ascontiguousarray(n_control)


def _pair_frame(groups: np.ndarray, genes: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"group": groups.astype(str), "gene": genes.astype(str)})


def _positive_controls(
    table: pd.DataFrame,
    column: np.ndarray,
    row: np.ndarray,
    values: dict[str, np.ndarray],
    passing: np.ndarray,
    qcut: float,
) -> pd.DataFrame:
    """Report the recovery of the positive controls (genes x groups arrays in ``values``).

    ``rank`` is the gene's position in its group when the group's genes passing the
    pair QC come first, each part from most to least significant (ties: larger
    ``|logfc|``): 1 is the most significant gene of the group.
    """
    pvals = values["pvals"][row, column]
    ok = passing[row, column]
    ranks = np.empty(row.size, dtype=np.int64)
    for j in np.unique(column):
        order = np.lexsort(
            (-np.abs(values["logfc"][:, j]), -values["log10p"][:, j], ~passing[:, j])
        )
        position = np.empty(order.size, dtype=np.int64)
        position[order] = np.arange(1, order.size + 1)
        ranks[column == j] = position[row[column == j]]
    qvals = family_qvalues(pvals, ok, axis=None)
    report = table.copy()
    report["pval"] = pvals
    report["log10p"] = values["log10p"][row, column]
    report["qval"] = qvals
    report["logfc"] = values["logfc"][row, column]
    report["log2fc"] = report["logfc"] / np.log(2.0)
    report["rank"] = ranks
    for suffix in PAIR_QC:
        if suffix in values:
            report[suffix] = values[suffix][row, column]
    report["qc_pass"] = ok
    report["recovered"] = ok & (np.nan_to_num(qvals, nan=2.0) <= qcut)
    return report.reset_index(drop=True)


def _log_positive_controls(report: pd.DataFrame, qcut: float) -> None:
    found = int(report["recovered"].sum())
    logger.info(
        "de: positive controls: %d of %d recovered at q <= %g (q over the positive "
        "controls; worst rank %d, largest p %.3g)",
        found,
        len(report),
        qcut,
        int(report["rank"].max()),
        float(report["pval"].max()),
    )
    missed = report[~report["recovered"]]
    if len(missed):
        why = [
            f"{g}:{n} (" + ("excluded by the pair QC" if not ok else f"q={q:.3g}, rank {r}") + ")"
            for g, n, ok, q, r in zip(
                missed["group"],
                missed["gene"],
                missed["qc_pass"],
                missed["qval"],
                missed["rank"],
                strict=True,
            )
        ]
        logger.warning(
            "de: %d of %d positive control(s) not recovered at q <= %g: %s%s",
            len(missed),
            len(report),
            qcut,
            ", ".join(why[:LISTED]),
            " ..." if len(why) > LISTED else "",
        )


@doc_params(doc_chunked_layer=doc_chunked_layer)
@alternating_scans()
def de(
    adata: AnnData,
    groupby: str,
    *,
    design: Design = "case_control",
    reference: str | Sequence[str] | None = None,
    groups: str | Sequence[str] | None = None,
    min_cells: int = 2,
    layer: str = "normalisr",
    covariates_key: str = "nsc_covariates_norm",
    logfc_layer: str = "lcpm",
    logfc_covariates: str = "nsc_covariates",
    key_added: str = "nsc_de",
    n_genes: int | None = None,
    rankby_abs: bool = False,
    dimreduce: int = 0,
    counts_layer: str | None = None,
    min_nonzero: int | None = None,
    pairs: pd.DataFrame | Sequence[tuple[str, str]] | None = None,
    positive_controls: pd.DataFrame | Sequence[tuple[str, str]] | None = None,
    qcut: float = 0.05,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> None:
    """Test differential expression of every gene between groups of cells.

    For each group ``x`` (0/1 indicator over cells) and gene ``y`` the model is
    ``y = gamma * x + alpha . C + noise`` on the normalised expression, with the
    normalised covariates ``C`` removed by least squares; the p-value of ``gamma = 0`` is
    exact (a two-sided t-test on the covariate-removed data,
    ``df = cells - 1 - rank(C) - dimreduce``).

    Two effect sizes are stored. ``logfc`` is the fold change to read and report: the
    group coefficient of the same design (same cells, same other groups) fitted by least
    squares to the Bayesian log CPM ``layers[logfc_layer]`` with the un-normalised
    covariates ``obsm[logfc_covariates]`` and an intercept, i.e. a covariate-adjusted
    difference of mean log CPM in natural-log units (divide by ``log(2)`` for log2).
    ``gamma`` is the test's own coefficient on the variance-normalised scale (cells
    multiplied by their weights ``w ** f``), which grows with the cell weights and is
    not a fold change. The posterior log CPM shrinks the fold changes of genes with low
    counts towards 0 (a zero count is not minus infinity), so ``logfc`` understates the
    change of the mean of rarely detected genes.

    Designs and ``reference=``:

    ``'case_control'``
        Without ``reference``, each group against all other cells. With ``reference``
        (as in :func:`scanpy.tl.rank_genes_groups`), each group against the cells of the
        reference group(s) only: the test of a group uses its cells and the reference
        cells, removes the covariates on that subset, and leaves every other cell out
        (cells carrying several non-reference groups of an ``obsm`` matrix are left out
        of every test, with a warning).
    ``'low_moi'``
        The test of group ``x`` uses only the cells carrying ``x`` alone or no group at
        all (cells with other groups are dropped) and removes the covariates on that
        subset: a low-MOI CRISPR screen. Reference groups count as no group, so their
        cells (and, for an ``obsm`` matrix, cells without any group) are the baseline.
    ``'high_moi'``
        Every other group is a covariate of the test of ``x`` (competition-aware,
        for cells carrying several guides). Computed as ONE multiple regression per gene
        on all groups and covariates, on all cells; the indicators of reference groups
        are left out of it, so their cells (with the cells carrying no group) form the
        baseline. A group that is in the span of the other groups and covariates (e.g.
        identical to another group) cannot be separated from them and gets p = 1,
        gamma = 0 and logfc = 0.

    Cells with a missing label in an ``obs`` column are left out of every test (a
    warning counts them). Groups carried by fewer than ``min_cells`` cells in their test
    are not tested (a warning names them), unless they were named with ``groups=``,
    which is an error; in the ``high_moi`` design their indicators stay in the
    regression.

    Pair QC (effective sample size, as SCEPTRE's): for every tested (group, gene) pair,
    the cells with a nonzero raw count of the gene are counted among the cells carrying
    the group in its test (``n_nonzero_group``) and among the control cells of that
    test (``n_nonzero_control``): the reference cells with ``reference=`` in
    ``'case_control'``, the other cells (case-control ``'rest'``), the cells carrying
    no group in ``'low_moi'``, the cells without the group in ``'high_moi'``. Both are
    one sparse product of the cells x groups indicators with the nonzero pattern of the
    counts ``layers[counts_layer]``, read block by block like the expression. A pair
    with either count below ``min_nonzero`` cannot be tested reliably: it keeps its
    p-value and effect, but is excluded from the q-values (``pvals_adj`` NaN) and
    ranked after the other genes of its group in scanpy's layout; a warning counts
    these pairs and :func:`normalisr_sc.get.de_df` lists them with ``qc_pass=False``.

    Chosen pairs (``pairs=``, e.g. the cis pairs of an enhancer screen): only the groups
    of the pairs (and of ``positive_controls``) are tested -- the time of a screen
    scales with its groups, so a cis analysis of a few groups is fast -- every gene of
    them, as usual, is stored in ``varm``, and the q-values are Benjamini-Hochberg over
    the chosen pairs passing the pair QC, all groups together, in scanpy's layout (NaN
    for the other genes, ranked after the pairs) and in
    :func:`normalisr_sc.get.de_df`, which lists these pairs by default. Positive
    controls (``positive_controls=``, SCEPTRE's power check) are reported in
    ``adata.uns[key_added]['positive_controls']`` (and logged): p-value, q-value over
    the positive controls passing the pair QC, the gene's rank in its group (1: the
    most significant of the group's genes passing the QC), the pair QC counts and
    ``recovered`` (passes the QC and q at most ``qcut``); a warning names those not
    recovered.

    Parameters
    ----------
    adata
        Normalised AnnData (:func:`normalisr_sc.pp.normalize`, or
        :func:`normalisr_sc.pp.normvar` after :func:`normalisr_sc.pp.lcpm`).
    groupby
        An ``adata.obs`` column (one group per level) or an ``adata.obsm`` key holding a
        cells x groups 0/1 matrix (dense, sparse or a DataFrame whose columns name the
        groups; for arrays, names are read from ``adata.uns[groupby]['names']`` as
        written by :func:`assign_guides`).
    design
        ``'case_control'``, ``'low_moi'`` or ``'high_moi'`` (see above).
    reference
        Group(s) forming the baseline, not tested (see above for each design).
    groups
        Groups to test and report (default: all non-reference groups). The other groups
        still shape the test in the ``low_moi`` and ``high_moi`` designs.
    min_cells
        Fewest cells carrying a group in its test for the group to be tested.
    layer
        Layer holding the normalised expression.
    covariates_key
        ``adata.obsm`` key of the normalised covariates (with the intercept). The
        default means those of the :func:`~normalisr_sc.pp.normvar` run that wrote
        ``layer`` (``obsm['nsc_covariates_norm']`` for the default layer).
    logfc_layer
        Layer holding the Bayesian log CPM the fold changes are fitted to (read in the
        same pass as ``layer``). A missing layer is an error: results of a pipeline
        that dropped it need it recomputed with :func:`normalisr_sc.pp.lcpm`. The
        default means the log CPM the normvar run of ``layer`` read.
    logfc_covariates
        ``adata.obsm`` key of the un-normalised covariates of the fold changes. The
        default means those the normvar run of ``layer`` read.
    key_added
        Prefix of the result keys.
    n_genes
        Genes per group kept in scanpy's ``rank_genes_groups`` layout of
        ``adata.uns[key_added]`` (the most significant first). Default: every gene when at
        most 100 groups are tested, else the top 100 of each group (screens with
        thousands of groups do not pay for a second copy of all results); 0 stores no
        such layout. The ``varm`` results always hold every gene.
    rankby_abs
        Rank the genes of scanpy's layout by significance whatever the sign of their
        change, instead of up-regulated first as scanpy does (with a truncated layout,
        pass it to keep the knock-downs of a CRISPR screen).
    dimreduce
        Extra degrees of freedom already used up by the expression (e.g. when covariates
        were removed from it beforehand).
    counts_layer
        Layer of raw counts for the pair QC; ``None`` reads ``adata.X``, where
        :func:`normalisr_sc.pp.normalize` leaves the counts it normalised (only their
        nonzero pattern is used; negative values are an error).
    min_nonzero
        Fewest cells with a nonzero count of the gene, among the group's cells and
        among its control cells, for a pair to enter the q-values; 0 skips the pair QC
        (no counts read or stored). Default: 7 (SCEPTRE's bound) in the ``'low_moi'``
        and ``'high_moi'`` designs, 0 in ``'case_control'``, where a marker gene silent
        in one cell type is a strong and reliable difference rather than a pair without
        information.
    pairs
        Chosen (group, gene) pairs: a DataFrame with columns ``group`` and ``gene`` (or
        SCEPTRE's ``grna_group`` and ``response_id``) or a list of ``(group, gene)``
        tuples (see above). Unknown groups or genes, reference groups and repeated
        pairs are an error naming them; with ``groups=``, the pairs' groups must be
        among them.
    positive_controls
        Pairs expected to be discovered, in the same layout as ``pairs`` (e.g.
        ``adata.uns['pc_pairs']`` of Papalexi's screen); their recovery is reported (see
        above). Their groups must be tested.
    qcut
        q-value at most which a positive control counts as recovered.
    {doc_chunked_layer}

    Returns
    -------
    Nothing; sets, as genes x groups DataFrames (columns = tested groups):

    - ``adata.varm[key_added + '_pvals']``: p-values (never 0 unless below 1e-323);
    - ``adata.varm[key_added + '_log10p']``: ``-log10`` p-values, exact even when the
      p-value underflows (a p-value of 1e-400 reads 400);
    - ``adata.varm[key_added + '_logfc']``: the natural-log fold change (see above);
    - ``adata.varm[key_added + '_gamma']``: the test's coefficient on the normalised
      scale (see above);
    - ``adata.varm[key_added + '_var']``: residual variance of each gene in each test;
    - ``adata.varm[key_added + '_n_nonzero_group']`` and ``['_n_nonzero_control']``
      (int32; with ``min_nonzero`` above 0): the pair QC counts (see above);

    and ``adata.uns[key_added]``, in the layout of scanpy's
    :func:`~scanpy.tl.rank_genes_groups`: ``groups`` (the tested groups), ``n_cells``
    (cells carrying each group in its test), ``n_cells_test`` (cells used by each test),
    ``n_cells_unlabelled`` (cells left out for a missing label), ``skipped`` (groups
    not tested for having fewer than ``min_cells`` cells), ``df`` (residual degrees of
    freedom), ``var_group`` (residual variance of each group indicator), ``n_excluded``
    (pairs of each group excluded by the pair QC), ``pairs`` (with ``pairs=``: the
    chosen pairs, columns ``group`` and ``gene``), ``positive_controls`` (the report,
    with ``positive_controls=``); scanpy's arrays (unless ``n_genes=0``): ``names``,
    ``scores`` (signed t statistics of the tests), ``logfoldchanges`` (``logfc`` in
    log2, as scanpy has it), ``pvals``, ``pvals_adj`` (Benjamini-Hochberg over the genes
    of each group passing the pair QC, or over the chosen pairs; NaN for the others) as
    record arrays with one field per group, ordered per group as scanpy orders them
    (most significant up-regulated gene first, see ``rankby_abs``; the genes with a NaN
    ``pvals_adj`` after the others); and ``params``, one dict with scanpy's keys
    (``groupby``, ``reference`` -- ``'rest'`` without one, several joined by commas --,
    ``method``, ``use_raw``, ``layer``, ``corr_method``) and the other parameters of
    this call (``design``, ``reference_groups`` -- the list --, ``min_cells``,
    ``min_nonzero``, ``n_genes``, ``qcut``, ...). So :func:`scanpy.get.rank_genes_groups_df` and
    the ``scanpy.pl.rank_genes_groups_*`` plots read the results (pass
    ``key=key_added``; the plots need ``groupby`` to be an ``obs`` column).

    Examples
    --------
    >>> nsc.pp.normalize(adata, covariates=["batch"])
    >>> nsc.tl.de(adata, "group", reference="control")
    >>> nsc.get.de_df(adata, "case").head()

    A low-MOI CRISPR screen with guide counts in ``obsm``:

    >>> nsc.tl.assign_guides(adata, "grna_counts", guide_names="grna_ids",
    ...                      groups="grna_group")
    >>> nsc.tl.de(adata, "nsc_guides", design="low_moi", reference="non-targeting",
    ...           positive_controls=adata.uns["pc_pairs"])
    >>> adata.uns["nsc_de"]["positive_controls"][["group", "gene", "pval", "rank"]]

    A cis screen: only the chosen pairs enter the q-values.

    >>> nsc.tl.de(adata, "nsc_guides", design="low_moi", reference="non-targeting",
    ...           pairs=cis_pairs)
    >>> nsc.get.de_df(adata, pval_cutoff=0.1)
    """
    check_str("groupby", groupby)
    check_choice("design", design, DESIGNS)
    reference = as_names("reference", reference)
    groups = as_names("groups", groups)
    min_cells = check_int("min_cells", min_cells, minimum=1)
    for name, value in (
        ("layer", layer),
        ("covariates_key", covariates_key),
        ("logfc_layer", logfc_layer),
        ("logfc_covariates", logfc_covariates),
        ("key_added", key_added),
    ):
        check_str(name, value)
    covariates_key, logfc_layer, logfc_covariates = layer_inputs(
        adata, layer, covariates_key, logfc_layer, logfc_covariates
    )
    n_genes = check_int("n_genes", n_genes, minimum=0, allow_none=True)
    check_bool("rankby_abs", rankby_abs)
    dimreduce = check_dimreduce(dimreduce)
    check_str("counts_layer", counts_layer, allow_none=True)
    min_nonzero = check_int("min_nonzero", min_nonzero, minimum=0, allow_none=True)
    if min_nonzero is None:
        min_nonzero = MIN_NONZERO.get(design, 0)
    qcut = check_number("qcut", qcut, minimum=0, maximum=1, min_open=True)
    check_bool("chunked", chunked, allow_none=True)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1, allow_none=True)
    chosen = None if pairs is None else read_pairs("pairs", pairs)
    controls = (
        None if positive_controls is None else read_pairs("positive_controls", positive_controls)
    )
    qc_keys = [f"{key_added}_{suffix}" for suffix in PAIR_QC]
    check_writable(
        adata,
        {
            "varm": [f"{key_added}_{suffix}" for suffix in RESULTS]
            + (qc_keys if min_nonzero else []),
            "uns": [key_added],
        },
    )
    if not min_nonzero:
        check_writable(adata, {"varm": [k for k in qc_keys if k in adata.varm]})
    expression, size, covariates = normalised_inputs(
        adata, layer, covariates_key, chunked=chunked, chunk_size=chunk_size
    )
    expression, effect = effect_inputs(
        adata,
        expression,
        layer,
        covariates_key,
        logfc_layer,
        logfc_covariates,
        chunked=chunked,
        chunk_size=chunk_size,
    )
    counts = None
    if min_nonzero:
        if counts_layer is not None and counts_layer not in adata.layers:
            msg = (
                f"counts_layer={counts_layer!r} is not among the layers {list(adata.layers)}; "
                "name the layer of raw counts (None: adata.X), or pass `min_nonzero=0` to "
                "skip the pair QC."
            )
            raise ValueError(msg)
        counts, _ = input_matrix(
            adata, counts_layer, chunked=chunked, chunk_size=chunk_size, what="raw UMI counts"
        )
    group_set = read_groups(adata, groupby, reference, groups)
    located = {}
    for name, table in (("pairs", chosen), ("positive_controls", controls)):
        if table is not None:
            located[name] = locate_pairs(
                name, *table, group_set.names, list(map(str, adata.var_names)), reference=reference
            )
    needed = sorted({int(i) for where in located.values() for i in where[0]})
    if groups:
        outside = [group_set.names[i] for i in needed if i not in set(group_set.tested)]
        if outside:
            msg = (
                f"group(s) {outside[:LISTED]} of `pairs=`/`positive_controls=` are not "
                "among `groups=`; add them to `groups=` or leave `groups=` out."
            )
            raise ValueError(msg)
    elif chosen is not None:
        group_set = replace(group_set, tested=np.array(needed, dtype=np.int64), explicit=True)
    unlabelled = int((~group_set.labelled).sum())
    if unlabelled:
        logger.warning(
            "de: %d cells with a missing label in adata.obs[%r] are left out of the test.",
            unlabelled,
            groupby,
        )
    plan = _plan(group_set, design)
    tested, skipped = _tested_groups(group_set, plan, design, min_cells)
    untested = sorted(set(needed) - set(tested.tolist()))
    if untested:
        msg = (
            f"positive control group(s) {[group_set.names[i] for i in untested][:LISTED]} "
            f"are carried by fewer than min_cells={min_cells} cells in their test, so "
            "they are not tested; leave them out of `positive_controls=` or lower "
            "`min_cells=`."
        )
        raise ValueError(msg)
    pair_qc = None
    # With classes the pair QC counts come from the kernel's pass over the expression
    # (the counts read beside it), unless one of them is streamed and the other not.
    fused = counts is not None and plan.kind == "classes" and is_dask(counts) == is_dask(expression)
    if counts is not None and not fused:
        pair_qc = _pair_counts(plan, group_set.matrix, tested, counts, size)
    result, rows = _run(
        plan,
        group_set.matrix,
        tested,
        expression,
        covariates,
        effect,
        dimreduce,
        size,
        counts if fused else None,
    )
    if fused:
        if result.n_nonzero is None or result.n_nonzero_base is None:  # pragma: no cover
            msg = "internal error: the kernel returned no pair QC counts."
            raise AssertionError(msg)
        pair_qc = (
            result.n_nonzero,
            np.broadcast_to(result.n_nonzero_base, result.n_nonzero.shape),
        )
    names = [group_set.names[i] for i in tested]
    if rows.size == result.pvals.shape[0] and (np.diff(rows) == 1).all():
        rows = slice(None)  # selects the results without copying them

    def genes() -> pd.Index:
        """Return a view of var_names: its own Index object, of the same identity.

        anndata checks the index of every varm frame each time ``adata.varm`` is read,
        which ``Index.is_`` answers at once for a view, not by comparing every name.
        """
        return adata.var_names.view()

    def frame(values: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(values[rows].T, index=genes(), columns=names)

    n_cells_test = result.n_cells[rows]
    if not np.array_equal(n_cells_test, plan.used[tested]):  # pragma: no cover - a bug
        msg = "internal error: the cells used by the tests were miscounted."
        raise AssertionError(msg)

    # The multiple-testing family: the pairs passing the pair QC (and among `pairs=`).
    column_of = np.full(len(group_set.names), -1, dtype=np.int64)
    column_of[tested] = np.arange(tested.size)
    pvals = result.pvals[rows].T
    # groups x genes, as the kernel's results (their .T: genes x groups views)
    family_by_group = np.ones(pvals.shape[::-1], dtype=bool)
    n_excluded = np.zeros(len(names), dtype=np.int64)
    passing = None
    if pair_qc is not None:
        family_by_group = qc_pass(pair_qc[0], pair_qc[1], min_nonzero)
        passing = family_by_group.T
        n_excluded = (~family_by_group).sum(axis=1)
    if chosen is not None:
        in_pairs = np.zeros(family_by_group.shape, dtype=bool)
        group_pos, gene_pos = located["pairs"]
        in_pairs[column_of[group_pos], gene_pos] = True
        family_by_group = family_by_group & in_pairs
    qvals = family_qvalues(
        result.pvals[rows],
        None if pair_qc is None and chosen is None else family_by_group,  # None: all
        axis=None if chosen is not None else 1,
    ).T
    family = family_by_group.T
    total_excluded = int(n_excluded.sum())
    if total_excluded:
        logger.warning(
            "de: %d of %d (group, gene) pairs have fewer than min_nonzero=%d cells with a "
            "nonzero count among the cells of the group or among its control cells; they "
            "are excluded from the q-values (their p-values are kept; `nsc.get.de_df` "
            "lists them with qc_pass=False).",
            total_excluded,
            pvals.size,
            min_nonzero,
        )
    if chosen is not None:
        chosen_excluded = int(len(chosen[0]) - family.sum())
        if chosen_excluded:
            logger.warning(
                "de: %d of the %d chosen pairs are excluded by the pair QC.",
                chosen_excluded,
                len(chosen[0]),
            )
    if n_genes is None:
        n_genes = adata.n_vars if len(names) <= RANK_ALL_UP_TO else RANK_ALL_UP_TO
    n_genes = min(n_genes, adata.n_vars)
    # One dict of parameters: scanpy's rank_genes_groups keys (read by sc.get and
    # sc.pl: groupby, reference, method, use_raw, layer, corr_method) and ours.
    params = {
        "groupby": groupby,
        "reference": reference[0]
        if len(reference) == 1
        else (",".join(reference) if reference else "rest"),
        "method": "normalisr_sc",
        "use_raw": False,
        "layer": layer,
        "corr_method": "benjamini-hochberg",
        "design": design,
        "reference_groups": list(reference),
        "groups": groups or None,  # all groups: nothing stored (h5ad keeps no empty list)
        "min_cells": min_cells,
        "covariates_key": covariates_key,
        "logfc_layer": logfc_layer,
        "logfc_covariates": logfc_covariates,
        "key_added": key_added,
        "n_genes": int(n_genes),
        "rankby_abs": rankby_abs,
        "dimreduce": dimreduce,
        "counts_layer": counts_layer if pair_qc is not None else None,
        "min_nonzero": min_nonzero,
        "n_pairs": None if chosen is None else len(chosen[0]),
        "n_positive_controls": None if controls is None else len(controls[0]),
        "qcut": qcut,
    }
    record = {
        "groups": names,
        "n_cells": plan.carrying[tested],
        "n_cells_test": n_cells_test,
        "n_cells_unlabelled": unlabelled,
        "skipped": np.array(skipped, dtype=object),
        "df": result.df[rows],
        "var_group": result.var_x[rows],
        "n_excluded": n_excluded,
    }
    if chosen is not None:
        record["pairs"] = _pair_frame(*chosen)
    varm = {
        f"{key_added}_pvals": frame(result.pvals),
        f"{key_added}_log10p": frame(result.neg_log10_pvals),
        f"{key_added}_logfc": frame(result.logfc),
        f"{key_added}_gamma": frame(result.gamma),
        f"{key_added}_var": frame(result.var_y),
    }
    if pair_qc is not None:
        for suffix, values in zip(PAIR_QC, pair_qc, strict=True):
            stored = values  # groups x genes int32, copied only if it is not one
            if not (
                values.dtype == np.int32 and values.flags.c_contiguous and values.flags.writeable
            ):
                stored = np.empty(values.shape, dtype=np.int32)
                stored[...] = values
            varm[f"{key_added}_{suffix}"] = pd.DataFrame(stored.T, index=genes(), columns=names)
            del stored
    if controls is not None:
        group_pos, gene_pos = located["positive_controls"]
        report = _positive_controls(
            _pair_frame(*controls),
            column_of[group_pos],
            gene_pos,
            {
                "pvals": pvals,
                "log10p": result.neg_log10_pvals[rows].T,
                "logfc": result.logfc[rows].T,
            }
            | ({} if pair_qc is None else dict(zip(PAIR_QC, (v.T for v in pair_qc), strict=True))),
            np.ones(pvals.shape, dtype=bool) if passing is None else passing,
            qcut,
        )
        record["positive_controls"] = report
        _log_positive_controls(report, qcut)
    if n_genes:
        columns = {
            "log10p": result.neg_log10_pvals,
            "pvals": result.pvals,
            "logfc": result.logfc,
            "gamma": result.gamma,
            "var": result.var_y,
        }
        record.update(
            rank_genes_layout(
                adata.var_names,
                names,
                {k: v[rows].T for k, v in columns.items()}
                | {"var_group": result.var_x[rows], "df": result.df[rows], "qvals": qvals},
                n_genes,
                rankby_abs=rankby_abs,
            )
        )
    store(
        adata,
        key_added,
        params,
        varm=varm,
        uns={key_added: record},
        drop={"varm": [] if pair_qc is not None else qc_keys},
    )
    logger.info(
        "de (%s): %d groups x %d genes tested on %s", design, len(names), adata.n_vars, groupby
    )
