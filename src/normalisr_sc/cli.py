"""Command-line interface: ``normalisr-sc <command>`` (also ``python -m normalisr_sc``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

from . import _io, get, pp, tl
from ._settings import settings

logger = logging.getLogger("normalisr_sc")


def _input(args: argparse.Namespace):
    return _io.read_counts(args.input, genes=args.genes, cells=args.cells)


def _write(adata, args: argparse.Namespace) -> None:
    _io.write_h5ad(adata, args.output, force=args.force)
    logger.info("wrote %s", args.output)


def _table(table, args: argparse.Namespace) -> None:
    if args.table:
        _io.write_table(table, args.table, force=args.force)
        logger.info("wrote %s", args.table)


def cmd_qc(args):
    adata = _input(args)
    pp.qc_reads(adata, min_gene_counts=args.min_gene_counts, min_gene_cells=args.min_gene_cells,
                min_gene_cell_fraction=args.min_gene_cell_fraction,
                min_cell_counts=args.min_cell_counts, min_cell_genes=args.min_cell_genes,
                min_cell_gene_fraction=args.min_cell_gene_fraction)
    _write(adata, args)


def cmd_normalize(args):
    adata = _input(args)
    pp.normalize(adata, args.covariates, qc=None if args.no_qc else pp.DEFAULT_QC,
                 remove_outliers=not args.keep_outliers,
                 chunked=args.chunk_size is not None, chunk_size=args.chunk_size)
    _write(adata, args)


def cmd_de(args):
    adata = _input(args)
    if args.guides:
        tl.assign_guides(adata, args.guides, mode=args.guide_mode, threshold=args.threshold,
                         groups=args.guide_groups)
    tl.de(adata, args.groupby if not args.guides else "nsc_guides", design=args.design,
          reference=args.reference)
    _table(get.de_df(adata), args)
    _write(adata, args)


def cmd_coex(args):
    adata = _input(args)
    genes = Path(args.gene_list).read_text().split() if args.gene_list else None
    tl.coex(adata, genes=genes)
    _table(get.coex_df(adata), args)
    _write(adata, args)


def cmd_binnet(args):
    adata = _input(args)
    tl.binnet(adata, qcut=args.qcut)
    _write(adata, args)


def cmd_gotop(args):
    adata = _input(args)
    tl.gotop(adata, args.obo, args.annotations, n_principal=args.n_principal,
             gene_id=args.gene_id)
    _table(adata.uns["nsc_gotop"]["enrichment"], args)
    _write(adata, args)


def cmd_report(args):
    import matplotlib as mpl

    mpl.use("Agg")
    from . import pl

    adata = _input(args)
    print(adata)
    for step, params in adata.uns.get("normalisr", {}).items():
        print(f"  {step}: {dict(params) if isinstance(params, Mapping) else list(params)}")
    folder = Path(args.plots) if args.plots else None
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    for key in ("nsc_de", "nsc_coex"):
        if f"{key}_log10p" in adata.varm or f"{key}_log10p" in adata.varp:
            ax = pl.qq(adata, key)
            print(f"  {key}: {ax.get_title()}")
            if folder:
                ax.figure.savefig(folder / f"{key}_qq.png", dpi=120, bbox_inches="tight")


def cmd_demo(args):
    import matplotlib as mpl

    mpl.use("Agg")
    from ._demo import run_screen, score_screen, write_plots

    out = Path(args.out)
    target = out / "demo.h5ad"
    if target.exists() and not args.force:
        msg = f"{str(target)!r} exists; pass --force to overwrite it."
        raise ValueError(msg)
    out.mkdir(parents=True, exist_ok=True)
    adata = run_screen(n_cells=args.n_cells, seed=args.seed)
    score = score_screen(adata)
    _io.write_h5ad(adata, target, force=args.force)
    _io.write_table(get.de_df(adata), out / "de.tsv.gz", force=args.force)
    plots = write_plots(adata, out)
    print(f"normalisr-sc demo: low-MOI screen, {adata.n_obs} cells x {adata.n_vars} genes, "
          f"{len(adata.uns['nsc_de']['groups'])} targets against non-targeting controls")
    print(f"  null pairs: {score.n_null}, fraction p < 0.05 = {score.null_fraction_below_005:.3f}"
          f" (expected 0.05), inflation = {score.null_inflation:.3f} (expected 1)")
    print(f"  planted knock-downs recovered at q < 0.1: {score.n_recovered}/{score.n_planted}")
    print(f"  wrote {target}, {out / 'de.tsv.gz'}, " + ", ".join(str(p) for p in plots))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normalisr-sc",
        description="Normalisr for single-cell RNA-seq: normalisation, DE, co-expression.",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, function, help_text, *, reads_input=True):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(function=function)
        if reads_input:
            sub.add_argument("input", help="h5ad, 10x directory, 10x .h5, or genes x cells .tsv[.gz]")
            sub.add_argument("-o", "--output", required=True, help="output .h5ad")
            sub.add_argument("--genes", help="gene names of a tsv matrix (one per line)")
            sub.add_argument("--cells", help="cell names of a tsv matrix (one per line)")
            sub.add_argument("--force", action="store_true", help="overwrite existing outputs")
        return sub

    qc = command("qc", cmd_qc, "read-count quality control (nsc.pp.qc_reads)")
    for name, default in [("min-gene-counts", 0), ("min-gene-cells", 50),
                          ("min-gene-cell-fraction", 0.02), ("min-cell-counts", 500),
                          ("min-cell-genes", 100), ("min-cell-gene-fraction", 0.0)]:
        qc.add_argument(f"--{name}", type=float, default=default, help=f"default {default}")
    norm = command("normalize", cmd_normalize, "whole normalisation recipe (nsc.pp.normalize)")
    norm.add_argument("--covariates", nargs="*", default=[], help="obs columns to remove")
    norm.add_argument("--no-qc", action="store_true", help="skip read-count QC")
    norm.add_argument("--keep-outliers", action="store_true", help="keep variance outliers")
    norm.add_argument("--chunk-size", type=int,
                      help="stream the counts in blocks of this many cells (no dense matrix "
                           "held; the output layers are computed block by block when written)")
    de = command("de", cmd_de, "differential expression (nsc.tl.de) on normalised data")
    de.add_argument("--groupby", help="obs column or obsm key of the groups")
    de.add_argument("--design", default="case_control",
                    choices=["case_control", "low_moi", "high_moi"])
    de.add_argument("--reference", nargs="*", help="reference level(s)")
    de.add_argument("--guides", help="obsm key of guide UMI counts to assign first")
    de.add_argument("--guide-groups", help="uns key of the guide -> group table")
    de.add_argument("--guide-mode", default="max", choices=["max", "threshold"])
    de.add_argument("--threshold", type=float, default=5)
    de.add_argument("--table", help="write the DE table (.tsv/.csv, .gz to compress)")
    coex = command("coex", cmd_coex, "gene co-expression (nsc.tl.coex) on normalised data")
    coex.add_argument("--gene-list", help="file of genes to restrict to")
    coex.add_argument("--table", help="write the edge table (.tsv/.csv, .gz to compress)")
    binnet = command("binnet", cmd_binnet, "binary co-expression network (nsc.tl.binnet)")
    binnet.add_argument("--qcut", type=float, default=0.05)
    gotop = command("gotop", cmd_gotop, "GO enrichment of network hubs (nsc.tl.gotop)")
    gotop.add_argument("--obo", required=True, help="GO DAG, OBO (plain or .gz)")
    gotop.add_argument("--annotations", required=True, help="GAF or gene2go (plain or .gz)")
    gotop.add_argument("--n-principal", type=int, default=100)
    gotop.add_argument("--gene-id", default="symbol", help="'symbol' or a var column")
    gotop.add_argument("--table", help="write the enrichment table")
    report = commands.add_parser("report", help="summarise an h5ad written by normalisr-sc")
    report.set_defaults(function=cmd_report, genes=None, cells=None)
    report.add_argument("input")
    report.add_argument("--plots", help="folder for QQ plots")
    demo = commands.add_parser("demo", help="run the pipeline on a generated CRISPR screen")
    demo.set_defaults(function=cmd_demo)
    demo.add_argument("--out", default="normalisr_sc_demo", help="output folder")
    demo.add_argument("--n-cells", type=int, default=4000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    logging.getLogger("goatools").setLevel(logging.WARNING)
    if args.quiet:
        settings.progress = False
    try:
        args.function(args)
    except (ValueError, OSError) as error:
        if args.debug:
            raise
        print(f"normalisr-sc {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
