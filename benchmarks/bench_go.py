"""Time of co-expression peeling rounds on PBMC 3k, split by step.

One cell type of ``../shared/data/pbmc3k_raw.h5ad`` is normalised, restricted to its
most expressed genes, and two peeling rounds run (coex -> binnet -> gotop -> pccovt).
Each round's time is split into co-expression, binary network, GO file parsing (with
the propagation of annotations to ancestor terms) and enrichment. The first round parses the OBO and GAF files; later rounds reuse the parsed
objects, so the GO part must not dominate there.

Each repeat (``--repeat``, default 3) runs all rounds in a fresh process forked from the
benchmark after normalisation, so that every repeat parses the GO files again; the
table gives per round the median seconds of each step and the 1-minute load average
around the steps (``_harness.py``).

Usage: ``python benchmarks/bench_go.py [--cell-type "CD14+ Mono"] [--genes 3000] [--quick]``
"""

from __future__ import annotations

import argparse
from functools import partial

import anndata as ad
import numpy as np

import _harness as h
import normalisr_sc as nsc
from normalisr_sc import _go

DATA = h.SHARED_DATA
OBO = DATA / "go" / "go-basic_GOdb_2022-07-01.obo.gz"
GAF = DATA / "go" / "human_orgHsegdb_2022-09-12.gaf.gz"
#: Read-count QC bounds passed explicitly (bounds left out are off).
QC_BOUNDS = {"min_cell_counts": 500, "min_cell_genes": 100}
#: Parameters of the peeling steps passed explicitly, so that a change of the package's
#: defaults does not change what is measured.
COEX_PARAMS = {
    "layer": "normalisr",
    "covariates_key": "nsc_covariates_norm",
    "dimreduce": 0,
    "dtype": np.float64,
    "store": "all",
}
GOTOP_PARAMS = {
    "n_principal": 100,
    "min_genes": 5,
    "pcut": 0.05,
    "gene_id": "symbol",
    "evidence": _go.DEFAULT_EVIDENCE,
}
STEPS = ("coex", "binnet", "GO parsing", "enrichment", "pccovt")


def _parse() -> None:
    """Parse both GO files and propagate the annotations to their ancestors.

    What the first enrichment of a session pays once (all three are cached per session).
    """
    dag = _go.read_godag(OBO)
    _go.propagate(_go.read_annotations(GAF, evidence=GOTOP_PARAMS["evidence"]), dag)


def peel(adata: ad.AnnData, rounds: int) -> dict:
    """All peeling rounds on ``adata`` (in a forked child: the parent's copy stays as is).

    Returns per round each step's seconds and the load average around it, and the top
    GO term found.
    """
    record = []
    for round_number in range(1, rounds + 1):
        runs = {
            "coex": h.timed(nsc.tl.coex, adata, **COEX_PARAMS),
            "binnet": h.timed(nsc.tl.binnet, adata, qcut=0.05),
            "GO parsing": h.timed(_parse),
            "enrichment": h.timed(nsc.tl.gotop, adata, OBO, GAF, **GOTOP_PARAMS),
        }
        found = adata.uns["nsc_gotop"]
        if "top_term" in found:
            runs["pccovt"] = h.timed(
                nsc.tl.pccovt,
                adata,
                found["top_term_genes"],
                condition_on_covariates=True,
                name=f"go_round{round_number}",
            )
        record.append(
            {
                "steps": {
                    name: {"seconds": run.seconds, "load": run.load} for name, run in runs.items()
                },
                "term": f"{found.get('top_term', '-')} {found.get('top_term_name', '')}",
            }
        )
    return {
        "rounds": record,
        "seconds": sum(step["seconds"] for r in record for step in r["steps"].values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_arguments(parser, cap=3600.0, quick_repeat=1)
    parser.add_argument("--cell-type", default="Naive CD4 T")
    parser.add_argument("--genes", type=int, default=None, help="default 3000 (--quick: 300)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    h.set_threads(args.threads)
    repeat = h.repeats(args)
    n_genes = args.genes or (300 if args.quick else 3000)
    nsc.settings.progress = False
    h.print_header(
        ["normalisr-sc", "goatools", "numpy"], repeat=repeat, BLAS_threads=args.threads or "default"
    )

    adata = ad.read_h5ad(DATA / "pbmc3k_raw.h5ad")
    adata = adata[adata.obs["seurat_cell_type"] == args.cell_type].copy()
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    adata = adata[:, np.argsort(detected)[::-1][:n_genes]].copy()
    nsc.pp.normalize(adata, qc=QC_BOUNDS, remove_outliers=True)
    print(f"{args.cell_type}: {adata.n_obs} cells x {adata.n_vars} genes", flush=True)

    repeats = h.alternate(
        {"peel": partial(h.in_child, peel, adata, args.rounds, cap=args.cap)},
        repeat,
        progress="all rounds",
    )["peel"]
    done = [run for run in repeats if run.ok]
    if not done:
        raise SystemExit(f"every repeat failed or was capped:\n{repeats[-1].error or ''}")
    rows = []
    for index in range(args.rounds):
        runs = {
            step: [
                h.Run(
                    r.data["rounds"][index]["steps"][step]["seconds"],
                    tuple(r.data["rounds"][index]["steps"][step]["load"]),
                )
                for r in done
                if step in r.data["rounds"][index]["steps"]
            ]
            for step in STEPS
        }
        go = sum(h.median(runs[s]) for s in ("GO parsing", "enrichment"))
        total = sum(h.median(runs[s]) for s in STEPS if runs[s])
        rows.append(
            h.Row(
                f"round {index + 1}",
                runs,
                {
                    "GO share": f"{go / total:.0%}",
                    "top term": done[0].data["rounds"][index]["term"],
                },
            )
        )
    if len(done) < len(repeats):
        print(f"{len(repeats) - len(done)} of {len(repeats)} repeats failed or were capped")
    h.print_table(
        rows,
        list(STEPS),
        reference=None,
        extra=("GO share", "top term"),
        title="seconds per step (medians over repeats, each in a fresh process)",
    )


if __name__ == "__main__":
    main()
