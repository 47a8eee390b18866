"""Command-line interface: ``normalisr-sc <command>`` (also ``python -m normalisr_sc``).

Every command declares its outputs before it starts: existing ones are refused without
``--force`` before any work, and all of them are published together only when the
command succeeds (:class:`normalisr_sc._io.Outputs`). Errors are one line that speaks
of commands and options, not of Python functions and parameters (:func:`cli_words`).

The library (numpy, anndata, scanpy, dask...) is imported only when a command runs, so
``--version`` and ``--help`` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ._settings import settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import pandas as pd
    from anndata import AnnData

    from . import _io

logger = logging.getLogger("normalisr_sc")

PROG = "normalisr-sc"

#: The command that makes what a Python function makes, for messages.
COMMAND_OF = {
    "normalize": "normalize",
    "normvar": "normalize",
    "normcov": "normalize",
    "lcpm": "normalize",
    "compute_var": "normalize",
    "qc_outlier": "normalize",
    "scaling_factor": "normalize",
    "qc_reads": "qc",
    "de": "de",
    "assign_guides": "de --guides",
    "coex": "coex",
    "binnet": "binnet",
    "gotop": "gotop",
}
_FUNCTION = re.compile(r"`?(?:nsc|normalisr_sc)\.(?:pp|tl|get|pl)\.(\w+)(?:\([^`]*\))?`?")


class CommandError(ValueError):
    """An error already worded for the command line."""


def cli_words(message: str, options: Mapping[str, str] | None = None) -> str:
    """``message`` of the Python API in the words of the command line.

    Function names become the commands that do the same (``nsc.pp.normvar`` ->
    ``normalisr-sc normalize``) and the parameters in ``options`` (parameter -> option)
    become options (``groups=`` -> ``--groups``; a bare name only when it holds an
    underscore, ``n_principal`` -> ``--n-principal``, so that English words stay).
    """

    def command(match: re.Match) -> str:
        name = match[1]
        return f"`{PROG} {COMMAND_OF[name]}`" if name in COMMAND_OF else match[0]

    message = _FUNCTION.sub(command, message)
    for parameter, option in (options or {}).items():

        def spelled(m: re.Match[str], option: str = option) -> str:
            return f"`{_option_text(option, m[1])}`"

        message = re.sub(rf"`{parameter}(?:=([^`]*))?`", spelled, message)
        message = re.sub(rf"(?<![\w.'\"`\[-]){parameter}=", f"{option} ", message)
        if "_" in parameter:  # a bare identifier, not an English word
            message = re.sub(rf"(?<![\w.'\"`\[-]){parameter}(?![\w'\"`=])", option, message)
    return message


class _CliWords(logging.Filter):
    """Rewords the package's log messages (warnings of skipped groups...) for the CLI."""

    def __init__(self, options: Mapping[str, str]) -> None:
        super().__init__()
        self.options = options

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = cli_words(record.getMessage(), self.options), ()
        return True


def _option_text(option: str, value: str | None) -> str:
    """``--option value`` for a Python value written in a message (quotes dropped)."""
    if not value:
        return option
    value = value.strip()
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return f"{option} {value}"


@contextlib.contextmanager
def speaking_cli(options: Mapping[str, str]) -> Iterator[None]:
    """Speak the CLI's words in the API's errors and log messages (``options``: parameter -> option).

    A ValueError is raised again as a :class:`CommandError` with the reworded message.
    """
    words = _CliWords(options)
    logger.addFilter(words)
    try:
        yield
    except CommandError:
        raise
    except ValueError as error:
        raise CommandError(cli_words(str(error), options)) from error
    finally:
        logger.removeFilter(words)


# --- option values -------------------------------------------------------------------


def _reworded(check: Callable[..., Any], text: str, **bounds: Any) -> Any:
    try:
        return check("value", text, **bounds)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("`value` ", "")) from None


def integer(minimum: int | None = None) -> Callable[[str], int]:
    """Return an argparse type: an integer, at least ``minimum``."""

    def parse(text: str) -> int:
        from ._validate import check_int

        try:
            value: Any = int(text)
        except ValueError:
            value = text
        return _reworded(check_int, value, minimum=minimum)

    parse.__name__ = "integer"
    return parse


def number(
    minimum: float | None = None, maximum: float | None = None, *, min_open: bool = False
) -> Callable[[str], float]:
    """Return an argparse type: a finite number within the bounds."""

    def parse(text: str) -> float:
        from ._validate import check_number

        try:
            value: Any = float(text)
        except ValueError:
            value = text
        return _reworded(check_number, value, minimum=minimum, maximum=maximum, min_open=min_open)

    parse.__name__ = "number"
    return parse


def suffixed(*suffixes: str) -> Callable[[str], str]:
    """Return an argparse type: a file name ending in one of ``suffixes``."""

    def parse(text: str) -> str:
        if not text.lower().endswith(suffixes):
            msg = f"must be a file name ending in {' or '.join(suffixes)}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return text

    parse.__name__ = "file name"
    return parse


H5AD = suffixed(".h5ad")
TABLE = suffixed(".tsv", ".csv", ".tsv.gz", ".csv.gz")


def _optional_integer(text: str) -> int | None:
    return None if text.lower() == "none" else integer(1)(text)


#: Read-count QC options (shared by ``qc`` and ``normalize``): type and help text.
QC_OPTIONS = {
    "min_gene_counts": (number(0), "minimum total count of a gene"),
    "min_gene_cells": (number(0), "minimum number of cells a gene is detected in"),
    "min_gene_cell_fraction": (number(0, 1), "minimum fraction of cells a gene is detected in"),
    "min_cell_counts": (
        number(0),
        "minimum total count of a cell (whole-transcriptome value, "
        "scaled down on panels by --transcriptome-genes)",
    ),
    "min_cell_genes": (
        number(0),
        "minimum number of genes detected in a cell (scaled like --min-cell-counts)",
    ),
    "min_cell_gene_fraction": (number(0, 1), "minimum fraction of genes detected in a cell"),
    "transcriptome_genes": (
        _optional_integer,
        "genes of a whole transcriptome: the cell bounds are multiplied "
        "by min(1, genes measured / this); 'none' applies them as given",
    ),
}


def _qc_defaults() -> dict[str, Any]:
    """Return the bounds of ``nsc.pp.DEFAULT_QC`` (imports the library)."""
    from .pp import DEFAULT_QC

    return dict(DEFAULT_QC)


class _QCDefault:
    """The default of a QC option: not given, so the bound of ``pp.DEFAULT_QC`` applies.

    Its text (``%(default)s`` of the help) is looked up only when the help is printed.
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def __str__(self) -> str:
        return str(
            _qc_defaults().get(self.key, "none" if self.key == "transcriptome_genes" else "off")
        )


def _qc_given(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key: getattr(args, key)
        for key in QC_OPTIONS
        if not isinstance(getattr(args, key), _QCDefault)
    }


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- inputs and outputs --------------------------------------------------------------


def _input(args: argparse.Namespace) -> AnnData:
    from . import _io

    name = Path(args.input).name.lower()
    tsv = name.endswith((".tsv", ".txt", ".tsv.gz", ".txt.gz"))
    given = [o for o, v in (("--genes", args.genes), ("--cells", args.cells)) if v]
    if given and not tsv:
        msg = f"{' and '.join(given)} name the rows and columns of a .tsv matrix input only."
        raise CommandError(msg)
    return _io.read_counts(args.input, genes=args.genes, cells=args.cells)


def _outputs(args: argparse.Namespace) -> list[Path]:
    """Every file the command may write, known before it starts."""
    if args.command == "demo":
        out = Path(args.out)
        return [out / name for name in DEMO_FILES]
    if args.command == "report":
        if not args.plots:
            return []
        return [Path(args.plots) / f"{key}_qq.png" for key in REPORT_KEYS]
    paths = [Path(args.output)]
    if getattr(args, "table", None):
        paths.append(Path(args.table))
    return paths


def _write(outputs: _io.Outputs, adata: AnnData, target: str) -> None:
    from . import _io

    _io.write_h5ad_to(adata, outputs.path(target))


def _write_table(outputs: _io.Outputs, table: pd.DataFrame, target: str | None) -> None:
    if target:
        from . import _io

        _io.write_table_to(table, outputs.path(target), target)


# --- commands ------------------------------------------------------------------------


def _print_qc_summary(adata: AnnData) -> None:
    from ._store import read_record
    from .pp._qc import QC_KEY, SUMMARY, format_qc_summary

    summary = read_record(adata, QC_KEY).get(SUMMARY)
    if summary is None:
        return
    print("quality control:")
    print("\n".join(f"  {line}" for line in format_qc_summary(summary).splitlines()))


def cmd_qc(args: argparse.Namespace, outputs: _io.Outputs) -> None:
    """Run ``normalisr-sc qc``: read-count QC of the input."""
    from . import pp

    adata = _input(args)
    bounds = {**_qc_defaults(), **_qc_given(args)}
    with speaking_cli({key: _option(key) for key in bounds}):
        pp.qc_reads(adata, **bounds)
    _print_qc_summary(adata)
    _write(outputs, adata, args.output)


def cmd_normalize(args: argparse.Namespace, outputs: _io.Outputs) -> None:
    """Run ``normalisr-sc normalize``: the whole normalisation."""
    given = _qc_given(args)
    if args.no_qc and given:
        msg = f"--no-qc skips read-count QC: leave out {', '.join(map(_option, given))}."
        raise CommandError(msg)
    from . import pp

    adata = _input(args)
    qc = None if args.no_qc else {**_qc_defaults(), **given}
    with speaking_cli(
        {
            "covariates": "--covariates",
            "chunk_size": "--chunk-size",
            "remove_outliers": "--keep-outliers",
            "dtype": "--dtype",
            **{key: _option(key) for key in QC_OPTIONS},
        }
    ):
        pp.normalize(
            adata,
            args.covariates,
            qc=qc,
            remove_outliers=not args.keep_outliers,
            chunked=args.chunk_size is not None,
            chunk_size=args.chunk_size,
            dtype=args.dtype,
        )
    _print_qc_summary(adata)
    _write(outputs, adata, args.output)


def de_table(adata: AnnData, key: str = "nsc_de") -> pd.DataFrame:
    """Return the DE table of every group, most significant first (ties: larger |logfc|)."""
    import numpy as np

    from . import get

    table = get.de_df(adata, key=key)
    order = np.lexsort(
        (
            table["group"].cat.codes.to_numpy(),
            -np.abs(table["logfc"].to_numpy()),
            -table["log10p"].to_numpy(),
        )
    )
    return table.iloc[order].reset_index(drop=True)


def _check_de_options(args: argparse.Namespace) -> None:
    if (args.groupby is None) == (args.guides is None):
        msg = (
            "name the groups with --groupby (an obs column or obsm key) or give guide "
            "counts with --guides, not both."
            if args.groupby
            else "name the groups to compare: --groupby COLUMN, or --guides OBSM_KEY for a "
            "CRISPR screen."
        )
        raise CommandError(msg)
    if args.guides is None:
        given = [
            option
            for option, value in (
                ("--guide-names", args.guide_names),
                ("--guide-groups", args.guide_groups),
                ("--guide-mode", args.guide_mode),
                ("--threshold", args.threshold),
            )
            if value
        ]
        if given:
            msg = f"{', '.join(given)} apply only with --guides."
            raise CommandError(msg)
    if args.threshold is not None and args.guide_mode != "threshold":
        msg = "--threshold applies only with --guide-mode threshold."
        raise CommandError(msg)


def cmd_de(args: argparse.Namespace, outputs: _io.Outputs) -> None:
    """Run ``normalisr-sc de``: differential expression, guides assigned first if given."""
    from . import tl

    _check_de_options(args)
    adata = _input(args)
    groupby = args.groupby
    if args.guides:
        options = {
            "obsm_key": "--guides",
            "guide_names": "--guide-names",
            "groups": "--guide-groups",
            "mode": "--guide-mode",
            "threshold": "--threshold",
        }
        with speaking_cli(options):
            tl.assign_guides(
                adata,
                args.guides,
                mode=args.guide_mode or "max",
                threshold=5 if args.threshold is None else args.threshold,
                groups=args.guide_groups,
                guide_names=args.guide_names,
            )
        groupby = "nsc_guides"
    given = {
        "min_cells": args.min_cells,
        "min_nonzero": args.min_nonzero,
        "counts_layer": args.counts_layer,
        "qcut": args.qcut,
        "pairs": _pairs_option(adata, args.pairs, "--pairs"),
        "positive_controls": _pairs_option(adata, args.positive_controls, "--positive-controls"),
    }
    options = {
        "groupby": "--guides" if args.guides else "--groupby",
        "design": "--design",
        "reference": "--reference",
        "groups": "--groups",
        "min_cells": "--min-cells",
        "chunk_size": "--chunk-size",
        **{name: _option(name) for name in given},
    }
    with speaking_cli(options):
        tl.de(
            adata,
            groupby,
            design=args.design,
            reference=args.reference,
            groups=args.groups,
            chunked=args.chunk_size is not None,
            chunk_size=args.chunk_size,
            **{name: value for name, value in given.items() if value is not None},
        )
        table = de_table(adata)
    _print_positive_controls(adata)
    _write_table(outputs, table, args.table)
    _write(outputs, adata, args.output)


def _pairs_option(adata: AnnData, source: str | None, option: str) -> pd.DataFrame | None:
    """Read the (group, gene) pairs of ``option``: a .tsv/.csv file or a key of ``uns``."""
    if source is None:
        return None
    import pandas as pd

    from . import _io

    path = Path(source)
    if path.suffix in {".tsv", ".csv", ".gz"} or path.exists():
        with _io.reading(path, f"{option} table"):
            return pd.read_csv(path, sep="," if ".csv" in path.suffixes else "\t")
    if source in adata.uns:
        return pd.DataFrame(adata.uns[source])
    msg = (
        f"{option} {source!r} is neither a .tsv/.csv file nor a key of the input's uns "
        f"(keys: {list(adata.uns)[:10]}); give a table with columns group and gene."
    )
    raise CommandError(msg)


def _print_positive_controls(adata: AnnData, key: str = "nsc_de") -> None:
    from ._store import read_record

    report = read_record(adata, key).get("positive_controls")
    if report is None:
        return
    import pandas as pd

    report = pd.DataFrame(report)
    print(f"positive controls: {int(report['recovered'].sum())} of {len(report)} recovered")
    columns = ["group", "gene", "pval", "qval", "rank", "recovered"]
    print(report[[c for c in columns if c in report]].to_string(index=False))


def cmd_coex(args: argparse.Namespace, outputs: _io.Outputs) -> None:
    """Run ``normalisr-sc coex``: gene co-expression."""
    from . import _io, get, tl

    genes = None
    if args.gene_list:
        path = Path(args.gene_list)
        with _io.reading(path, "gene list"):
            genes = path.read_text(encoding="utf-8").split()
        if not genes:
            msg = f"gene list {args.gene_list!r} names no gene."
            raise CommandError(msg)
    adata = _input(args)
    with speaking_cli({"genes": "--gene-list"}):
        tl.coex(adata, genes=genes)
        table = get.coex_df(adata)
    _write_table(outputs, table, args.table)
    _write(outputs, adata, args.output)


def cmd_binnet(args: argparse.Namespace, outputs: _io.Outputs) -> None:
    """Run ``normalisr-sc binnet``: the binary co-expression network."""
    from . import tl

    adata = _input(args)
    with speaking_cli({"qcut": "--qcut"}):
        tl.binnet(adata, qcut=args.qcut)
    _write(outputs, adata, args.output)


def cmd_gotop(args: argparse.Namespace, outputs: _io.Outputs) -> None:
    """Run ``normalisr-sc gotop``: GO enrichment of the network's hub genes."""
    from . import tl

    adata = _input(args)
    with speaking_cli(
        {
            "obo": "--obo",
            "annotations": "--annotations",
            "n_principal": "--n-principal",
            "gene_id": "--gene-id",
            "pcut": "--pcut",
        }
    ):
        tl.gotop(
            adata,
            args.obo,
            args.annotations,
            n_principal=args.n_principal,
            gene_id=args.gene_id,
            pcut=args.pcut,
        )
    _write_table(outputs, adata.uns["nsc_gotop"]["enrichment"], args.table)
    _write(outputs, adata, args.output)


#: Result keys ``report`` summarises (and plots).
REPORT_KEYS = ("nsc_de", "nsc_coex")


def _plain(value: Any) -> str:
    import numpy as np

    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    if isinstance(value, np.ndarray | list | tuple):
        items = list(np.asarray(value).ravel()) if isinstance(value, np.ndarray) else value
        shown = ", ".join(_plain(v) for v in items[:8])
        return f"[{shown}{', ...' if len(items) > 8 else ''}]"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _report_results(adata: AnnData, key: str) -> list[str]:
    from ._core._pvalues import genomic_inflation
    from .pl._association import _neg_log10_pvalues

    if f"{key}_log10p" not in adata.varm and f"{key}_log10p" not in adata.varp:
        return []
    observed = _neg_log10_pvalues(adata, key, None)
    if observed.size == 0:
        return [f"{key}: no finite p-value"]
    lines = [
        f"{key}: {observed.size:,} tests, genomic inflation (lambda) = {genomic_inflation(observed):.3f}"
    ]
    if key == "nsc_de" and f"{key}_pvals" in adata.varm:
        table = de_table(adata, key)
        n_hits = int((table["qval"] < 0.05).sum())
        lines.append(f"  {n_hits:,} group-gene pairs with q < 0.05; most significant:")
        for row in table.head(5).itertuples():
            lines.append(
                f"    {row.group} / {row.gene}: p = {row.pval:.3g}, "
                f"-log10 p = {row.log10p:.1f}, logfc = {row.logfc:.3f}"
            )
    return lines


def cmd_report(args: argparse.Namespace, outputs: _io.Outputs) -> None:
    """Run ``normalisr-sc report``: a plain-text summary, optionally QQ plots."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    from . import pl

    adata = _input(args)
    print(f"{args.input}: {adata.n_obs:,} cells x {adata.n_vars:,} genes")
    for container in ("layers", "obsm", "varm", "varp"):
        keys = list(getattr(adata, container).keys())
        if keys:
            print(f"  {container}: {', '.join(keys)}")
    from ._store import recorded_params

    steps = recorded_params(adata)
    if steps:
        print("steps recorded:")
        for step, params in steps.items():
            print(f"  {step}: {_plain(params)}")
    _print_qc_summary(adata)
    for key in REPORT_KEYS:
        lines = _report_results(adata, key)
        if not lines:
            continue
        print("\n".join(lines))
        if args.plots:
            ax = pl.qq(adata, key, show=False)
            ax.figure.savefig(
                outputs.path(Path(args.plots) / f"{key}_qq.png"),
                dpi=120,
                bbox_inches="tight",
                format="png",
            )
            plt.close(ax.figure)


#: Files ``demo`` writes into its folder.
DEMO_FILES = ("demo.h5ad", "de.tsv.gz", "qq.png", "volcano.png", "weights.png")


def cmd_demo(args: argparse.Namespace, outputs: _io.Outputs) -> None:
    """Run ``normalisr-sc demo``: the pipeline on a generated screen."""
    import matplotlib as mpl

    mpl.use("Agg")
    from . import _io, get
    from ._demo import run_screen, score_screen, write_plots

    out = Path(args.out)
    adata = run_screen(n_cells=args.n_cells, seed=args.seed)
    score = score_screen(adata)
    with tempfile.TemporaryDirectory() as scratch:
        plots = write_plots(adata, Path(scratch))
        for plot in plots:
            shutil.copyfile(plot, outputs.path(out / Path(plot).name))
    _io.write_table_to(get.de_df(adata), outputs.path(out / "de.tsv.gz"), "de.tsv.gz")
    _io.write_h5ad_to(adata, outputs.path(out / "demo.h5ad"))
    print(
        f"{PROG} demo: low-MOI screen, {adata.n_obs} cells x {adata.n_vars} genes, "
        f"{len(adata.uns['nsc_de']['groups'])} targets against non-targeting controls"
    )
    print(
        f"  null pairs: {score.n_null}, fraction p < 0.05 = {score.null_fraction_below_005:.3f}"
        f" (expected 0.05), inflation = {score.null_inflation:.3f} (expected 1)"
    )
    print(f"  planted knock-downs recovered at q < 0.1: {score.n_recovered}/{score.n_planted}")
    print(f"  writes {', '.join(str(out / name) for name in DEMO_FILES)}")


# --- parser --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    from . import __version__

    return f"{PROG} {__version__}"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Normalisr for single-cell RNA-seq: normalisation, differential "
        "expression (case-control and CRISPR screens), co-expression networks.",
    )
    parser.add_argument(
        "--version", action="version", version=_version(), help="print the version and exit"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="only warnings and errors: no progress bars or info messages",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def command(
        name: str,
        function: Callable,
        help_text: str,
        *,
        reads_input: bool = True,
        writes: bool = True,
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(function=function)
        if reads_input:
            sub.add_argument(
                "input",
                help="counts or results: .h5ad, a 10x directory, a 10x "
                ".h5, or a genes x cells .tsv[.gz] matrix",
            )
            sub.add_argument("--genes", help="gene names of a .tsv matrix, one per line")
            sub.add_argument("--cells", help="cell names of a .tsv matrix, one per line")
        if writes:
            sub.add_argument(
                "-o",
                "--output",
                required=True,
                type=H5AD,
                help="the .h5ad to write (refused if it exists, unless --force)",
            )
        if writes or name == "report":
            sub.add_argument("--force", action="store_true", help="replace existing output files")
        return sub

    def qc_options(sub: argparse.ArgumentParser) -> None:
        for key, (kind, text) in QC_OPTIONS.items():
            sub.add_argument(
                _option(key),
                type=kind,
                default=_QCDefault(key),
                metavar="N",
                help=f"{text} (default %(default)s)",
            )

    qc = command(
        "qc",
        cmd_qc,
        "read-count quality control of raw counts (cells and genes below the bounds are removed)",
    )
    qc_options(qc)
    norm = command(
        "normalize",
        cmd_normalize,
        "the whole normalisation from raw counts: read-count QC, log CPM, "
        "covariates, variance normalisation, outlier removal",
    )
    norm.add_argument(
        "--covariates",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="obs columns to remove as confounders (batch, replicate, ...)",
    )
    norm.add_argument(
        "--no-qc", action="store_true", help="skip read-count QC (keep every cell and gene)"
    )
    qc_options(norm)
    norm.add_argument(
        "--keep-outliers", action="store_true", help="keep the cells that are variance outliers"
    )
    norm.add_argument(
        "--chunk-size",
        type=integer(1),
        metavar="CELLS",
        help="stream the counts in blocks of this many cells (no dense matrix "
        "held; the output layers are computed block by block when written)",
    )
    norm.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default="float64",
        help="float type of the layers lcpm and normalisr: float32 halves their memory "
        "and file size; every computation runs in float64 either way (default float64)",
    )
    de = command(
        "de",
        cmd_de,
        "differential expression between groups of cells, or of "
        "guide targets in a CRISPR screen, on normalised data",
    )
    de.add_argument(
        "--groupby",
        metavar="KEY",
        help="obs column (one group per level) or obsm key (cells x groups 0/1) of the groups",
    )
    de.add_argument(
        "--design",
        default="case_control",
        choices=["case_control", "low_moi", "high_moi"],
        help="case_control: each group against the others (or the reference); "
        "low_moi: cells with one guide target against the reference cells; "
        "high_moi: all groups in one regression (default case_control)",
    )
    de.add_argument(
        "--reference",
        nargs="+",
        metavar="GROUP",
        help="baseline group(s), not tested (e.g. non-targeting)",
    )
    de.add_argument(
        "--groups",
        nargs="+",
        metavar="GROUP",
        help="groups to test (default all but the reference)",
    )
    de.add_argument(
        "--min-cells",
        type=integer(1),
        metavar="N",
        help="skip, with a warning, groups carried by fewer than N cells in their test",
    )
    de.add_argument(
        "--chunk-size",
        type=integer(1),
        metavar="CELLS",
        help="read the normalised expression in blocks of this many cells",
    )
    de.add_argument(
        "--guides",
        metavar="OBSM_KEY",
        help="obsm key of guide UMI counts (cells x guides): assign guides to "
        "cells first and test their targets",
    )
    de.add_argument(
        "--guide-names", metavar="UNS_KEY", help="uns key of the names of the guide columns"
    )
    de.add_argument(
        "--guide-groups",
        metavar="UNS_KEY",
        help="uns key of the guide -> target table (guide, target columns)",
    )
    de.add_argument(
        "--guide-mode",
        choices=["max", "threshold"],
        help="max: each cell gets its guide with most UMIs (low MOI, default); "
        "threshold: every guide with at least --threshold UMIs",
    )
    de.add_argument(
        "--threshold",
        type=number(0, min_open=True),
        metavar="UMIS",
        help="UMIs of an assigned guide with --guide-mode threshold (default 5)",
    )
    de.add_argument(
        "--min-nonzero",
        type=integer(0),
        metavar="N",
        help="pair QC: leave out of the q-values the (group, gene) pairs with fewer than N "
        "cells with a nonzero count among the group's or the control cells (default 7 in "
        "screen designs, 0 in case_control)",
    )
    de.add_argument(
        "--counts-layer",
        metavar="LAYER",
        help="layer of raw UMI counts for the pair QC (default X, where normalize keeps them)",
    )
    de.add_argument(
        "--pairs",
        metavar="TABLE",
        help="test only these (group, gene) pairs, q-values over them: a .tsv/.csv with "
        "columns group and gene (or SCEPTRE's grna_group and response_id) or an uns key",
    )
    de.add_argument(
        "--positive-controls",
        metavar="TABLE",
        help="(group, gene) pairs whose recovery is reported (a .tsv/.csv or an uns key, "
        "e.g. pc_pairs)",
    )
    de.add_argument(
        "--qcut",
        type=number(0, 1, min_open=True),
        metavar="Q",
        help="q-value cut of a recovered positive control (default 0.05)",
    )
    de.add_argument(
        "--table",
        type=TABLE,
        help="also write the DE table, most significant first (.tsv or .csv, +.gz to compress)",
    )
    coex = command("coex", cmd_coex, "gene co-expression on normalised data")
    coex.add_argument(
        "--gene-list",
        metavar="FILE",
        help="file naming the genes to restrict to (whitespace-separated)",
    )
    coex.add_argument(
        "--table", type=TABLE, help="also write the edge table (.tsv or .csv, +.gz to compress)"
    )
    binnet = command(
        "binnet", cmd_binnet, "binary co-expression network from co-expression results"
    )
    binnet.add_argument(
        "--qcut",
        type=number(0, 1, min_open=True),
        default=0.05,
        help="q-value below which a gene pair is an edge (default 0.05)",
    )
    gotop = command("gotop", cmd_gotop, "GO enrichment of the hub genes of a network")
    gotop.add_argument(
        "--obo", required=True, metavar="FILE", help="GO DAG in OBO format (plain or .gz)"
    )
    gotop.add_argument(
        "--annotations",
        required=True,
        metavar="FILE",
        help="GO annotations: GAF or NCBI gene2go (plain or .gz)",
    )
    gotop.add_argument(
        "--n-principal",
        type=integer(1),
        default=100,
        metavar="N",
        help="number of hub genes to test (default 100)",
    )
    gotop.add_argument(
        "--gene-id",
        default="symbol",
        metavar="COLUMN",
        help="'symbol' (var_names are symbols) or the var column of gene ids (default symbol)",
    )
    gotop.add_argument(
        "--pcut",
        type=number(0, 1, min_open=True),
        default=0.05,
        metavar="P",
        help="Bonferroni p-value below which the best GO term is declared the top term "
        "(default 0.05)",
    )
    gotop.add_argument("--table", type=TABLE, help="also write the enrichment table")
    report = command(
        "report",
        cmd_report,
        f"summarise, as text, an h5ad written by {PROG}; optionally QQ plots",
        writes=False,
    )
    report.add_argument(
        "--plots",
        metavar="FOLDER",
        help="folder to write QQ plots into (nsc_de_qq.png, nsc_coex_qq.png)",
    )
    demo = command(
        "demo",
        cmd_demo,
        "run the pipeline on a generated CRISPR screen",
        reads_input=False,
        writes=False,
    )
    demo.add_argument(
        "--out",
        default="normalisr_sc_demo",
        metavar="FOLDER",
        help="output folder (default normalisr_sc_demo)",
    )
    demo.add_argument(
        "--n-cells",
        type=integer(500),
        default=4000,
        help="cells of the generated screen (default 4000)",
    )
    demo.add_argument("--seed", type=integer(0), default=0, help="random seed (default 0)")
    demo.add_argument("--force", action="store_true", help="replace existing output files")
    return parser


# --- running -------------------------------------------------------------------------


def _terminate(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _exit_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the command like an error: nothing is published."""
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {}
    try:
        for name in names:
            number_ = getattr(signal, name)
            previous[number_] = signal.signal(number_, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for number_, handler in previous.items():
            signal.signal(number_, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("goatools").setLevel(logging.WARNING)
    from . import _io

    progress = settings.progress
    if args.quiet:
        settings.progress = False
    try:
        with (
            _exit_on_signals(),
            _io.Outputs(_outputs(args), force=getattr(args, "force", False)) as outputs,
        ):
            args.function(args, outputs)
        for path in outputs.published:
            logger.info("wrote %s", path)
    except (ValueError, OSError) as error:
        if args.debug:
            raise
        print(f"{PROG} {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; no output written.", file=sys.stderr)
        return 130
    finally:
        settings.progress = progress
    return 0


def _one_line(error: Exception) -> str:
    if isinstance(error, OSError) and not isinstance(error, ValueError):
        where = f"{error.filename}: " if error.filename else ""
        text = f"{where}{error.strerror or error}"
    else:
        text = cli_words(str(error))
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
