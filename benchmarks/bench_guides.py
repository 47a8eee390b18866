"""Guide assignment by mixture model (issue 13, section 1): time, memory and accuracy.

Compares, on the same generated guide counts with known carriers
(``simulate_guide_counts`` of ``normalisr_sc._core._guide_mixture``: each cell carries
0-2 guides with log-normal counts, plus a few background UMIs on a few guides):

- ``ours``: ``assign_mixture`` (negative-binomial background / rounded log-normal
  present mixture per guide, EM vectorised over guides; what
  ``nsc.tl.assign_guides(mode='mixture')`` runs);
- ``threshold``: the fixed UMI rule ``counts >= 5`` (``assign_guides``' default); its
  accuracy also at the best threshold in hindsight (1..20, chosen on the truth);
- ``pertpy``: ``pt.pp.GuideAssignment().assign_mixture_model`` (Poisson-Gaussian
  mixture on log2 nonzero counts, one NUTS run per guide), run in a child process of
  the separate virtual environment ``--pertpy-venv`` (default ``/work/venv-pertpy``;
  ``python -m venv /work/venv-pertpy && /work/venv-pertpy/bin/pip install pertpy``) on
  the first ``--pertpy-guides`` guides of a smaller dataset, all its cells; ours is run
  on the same submatrix. Skipped with the reason if the environment or pertpy is absent.

Scenarios: ``scale`` (default 200,000 cells x 13,000 guides; ``--quick``: 20,000 x
1,300), ``low background`` (weakly captured guides, median 10 UMIs; where a fixed
threshold cannot be right), ``pertpy`` (default 20,000 cells, 5 guides; not in
``--quick`` unless ``--with-pertpy``) and Papalexi
(``../shared/data/papalexi_lowmoi.h5ad``: agreement with the max-count assignment).

Every measurement runs in a fresh forked process (peak memory its own: peak RSS during
the call minus RSS before it); methods alternate, ``--repeat`` times (default 3), and
the tables give medians with the machine's load average around the runs.

Accuracy: ``precision`` and ``recall`` of the assigned (cell, guide) pairs against the
carried ones, ``exact``: fraction of cells assigned exactly the guides they carry.

Usage: ``python benchmarks/bench_guides.py [--quick] [--repeat 3] [--cap 1800]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from scipy import sparse

import _harness as h
from _harness import MB, peak_kib, reset_peak, rss_kib
from normalisr_sc._core._guide_mixture import assign_mixture, simulate_guide_counts

PAPALEXI = h.SHARED_DATA / "papalexi_lowmoi.h5ad"
CACHE = Path(tempfile.gettempdir()) / "normalisr_sc_bench"
UMI_THRESHOLD = 5
HINDSIGHT = range(1, 21)

#: run by the pertpy environment's python: argv = counts .npz, result .json
PERTPY_CHILD = r"""
import json, re, sys, time, warnings
import numpy as np, anndata as ad
from scipy import sparse
warnings.simplefilter("ignore")
import pertpy as pt

def rss(field):
    with open("/proc/self/status") as status:
        return int(re.search(field + r":\s+(\d+)", status.read()).group(1))

counts = sparse.load_npz(sys.argv[1]).astype(np.float32).tocsr()
adata = ad.AnnData(counts)
adata.var_names = [f"g{j}" for j in range(counts.shape[1])]
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")
base = rss("VmRSS")
start = time.perf_counter()
labels = pt.pp.GuideAssignment().assign_mixture_model(
    adata, max_assignments_per_cell=counts.shape[1], only_return_results=True)
seconds = time.perf_counter() - start
rows, cols = [], []
for i, label in enumerate(labels):
    if label != "negative":
        for name in str(label).split("+"):
            rows.append(i)
            cols.append(int(name[1:]))
json.dump({"seconds": seconds, "peak_mb": (rss("VmHWM") - base) / 1024,
           "rows": rows, "cols": cols, "version": pt.__version__}, open(sys.argv[2], "w"))
"""


def accuracy(assigned: sparse.spmatrix, truth: sparse.csr_matrix) -> dict[str, float]:
    """Precision, recall of (cell, guide) pairs and the fraction of exactly right cells."""
    assigned = sparse.csr_matrix(assigned, dtype=bool)
    hits = assigned.multiply(truth).nnz
    wrong = np.asarray((assigned != truth).sum(axis=1)).ravel()
    return {
        "precision": hits / max(assigned.nnz, 1),
        "recall": hits / max(truth.nnz, 1),
        "exact": float(np.mean(wrong == 0)),
    }


def dataset(
    n_cells: int, n_guides: int, seed: int, **kwargs
) -> tuple[Path, sparse.csr_matrix, sparse.csr_matrix]:
    """Generated counts and truth, cached as .npz (the pertpy child reads the file)."""
    tag = "_".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    path = CACHE / f"guides_{n_cells}x{n_guides}_seed{seed}{'_' + tag if tag else ''}.npz"
    truth_path = path.with_suffix(".truth.npz")
    if not (path.exists() and truth_path.exists()):
        CACHE.mkdir(parents=True, exist_ok=True)
        counts, truth = simulate_guide_counts(n_cells, n_guides, seed=seed, **kwargs)
        sparse.save_npz(path, counts)
        sparse.save_npz(truth_path, truth)
    return path, sparse.load_npz(path).tocsr(), sparse.load_npz(truth_path).tocsr()


# ---------------------------------------------------------------- measured calls (children)


def _ours(counts: sparse.csr_matrix, truth: sparse.csr_matrix | None) -> dict:
    reset_peak()
    base = rss_kib()
    start = time.perf_counter()
    result = assign_mixture(counts)
    seconds = time.perf_counter() - start
    out = {
        "seconds": seconds,
        "peak_mb": (peak_kib() - base) * 1024 / MB,
        "not_fitted": int((result.params["status"] != "fitted").sum()),
        "not_converged": int((~result.params["converged"]).sum()),
    }
    if truth is not None:
        out.update(accuracy(result.assigned, truth))
    return out


def _threshold(counts: sparse.csr_matrix, truth: sparse.csr_matrix | None) -> dict:
    reset_peak()
    base = rss_kib()
    start = time.perf_counter()
    assigned = sparse.csr_matrix(counts >= UMI_THRESHOLD)
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "peak_mb": (peak_kib() - base) * 1024 / MB}
    if truth is not None:
        out.update(accuracy(assigned, truth))
    return out


def _pertpy(python: Path, path: Path, truth: sparse.csr_matrix, cap: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        result_path = Path(folder) / "result.json"
        done = subprocess.run(
            [str(python), "-c", PERTPY_CHILD, str(path), str(result_path)],
            capture_output=True,
            text=True,
            timeout=cap,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"pertpy child failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
        result = json.loads(result_path.read_text())
    assigned = sparse.csr_matrix(
        (np.ones(len(result["rows"]), dtype=bool), (result["rows"], result["cols"])),
        shape=truth.shape,
    )
    return {
        "seconds": result["seconds"],
        "peak_mb": result["peak_mb"],
        "version": result["version"],
        **accuracy(assigned, truth),
    }


# ---------------------------------------------------------------- scenarios


def _median_of(runs: list[h.Run], key: str) -> float:
    values = [run.data[key] for run in runs if run.ok and key in run.data]
    return float(np.median(values)) if values else float("nan")


def _hindsight(counts: sparse.csr_matrix, truth: sparse.csr_matrix) -> tuple[int, dict]:
    scores = {t: accuracy(counts >= t, truth) for t in HINDSIGHT}
    best = max(scores, key=lambda t: scores[t]["exact"])
    return best, scores[best]


def generated_row(label: str, counts, truth, repeat: int, cap: float, accuracy_rows: list) -> h.Row:
    runs = h.alternate(
        {
            "ours": partial(h.in_child, _ours, counts, truth, cap=cap),
            "threshold": partial(h.in_child, _threshold, counts, truth, cap=cap),
        },
        repeat,
        progress=label,
    )
    best, scores = _hindsight(counts, truth)
    for method in ("ours", "threshold"):
        accuracy_rows.append(
            (
                label,
                "ours (mixture)" if method == "ours" else f"threshold {UMI_THRESHOLD}",
                *(_median_of(runs[method], k) for k in ("precision", "recall", "exact")),
            )
        )
    accuracy_rows.append(
        (
            label,
            f"threshold {best} (best in hindsight)",
            scores["precision"],
            scores["recall"],
            scores["exact"],
        )
    )
    return h.Row(
        label,
        runs,
        {
            "peak MB ours": f"{_median_of(runs['ours'], 'peak_mb'):.0f}",
            "not fitted": str(runs["ours"][0].data.get("not_fitted", "")) if runs["ours"] else "",
            "not conv.": (
                str(runs["ours"][0].data.get("not_converged", "")) if runs["ours"] else ""
            ),
        },
    )


def pertpy_row(args, repeat: int, accuracy_rows: list) -> h.Row | None:
    python = Path(args.pertpy_venv) / "bin" / "python"
    if args.quick and not args.with_pertpy:
        print(
            "pertpy: skipped in --quick (each guide is one NUTS run of about a minute); "
            "add --with-pertpy to include it"
        )
        return None
    if not python.exists():
        print(
            f"pertpy: skipped, no environment at {args.pertpy_venv} (create it with "
            f"python -m venv {args.pertpy_venv} && {args.pertpy_venv}/bin/pip install pertpy)"
        )
        return None
    n_cells = 2_000 if args.quick else args.pertpy_cells
    n_guides = 2 if args.quick else args.pertpy_guides
    _, full, full_truth = dataset(n_cells, 300, args.seed)
    counts, truth = full[:, :n_guides].tocsr(), full_truth[:, :n_guides].tocsr()
    path = CACHE / f"guides_pertpy_{n_cells}x{n_guides}_seed{args.seed}.npz"
    sparse.save_npz(path, counts)
    label = f"pertpy set {n_cells // 1000}k x {n_guides}"
    runs = h.alternate(
        {
            "ours": partial(h.in_child, _ours, counts, truth, cap=args.cap),
            "pertpy": partial(h.in_child, _pertpy, python, path, truth, args.cap, cap=args.cap),
        },
        repeat,
        progress=label,
    )
    for method, name in (("ours", "ours (mixture)"), ("pertpy", "pertpy mixture")):
        accuracy_rows.append(
            (label, name, *(_median_of(runs[method], k) for k in ("precision", "recall", "exact")))
        )
    best, scores = _hindsight(counts, truth)
    accuracy_rows.append(
        (
            label,
            f"threshold {best} (best in hindsight)",
            scores["precision"],
            scores["recall"],
            scores["exact"],
        )
    )
    extra = {"peak MB ours": f"{_median_of(runs['ours'], 'peak_mb'):.0f}"}
    good = [run for run in runs["pertpy"] if run.ok]
    if good:
        extra["pertpy s/guide"] = f"{np.median([r.seconds for r in good]) / n_guides:.1f}"
        extra["pertpy"] = str(good[0].data.get("version", ""))
        extra["peak MB pertpy"] = f"{_median_of(good, 'peak_mb'):.0f}"
    return h.Row(label, runs, extra)


def papalexi_lines(repeat: int, cap: float) -> None:
    if not PAPALEXI.exists():
        print(f"Papalexi: skipped, {PAPALEXI} is absent")
        return
    import anndata as ad

    counts = sparse.csr_matrix(ad.read_h5ad(PAPALEXI).obsm["grna_counts"])
    top = np.asarray(counts.argmax(axis=1)).ravel()
    runs = h.alternate(
        {"ours": partial(h.in_child, _ours, counts, None, cap=cap)}, repeat, progress="Papalexi"
    )
    for name, assigned in (
        ("ours (mixture)", assign_mixture(counts).assigned),
        (f"threshold {UMI_THRESHOLD}", sparse.csr_matrix(counts >= UMI_THRESHOLD)),
    ):
        per_cell = np.diff(assigned.indptr)
        single = np.flatnonzero(per_cell == 1)
        agree = np.mean(assigned.indices[assigned.indptr[single]] == top[single])
        print(
            f"Papalexi {counts.shape[0]} cells x {counts.shape[1]} guides, {name}: "
            f"{single.size} cells with one guide ({single.size / counts.shape[0]:.1%}), "
            f"{agree:.2%} of them their max-count guide; {np.sum(per_cell >= 2)} cells "
            f"with 2+, {np.sum(per_cell == 0)} with none"
        )
    h.print_table(
        [h.Row("Papalexi", runs)], ["ours"], reference="ours", title="Papalexi: time of ours"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_arguments(parser, cap=1800.0, quick_repeat=2)
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--guides", type=int, default=13_000)
    parser.add_argument("--pertpy-venv", default="/work/venv-pertpy")
    parser.add_argument("--pertpy-cells", type=int, default=20_000)
    parser.add_argument("--pertpy-guides", type=int, default=5)
    parser.add_argument(
        "--with-pertpy",
        action="store_true",
        help="run pertpy in --quick too (2,000 cells x 2 guides)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["scale", "low_background", "pertpy", "papalexi"]
    )
    args = parser.parse_args()
    h.set_threads(args.threads)
    repeat = h.repeats(args)
    h.print_header(
        ["normalisr-sc", "numpy", "scipy"], repeat=repeat, BLAS_threads=args.threads or "default"
    )
    rows, accuracy_rows = [], []
    if "scale" not in args.skip:
        n_cells, n_guides = (20_000, 1_300) if args.quick else (args.cells, args.guides)
        _, counts, truth = dataset(n_cells, n_guides, args.seed)
        print(
            f"scale: {n_cells} cells x {n_guides} guides, {counts.nnz} nonzero counts, "
            f"{truth.nnz} carried guides",
            flush=True,
        )
        rows.append(
            generated_row(
                f"scale {n_cells // 1000}k x {n_guides}",
                counts,
                truth,
                repeat,
                args.cap,
                accuracy_rows,
            )
        )
    if "low_background" not in args.skip:
        n_cells = 5_000 if args.quick else 20_000
        _, counts, truth = dataset(n_cells, 300, args.seed, present_median=10)
        rows.append(
            generated_row(
                f"low bg, median 10 UMIs, {n_cells // 1000}k x 300",
                counts,
                truth,
                repeat,
                args.cap,
                accuracy_rows,
            )
        )
    if "pertpy" not in args.skip:
        row = pertpy_row(args, repeat, accuracy_rows)
        if row is not None:
            rows.append(row)
    if rows:
        methods = [
            m for m in ("ours", "threshold", "pertpy") if any(row.runs.get(m) for row in rows)
        ]
        h.print_table(
            rows,
            methods,
            reference="ours",
            cap=args.cap,
            extra=[
                "peak MB ours",
                "not fitted",
                "not conv.",
                "pertpy s/guide",
                "peak MB pertpy",
                "pertpy",
            ],
            title="time (median seconds)",
        )
        print("\naccuracy against the generated truth (medians over the runs)")
        width = max(len(r[0]) for r in accuracy_rows)
        name_width = max(len(r[1]) for r in accuracy_rows)
        print(
            f"{'accuracy of':<{width}} {'method':<{name_width}} {'precision':>9} {'recall':>7} "
            f"{'exact':>7}"
        )
        for label, name, precision, recall, exact in accuracy_rows:
            print(
                f"{label:<{width}} {name:<{name_width}} {precision:>9.4f} {recall:>7.4f} "
                f"{exact:>7.4f}"
            )
    if "papalexi" not in args.skip:
        papalexi_lines(repeat, args.cap)


if __name__ == "__main__":
    main()
