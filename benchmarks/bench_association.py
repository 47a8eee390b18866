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
  one bare float64 product ``X @ X.T`` of the same shape, the physical floor.

Reference timings (normalisr and scanpy) are abandoned after ``--cap`` seconds; the
table then shows ``>cap`` and the ratio as a lower bound. Times are wall-clock seconds of
one call; ratios are reference time / our time (above 1: we are faster).

Usage: ``python benchmarks/bench_association.py [--cells 20000] [--genes 5000] [--cap 600]``
"""

from __future__ import annotations

import argparse
import signal
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

import normalisr_sc as nsc

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class _Capped(Exception):
    pass


@contextmanager
def _alarm(seconds: float):
    def stop(signum, frame):
        raise _Capped

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed(function, *args, cap: float | None = None, **kwargs) -> float:
    """Wall-clock seconds of one call; ``inf`` if it was stopped after ``cap`` seconds."""
    start = time.perf_counter()
    if cap is None:
        function(*args, **kwargs)
    else:
        try:
            with _alarm(cap):
                function(*args, **kwargs)
        except _Capped:
            return float("inf")
    return time.perf_counter() - start


def generated(n_cells: int, n_genes: int, n_cov: int = 4, *, seed: int = 0) -> ad.AnnData:
    """Normalised-looking expression and covariates in the layout ``nsc.pp`` leaves."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 2.0, n_cells)
    covariates = np.column_stack([rng.normal(size=(n_cells, n_cov - 1)) * weights[:, None],
                                  weights])
    names = [f"cov{i}" for i in range(n_cov - 1)] + ["intercept"]
    obs_names = [f"c{i}" for i in range(n_cells)]
    adata = ad.AnnData(obs=pd.DataFrame(index=obs_names),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    expression = rng.standard_normal((n_cells, n_genes))
    expression += covariates @ rng.normal(size=(n_cov, n_genes))
    adata.layers["normalisr"] = expression
    adata.obsm["nsc_covariates_norm"] = pd.DataFrame(covariates, index=obs_names, columns=names)
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
    return (np.ascontiguousarray(adata.layers["normalisr"].T),
            np.ascontiguousarray(adata.obsm["nsc_covariates_norm"].to_numpy().T))


def scanpy_de(adata: ad.AnnData, groupby: str, method: str, reference: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(adata, groupby, layer="normalisr", method=method,
                                reference=reference, use_raw=False, pts=False)


def de_rows(name: str, adata: ad.AnnData, labels: np.ndarray, reference: str,
            cap: float) -> list[dict]:
    """Case-control and low-MOI DE of one labelled dataset: ours, normalisr, scanpy."""
    import normalisr.normalisr as nr

    adata.obs["label"] = pd.Categorical(labels)
    groups = [g for g in adata.obs["label"].cat.categories if g != reference]
    indicators = np.vstack([labels == g for g in groups]).astype(np.float64)
    expression, covariates = reference_inputs(adata)
    rows = []
    for design, single, scanpy_reference in (("case_control", 0, "rest"),
                                             ("low_moi", 1, reference)):
        ours = timed(nsc.tl.de, adata, "label", design=design, reference=reference)
        theirs = timed(nr.de, indicators, expression, covariates, single=single, cap=cap)
        row = {"scenario": f"{name} {design}", "ours": ours, "normalisr": theirs}
        for method in ("t-test", "wilcoxon"):
            row[f"scanpy {method}"] = timed(scanpy_de, adata, "label", method,
                                            scanpy_reference, cap=cap)
        rows.append(row)
    return rows


def papalexi_rows(cap: float) -> list[dict]:
    adata = ad.read_h5ad(DATA / "papalexi_lowmoi.h5ad")
    nsc.pp.normalize(adata, covariates=["bio_rep"], qc=None)
    counts = adata.obsm["grna_counts"]
    names = np.asarray(adata.uns["grna_ids"])
    target = dict(zip(adata.uns["grna_group"]["grna_id"], adata.uns["grna_group"]["grna_group"],
                      strict=True))
    labels = np.array([target[g] for g in names[np.asarray(counts.argmax(axis=1)).ravel()]])
    keep = pd.Series(labels).value_counts()
    labels = np.where(np.isin(labels, keep.index[keep >= 2]), labels, "non-targeting")
    print(f"Papalexi: {adata.n_obs} cells x {adata.n_vars} genes, "
          f"{len(set(labels)) - 1} groups + non-targeting")
    return de_rows("Papalexi", adata, labels, "non-targeting", cap)


def generated_de_rows(n_cells: int, n_genes: int, n_groups: int, cap: float) -> list[dict]:
    adata = generated(n_cells, n_genes)
    rng = np.random.default_rng(2)
    labels = np.array([f"grp{i:02d}" for i in rng.integers(0, n_groups + 1, n_cells)], dtype=object)
    labels[labels == f"grp{n_groups:02d}"] = "reference"
    print(f"generated DE: {n_cells} cells x {n_genes} genes x {n_groups} groups")
    return de_rows(f"{n_cells // 1000}k x {n_genes} x {n_groups}", adata, labels,
                   "reference", cap)


def high_moi_rows(n_cells: int, n_genes: int, group_counts: list[int], ours_only: list[int],
                  cap: float) -> list[dict]:
    import normalisr.normalisr as nr

    adata = generated(n_cells, n_genes)
    expression, covariates = reference_inputs(adata)
    rows = []
    for n_groups in group_counts + ours_only:
        adata.obsm["guides"] = guides(n_cells, n_groups, 10)
        row = {"scenario": f"high MOI {n_cells // 1000}k x {n_genes} x {n_groups} groups",
               "ours": timed(nsc.tl.de, adata, "guides", design="high_moi")}
        if n_groups in group_counts:
            dense = adata.obsm["guides"].T.toarray()
            row["normalisr"] = timed(nr.de, dense, expression, covariates, single=4, cap=cap)
        rows.append(row)
    return rows


def coex_rows(n_cells: int, n_genes: int, cap: float) -> list[dict]:
    import normalisr.normalisr as nr

    adata = generated(n_cells, n_genes)
    expression, covariates = reference_inputs(adata)
    floor = timed(np.matmul, expression, expression.T)
    ours = timed(nsc.tl.coex, adata)
    theirs = timed(nr.coex, expression, covariates, cap=cap)
    return [{"scenario": f"coex {n_cells // 1000}k x {n_genes}", "ours": ours,
             "normalisr": theirs, "X @ X.T (floor)": floor}]


def warm_up() -> None:
    """One small call of each of ours, so first-call costs (BLAS threads) are not timed."""
    adata = generated(300, 20)
    adata.obsm["guides"] = guides(300, 6, 1)
    for design in ("case_control", "low_moi", "high_moi"):
        nsc.tl.de(adata, "guides", design=design, reference="0")
    nsc.tl.coex(adata)


def report(rows: list[dict], cap: float) -> None:
    peers = ["normalisr", "scanpy t-test", "scanpy wilcoxon", "X @ X.T (floor)"]
    width = max(len(r["scenario"]) for r in rows)
    header = f"{'scenario':<{width}} {'ours':>8} " + " ".join(f"{p:>22}" for p in peers)
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for peer in peers:
            if peer not in row:
                cells.append(f"{'':>22}")
                continue
            seconds, ours = row[peer], row["ours"]
            text = (f">{cap:.0f}s (>{cap / ours:.0f}x)" if np.isinf(seconds)
                    else f"{seconds:.2f}s ({seconds / ours:.2f}x)")
            cells.append(f"{text:>22}")
        print(f"{row['scenario']:<{width}} {row['ours']:>7.2f}s " + " ".join(cells))
    print(f"\nratios: peer time / our time (>1: ours faster); '>{cap:.0f}s' = reference "
          f"stopped at the time cap of {cap:.0f}s, its ratio a lower bound. The floor is one "
          "bare float64 X @ X.T of the same shape (genes x cells).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=5_000)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--moi-genes", type=int, default=2_000)
    parser.add_argument("--moi-groups", type=int, nargs="+", default=[200, 400])
    parser.add_argument("--moi-ours-only", type=int, nargs="+", default=[2_000])
    parser.add_argument("--cap", type=float, default=600.0,
                        help="seconds after which a reference timing is abandoned")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["papalexi", "de", "high_moi", "coex"])
    args = parser.parse_args()
    nsc.settings.progress = False
    warm_up()
    rows = []
    if "papalexi" not in args.skip and (DATA / "papalexi_lowmoi.h5ad").exists():
        rows += papalexi_rows(args.cap)
    if "de" not in args.skip:
        rows += generated_de_rows(args.cells, args.genes, args.groups, args.cap)
    if "high_moi" not in args.skip:
        rows += high_moi_rows(args.cells, args.moi_genes, args.moi_groups,
                              args.moi_ours_only, args.cap)
    if "coex" not in args.skip:
        rows += coex_rows(args.cells, args.genes, args.cap)
    report(rows, args.cap)


if __name__ == "__main__":
    main()
