"""Time of co-expression peeling rounds on PBMC 3k, split by step.

One cell type of ``../shared/data/pbmc3k_raw.h5ad`` is normalised, restricted to its
most expressed genes, and two peeling rounds run (coex -> binnet -> gotop -> pccovt).
Each round's time is split into co-expression, binary network, GO file parsing and
enrichment. The first round parses the OBO and GAF files; later rounds reuse the parsed
objects, so the GO part must not dominate there.

Usage: ``python benchmarks/bench_go.py [--cell-type "CD14+ Mono"] [--genes 3000]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np

import normalisr_sc as nsc
from normalisr_sc import _go

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell-type", default="Naive CD4 T")
    parser.add_argument("--genes", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    nsc.settings.progress = False

    obo = DATA / "go" / "go-basic_GOdb_2022-07-01.obo.gz"
    gaf = DATA / "go" / "human_orgHsegdb_2022-09-12.gaf.gz"
    adata = ad.read_h5ad(DATA / "pbmc3k_raw.h5ad")
    adata = adata[adata.obs["seurat_cell_type"] == args.cell_type].copy()
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    adata = adata[:, np.argsort(detected)[::-1][: args.genes]].copy()
    nsc.pp.normalize(adata, qc={"min_cell_counts": 500, "min_cell_genes": 100})
    print(f"{args.cell_type}: {adata.n_obs} cells x {adata.n_vars} genes")

    rows = []
    for round_number in range(1, args.rounds + 1):
        row = {"round": round_number}
        row["coex"] = _timed(nsc.tl.coex, adata)
        row["binnet"] = _timed(nsc.tl.binnet, adata, qcut=0.05)
        row["GO parsing"] = _timed(_go.read_godag, obo) + _timed(_go.read_annotations, gaf)
        row["enrichment"] = _timed(nsc.tl.gotop, adata, obo, gaf)
        found = adata.uns["nsc_gotop"]
        row["term"] = f"{found.get('top_term', '-')} {found.get('top_term_name', '')}"
        if "top_term" in found:
            row["pccovt"] = _timed(nsc.tl.pccovt, adata, found["top_term_genes"],
                                   name=f"go_round{round_number}")
        rows.append(row)

    steps = ["coex", "binnet", "GO parsing", "enrichment", "pccovt"]
    print(f"{'round':>5} " + " ".join(f"{s:>11}" for s in steps) + f" {'GO share':>9}  top term")
    for row in rows:
        total = sum(row.get(s, 0.0) for s in steps)
        go_share = (row["GO parsing"] + row["enrichment"]) / total
        cells = " ".join(f"{row.get(s, float('nan')):>10.2f}s" for s in steps)
        print(f"{row['round']:>5} {cells} {go_share:>8.0%}  {row['term']}")


if __name__ == "__main__":
    main()
