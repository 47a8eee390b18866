"""Local Gene Ontology files: reading (cached) and enrichment with goatools.

Nothing here touches the network: users bring a GO DAG in OBO format and an annotation
file (GAF or NCBI gene2go, plain or gzip-compressed). Parsing them takes seconds, so
parsed objects are cached per session, keyed by path, modification time and size.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator

    from goatools.obo_parser import GODag

#: GO evidence codes used by default: every code except the expression-based ones
#: (IEP, HEP), which would make co-expression explain itself, and ND (no data).
DEFAULT_EVIDENCE = frozenset(
    {
        "EXP",
        "IDA",
        "IPI",
        "IMP",
        "IGI",
        "HTP",
        "HDA",
        "HMP",
        "HGI",
        "IBA",
        "IBD",
        "IKR",
        "IRD",
        "ISS",
        "ISO",
        "ISA",
        "ISM",
        "IGC",
        "RCA",
        "TAS",
        "NAS",
        "IC",
        "IEA",
    }
)

_cache: dict[tuple, Any] = {}


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _check_readable(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        msg = f"{what} file {str(path)!r} not found; pass the path of a local file."
        raise ValueError(msg)
    with _reading(path, what), _open_text(path) as stream:
        stream.read(1)
    return path


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Errors while reading ``path`` (truncated gzip, not text...) as a ValueError naming it."""
    try:
        yield
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as error:
        if isinstance(error, EOFError | zlib.error | gzip.BadGzipFile):
            problem = f"it is truncated or corrupt ({error})"
        elif isinstance(error, UnicodeDecodeError):
            problem = f"it is not UTF-8 text ({error.reason} at byte {error.start})"
        else:
            problem = str(error.strerror or error)
        msg = f"cannot read {what} file {str(path)!r}: {problem}; download it again."
        raise ValueError(msg) from error


@contextlib.contextmanager
def _goatools(path: Path, what: str) -> Iterator[None]:
    """Run a goatools reader silently; its failures (it may exit) name the file."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            yield
    except (Exception, SystemExit) as error:
        detail = (
            next(
                (
                    line.strip()
                    for line in reversed(printed.getvalue().splitlines())
                    if line.strip()
                ),
                "",
            )
            or str(error)
            or type(error).__name__
        )
        msg = f"cannot parse {what} file {str(path)!r}: {detail}"
        raise ValueError(msg) from error


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


@contextlib.contextmanager
def _plain_file(path: Path, what: str) -> Iterator[str]:
    """Yield a plain-text path for goatools, which cannot read gzip (decompressed to a temp)."""
    if path.suffix != ".gz":
        yield str(path)
        return
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / path.stem
        with (
            _reading(path, what),
            _open_text(path) as source,
            open(plain, "w", encoding="utf-8") as target,
        ):
            shutil.copyfileobj(source, target)
        yield str(plain)


def _head(path: Path, what: str, n_lines: int = 50) -> list[str]:
    with _reading(path, what), _open_text(path) as stream:
        return [line for _, line in zip(range(n_lines), stream, strict=False)]


def read_godag(path: str | os.PathLike) -> GODag:
    """Read the GO DAG of an OBO file (plain or .gz), parsed once per session."""
    from goatools.obo_parser import GODag

    what = "GO OBO"
    path = _check_readable(path, what)
    key = ("obo", *_file_key(path))
    if key not in _cache:
        head = _head(path, what)
        if not any(line.startswith(("format-version:", "[Term]")) for line in head):
            msg = (
                f"{str(path)!r} does not look like an OBO file (no 'format-version:' header or "
                "'[Term]' stanza at its start); pass a GO DAG such as go-basic.obo."
            )
            raise ValueError(msg)
        with _plain_file(path, what) as plain, _goatools(path, what):
            dag = GODag(plain, prt=None)
        if len(dag) == 0:
            msg = f"no GO terms found in {str(path)!r}; pass a GO DAG such as go-basic.obo."
            raise ValueError(msg)
        _cache[key] = dag
    return _cache[key]


@dataclass(frozen=True)
class Annotations:
    """Gene -> GO term annotations of one file, with the gene symbols if it has them."""

    gene_to_terms: dict[str, frozenset[str]]
    symbol_to_gene: dict[str, str]
    file_format: str


def _annotation_format(path: Path, what: str) -> str:
    head = _head(path, what)
    if any(line.startswith("!gaf-version") for line in head):
        return "gaf"
    first = next((line for line in head if line.strip()), "")
    if "GeneID" in first and "GO_ID" in first:
        return "gene2go"
    msg = (
        f"{str(path)!r} is neither a GAF file (first line '!gaf-version: 2.x') nor an NCBI "
        "gene2go file (header with 'GeneID' and 'GO_ID'); pass one of those formats."
    )
    raise ValueError(msg)


#: Columns (0-based) of the fields read: gene id, symbol, qualifier, GO id, evidence, and
#: the least number of columns of a record.
_LAYOUTS = {"gaf": (1, 2, 3, 4, 6, 15), "gene2go": (1, None, 4, 2, 3, 8)}


def _records(path: Path, what: str, file_format: str) -> Iterator[tuple[str, str, str, str, str]]:
    """(gene, symbol, qualifier, term, evidence) of each record, checking its columns."""
    gene_col, symbol_col, qualifier_col, term_col, evidence_col, n_columns = _LAYOUTS[file_format]
    with _reading(path, what), _open_text(path) as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip() or line.startswith(("!", "#")):
                continue
            fields = line.rstrip("\r\n").split("\t")
            term = fields[term_col] if len(fields) > term_col else ""
            if len(fields) < n_columns or not term.startswith("GO:"):
                msg = (
                    f"{what} file {str(path)!r}, line {number}: expected a {file_format} "
                    f"record of {n_columns} tab-separated columns with a GO id in column "
                    f"{term_col + 1}, got {len(fields)} column(s) "
                    f"{line.strip()[:60]!r}; the file is truncated or not {file_format}."
                )
                raise ValueError(msg)
            symbol = fields[symbol_col] if symbol_col is not None else ""
            yield (fields[gene_col], symbol, fields[qualifier_col], term, fields[evidence_col])


def read_annotations(
    path: str | os.PathLike, *, evidence: Collection[str] = DEFAULT_EVIDENCE
) -> Annotations:
    """Gene annotations of a GAF or gene2go file (plain or .gz), parsed once per session.

    Annotations qualified ``NOT`` and those whose evidence code is not in ``evidence``
    are dropped. A record with missing columns (a truncated file) is a ValueError
    naming the file and the line.
    """
    what = "GO annotation"
    path = _check_readable(path, what)
    evidence = frozenset(evidence)
    key = ("annotations", *_file_key(path), evidence)
    if key not in _cache:
        file_format = _annotation_format(path, what)
        gene_terms: dict[str, set[str]] = {}
        symbol_to_gene: dict[str, str] = {}
        for gene, symbol, qualifier, term, code in _records(path, what, file_format):
            if code not in evidence or "NOT" in qualifier.replace("|", " ").split():
                continue
            gene_terms.setdefault(gene, set()).add(term)
            if symbol:
                symbol_to_gene[symbol] = gene
        _cache[key] = Annotations(
            {gene: frozenset(terms) for gene, terms in gene_terms.items()},
            symbol_to_gene,
            file_format,
        )
    return _cache[key]


def propagate(annotations: Annotations, dag: GODag) -> dict[str, frozenset[str]]:
    """Each gene's terms together with all their ancestors in the DAG (cached)."""
    key = ("propagated", id(annotations), id(dag))
    if key not in _cache:
        ancestors: dict[str, frozenset[str]] = {}
        propagated = {}
        for gene, terms in annotations.gene_to_terms.items():
            closure: set[str] = set()
            for term in terms:
                if term not in dag:
                    continue
                if term not in ancestors:
                    ancestors[term] = frozenset({dag[term].id} | dag[term].get_all_parents())
                closure |= ancestors[term]
            propagated[gene] = frozenset(closure)
        _cache[key] = propagated
    return _cache[key]


def enrichment(
    study: Collection[str],
    population: Collection[str],
    gene_terms: dict[str, frozenset[str]],
    dag: GODag,
) -> pd.DataFrame:
    """Fisher's exact test of every GO term annotated in ``study`` against ``population``.

    ``gene_terms`` must already be propagated to ancestor terms. Returns one row per
    term sorted by p-value, with Bonferroni p-values, odds ratios and counts.
    """
    from goatools.go_enrichment import GOEnrichmentStudy

    population = list(population)
    assoc = {gene: set(gene_terms[gene]) for gene in population if gene in gene_terms}
    goea = GOEnrichmentStudy(
        population, assoc, dag, propagate_counts=False, methods=["bonferroni"], log=None
    )
    records = goea.run_study(list(study), prt=None)
    rows = []
    for record in records:
        in_study, n_study = record.study_count, record.study_n
        in_pop, n_pop = record.pop_count, record.pop_n
        # 2x2 table: study vs the rest of the population, in term vs not.
        contingency = np.array(
            [
                [in_study, n_study - in_study],
                [in_pop - in_study, n_pop - n_study - (in_pop - in_study)],
            ],
            float,
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            odds = contingency[0, 0] * contingency[1, 1] / (contingency[0, 1] * contingency[1, 0])
        rows.append(
            {
                "term": record.GO,
                "name": record.name,
                "namespace": record.NS,
                "depth": int(record.depth),
                "pval": record.p_uncorrected,
                "pval_bonferroni": record.p_bonferroni,
                "odds_ratio": odds,
                "study_count": in_study,
                "study_size": n_study,
                "population_count": in_pop,
                "population_size": n_pop,
                "genes": ",".join(sorted(record.study_items)),
            }
        )
    columns = [
        "term",
        "name",
        "namespace",
        "depth",
        "pval",
        "pval_bonferroni",
        "odds_ratio",
        "study_count",
        "study_size",
        "population_count",
        "population_size",
        "genes",
    ]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["pval", "term"], kind="stable").reset_index(drop=True)
