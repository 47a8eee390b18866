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
- ``scanpy``: ``sc.pp.normalize_total`` + ``sc.pp.log1p``, the usual cheap baseline;
- ``floor``: what any recipe writing our two dense float64 output layers (log CPM and
  normalised expression) pays at least: allocating them and writing every entry once
  (the first touch of fresh memory, page faults included), nothing computed.

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
import tempfile
import time
from functools import partial
from pathlib import Path

import _harness as h
from _harness import MB, peak_kib, reset_peak, rss_kib

PAPALEXI = h.SHARED_DATA / "papalexi_lowmoi.h5ad"
CACHE = Path(tempfile.gettempdir()) / "normalisr_sc_bench"
METHODS = ("ours", "normalisr", "scanpy", "floor")
#: Steps of ``nsc.pp.normalize`` timed separately (names in ``normalisr_sc.pp._recipe``).
OUR_STEPS = ("lcpm", "normcov", "compute_var", "qc_outlier", "normvar")
#: Private names under which the recipe calls some steps (tried first).
_RECIPE_NAMES = {"qc_reads": "_qc_reads", "lcpm": "_lcpm"}
#: Pieces inside the steps, timed in total over the run: (label, module, function name).
OUR_PIECES = (
    ("count summary (in lcpm)", "normalisr_sc.pp._lcpm", "_summarise_counts"),
    ("store fingerprints (all steps)", "normalisr_sc._store", "_fingerprint_in"),
)


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
        self.pieces: dict[str, float] = {}
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

    def wrap_piece(self, label: str, function):
        """``function`` adding its seconds to the piece ``label`` (not a step: no mark)."""

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.pieces[label] = self.pieces.get(label, 0.0) + time.perf_counter() - start

        return timed


def _run_ours(adata, covariate: str, steps: _Steps) -> tuple[int, int]:
    import normalisr_sc as nsc
    from normalisr_sc.pp import _recipe

    # per-step times wrap the recipe's steps where it still calls them by these names
    originals = {}
    for step in OUR_STEPS:
        for name in (_RECIPE_NAMES.get(step), step):
            if name is not None and hasattr(_recipe, name):
                originals[name] = (step, getattr(_recipe, name))
                break
    import importlib

    for name, (step, function) in originals.items():
        setattr(_recipe, name, steps.wrap(step, function))
    # pieces inside the steps, looked up at call time as globals of their modules
    pieces = []
    for label, module_name, name in OUR_PIECES:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            pieces.append((module, name, getattr(module, name)))
            setattr(module, name, steps.wrap_piece(label, getattr(module, name)))
    try:
        nsc.pp.normalize(adata, covariates=[covariate], qc=None, remove_outliers=True)
    finally:
        for name, (_, function) in originals.items():
            setattr(_recipe, name, function)
        for module, name, function in pieces:
            setattr(module, name, function)
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


def _run_floor(adata, steps: _Steps) -> tuple[int, int]:
    """Allocate the two dense float64 layers of the recipe and write every entry once."""
    import numpy as np

    layers = []
    for name in ("lcpm", "normalisr"):
        layer = np.empty(adata.shape)
        layer.fill(1.0)
        layers.append(layer)
        steps.mark(name)
    return layers[-1].shape


def _run(method: str, adata, covariate: str, steps: _Steps) -> tuple[int, int]:
    if method == "floor":
        return _run_floor(adata, steps)
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
        "method": method,
        "n_cells": n_cells,
        "n_genes": n_genes,
        "out_shape": list(shape),
        "seconds": seconds,
        "peak_extra_mb": (peak - baseline) * 1024 / MB,
        "exact_peak": exact_peak,
        "steps": steps.record,
        "pieces": steps.pieces,
    }


# ---------------------------------------------------------------- driver (parent)


def _dense_multiple(megabytes: float, n_cells: int, n_genes: int) -> float:
    """Megabytes in units of one dense float64 cells x genes matrix."""
    return megabytes / (n_cells * n_genes * 8 / MB)


def print_tables(results: dict[str, dict[str, list[h.Run]]], methods: list[str]) -> None:
    """Time and memory tables (medians), the targets, and per-step medians."""
    rows, memory_rows = [], []
    for dataset, runs in results.items():
        done = next((run for by in runs.values() for run in by if run.ok), None)
        shape = (done.data["n_cells"], done.data["n_genes"]) if done else None
        extra = {}
        if done:
            extra["cells x genes"] = f"{shape[0]}x{shape[1]}"
            extra["cells out"] = str(done.data["out_shape"][0])
        rows.append(h.Row(dataset, runs, extra))
        memory = {}
        for method, by in runs.items():
            if by and all(run.ok for run in by):
                mb = h.median(by, "peak_extra_mb")
                memory[method] = f"{mb:.0f} MB ({_dense_multiple(mb, *shape):.2f})"
        memory_rows.append(h.Row(dataset, runs, memory))
    h.print_table(
        rows,
        methods,
        reference="ours" if "ours" in methods else None,
        extra=("cells x genes", "cells out"),
        title="seconds (median of alternating runs, each in a fresh process)",
    )
    h.print_table(
        memory_rows,
        [],
        reference=None,
        extra=methods,
        title="peak extra memory (median MB; in brackets: dense float64 cells x genes matrices)",
    )
    print("peak extra memory: peak RSS during the method minus the RSS after loading its input")
    for dataset, runs in results.items():
        ours, reference = runs.get("ours"), runs.get("normalisr")
        if not ours or not reference or not all(run.ok for run in ours + reference):
            continue
        speedup = h.ratio(reference, ours)
        shape = (ours[0].data["n_cells"], ours[0].data["n_genes"])
        memory = _dense_multiple(h.median(ours, "peak_extra_mb"), *shape)
        theirs = _dense_multiple(h.median(reference, "peak_extra_mb"), *shape)
        print(
            f"targets {dataset} {h.load_note(ours + reference)}: {speedup:.2f}x faster than "
            f"normalisr (>= 3: "
            f"{h.yes(speedup >= 3)}); memory {memory:.2f} dense matrices (<= 3: "
            f"{h.yes(memory <= 3)}; below normalisr's {theirs:.2f}: {h.yes(memory < theirs)})"
        )
    for dataset, runs in results.items():
        ours, scanpy, floor = runs.get("ours"), runs.get("scanpy"), runs.get("floor")
        if not ours or not all(run.ok for run in ours):
            continue
        shape = (ours[0].data["n_cells"], ours[0].data["n_genes"])
        memory = _dense_multiple(h.median(ours, "peak_extra_mb"), *shape)
        parts = [f"memory {memory:.2f} dense matrices (<= 2.5: {h.yes(memory <= 2.5)})"]
        if scanpy and all(run.ok for run in scanpy):
            slower = h.ratio(ours, scanpy)
            parts.append(f"{slower:.2f}x scanpy's time (<= 5: {h.yes(slower <= 5)})")
        if floor and all(run.ok for run in floor):
            parts.append(f"{h.ratio(ours, floor):.2f}x the floor of writing two dense layers")
        print(f"issue 14 {dataset} {h.load_note(ours)}: " + "; ".join(parts))
    for dataset, runs in results.items():
        for method in ("ours", "normalisr", "floor"):
            done = [run for run in runs.get(method, []) if run.ok]
            if not done:
                continue
            names = done[0].data["steps"]
            cells = "  ".join(
                f"{name} {h.median([h.Run(r.data['steps'][name]['seconds'], r.load) for r in done]):.2f}s"
                f"/{max(r.data['steps'][name]['peak_mb'] for r in done):.0f}MB"
                for name in names
            )
            print(f"steps {dataset} {method} {h.load_note(done)}: {cells}")
    print("(steps: median seconds of the step / largest peak extra MB reached by its end)")
    for dataset, runs in results.items():
        done = [run for run in runs.get("ours", []) if run.ok and run.data.get("pieces")]
        if not done:
            continue
        labels = done[0].data["pieces"]
        cells = "  ".join(
            f"{label} {h.median([h.Run(r.data['pieces'].get(label, 0.0), r.load) for r in done]):.2f}s"
            for label in labels
        )
        print(f"pieces {dataset} ours {h.load_note(done)}: {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_arguments(parser, cap=1800.0, quick_repeat=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        choices=["generated", "papalexi"],
        help="default both (--quick: generated only)",
    )
    parser.add_argument(
        "--block-cells",
        type=int,
        default=None,
        help="nsc.settings.block_cells for ours (default: the package default)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the generated data and of the --quick Papalexi subset",
    )
    args = parser.parse_args()
    h.set_threads(args.threads)
    repeat = h.repeats(args)
    names = args.datasets or (["generated"] if args.quick else ["generated", "papalexi"])

    datasets = {}
    if "generated" in names:
        n_cells, n_genes = (2000, 500) if args.quick else (20000, 5000)
        path = generated_dataset(n_cells, n_genes, args.seed)
        datasets[f"generated {n_cells}x{n_genes}"] = (path, "batch")
    if "papalexi" in names:
        path = papalexi_dataset(3000 if args.quick else None, args.seed)
        if path is not None:
            datasets["papalexi_lowmoi"] = (path, "bio_rep")
    # imported before the measuring processes fork, so that no child pays for the imports
    import anndata  # noqa: F401
    import normalisr.normalisr  # noqa: F401
    import scanpy  # noqa: F401

    import normalisr_sc as nsc

    h.print_header(
        ["normalisr-sc", "normalisr", "scanpy", "anndata", "numpy"],
        repeat=repeat,
        block_cells=args.block_cells or nsc.settings.block_cells,
        BLAS_threads=args.threads or "default",
    )
    results = {}
    for name, (path, covariate) in datasets.items():
        results[name] = h.alternate(
            {
                method: partial(
                    h.in_child,
                    measure_one,
                    method,
                    str(path),
                    covariate,
                    args.block_cells,
                    cap=args.cap,
                )
                for method in args.methods
            },
            repeat,
            progress=name,
        )
    print_tables(results, args.methods)


if __name__ == "__main__":
    main()
