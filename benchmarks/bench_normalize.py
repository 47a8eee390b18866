"""Speed and peak memory of the Normalisr normalisation (issue 2, "Speed and memory").

Compares, on the same data and in the same run:

- ``ours``: ``nsc.pp.normalize(adata, covariates=[...], qc=None)``, the whole recipe
  without read-count QC (the Papalexi gene panel fails the default whole-transcriptome
  bounds), i.e. the steps normalisr 1.0.0 runs below: lcpm, normcov, compute_var,
  qc_outlier, normvar;
- ``normalisr``: normalisr 1.0.0 doing the same steps from a genes x cells sparse
  integer matrix: densify (its ``scaling_factor`` needs a dense array; the dense counts
  are freed after it), lcpm, scaling_factor, normcov, compute_var, qc_outlier, subset,
  normvar;
- ``scanpy``: ``sc.pp.normalize_total`` + ``sc.pp.log1p``, the usual cheap baseline.

Each measurement runs in a fresh Python process (this script with ``--one``), which
loads the input, resets its peak resident memory and then runs one method. The peak
extra memory is the peak RSS during the method minus the RSS after loading the input;
it is also given as a multiple of one dense float64 cells x genes matrix. Generated data
are written once to a cache in the temporary directory and shared by the processes.

Run ``python benchmarks/bench_normalize.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from _memory import peak_kib, reset_peak, rss_kib

ROOT = Path(__file__).resolve().parents[1]
PAPALEXI = ROOT.parent / "shared" / "data" / "papalexi_lowmoi.h5ad"
CACHE = Path(tempfile.gettempdir()) / "normalisr_sc_bench"
METHODS = ("ours", "normalisr", "scanpy")
#: Steps of ``nsc.pp.normalize`` timed separately (names in ``normalisr_sc.pp._recipe``).
OUR_STEPS = ("lcpm", "normcov", "compute_var", "qc_outlier", "normvar")
#: Environment variables setting the number of threads of the BLAS libraries.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
RESULT_TAG = "BENCH_RESULT "
MB = 2**20


# ---------------------------------------------------------------- datasets (parent side)


def _write_atomic(adata, path: Path) -> None:
    partial = path.with_suffix(".partial.h5ad")
    adata.write_h5ad(partial)
    partial.replace(path)


def generated_dataset(n_cells: int, n_genes: int, seed: int) -> Path:
    """Simulated counts (``nsc.datasets.simulate``, two batches), cached as an h5ad file."""
    path = CACHE / f"simulate_{n_cells}x{n_genes}_seed{seed}.h5ad"
    if not path.exists():
        import normalisr_sc as nsc

        print(f"generating {n_cells} cells x {n_genes} genes -> {path}", flush=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        adata = nsc.datasets.simulate(n_cells=n_cells, n_genes=n_genes, seed=seed)
        del adata.uns["simulation"]
        _write_atomic(adata, path)
    return path


def papalexi_dataset(n_cells: int | None, seed: int) -> Path | None:
    """The Papalexi low-MOI screen, or a cached random subset of ``n_cells`` cells."""
    if not PAPALEXI.exists():
        print(f"skipping papalexi: {PAPALEXI} not found", flush=True)
        return None
    if n_cells is None:
        return PAPALEXI
    path = CACHE / f"papalexi_{n_cells}cells_seed{seed}.h5ad"
    if not path.exists():
        import anndata as ad
        import numpy as np

        CACHE.mkdir(parents=True, exist_ok=True)
        adata = ad.read_h5ad(PAPALEXI)
        cells = np.random.default_rng(seed).choice(adata.n_obs, n_cells, replace=False)
        _write_atomic(adata[np.sort(cells)].copy(), path)
    return path


# ---------------------------------------------------------------- one measurement (child)


class _Steps:
    """Seconds and peak extra RSS (MB) at the end of each timed step."""

    def __init__(self, baseline_kib: int) -> None:
        self.baseline = baseline_kib
        self.record: dict[str, dict[str, float]] = {}
        self.start = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.record[name] = {
            "seconds": now - self.start,
            "peak_mb": (peak_kib() - self.baseline) * 1024 / MB,
        }
        self.start = now

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            self.start = time.perf_counter()
            result = function(*args, **kwargs)
            self.mark(name)
            return result

        return timed


def _run_ours(adata, covariate: str, steps: _Steps) -> tuple[int, int]:
    import normalisr_sc as nsc
    from normalisr_sc.pp import _recipe

    originals = {name: getattr(_recipe, name) for name in OUR_STEPS}
    for name, function in originals.items():
        setattr(_recipe, name, steps.wrap(name, function))
    try:
        nsc.pp.normalize(adata, covariates=[covariate], qc=None)
    finally:
        for name, function in originals.items():
            setattr(_recipe, name, function)
    return adata.shape


def _reference_input(adata, covariate: str):
    """Genes x cells integer counts and one-hot covariate rows (first level dropped)."""
    import numpy as np
    import pandas as pd
    from scipy import sparse

    reads = sparse.csr_matrix(adata.X.T, dtype=np.int64)
    one_hot = pd.get_dummies(adata.obs[covariate].astype("category"), drop_first=True)
    return reads, one_hot.to_numpy(dtype=np.float64).T


def _run_reference(reads, one_hot, steps: _Steps) -> tuple[int, int]:
    import normalisr.normalisr as ref
    import numpy as np

    # scaling_factor only takes a dense array; lcpm would densify a sparse one itself.
    dense = reads.toarray()
    steps.mark("densify")
    dt, _, _, dc = ref.lcpm(dense)
    steps.mark("lcpm")
    sf = ref.scaling_factor(dense)
    del dense
    steps.mark("scaling_factor")
    dcn = ref.normcov(np.vstack([dc, one_hot]))
    steps.mark("normcov")
    w = ref.compute_var(dt, dcn)
    steps.mark("compute_var")
    keep = ref.qc_outlier(w)
    steps.mark("qc_outlier")
    dt, dcn, w = dt[:, keep], dcn[:, keep], w[keep]
    steps.mark("subset")
    dtn, _ = ref.normvar(dt, dcn, w, sf)
    steps.mark("normvar")
    return dtn.shape[::-1]


def _run_scanpy(adata) -> tuple[int, int]:
    import scanpy as sc

    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    return adata.shape


def _run(method: str, adata, covariate: str, steps: _Steps) -> tuple[int, int]:
    if method == "ours":
        return _run_ours(adata, covariate, steps)
    if method == "normalisr":
        reads, one_hot = _reference_input(adata, covariate)
        return _run_reference(reads, one_hot, steps)
    if method == "scanpy":
        return _run_scanpy(adata)
    msg = f"unknown method {method!r}; choose from {METHODS}."
    raise ValueError(msg)


def measure_one(method: str, path: str, covariate: str, block_cells: int | None) -> dict:
    """Load ``path``, run ``method`` once, return seconds and peak extra memory.

    The method first runs on a small simulated dataset, so that the imports it does on
    first use count neither in its time nor in its memory.
    """
    import anndata as ad

    import normalisr_sc as nsc

    if block_cells is not None:
        nsc.settings.block_cells = block_cells
    nsc.settings.progress = False
    warm_up = nsc.datasets.simulate(n_cells=500, n_genes=100, seed=1)
    _run(method, warm_up, "batch", _Steps(rss_kib()))
    adata = ad.read_h5ad(path)
    n_cells, n_genes = adata.shape
    if method == "normalisr":
        reads, one_hot = _reference_input(adata, covariate)
        del adata
    del warm_up
    gc.collect()
    exact_peak = reset_peak()
    baseline = rss_kib()
    steps = _Steps(baseline)
    start = time.perf_counter()
    if method == "normalisr":  # its genes x cells input was prepared before the baseline
        shape = _run_reference(reads, one_hot, steps)
    else:
        shape = _run(method, adata, covariate, steps)
    seconds = time.perf_counter() - start
    peak = peak_kib()
    return {
        "method": method, "n_cells": n_cells, "n_genes": n_genes, "out_shape": list(shape),
        "seconds": seconds, "peak_extra_mb": (peak - baseline) * 1024 / MB,
        "exact_peak": exact_peak, "steps": steps.record,
    }


# ---------------------------------------------------------------- driver (parent)


def run_child(method: str, path: Path, covariate: str, block_cells: int | None,
              threads: int | None) -> dict:
    command = [sys.executable, __file__, "--one", method, str(path), covariate]
    if block_cells is not None:
        command += ["--block-cells", str(block_cells)]
    env = dict(os.environ)
    if threads is not None:
        env |= {name: str(threads) for name in THREAD_VARIABLES}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        msg = f"{method} on {path.name} failed:\n{done.stderr[-4000:]}"
        raise RuntimeError(msg)
    line = next(row for row in done.stdout.splitlines() if row.startswith(RESULT_TAG))
    return json.loads(line.removeprefix(RESULT_TAG))


def _best(runs: list[dict]) -> dict:
    """Fastest time and largest memory over repeats (the machine only adds noise to time)."""
    best = dict(min(runs, key=lambda run: run["seconds"]))
    best["peak_extra_mb"] = max(run["peak_extra_mb"] for run in runs)
    return best


def _dense_multiple(run: dict) -> float:
    """Peak extra memory in units of one dense float64 cells x genes matrix."""
    return run["peak_extra_mb"] / (run["n_cells"] * run["n_genes"] * 8 / MB)


def _yes(condition: bool) -> str:
    return "yes" if condition else "NO"


def print_tables(results: dict[str, dict[str, dict]]) -> None:
    header = (f"{'dataset':<22} {'method':<10} {'cells x genes':>13} {'cells out':>9} "
              f"{'seconds':>9} {'peak MB':>9} {'mem/dense':>9} {'time/ours':>9}")
    print("\n" + header + "\n" + "-" * len(header))
    for dataset, by_method in results.items():
        ours = by_method.get("ours")
        for method, run in by_method.items():
            ratio = f"{run['seconds'] / ours['seconds']:9.2f}" if ours else f"{'-':>9}"
            size = f"{run['n_cells']}x{run['n_genes']}"
            print(f"{dataset:<22} {method:<10} {size:>13} {run['out_shape'][0]:>9} "
                  f"{run['seconds']:9.2f} {run['peak_extra_mb']:9.0f} "
                  f"{_dense_multiple(run):9.2f} {ratio}")
    print("\nmem/dense: peak extra memory / one dense float64 cells x genes matrix "
          "(input cells x genes); time/ours: seconds / seconds of 'ours' in this run.")
    for dataset, by_method in results.items():
        ours, reference = by_method.get("ours"), by_method.get("normalisr")
        if ours is None or reference is None:
            continue
        speedup = reference["seconds"] / ours["seconds"]
        memory = _dense_multiple(ours)
        print(f"targets {dataset}: {speedup:.2f}x faster than normalisr (>= 3: "
              f"{_yes(speedup >= 3)}); memory {memory:.2f} dense matrices (<= 3: "
              f"{_yes(memory <= 3)}; below normalisr's {_dense_multiple(reference):.2f}: "
              f"{_yes(ours['peak_extra_mb'] < reference['peak_extra_mb'])})")
    for dataset, by_method in results.items():
        for method in ("ours", "normalisr"):
            if method not in by_method:
                continue
            steps = by_method[method]["steps"]
            cells = "  ".join(f"{name} {step['seconds']:.2f}s/{step['peak_mb']:.0f}MB"
                              for name, step in steps.items())
            print(f"steps {dataset} {method}: {cells}")
    print("(steps: seconds of the step / peak extra MB reached by its end)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (2,000 x 500 generated, 3,000 random Papalexi cells)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measurements per method and dataset; the fastest is reported")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--datasets", nargs="+", default=["generated", "papalexi"],
                        choices=["generated", "papalexi"])
    parser.add_argument("--block-cells", type=int, default=None,
                        help="nsc.settings.block_cells for ours (default: the package default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads of every method (default: the libraries' default)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the generated data and of the --quick Papalexi subset")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "H5AD", "COVARIATE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, path, covariate = args.one
        result = measure_one(method, path, covariate, args.block_cells)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    datasets = {}
    if "generated" in args.datasets:
        n_cells, n_genes = (2000, 500) if args.quick else (20000, 5000)
        path = generated_dataset(n_cells, n_genes, args.seed)
        datasets[f"generated {n_cells}x{n_genes}"] = (path, "batch")
    if "papalexi" in args.datasets:
        path = papalexi_dataset(3000 if args.quick else None, args.seed)
        if path is not None:
            datasets["papalexi_lowmoi"] = (path, "bio_rep")
    import normalisr_sc as nsc

    print(f"python {platform.python_version()}, {os.cpu_count()} cpus; normalisr_sc "
          f"{version('normalisr-sc')}, normalisr {version('normalisr')}, scanpy "
          f"{version('scanpy')}, anndata {version('anndata')}, numpy {version('numpy')}; "
          f"block_cells {args.block_cells or nsc.settings.block_cells}; BLAS threads "
          f"{args.threads or 'default'}", flush=True)
    runs: dict[str, dict[str, list[dict]]] = {name: {m: [] for m in args.methods}
                                              for name in datasets}
    for repeat in range(args.repeat):
        for name, (path, covariate) in datasets.items():
            for method in args.methods:
                run = run_child(method, path, covariate, args.block_cells, args.threads)
                runs[name][method].append(run)
                print(f"[{repeat + 1}/{args.repeat}] {name} {method}: {run['seconds']:.2f}s, "
                      f"peak extra {run['peak_extra_mb']:.0f} MB", flush=True)
                if not run["exact_peak"]:
                    print("  (peak RSS could not be reset: includes loading the input)")
    print_tables({name: {m: _best(r) for m, r in by_method.items()}
                  for name, by_method in runs.items()})


if __name__ == "__main__":
    main()
