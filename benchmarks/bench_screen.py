"""A screen analysis beside pysceptre's (issue 13): assignment, calibration check, discovery.

On the Papalexi low-MOI screen (``../shared/data/papalexi_lowmoi.h5ad``), normalisr_sc
and pysceptre (the Python port of SCEPTRE's engine, the ``bench`` extra) analyse the
same cells, assignments and pairs:

- **cells and assignments**: each cell's largest-count guide (SCEPTRE's low-MOI
  default), on the cells that SCEPTRE's low-MOI QC of that assignment keeps (the top
  guide holds most of the cell's guide UMIs); every cell of the panel's genes that our
  read-count QC keeps;
- **guide assignment** (timed separately): the per-guide mixture models,
  ``nsc.tl.assign_guides(mode='mixture')`` against ``pysceptre.assign_grnas_mixture``
  (with SCEPTRE's default design of cell covariates), on all cells;
- **discovery analysis**: every target group x every gene, the pairs passing the pair QC
  (at least 7 cells with a nonzero count among the group's cells and among the
  non-targeting cells, ``tl.de``'s default and SCEPTRE's), ours ``nsc.tl.de`` (low MOI
  against the non-targeting cells, exact t-test after Normalisr's normalisation; the
  normalisation is timed on its own row) and pysceptre's ``run_discovery_analysis``
  (``moi='low'``: NB GLM score test against the NT cells, permutations, skew-normal fit;
  SCEPTRE's default covariates); q-values Benjamini-Hochberg over those pairs, a
  discovery at q <= 0.1; positive controls (``uns['pc_pairs']``) found: discovered;
- **calibration check**: SCEPTRE's construction for both (groups of 4 non-targeting
  guides tested against the other NT cells, as many pairs as the discovery analysis
  has): ``nsc.tl.calibration_check(guides_per_group=4, n_pairs=...)`` and
  ``pysceptre.run_calibration_check(calibration_group_size=4)``; fraction of p-values
  below 0.05, inflation, false discoveries at q <= 0.1 (BH over the NT pairs).

Times are medians of ``--repeat`` alternating in-process runs (ours, pysceptre, ours,
...) with the load average around them (``_harness``); pysceptre gets every core
(``n_jobs``). ``--quick`` (the smoke run): 6,000 cells, the pairs of the positive controls'
target groups x 12 genes (the positive controls' first; ours with ``tl.de(pairs=...)``,
the normalisation on every gene), assignment on 10 guides, one run each; without ``../shared/data`` it runs on a
generated screen instead (a message says so).

Usage: ``python benchmarks/bench_screen.py [--quick] [--repeat 3] [--cap 900]``
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from functools import partial

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse, stats

import _harness as h
import normalisr_sc as nsc

try:
    import pysceptre
    from pysceptre.assignment import mixture_design_matrix
except ImportError:  # the `bench` extra is not installed: ours only
    pysceptre = None

PAPALEXI = h.SHARED_DATA / "papalexi_lowmoi.h5ad"
NT = "non-targeting"
QCUT = 0.1
MIN_NONZERO = 7
GUIDES_PER_GROUP = 4
QUICK_GENES = 12
QUICK_CELLS = 6000
QUICK_GUIDES = 10


@dataclass
class Screen:
    """The common inputs: raw data, the shared cells/assignment and each tool's inputs."""

    raw: ad.AnnData  # all cells, guide counts in obsm['grna_counts'], names in uns
    adata: ad.AnnData  # the shared cells, normalised, pooled + guide-level assignments
    genes: list[str]
    counts: sparse.csr_matrix  # genes x cells raw counts of the shared cells (pysceptre)
    covariates: np.ndarray | None  # SCEPTRE's default design (pysceptre), shared cells
    target_cells: dict[str, np.ndarray]
    nt_cells: dict[str, np.ndarray]
    pairs: pd.DataFrame  # response_id, grna_target: the pairs passing the pair QC
    pc_pairs: pd.DataFrame
    source: str
    de_options: dict


def _papalexi_or_generated(quick: bool) -> tuple[ad.AnnData, str]:
    if PAPALEXI.exists():
        raw = ad.read_h5ad(PAPALEXI)
        raw.uns["grna_ids"] = [str(g) for g in raw.uns["grna_ids"]]
        return raw, "Papalexi"
    if not quick:
        raise SystemExit(f"{PAPALEXI} is absent: the full benchmark needs it (--quick does not).")
    print(f"{PAPALEXI} is absent: the quick run uses a generated low-MOI screen instead")
    raw = nsc.datasets.simulate(
        n_cells=3000, n_genes=60, n_targets=6, guides_per_target=2, n_non_targeting=8, seed=0
    )
    counts = raw.obsm["grna_counts"]
    raw.obsm["grna_counts"] = sparse.csr_matrix(counts.to_numpy())
    raw.uns["grna_ids"] = [str(c) for c in counts.columns]
    totals = np.asarray(raw.X.sum(axis=1)).ravel()
    raw.obs["response_n_umis"] = totals
    raw.obs["response_n_nonzero"] = np.diff(sparse.csr_matrix(raw.X).indptr)
    raw.obs["bio_rep"] = raw.obs["batch"].astype(str)
    targets = raw.uns["simulation"]["targets"]
    raw.uns["pc_pairs"] = pd.DataFrame(
        {"response_id": targets["gene"].to_numpy(), "grna_group": targets["grna_group"].to_numpy()}
    )
    return raw, "generated screen"


def prepare(quick: bool) -> Screen:
    """The shared cells, assignments and pairs, and each tool's inputs."""
    raw, source = _papalexi_or_generated(quick)
    pc_pairs = raw.uns["pc_pairs"]
    if quick and raw.n_obs > QUICK_CELLS:
        chosen = np.sort(np.random.default_rng(0).choice(raw.n_obs, QUICK_CELLS, replace=False))
        raw = raw[chosen].copy()
    ids = list(raw.uns["grna_ids"])
    guides = sparse.csr_matrix(raw.obsm["grna_counts"]).astype(np.int64)
    if pysceptre is not None:
        # SCEPTRE's low-MOI cells: its QC of the largest-count assignment.
        maximum = pysceptre.assign_grnas_maximum(guides.T.tocsr(), ids)
        keep = np.setdiff1d(np.arange(raw.n_obs), maximum.cells_w_zero_or_twoplus_grnas)
    else:  # the cells with a guide UMI
        keep = np.flatnonzero(np.diff(guides.indptr) > 0)
    adata = raw[keep].copy()
    options = {"guide_names": "grna_ids"}
    nsc.tl.assign_guides(adata, "grna_counts", groups="grna_group", **options)
    nsc.tl.assign_guides(adata, "grna_counts", key_added="guide_ids", **options)
    nsc.pp.normalize(adata, covariates=["bio_rep"])
    de_options = {"design": "low_moi", "reference": NT, "min_nonzero": MIN_NONZERO, "n_genes": 0}
    nsc.tl.de(adata, "nsc_guides", **de_options)
    # The pairs passing the pair QC, as tl.de counted them (group and NT cells).
    table = nsc.get.de_df(adata)
    passing = table[table["qc_pass"]]
    if quick:
        # The positive controls' groups x a few genes (the normalisation saw every gene).
        first = list(dict.fromkeys(pc_pairs["response_id"]))
        chosen = first + [g for g in adata.var_names if g not in first][: QUICK_GENES - len(first)]
        passing = passing[
            passing["group"].isin(set(pc_pairs["grna_group"])) & passing["gene"].isin(chosen)
        ]
        de_options["pairs"] = pd.DataFrame(
            {"group": passing["group"].astype(str), "gene": passing["gene"].astype(str)}
        )
        nsc.tl.de(adata, "nsc_guides", **de_options)
    pairs = pd.DataFrame(
        {"response_id": passing["gene"].astype(str), "grna_target": passing["group"].astype(str)}
    ).reset_index(drop=True)
    genes = [str(g) for g in adata.var_names if g in set(pairs["response_id"])]
    # Guide-level cells of the shared assignment.
    assigned = adata.obsm["guide_ids"].tocsc()
    target_of = dict(
        zip(raw.uns["grna_group"]["grna_id"], raw.uns["grna_group"]["grna_group"], strict=True)
    )
    target_cells: dict[str, list[np.ndarray]] = {}
    nt_cells = {}
    for j, guide in enumerate(adata.uns["guide_ids"]["names"]):
        cells = assigned.indices[assigned.indptr[j] : assigned.indptr[j + 1]].astype(np.int64)
        target = target_of.get(guide)
        if target == NT:
            nt_cells[guide] = np.sort(cells)
        elif target is not None:
            target_cells.setdefault(target, []).append(cells)
    target_cells = {t: np.unique(np.concatenate(c)) for t, c in target_cells.items()}
    counts = sparse.csr_matrix(adata[:, genes].X).T.tocsr()
    covariates = None
    if pysceptre is not None:
        covariates = _sceptre_design(adata, sparse.csr_matrix(adata.obsm["grna_counts"]))
    return Screen(
        raw,
        adata,
        genes,
        counts,
        covariates,
        target_cells,
        nt_cells,
        pairs,
        pc_pairs,
        source,
        de_options,
    )


def _sceptre_design(adata: ad.AnnData, guides: sparse.csr_matrix) -> np.ndarray:
    """SCEPTRE's default design of cell covariates (``mixture_design_matrix``), with bio_rep."""
    design, _ = mixture_design_matrix(
        guides.T.tocsr().astype(np.int64),
        response_n_nonzero=adata.obs["response_n_nonzero"].to_numpy(),
        response_n_umis=adata.obs["response_n_umis"].to_numpy(),
        extra_covariates=adata.obs[["bio_rep"]],
    )
    return design


# ---------------------------------------------------------------- measured calls


def _discoveries(pvals: np.ndarray) -> np.ndarray:
    return stats.false_discovery_control(np.asarray(pvals, dtype=float)) <= QCUT


def _pc_found(found: pd.DataFrame, pc_pairs: pd.DataFrame) -> int:
    hits = set(zip(found["grna_target"], found["response_id"], strict=True))
    return sum(
        (g, r) in hits for g, r in zip(pc_pairs["grna_group"], pc_pairs["response_id"], strict=True)
    )


def _pc_worst(table: pd.DataFrame, pc_pairs: pd.DataFrame) -> float:
    """The largest p-value among the positive controls (``grna_target``, ``response_id``, p)."""
    key = set(zip(pc_pairs["grna_group"], pc_pairs["response_id"], strict=True))
    rows = [(g, r) in key for g, r in zip(table["grna_target"], table["response_id"], strict=True)]
    return float(np.max(table.loc[rows, "p"])) if any(rows) else float("nan")


def ours_normalize(screen: Screen) -> dict:
    adata = screen.adata.copy()
    nsc.pp.normalize(adata, covariates=["bio_rep"])
    return {}


def ours_discovery(screen: Screen) -> dict:
    adata = screen.adata
    nsc.tl.de(adata, "nsc_guides", **screen.de_options)
    table = nsc.get.de_df(adata)
    table = table[table["qc_pass"]]
    table = pd.DataFrame(
        {
            "grna_target": table["group"].astype(str),
            "response_id": table["gene"].astype(str),
            "p": table["pval"].to_numpy(),
        }
    )
    found = table[_discoveries(table["p"])]
    return {
        "pairs": len(table),
        "discoveries": len(found),
        "pc_found": _pc_found(found, screen.pc_pairs),
        "pc_worst_p": _pc_worst(table, screen.pc_pairs),
    }


def peer_discovery(screen: Screen, seed: int) -> dict:
    result = pysceptre.run_discovery_analysis(
        screen.counts,
        screen.genes,
        screen.covariates,
        screen.target_cells,
        screen.pairs,
        moi="low",
        ntc_grna_cells=screen.nt_cells,
        seed=seed,
        n_jobs=h.cores(),
    )
    table = pd.DataFrame(
        {
            "grna_target": result["grna_target"].astype(str),
            "response_id": result["response_id"].astype(str),
            "p": result["p_value"].to_numpy(dtype=float),
        }
    )
    found = table[_discoveries(table["p"])]
    return {
        "pairs": len(table),
        "discoveries": len(found),
        "pc_found": _pc_found(found, screen.pc_pairs),
        "pc_worst_p": _pc_worst(table, screen.pc_pairs),
    }


def _calibration_figures(pvals: np.ndarray) -> dict:
    pvals = np.asarray(pvals, dtype=float)
    chi2 = stats.chi2.isf(pvals, 1)
    return {
        "pairs": int(pvals.size),
        "below_05": float(np.mean(pvals < 0.05)),
        "inflation": float(np.median(chi2) / stats.chi2.ppf(0.5, 1)),
        "false_discoveries": int(_discoveries(pvals).sum()),
    }


def ours_calibration(screen: Screen, seed: int) -> dict:
    nsc.tl.calibration_check(
        screen.adata,
        guides="guide_ids",
        nt_guides="grna_group",
        guides_per_group=GUIDES_PER_GROUP,
        n_pairs=len(screen.pairs),
        qcut=QCUT,
        seed=seed,
    )
    return _calibration_figures(screen.adata.uns["nsc_calibration"]["pvals"])


def peer_calibration(screen: Screen, seed: int) -> dict:
    result = pysceptre.run_calibration_check(
        screen.counts,
        screen.genes,
        screen.covariates,
        screen.nt_cells,
        n_calibration_pairs=len(screen.pairs),
        calibration_group_size=GUIDES_PER_GROUP,
        n_nonzero_trt_thresh=MIN_NONZERO,
        n_nonzero_cntrl_thresh=MIN_NONZERO,
        moi="low",
        seed=seed,
        n_jobs=h.cores(),
    )
    return _calibration_figures(result["p_value"])


def _assignment_figures(assigned: sparse.spmatrix, top: np.ndarray) -> dict:
    """Cells with one guide and how many of them get their largest-count guide."""
    assigned = sparse.csr_matrix(assigned, dtype=bool)
    per_cell = np.diff(assigned.indptr)
    single = np.flatnonzero(per_cell == 1)
    agree = assigned.indices[assigned.indptr[single]] == top[single]
    return {
        "one_guide": int(single.size),
        "agree_max": float(agree.mean()) if single.size else float("nan"),
        "pairs": int(assigned.nnz),
    }


def ours_assignment(guides: sparse.csr_matrix, top: np.ndarray) -> dict:
    holder = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(guides.shape[0])]))
    holder.obsm["grna_counts"] = guides
    nsc.tl.assign_guides(holder, "grna_counts", mode="mixture")
    return _assignment_figures(holder.obsm["nsc_guides"], top)


def peer_assignment(guides: sparse.csr_matrix, top: np.ndarray, design: np.ndarray) -> dict:
    ids = [f"g{j}" for j in range(guides.shape[1])]
    result = pysceptre.assign_grnas_mixture(guides.T.tocsr(), ids, design)
    return _assignment_figures(result.assigned.T, top)


# ---------------------------------------------------------------- tables


def _median_of(runs: list[h.Run], key: str) -> float:
    values = [run.data[key] for run in runs if run.ok and key in run.data]
    return float(np.median(values)) if values else float("nan")


def _figure_rows(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}} {'ours':>14} {'pysceptre':>14}")
    for name, ours, peer in rows:
        print(f"{name:<{width}} {ours:>14} {peer:>14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_arguments(parser, cap=900.0, quick_repeat=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    h.set_threads(args.threads)
    nsc.settings.progress = False
    logging.getLogger("normalisr_sc").setLevel(logging.ERROR)
    repeat = h.repeats(args)
    h.print_header(["normalisr-sc", "pysceptre", "numpy", "scipy"], repeat=repeat)
    screen = prepare(args.quick)
    adata = screen.adata
    print(
        f"{screen.source}: {adata.n_obs} cells (of {screen.raw.n_obs}; SCEPTRE's low-MOI QC "
        f"of the largest-count assignment), {adata.n_vars} genes, "
        f"{len(screen.target_cells)} target groups, {len(screen.nt_cells)} NT guides; "
        f"{len(screen.pairs)} discovery pairs pass the pair QC",
        flush=True,
    )

    # Guide assignment: mixture models on all cells of the raw screen.
    guides = sparse.csr_matrix(screen.raw.obsm["grna_counts"]).astype(np.int64)
    if args.quick:
        guides = guides[:, :QUICK_GUIDES].tocsr()
    top = np.asarray(guides.argmax(axis=1)).ravel()
    design = None if pysceptre is None else _sceptre_design(screen.raw, guides)
    measures = {
        "assignment": {
            "ours": partial(h.timed, ours_assignment, guides, top, cap=args.cap),
            "pysceptre": partial(h.timed, peer_assignment, guides, top, design, cap=args.cap),
        },
        "calibration check": {
            "ours": partial(h.timed, ours_calibration, screen, args.seed, cap=args.cap),
            "pysceptre": partial(h.timed, peer_calibration, screen, args.seed, cap=args.cap),
        },
        "discovery": {
            "ours": partial(h.timed, ours_discovery, screen, cap=args.cap),
            "pysceptre": partial(h.timed, peer_discovery, screen, args.seed, cap=args.cap),
        },
    }
    if pysceptre is None:
        print("pysceptre is not installed (the `bench` extra): ours only")
        measures = {label: {"ours": m["ours"]} for label, m in measures.items()}
    rows, runs_of = [], {}
    for label, measure in measures.items():
        runs = h.alternate(measure, repeat, progress=label)
        runs_of[label] = runs
        rows.append(h.Row(label, runs))
    normalize_runs = h.alternate(
        {"ours": partial(h.timed, ours_normalize, screen, cap=args.cap)}, repeat
    )
    rows.append(h.Row("normalisation (ours only)", normalize_runs))
    h.print_table(
        rows,
        ["ours", "pysceptre"],
        reference="ours",
        cap=args.cap,
        title=f"time on {screen.source} (median seconds; pysceptre with n_jobs={h.cores()})",
    )

    assign, cal, disc = (runs_of[k] for k in ("assignment", "calibration check", "discovery"))

    def both(runs: dict, key: str, form: str) -> tuple[str, str]:
        return tuple(
            format(_median_of(runs[m], key), form) if runs.get(m) else ""
            for m in ("ours", "pysceptre")
        )

    _figure_rows(
        f"figures on {screen.source} (of the last runs)",
        [
            (
                f"assignment ({guides.shape[1]} guides): cells with one guide",
                *both(assign, "one_guide", ".0f"),
            ),
            ("  of them with their largest-count guide", *both(assign, "agree_max", ".2%")),
            ("calibration: NT pairs", *both(cal, "pairs", ".0f")),
            ("  fraction of p below 0.05", *both(cal, "below_05", ".2%")),
            ("  inflation (lambda)", *both(cal, "inflation", ".3f")),
            (f"  false discoveries at q <= {QCUT:g}", *both(cal, "false_discoveries", ".0f")),
            ("discovery: pairs tested", *both(disc, "pairs", ".0f")),
            (f"  discoveries at q <= {QCUT:g}", *both(disc, "discoveries", ".0f")),
            (
                f"  positive controls found (of {len(screen.pc_pairs)})",
                *both(disc, "pc_found", ".0f"),
            ),
            ("  largest p of a positive control", *both(disc, "pc_worst_p", ".2e")),
        ],
    )


if __name__ == "__main__":
    main()
