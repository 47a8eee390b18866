"""Speed of the association tests (issue 3, "Speed"): ours vs normalisr 1.0.0 vs scanpy.

Scenarios, all measured in the same run on the same normalised data:

- case-control and low-MOI DE on Papalexi (``../shared/data/papalexi_lowmoi.h5ad``,
  normalised by ``nsc.pp.normalize``) and on generated data (default 20,000 cells x
  5,000 genes x 50 groups): ``nsc.tl.de`` vs ``normalisr.de(single=0 / 1)`` vs scanpy
  ``rank_genes_groups`` (t-test and wilcoxon; one group vs the rest for case-control,
  each group vs the reference group for low MOI);
- high-MOI DE at 20,000 cells x 2,000 genes with 200 and 400 guide groups at 10 guides
  per cell on average (Poisson): ``nsc.tl.de(design='high_moi')`` vs
  ``normalisr.de(single=4)``; ours alone at 2,000 groups;
- co-expression at 20,000 cells x 5,000 genes: ``nsc.tl.coex`` vs ``normalisr.coex`` vs
  one bare float64 product ``X @ X.T`` of the same shape, the physical floor, and that
  product with two more genes x genes matrices allocated and written once (``floor +
  outputs``: the three matrices ``coex`` stores); DE has
  its floor too, one product ``X.T @ indicators`` of the normalised expression and the
  cells x groups indicators.

Every call runs in this process (the data are generated once); the methods of a
scenario alternate (ours, normalisr, scanpy, ours, ...; ``--repeat``, default 3) and the
table gives medians, ratios of medians (reference time / our time: above 1, we are
faster) and the 1-minute load average around the runs (``_harness.py``). Reference
timings are abandoned after ``--cap`` seconds (not repeated); the table then shows
``>cap`` and the ratio as a lower bound.

Usage: ``python benchmarks/bench_association.py [--cells 20000] [--genes 5000] [--cap 600]``
``[--repeat 3] [--quick]``
"""

from __future__ import annotations

import argparse
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

import _harness as h
import normalisr_sc as nsc

DATA = h.SHARED_DATA


def generated(n_cells: int, n_genes: int, n_cov: int = 4, *, seed: int = 0) -> ad.AnnData:
    """Normalised-looking expression and covariates in the layout ``nsc.pp`` leaves.

    Besides the normalised layer and covariates, a log CPM layer (``lcpm``) and the
    un-normalised covariates (``nsc_covariates``), from which ``nsc.tl.de`` fits its fold
    change.
    """
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 2.0, n_cells)
    covariates = np.column_stack(
        [rng.normal(size=(n_cells, n_cov - 1)) * weights[:, None], weights]
    )
    names = [f"cov{i}" for i in range(n_cov - 1)] + ["intercept"]
    obs_names = [f"c{i}" for i in range(n_cells)]
    adata = ad.AnnData(
        obs=pd.DataFrame(index=obs_names), var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    )
    expression = rng.standard_normal((n_cells, n_genes))
    expression += covariates @ rng.normal(size=(n_cov, n_genes))
    adata.layers["normalisr"] = expression
    adata.layers["lcpm"] = expression / weights[:, None] + 2.0
    adata.obsm["nsc_covariates_norm"] = pd.DataFrame(covariates, index=obs_names, columns=names)
    adata.obsm["nsc_covariates"] = pd.DataFrame(
        covariates / weights[:, None], index=obs_names, columns=names
    )
    return adata


def guides(n_cells: int, n_groups: int, per_cell: float, *, seed: int = 1) -> sparse.csr_matrix:
    """Cells x groups 0/1 CSR: each cell carries Poisson(``per_cell``) distinct random groups.

    The number varies between cells as in a real screen: with exactly ``per_cell`` groups
    in every cell the groups would sum to a multiple of the intercept, so that no group
    could be told apart from the others in the high-MOI design (every p-value 1).
    """
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.poisson(per_cell, n_cells), n_groups)
    order = np.argsort(rng.random((n_cells, n_groups)), axis=1)
    cols = order[np.arange(n_groups) < counts[:, None]]
    rows = np.repeat(np.arange(n_cells), counts)
    return sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_cells, n_groups))


def reference_inputs(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Genes x cells expression and covariates x cells, as normalisr takes them."""
    return (
        np.ascontiguousarray(adata.layers["normalisr"].T),
        np.ascontiguousarray(adata.obsm["nsc_covariates_norm"].to_numpy().T),
    )


def scanpy_de(
    adata: ad.AnnData, groupby: str, method: str, reference: str, groups: list[str]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(
            adata,
            groupby,
            groups=groups,
            layer="normalisr",
            method=method,
            reference=reference,
            use_raw=False,
            pts=False,
        )


#: Parameters of ``nsc.tl.de`` and ``nsc.tl.coex`` passed explicitly, so that a change of
#: the package's defaults does not change what is measured.
DE_PARAMS = {
    "layer": "normalisr",
    "covariates_key": "nsc_covariates_norm",
    "min_cells": 2,
    "dimreduce": 0,
    # no pair QC: the generated data have no counts, and the peers do not filter pairs
    "min_nonzero": 0,
}
COEX_PARAMS = {
    "layer": "normalisr",
    "covariates_key": "nsc_covariates_norm",
    "dimreduce": 0,
    "dtype": np.float64,
    "store": "all",
}
PEERS = ["normalisr", "scanpy t-test", "scanpy wilcoxon", "floor", "floor + outputs"]


class Bench:
    """The run's settings: repeats, cap, and the rows measured so far."""

    def __init__(self, repeat: int, cap: float) -> None:
        self.repeat, self.cap = repeat, cap
        self.rows: list[h.Row] = []

    def measure(self, scenario: str, measures: dict) -> None:
        """Alternate the measurements of one scenario and keep its row."""
        runs = h.alternate(measures, self.repeat, progress=scenario)
        self.rows.append(h.Row(scenario, runs))


def de_rows(
    bench: Bench,
    name: str,
    adata: ad.AnnData,
    labels: np.ndarray,
    reference: str,
    designs: tuple[str, ...] = ("case_control", "low_moi"),
) -> None:
    """Case-control and low-MOI DE of one labelled dataset: ours, normalisr, scanpy."""
    import normalisr.normalisr as nr

    adata.obs["label"] = pd.Categorical(labels)
    groups = [g for g in adata.obs["label"].cat.categories if g != reference]
    indicators = np.vstack([labels == g for g in groups]).astype(np.float64)
    expression, covariates = reference_inputs(adata)
    cells_by_groups = np.ascontiguousarray(indicators.T)
    cells_by_genes = adata.layers["normalisr"]
    cap = bench.cap
    # the same tests for every method: case-control, each non-reference group against
    # all other cells (normalisr's single=0, scanpy's reference='rest'); low MOI, each
    # group against the reference cells
    for design, single, ours_reference, scanpy_reference in (
        ("case_control", 0, None, "rest"),
        ("low_moi", 1, reference, reference),
    ):
        if design not in designs:
            continue
        measures = {
            "ours": lambda d=design, r=ours_reference: h.timed(
                nsc.tl.de, adata, "label", design=d, reference=r, groups=groups, **DE_PARAMS
            ),
            "normalisr": lambda k=single: h.timed(
                nr.de, indicators, expression, covariates, single=k, cap=cap
            ),
        }
        for method in ("t-test", "wilcoxon"):
            measures[f"scanpy {method}"] = lambda m=method, r=scanpy_reference: h.timed(
                scanpy_de, adata, "label", m, r, groups, cap=cap
            )
        # the floor: one pass over the normalised expression, X.T @ indicators
        measures["floor"] = lambda: h.timed(np.matmul, cells_by_genes.T, cells_by_groups)
        bench.measure(f"{name} {design}", measures)


def papalexi_rows(
    bench: Bench, n_cells: int | None, n_groups: int | None, designs: tuple[str, ...]
) -> None:
    """DE on Papalexi, each cell labelled by the target of its most counted guide.

    ``n_cells``: a random subset of the cells; ``n_groups``: only the cells of the
    ``n_groups`` largest target groups and of the non-targeting cells (default: all).
    """
    adata = ad.read_h5ad(DATA / "papalexi_lowmoi.h5ad")
    counts = adata.obsm["grna_counts"]
    names = np.asarray(adata.uns["grna_ids"])
    target = dict(
        zip(adata.uns["grna_group"]["grna_id"], adata.uns["grna_group"]["grna_group"], strict=True)
    )
    labels = np.array([target[g] for g in names[np.asarray(counts.argmax(axis=1)).ravel()]])
    keep = np.ones(adata.n_obs, dtype=bool)
    if n_groups is not None:
        sizes = pd.Series(labels[labels != "non-targeting"]).value_counts()
        keep = np.isin(labels, [*sizes.index[:n_groups], "non-targeting"])
    if n_cells is not None and n_cells < keep.sum():
        chosen = np.random.default_rng(0).choice(np.flatnonzero(keep), n_cells, replace=False)
        keep = np.isin(np.arange(adata.n_obs), chosen)
    adata = adata[keep].copy()
    adata.obs["label"] = labels[keep]
    nsc.pp.normalize(adata, covariates=["bio_rep"], qc=None, remove_outliers=True)
    labels = adata.obs["label"].to_numpy()  # of the cells left after outlier removal
    keep = pd.Series(labels).value_counts()
    labels = np.where(np.isin(labels, keep.index[keep >= 2]), labels, "non-targeting")
    print(
        f"Papalexi: {adata.n_obs} cells x {adata.n_vars} genes, "
        f"{len(set(labels)) - 1} groups + non-targeting",
        flush=True,
    )
    de_rows(bench, "Papalexi", adata, labels, "non-targeting", designs)


def generated_de_rows(
    bench: Bench, n_cells: int, n_genes: int, n_groups: int, designs: tuple[str, ...]
) -> None:
    adata = generated(n_cells, n_genes)
    rng = np.random.default_rng(2)
    labels = np.array([f"grp{i:02d}" for i in rng.integers(0, n_groups + 1, n_cells)], dtype=object)
    labels[labels == f"grp{n_groups:02d}"] = "reference"
    print(f"generated DE: {n_cells} cells x {n_genes} genes x {n_groups} groups", flush=True)
    name = f"{n_cells // 1000}k x {n_genes} x {n_groups}"
    de_rows(bench, name, adata, labels, "reference", designs)


def high_moi_rows(
    bench: Bench, n_cells: int, n_genes: int, group_counts: list[int], ours_only: list[int]
) -> None:
    import normalisr.normalisr as nr

    adata = generated(n_cells, n_genes)
    expression, covariates = reference_inputs(adata)
    for n_groups in group_counts + ours_only:
        adata.obsm["guides"] = guides(n_cells, n_groups, 10)
        measures = {
            "ours": lambda: h.timed(nsc.tl.de, adata, "guides", design="high_moi", **DE_PARAMS)
        }
        if n_groups in group_counts:
            dense = adata.obsm["guides"].T.toarray()
            measures["normalisr"] = lambda d=dense: h.timed(
                nr.de, d, expression, covariates, single=4, cap=bench.cap
            )
        bench.measure(f"high MOI {n_cells // 1000}k x {n_genes} x {n_groups} groups", measures)


def product_and_outputs(expression: np.ndarray) -> None:
    """The floor ``X @ X.T``, then two more genes x genes float64 matrices, each written once.

    What storing three matrices (r, p, ``-log10`` p) costs beyond the product: on a machine
    where new memory is expensive to touch (``_harness.first_touch_seconds_per_gb``), this
    is the floor of ``coex(store='all')``.
    """
    gram = np.matmul(expression, expression.T)
    for value in (1.0, 0.0):
        np.empty_like(gram).fill(value)


def coex_rows(bench: Bench, n_cells: int, n_genes: int) -> None:
    import normalisr.normalisr as nr

    adata = generated(n_cells, n_genes)
    expression, covariates = reference_inputs(adata)
    bench.measure(
        f"coex {n_cells // 1000}k x {n_genes}",
        {
            "ours": lambda: h.timed(nsc.tl.coex, adata, **COEX_PARAMS),
            "normalisr": lambda: h.timed(nr.coex, expression, covariates, cap=bench.cap),
            "floor": lambda: h.timed(np.matmul, expression, expression.T),
            "floor + outputs": lambda: h.timed(product_and_outputs, expression),
        },
    )


def _low_moi_memory(n_cells: int, n_genes: int, n_groups: int, chunked: bool) -> dict:
    """In a child: low-MOI DE of a generated screen; seconds and memory beside the data.

    About one group per cell, a tenth of the cells without a group (the baseline).
    Returns the peak RSS above the RSS with the data loaded, and the size of the
    low-MOI accumulator (5 x classes x genes float64 per layer: 4 covariates and the
    ones) and of the results, for scale.
    """
    import time

    adata = generated(n_cells, n_genes)
    rng = np.random.default_rng(3)
    group = rng.integers(0, n_groups, n_cells)
    group[rng.random(n_cells) < 0.1] = -1
    labels = np.where(group >= 0, np.char.add("g", group.astype(str)), "nt")
    adata.obs["label"] = pd.Categorical(labels)
    nsc.settings.block_cells = 2048
    loaded = h.rss_kib()
    exact = h.reset_peak()
    start = time.perf_counter()
    nsc.tl.de(adata, "label", design="low_moi", reference="nt", chunked=chunked, **DE_PARAMS)
    seconds = time.perf_counter() - start
    tested = adata.varm["nsc_de_log10p"].shape[1]
    return {
        "seconds": seconds,
        "extra_mb": (h.peak_kib() - loaded) / 1024,
        "exact_peak": exact,
        "accumulator_mb": 2 * 5 * (tested + 1) * n_genes * 8 / h.MB,
        "results_mb": 5 * tested * n_genes * 8 / h.MB,
        "layers_mb": 2 * n_cells * n_genes * 8 / h.MB,
    }


def memory_rows(bench: Bench, n_cells: int, n_genes: int, n_groups: int) -> list[str]:
    """Peak memory of low-MOI DE beside the data, in memory and streamed (dask)."""
    lines = []
    for chunked in (False, True):
        runs = h.alternate(
            {"ours": lambda c=chunked: h.in_child(_low_moi_memory, n_cells, n_genes, n_groups, c)},
            1,
            progress="low-MOI memory",
        )
        bench.rows.append(
            h.Row(
                f"low MOI memory {n_cells // 1000}k x {n_genes} x {n_groups}"
                + (" streamed" if chunked else ""),
                runs,
            )
        )
        run = runs["ours"][0]
        if run.data:
            d = run.data
            lines.append(
                f"| {n_cells:,} x {n_genes:,} x {n_groups:,} | {'dask' if chunked else 'memory'} "
                f"| {d['seconds']:.1f} | {d['extra_mb']:,.0f} | {d['accumulator_mb']:,.0f} "
                f"| {d['results_mb']:,.0f} | {d['layers_mb']:,.0f} | {run.load[0]:.1f}-{run.load[1]:.1f} |"
            )
        else:
            lines.append(f"| {n_cells:,} x {n_genes:,} x {n_groups:,} | failed: {run.error} |")
    print(
        "\nlow-MOI peak memory beside the data (MB; one run each in a fresh child):\n"
        "| cells x genes x groups | data | seconds | peak RSS above the data | accumulator "
        "(both layers) | results | the two layers | load 1m |\n|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(lines))
    return lines


def warm_up() -> None:
    """One small call of each of ours, so first-call costs (BLAS threads) are not timed."""
    adata = generated(300, 20)
    adata.obsm["guides"] = guides(300, 6, 1)
    for design in ("case_control", "low_moi", "high_moi"):
        nsc.tl.de(adata, "guides", design=design, reference="0", **DE_PARAMS)
    nsc.tl.coex(adata, **COEX_PARAMS)


#: Shapes of ``--quick``: every scenario, small.
QUICK = {
    "cells": 1000,
    "genes": 100,
    "groups": 5,
    "moi_genes": 50,
    "moi_groups": [10, 20],
    "moi_ours_only": [50],
    "papalexi_cells": 1000,
    "papalexi_groups": 5,
    "cap": 20.0,
    "memory": [2_000, 100, 50],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_arguments(parser, quick_repeat=1)
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=5_000)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument(
        "--n-jobs", type=int, default=None, help="nsc.settings.n_jobs (default: all cores)"
    )
    parser.add_argument("--moi-genes", type=int, default=2_000)
    parser.add_argument("--moi-groups", type=int, nargs="+", default=[200, 400])
    parser.add_argument("--moi-ours-only", type=int, nargs="+", default=[2_000])
    parser.add_argument(
        "--papalexi-cells",
        type=int,
        default=None,
        help="a random subset of Papalexi's cells (default all)",
    )
    parser.add_argument(
        "--papalexi-groups",
        type=int,
        default=None,
        help="only the cells of the N largest Papalexi target groups and the "
        "non-targeting ones (default all)",
    )
    parser.add_argument(
        "--cap",
        type=float,
        default=600.0,
        help="seconds after which a reference timing is abandoned",
    )
    parser.add_argument(
        "--memory",
        type=int,
        nargs=3,
        default=[20_000, 4_000, 2_500],
        metavar=("CELLS", "GENES", "GROUPS"),
        help="shape of the low-MOI memory scenario (issue 14: 200,000 x 8,000 x 10,000)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["papalexi", "de", "case_control", "low_moi", "high_moi", "coex", "memory"],
        help="scenarios left out (case_control, low_moi: that design of the DE scenarios)",
    )
    args = parser.parse_args()
    if args.quick:  # the quick shapes replace the defaults, not the options given
        given = vars(parser.parse_args([]))
        for key, value in QUICK.items():
            if getattr(args, key) == given[key]:
                setattr(args, key, value)
    h.set_threads(args.threads)
    nsc.settings.progress = False
    nsc.settings.n_jobs = args.n_jobs
    bench = Bench(h.repeats(args), args.cap)
    h.print_header(
        ["normalisr-sc", "normalisr", "scanpy", "numpy"],
        repeat=bench.repeat,
        cap=f"{args.cap:g}s",
        BLAS_threads=args.threads or "default",
        n_jobs=nsc.settings.n_jobs,
    )
    warm_up()
    designs = tuple(d for d in ("case_control", "low_moi") if d not in args.skip)
    if "papalexi" not in args.skip and (DATA / "papalexi_lowmoi.h5ad").exists() and designs:
        papalexi_rows(bench, args.papalexi_cells, args.papalexi_groups, designs)
    if "de" not in args.skip and designs:
        generated_de_rows(bench, args.cells, args.genes, args.groups, designs)
    if "high_moi" not in args.skip:
        high_moi_rows(bench, args.cells, args.moi_genes, args.moi_groups, args.moi_ours_only)
    if "coex" not in args.skip:
        coex_rows(bench, args.cells, args.genes)
    if "memory" not in args.skip:
        memory_rows(bench, *args.memory)
    h.print_table(
        bench.rows,
        ["ours", *PEERS],
        reference="ours",
        cap=args.cap,
        title="seconds: medians of alternating runs (ratio: peer / ours)",
    )
    print(
        "floor: one bare float64 product of the same shape, a single pass over the "
        "normalised expression: X.T @ indicators (cells x groups) for DE, X @ X.T (genes x "
        "cells) for co-expression; floor + outputs: X @ X.T and two more genes x genes "
        "matrices written once (coex stores three)."
    )
    timing = [row for row in bench.rows if not row.label.startswith("low MOI memory")]
    h.print_markdown(timing, ["ours", *PEERS], reference="ours", cap=args.cap)


if __name__ == "__main__":
    main()
