"""Genome-scale high-MOI screen out of core, threaded and on a dask cluster (issue 6).

A generated screen shaped like the at-scale screen of Gasperini et al. (2019) --
200,000 cells x 13,000 genes, 6,000 guide groups, about 28 guides per cell -- is written
once, streamed in blocks of cells, to a CSR h5ad file in ``--workdir``. Then, each in a
fresh Python process reading the first ``n`` cells of that file lazily (X a dask array
of CSR blocks, never dense):

(a) ``nsc.pp.normalize`` + ``nsc.tl.de(design='high_moi')`` end to end at 25k, 50k, 100k
    and 200k cells: seconds per step, peak RSS, time per cell relative to the smallest
    size (linear scaling reads 1.00), and the issue's targets at the largest size
    (<= 60 minutes, peak RSS < 12 GB);
(b) ``nsc.tl.coex`` of all genes on 50k cells, streamed, against the bare floor: one
    float64 ``X.T @ X`` of a dense cells x genes matrix of the same shape;
(c) pipeline (a) at 50k cells on a ``distributed.LocalCluster`` with 2 worker processes
    of 1 thread, as a ratio to the threaded run.

Planted knock-downs (guide group -> target gene) check the results: their -log10 p and
the fraction of p < 0.05 among all other (null) pairs are printed with the timings.

Run ``python benchmarks/bench_scale.py --help`` for the options; ``--quick`` runs tiny
shapes in seconds to check that the script works.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np

from _memory import peak_kib, reset_peak, rss_kib

DEFAULT_WORKDIR = Path("~/.cache/normalisr_sc_bench").expanduser()
#: Bump when the generator changes, so that cached screens are regenerated.
GENERATOR_VERSION = 2
#: Cells generated per block (part of the random stream: a cell depends on its block).
GENERATION_BLOCK = 1000
#: obsm key of the cells x guide groups 0/1 matrix (names in ``uns[GUIDES]['names']``).
GUIDES = "guides"
COVARIATE = "batch"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
RESULT_TAG = "BENCH_RESULT "
MB = 2**20
GB = 2**30
#: Targets of issue 6 for the pipeline at the largest size.
TARGET_SECONDS = 3600
TARGET_PEAK_GB = 12


# ---------------------------------------------------------------- the generated screen


@dataclass(frozen=True)
class Screen:
    """Parameters of a generated high-MOI screen (defaults: the at-scale screen)."""

    n_cells: int = 200_000
    n_genes: int = 13_000
    n_groups: int = 6_000
    guides_per_cell: float = 28.0
    median_umis: float = 4_000.0
    n_batches: int = 2
    n_planted: int = 20
    seed: int = 0

    def key(self) -> dict:
        return {**asdict(self), "version": GENERATOR_VERSION, "block": GENERATION_BLOCK}

    def path(self, workdir: Path) -> Path:
        digest = hashlib.sha1(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()
        return workdir / (f"screen_{self.n_cells}x{self.n_genes}x{self.n_groups}_"
                          f"{digest[:10]}.h5ad")


QUICK_SCREEN = Screen(n_cells=4_000, n_genes=400, n_groups=100, guides_per_cell=4.0,
                      median_umis=3_000.0, n_planted=5)


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float,
                      high: float, size: int) -> np.ndarray:
    values = rng.normal(mean, sd, size)
    outside = (values < low) | (values > high)
    while outside.any():
        values[outside] = rng.normal(mean, sd, outside.sum())
        outside = (values < low) | (values > high)
    return values


def _gene_parameters(screen: Screen, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-gene expression share, NB dispersion and per-batch fold changes.

    Mean UMIs per gene at the median depth follow a log-normal spanning three orders of
    magnitude (about 0.05 to 100 at 4,000 UMIs per cell), truncated below so that every
    gene is detected in a few percent of cells and passes the recipe's read-count QC,
    like the 13,000 expressed genes of the real screen.
    """
    log10_mean = _truncated_normal(rng, -0.75, 0.7, -1.1, 2.5, screen.n_genes)
    share = 10.0**log10_mean
    share /= share.sum()
    dispersion = np.exp(rng.normal(np.log(0.2), 0.5, screen.n_genes))  # var = mu + phi mu^2
    batch_fold = np.exp(rng.normal(0.0, 0.15, (screen.n_batches, screen.n_genes)))
    batch_fold[0] = 1.0
    return {"share": share, "dispersion": dispersion, "batch_fold": batch_fold}


def _guide_matrix(screen: Screen, rng: np.random.Generator):
    """Cells x groups CSR of 0/1: a Poisson number of uniformly drawn distinct groups."""
    from scipy import sparse

    per_cell = rng.poisson(screen.guides_per_cell, screen.n_cells)
    cells = np.repeat(np.arange(screen.n_cells, dtype=np.int64), per_cell)
    groups = rng.integers(screen.n_groups, size=cells.size)
    # a group drawn twice for one cell counts once (rare at 28 of 6,000)
    pairs = np.unique(cells * screen.n_groups + groups)
    rows, columns = np.divmod(pairs, screen.n_groups)
    return sparse.csr_matrix((np.ones(pairs.size, dtype=bool), (rows, columns)),
                             shape=(screen.n_cells, screen.n_groups))


def _count_block(screen: Screen, genes: dict, depth: np.ndarray, batch: np.ndarray,
                 guides, planted: dict, rng: np.random.Generator):
    """NB counts of one block of cells as float32 CSR (the dense block is transient)."""
    from scipy import sparse

    mean = depth[:, None] * genes["share"] * genes["batch_fold"][batch]
    carrying = guides[:, planted["groups"]].tocsc()
    for k, (target, fraction) in enumerate(zip(planted["genes"], planted["fraction"],
                                               strict=True)):
        cells = carrying.indices[carrying.indptr[k]:carrying.indptr[k + 1]]
        mean[cells, target] *= fraction
    size = 1.0 / genes["dispersion"]
    # Gamma-Poisson: NB with mean `mean` and dispersion 1/size
    rate = rng.standard_gamma(np.broadcast_to(size, mean.shape))
    rate *= mean / size
    del mean
    counts = rng.poisson(rate)
    del rate
    return sparse.csr_matrix(counts.astype(np.float32))


def generate(screen: Screen, path: Path) -> dict:
    """Write ``screen`` to ``path`` block by block; return generation statistics.

    The obs/var/obsm/uns skeleton is written with ``AnnData.write_h5ad``; X is then added
    with ``anndata.io.write_elem`` (first block, 64-bit indptr) and
    ``anndata.io.sparse_dataset(...).append`` (the other blocks), so the dense matrix is
    never held, only one block of ``GENERATION_BLOCK`` cells at a time.
    """
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem

    start = time.perf_counter()
    seeds = np.random.SeedSequence(screen.seed).spawn(3)
    rng_genes, rng_cells, rng_counts = (np.random.default_rng(s) for s in seeds)
    genes = _gene_parameters(screen, rng_genes)
    # strong knock-downs of well-expressed genes, like the TSS-targeting positive controls
    # of the real screen: 17 of 20 are found at 25k cells (about 115 carrying cells)
    expressed = np.flatnonzero(genes["share"] >= np.quantile(genes["share"], 0.95))
    planted = {
        "groups": rng_genes.choice(screen.n_groups, screen.n_planted, replace=False),
        "genes": rng_genes.choice(expressed, screen.n_planted, replace=False),
        "fraction": rng_genes.uniform(0.2, 0.5, screen.n_planted),
    }
    guides = _guide_matrix(screen, rng_cells)
    batch = rng_cells.integers(screen.n_batches, size=screen.n_cells)
    batch_depth = np.exp(rng_cells.normal(0.0, 0.1, screen.n_batches))
    depth = screen.median_umis * np.exp(rng_cells.normal(0.0, 0.45, screen.n_cells))
    depth *= batch_depth[batch]

    gene_names = np.array([f"gene{j:05d}" for j in range(screen.n_genes)])
    group_names = np.array([f"group{k:04d}" for k in range(screen.n_groups)])
    obs = pd.DataFrame(
        {COVARIATE: pd.Categorical.from_codes(batch, [f"rep{b + 1}" for b in
                                                     range(screen.n_batches)]),
         "n_guides": np.diff(guides.indptr).astype(np.int32)},
        index=[f"cell{i:06d}" for i in range(screen.n_cells)],
    )
    var = pd.DataFrame({"mean_umis": genes["share"] * screen.median_umis}, index=gene_names)
    uns = {
        GUIDES: {"names": group_names},
        "simulation": {
            "params": json.dumps(screen.key(), sort_keys=True),
            "planted_groups": group_names[planted["groups"]],
            "planted_genes": gene_names[planted["genes"]],
            "planted_fraction": planted["fraction"],
        },
    }
    partial = path.with_suffix(".partial.h5ad")
    ad.AnnData(obs=obs, var=var, obsm={GUIDES: guides}, uns=uns).write_h5ad(partial)
    nnz = 0
    with h5py.File(partial, "a") as file:
        for first in range(0, screen.n_cells, GENERATION_BLOCK):
            rows = slice(first, min(first + GENERATION_BLOCK, screen.n_cells))
            block = _count_block(screen, genes, depth[rows], batch[rows], guides[rows],
                                 planted, rng_counts)
            nnz += block.nnz
            if first == 0:
                write_elem(file, "X", block, dataset_kwargs={
                    "indptr_dtype": np.int64, "chunks": (2**18,)})
            else:
                sparse_dataset(file["X"]).append(block)
    partial.replace(path)
    stats = {"seconds": time.perf_counter() - start, "bytes": path.stat().st_size, "nnz": nnz,
             "params": screen.key()}
    path.with_suffix(".json").write_text(json.dumps(stats, indent=1))
    return stats


def screen_file(screen: Screen, workdir: Path) -> tuple[Path, dict]:
    """The cached h5ad of ``screen`` (generated if missing) and its generation statistics."""
    path = screen.path(workdir)
    stats_path = path.with_suffix(".json")
    if path.exists() and stats_path.exists():
        stats = json.loads(stats_path.read_text())
        if stats["params"] == screen.key():
            return path, {**stats, "cached": True}
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"generating {screen.n_cells} cells x {screen.n_genes} genes x {screen.n_groups} "
          f"groups -> {path}", flush=True)
    return path, {**generate(screen, path), "cached": False}


# ---------------------------------------------------------------- one measurement (child)


class _Memory:
    """Peak RSS of this process and of the cluster's workers, if any, since ``reset``."""

    def __init__(self, client) -> None:
        self.client = client

    def _each(self, function) -> list[int]:
        here = [function()]
        if self.client is None:
            return here
        return here + list(self.client.run(function).values())

    def reset(self) -> None:
        self.exact = all(self._each(reset_peak))
        self.baseline = sum(self._each(rss_kib))

    def peak_mb(self) -> tuple[float, float]:
        """Peak RSS (sum over processes: an upper bound) and its excess over the baseline."""
        peak = sum(self._each(peak_kib))
        return peak * 1024 / MB, (peak - self.baseline) * 1024 / MB

    def peaks_mb(self) -> list[float]:
        """Peak RSS of each process: this one, then the workers."""
        return [peak * 1024 / MB for peak in self._each(peak_kib)]


def load_screen(path: str, n_cells: int, chunk_size: int):
    """The first ``n_cells`` of the screen: X lazy (dask, CSR chunks), the rest in memory."""
    import h5py
    from anndata import AnnData
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    with h5py.File(path, "r") as file:
        obs = read_elem(file["obs"]).iloc[:n_cells]
        var = read_elem(file["var"])
        guides = read_elem(file[f"obsm/{GUIDES}"])[:n_cells]
        uns = {GUIDES: read_elem(file[f"uns/{GUIDES}"]),
               "simulation": read_elem(file["uns/simulation"])}
    # the lazy array reopens the file by name in each task (also on cluster workers)
    counts = read_elem_lazy(h5py.File(path, "r")["X"], chunks=(chunk_size, var.shape[0]))
    return AnnData(X=counts[:n_cells], obs=obs, var=var, obsm={GUIDES: guides}, uns=uns)


def _testable_groups(adata) -> list[str] | None:
    """Groups carried by at least 2 cells (None: all are), so small subsets run too."""
    from normalisr_sc.tl._de import MIN_GROUP_CELLS

    carried = np.diff(adata.obsm[GUIDES].tocsc().indptr)
    if (carried >= MIN_GROUP_CELLS).all():
        return None
    return [str(n) for n, c in zip(adata.uns[GUIDES]["names"], carried, strict=True)
            if c >= MIN_GROUP_CELLS]


def _check_de(adata) -> dict:
    """-log10 p of the planted knock-downs and the null fraction of p < 0.05."""
    truth = adata.uns["simulation"]
    log10p = adata.varm["nsc_de_log10p"]
    logfc = adata.varm["nsc_de_logfc"]
    planted = [(g, k, f) for g, k, f in zip(truth["planted_genes"], truth["planted_groups"],
                                            truth["planted_fraction"], strict=True)
               if g in log10p.index and k in log10p.columns]
    found = np.array([log10p.at[g, k] for g, k, _ in planted])
    fold = np.array([logfc.at[g, k] / np.log(f) for g, k, f in planted])
    null = log10p.to_numpy(copy=True)
    for g, k, _ in planted:
        null[log10p.index.get_loc(g), log10p.columns.get_loc(k)] = np.nan
    null = null[np.isfinite(null)]
    bonferroni = -np.log10(0.05 / log10p.size)
    return {
        "planted": len(planted),
        "planted_min_log10p": float(found.min()) if found.size else float("nan"),
        "planted_found": int((found > bonferroni).sum()),
        "planted_fold_ratio": float(np.median(fold)) if fold.size else float("nan"),
        "null_p05": float((null > -np.log10(0.05)).mean()),
    }


#: A tiny screen on which each child runs its method once before measuring.
WARM_UP_SCREEN = replace(QUICK_SCREEN, n_cells=300, n_genes=150, n_groups=10, n_planted=1)


def _call(name: str, function, *args, **kwargs) -> None:
    function(*args, **kwargs)


def _run(kind: str, adata, chunk_size: int | None, step=_call) -> None:
    """Normalise, then high-MOI DE (``kind='pipeline'``) or co-expression (``'coex'``)."""
    import normalisr_sc as nsc

    step("normalize", nsc.pp.normalize, adata, covariates=[COVARIATE], chunk_size=chunk_size)
    if kind == "pipeline":
        step("de", nsc.tl.de, adata, GUIDES, design="high_moi", groups=_testable_groups(adata),
             chunk_size=chunk_size)
    else:
        step("coex", nsc.tl.coex, adata, chunk_size=chunk_size, dtype="float32")


def _start_cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return Client(cluster)


def measure(spec: dict) -> dict:
    """One measurement in this fresh process: ``spec['kind']`` is pipeline, coex or floor.

    The method first runs on a tiny screen (on the cluster too, if any), so that first-call
    costs (imports, compilation, worker start-up) are neither timed nor counted in memory.
    """
    if spec["kind"] == "floor":
        return _measure_floor(spec)
    import normalisr_sc as nsc

    nsc.settings.progress = False
    client = _start_cluster() if spec["cluster"] else None
    _run(spec["kind"], load_screen(spec["warm_up"], WARM_UP_SCREEN.n_cells, 100), 100)
    memory = _Memory(client)
    adata = load_screen(spec["path"], spec["n_cells"],
                        spec["chunk_size"] or nsc.settings.block_cells)
    memory.reset()
    steps = {}

    def step(name, function, *args, **kwargs):
        start = time.perf_counter()
        function(*args, **kwargs)
        peak, extra = memory.peak_mb()
        steps[name] = {"seconds": time.perf_counter() - start, "peak_mb": peak,
                       "extra_mb": extra}

    _run(spec["kind"], adata, spec["chunk_size"], step)
    checks = _check_de(adata) if spec["kind"] == "pipeline" else {}
    peak, extra = memory.peak_mb()
    each = memory.peaks_mb()
    if client is not None:
        client.close()
    return {**spec, "cells_out": adata.n_obs, "genes_out": adata.n_vars, "steps": steps,
            "seconds": sum(s["seconds"] for s in steps.values()), "peak_mb": peak,
            "extra_mb": extra, "peak_mb_each": each, "exact_peak": memory.exact, **checks}


def _measure_floor(spec: dict) -> dict:
    """One bare float64 ``X.T @ X`` of a dense random cells x genes matrix."""
    matrix = np.random.default_rng(0).standard_normal((spec["n_cells"], spec["n_genes"]))
    start = time.perf_counter()
    matrix.T @ matrix
    return {**spec, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- driver (parent)


def run_child(spec: dict, threads: int | None) -> dict | None:
    """Run one measurement in a fresh process; None (and the error printed) if it failed."""
    env = dict(os.environ)
    if threads is not None:
        env |= {name: str(threads) for name in THREAD_VARIABLES}
    command = [sys.executable, __file__, "--one", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        print(f"FAILED {spec['kind']} at {spec['n_cells']} cells:\n{done.stderr[-3000:]}",
              flush=True)
        return None
    line = next(row for row in done.stdout.splitlines() if row.startswith(RESULT_TAG))
    return json.loads(line.removeprefix(RESULT_TAG))


def _steps_text(run: dict) -> str:
    return ", ".join(f"{name} {step['seconds']:.1f}s" for name, step in run["steps"].items())


def _progress_line(label: str, run: dict | None) -> None:
    if run is None:
        return
    text = f"{run['seconds']:.1f}s"
    if "steps" in run:
        text += f" ({_steps_text(run)}), peak RSS {run['peak_mb']:.0f} MB"
        if not run["exact_peak"]:
            text += " (peak not reset: includes start-up)"
    print(f"{label}: {text}", flush=True)


def _yes(condition: bool) -> str:
    return "yes" if condition else "NO"


def print_scaling(runs: list[dict]) -> None:
    """Table (a): per-step seconds, peak memory, time per cell relative to the first size."""
    if not runs:
        return
    header = (f"{'cells':>8} {'kept':>13} {'normalize s':>11} {'de s':>8} {'total s':>8} "
              f"{'ms/cell':>7} {'vs first':>8} {'peak MB':>8} {'extra MB':>8} "
              f"{'planted':>9} {'min -lgp':>8} {'fc ratio':>8} {'null<.05':>8}")
    print("\n(a) normalize + high-MOI DE, streamed from disk\n" + header + "\n" + "-" * len(header))
    first = runs[0]["seconds"] / runs[0]["n_cells"]
    for run in runs:
        per_cell = run["seconds"] / run["n_cells"]
        kept = f"{run['cells_out']}x{run['genes_out']}"
        print(f"{run['n_cells']:>8} {kept:>13} {run['steps']['normalize']['seconds']:11.1f} "
              f"{run['steps']['de']['seconds']:8.1f} {run['seconds']:8.1f} "
              f"{1000 * per_cell:7.3f} {per_cell / first:8.2f} {run['peak_mb']:8.0f} "
              f"{run['extra_mb']:8.0f} {run['planted_found']:>4}/{run['planted']:<4} "
              f"{run['planted_min_log10p']:8.1f} {run['planted_fold_ratio']:8.2f} "
              f"{run['null_p05']:8.3f}")
    print("kept: cells x genes after QC and outlier removal; vs first: time per cell / time per "
          "cell at the first size (1.00 = linear); peak MB: peak RSS of the process "
          "(including the loaded obs/obsm); extra MB: above the RSS after loading; planted: "
          "knock-downs found at Bonferroni 0.05 over all pairs; min -lgp: their smallest "
          "-log10 p; fc ratio: median fitted logfc / planted log fraction (below 1: the "
          "posterior log CPM shrinks the fold changes of low counts); null<.05: fraction of p < 0.05 among all other pairs (0.05 "
          "if calibrated).")
    largest = runs[-1]
    print(f"targets at {largest['n_cells']} cells: {largest['seconds'] / 60:.1f} min "
          f"(<= {TARGET_SECONDS // 60}: {_yes(largest['seconds'] <= TARGET_SECONDS)}), peak "
          f"RSS {largest['peak_mb'] * MB / GB:.2f} GB (< {TARGET_PEAK_GB}: "
          f"{_yes(largest['peak_mb'] * MB < TARGET_PEAK_GB * GB)})")


def print_coex(coex: dict | None, floor: dict | None) -> None:
    if coex is None:
        return
    step = coex["steps"]["coex"]
    print(f"\n(b) co-expression of {coex['genes_out']} genes on {coex['cells_out']} cells, "
          f"streamed, float32 output: {step['seconds']:.1f}s, peak RSS {step['peak_mb']:.0f} MB "
          f"(normalize before it: {coex['steps']['normalize']['seconds']:.1f}s)")
    if floor is not None:
        print(f"    floor, one float64 X.T @ X of a dense {floor['n_cells']} x "
              f"{floor['n_genes']} matrix: {floor['seconds']:.1f}s; coex / floor = "
              f"{step['seconds'] / floor['seconds']:.2f}")


def print_cluster(cluster: dict | None, threaded: dict | None) -> None:
    if cluster is None or threaded is None:
        return
    print(f"\n(c) the pipeline at {cluster['n_cells']} cells on a LocalCluster (2 workers x 1 "
          "thread) vs the threaded scheduler")
    for label, run in (("threaded", threaded), ("cluster", cluster)):
        print(f"    {label:<9} {run['seconds']:8.1f}s ({_steps_text(run)}), peak RSS "
              f"{run['peak_mb']:.0f} MB, planted found {run['planted_found']}/{run['planted']}")
    client, *workers = (f"{mb:.0f}" for mb in cluster["peak_mb_each"])
    print(f"    cluster / threaded = {cluster['seconds'] / threaded['seconds']:.2f}; peak RSS of "
          f"the cluster: the sum of the client's ({client} MB) and the workers' "
          f"({', '.join(workers)} MB)")


def _cells(text: str) -> list[int]:
    return sorted(int(value) for value in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny screen (4,000 x 400, 100 groups) and sizes, for a smoke run")
    parser.add_argument("--cells", type=_cells, default=None,
                        help="sizes of the scaling curve (default 25000,50000,100000,200000)")
    parser.add_argument("--coex-cells", type=int, default=None, help="default 50000")
    parser.add_argument("--cluster-cells", type=int, default=None, help="default 50000")
    parser.add_argument("--skip-scaling", action="store_true", help="skip (a)")
    parser.add_argument("--skip-coex", action="store_true", help="skip (b)")
    parser.add_argument("--skip-floor", action="store_true", help="skip the floor of (b)")
    parser.add_argument("--skip-cluster", action="store_true", help="skip (c)")
    parser.add_argument("--generate-only", action="store_true",
                        help="only make sure the screen file exists (and report its cost)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"where the screen is cached (default {DEFAULT_WORKDIR})")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="cells per block (default nsc.settings.block_cells; --quick: 500)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads of the measured processes (default: the library's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated screen")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(RESULT_TAG + json.dumps(measure(json.loads(args.one))), flush=True)
        return

    screen = replace(QUICK_SCREEN if args.quick else Screen(), seed=args.seed)
    sizes = args.cells or ([1000, 2000, 4000] if args.quick else
                           [25_000, 50_000, 100_000, 200_000])
    middle = 2000 if args.quick else 50_000
    # several blocks even at --quick sizes, so that the blocks are really merged
    chunk_size = args.chunk_size or (500 if args.quick else None)
    coex_cells, cluster_cells = args.coex_cells or middle, args.cluster_cells or middle
    too_many = [n for n in [*sizes, coex_cells, cluster_cells] if n > screen.n_cells]
    if too_many:
        parser.error(f"sizes {too_many} exceed the {screen.n_cells} cells of the screen.")

    path, stats = screen_file(screen, args.workdir)
    print(f"screen {path}: {stats['bytes'] / GB:.2f} GB, {stats['nnz']} nonzeros "
          f"({stats['nnz'] / screen.n_cells:.0f} per cell), generated in "
          f"{stats['seconds']:.0f}s{' (cached)' if stats['cached'] else ''}", flush=True)
    if args.generate_only:
        return
    import normalisr_sc as nsc

    print(f"python {platform.python_version()}, {os.cpu_count()} cpus; normalisr_sc "
          f"{version('normalisr-sc')}, anndata {version('anndata')}, dask {version('dask')}, "
          f"numpy {version('numpy')}; chunk_size {chunk_size or nsc.settings.block_cells}; "
          f"BLAS threads {args.threads or 'default'}", flush=True)
    warm_up, _ = screen_file(WARM_UP_SCREEN, args.workdir)

    def child(kind: str, n_cells: int, *, cluster: bool = False, **extra) -> dict | None:
        spec = {"kind": kind, "path": str(path), "n_cells": n_cells, "warm_up": str(warm_up),
                "chunk_size": chunk_size, "cluster": cluster, **extra}
        run = run_child(spec, args.threads)
        _progress_line(f"{kind} {n_cells} cells{' on cluster' if cluster else ''}", run)
        return run

    scaling = [] if args.skip_scaling else [child("pipeline", n) for n in sizes]
    coex = floor = None
    if not args.skip_coex:
        coex = child("coex", coex_cells)
        if coex is not None and not args.skip_floor:
            floor = child("floor", coex["cells_out"], n_genes=coex["genes_out"])
    cluster = threaded = None
    if not args.skip_cluster:
        cluster = child("pipeline", cluster_cells, cluster=True)
        threaded = next((run for run in scaling if run and run["n_cells"] == cluster_cells),
                        None)
        if threaded is None and cluster is not None:
            threaded = child("pipeline", cluster_cells)
    print_scaling([run for run in scaling if run is not None])
    print_coex(coex, floor)
    print_cluster(cluster, threaded)


if __name__ == "__main__":
    main()
