"""Reading count matrices from the formats users have, and publishing outputs all or nothing.

Readers turn every problem of a file (missing companion files, truncated or corrupt
content, wrong shapes) into a ValueError that names the file and the problem.

Outputs of a command are declared up front (:class:`Outputs`): existing destinations are
refused before any work unless ``force``; every result is written into a private staging
directory on the destination's filesystem and renamed onto its destination only once the
whole command has succeeded, so a failing or killed command leaves no partial or stray
file. The staging directory is removed on success, on error, on SIGTERM/SIGHUP (the
command line turns them into a normal exit), by a small watchdog process when the command
is killed outright (SIGKILL), and, as a last resort, by the next command writing into the
same folder (stale directories of a process that no longer runs).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData, read_h5ad
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

#: Prefix of the private staging directories (hidden, one per command and folder).
STAGING_PREFIX = ".normalisr-sc-staging."

#: Errors that readers of third-party formats raise on a bad file.
_READ_ERRORS = (
    OSError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    UnicodeDecodeError,
    zlib.error,
    pd.errors.ParserError,
)


def _problem(error: BaseException) -> str:
    if isinstance(error, EOFError | zlib.error | gzip.BadGzipFile):
        return f"the file is truncated or corrupt ({error or type(error).__name__})"
    if isinstance(error, UnicodeDecodeError):
        return f"it is not UTF-8 text ({error.reason} at byte {error.start})"
    if isinstance(error, KeyError):
        return f"it has no entry {error}"
    text = str(error).strip() or type(error).__name__
    return text.rstrip(".")


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn any error of a third-party reader into a ValueError naming ``path``."""
    try:
        yield
    except _READ_ERRORS as error:
        msg = f"cannot read {what} {str(path)!r}: {_problem(error)}."
        raise ValueError(msg) from error


# --- readers ---------------------------------------------------------------------------


def _read_names(path: Path, what: str) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    if not path.is_file():
        msg = f"{what} file {str(path)!r} not found."
        raise ValueError(msg)
    with reading(path, what), opener(path, "rt", encoding="utf-8") as stream:
        names = [line.rstrip("\r\n").split("\t")[0] for line in stream if line.strip()]
    if not names:
        msg = f"{what} file {str(path)!r} lists no name."
        raise ValueError(msg)
    return names


def read_tsv_counts(matrix: Path, genes: Path, cells: Path) -> AnnData:
    """Read the reference package's layout: a genes x cells tsv matrix and two name lists."""
    gene_names = _read_names(Path(genes), "gene names")
    cell_names = _read_names(Path(cells), "cell names")
    with reading(matrix, "tsv count matrix"):
        table = pd.read_csv(matrix, sep="\t", header=None)
    if not all(pd.api.types.is_integer_dtype(t) for t in table.dtypes):
        bad = next(i for i, t in enumerate(table.dtypes) if not pd.api.types.is_integer_dtype(t))
        msg = (
            f"tsv count matrix {str(matrix)!r} holds non-integer values (column {bad + 1}, "
            f"e.g. {table.iloc[0, bad]!r}); it must hold UMI counts, tab-separated, no header."
        )
        raise ValueError(msg)
    counts = table.to_numpy(dtype=np.int64)
    if counts.shape != (len(gene_names), len(cell_names)):
        msg = (
            f"{matrix} is {counts.shape[0]} x {counts.shape[1]} but {genes} lists "
            f"{len(gene_names)} genes and {cells} lists {len(cell_names)} cells; the matrix "
            "must be genes x cells."
        )
        raise ValueError(msg)
    return AnnData(
        X=sparse.csr_matrix(counts.T),
        obs=pd.DataFrame(index=cell_names),
        var=pd.DataFrame(index=gene_names),
    )


def _find(folder: Path, stems: Iterable[str]) -> Path | None:
    for stem in stems:
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_10x_mtx(folder: str | os.PathLike) -> AnnData:
    """Read a Cell Ranger matrix folder (v2 ``genes.tsv`` or v3 ``features.tsv``, plain or .gz).

    Only 'Gene Expression' features are kept when the features file names the types;
    ``var_names`` are the gene symbols made unique, ``var['gene_ids']`` the identifiers.
    """
    from anndata.utils import make_index_unique
    from scipy import io as scipy_io

    folder = Path(folder)
    found = {
        "matrix": _find(folder, ["matrix.mtx"]),
        "features": _find(folder, ["features.tsv", "genes.tsv"]),
        "barcodes": _find(folder, ["barcodes.tsv"]),
    }
    expected = {
        "matrix": "matrix.mtx[.gz]",
        "features": "features.tsv[.gz] (or genes.tsv)",
        "barcodes": "barcodes.tsv[.gz]",
    }
    missing = [expected[k] for k, v in found.items() if v is None]
    files = {k: v for k, v in found.items() if v is not None}
    if missing:
        msg = (
            f"10x directory {str(folder)!r} has no {' and no '.join(missing)}; a Cell Ranger "
            "matrix folder holds matrix.mtx, features.tsv (genes.tsv) and barcodes.tsv."
        )
        raise ValueError(msg)
    with reading(files["matrix"], "10x matrix"):
        matrix = sparse.csr_matrix(scipy_io.mmread(files["matrix"]).T)
    tables = {}
    for kind in ("features", "barcodes"):
        with reading(files[kind], f"10x {kind} file"):
            tables[kind] = pd.read_csv(
                files[kind], sep="\t", header=None, dtype=str, keep_default_na=False
            )
    features, barcodes = tables["features"], tables["barcodes"]
    for kind, table, n, axis in (
        ("features", features, matrix.shape[1], "rows (genes)"),
        ("barcodes", barcodes, matrix.shape[0], "columns (cells)"),
    ):
        if len(table) != n:
            msg = (
                f"10x {kind} file {str(files[kind])!r} lists {len(table)} entries but "
                f"{str(files['matrix'])!r} has {n} {axis}."
            )
            raise ValueError(msg)
    symbols = features[1] if features.shape[1] > 1 else features[0]
    var = pd.DataFrame(
        {"gene_ids": features[0].to_numpy()}, index=make_index_unique(pd.Index(symbols.to_numpy()))
    )
    if features.shape[1] > 2:
        var["feature_types"] = features[2].to_numpy()
    adata = AnnData(X=matrix, obs=pd.DataFrame(index=barcodes[0].to_numpy()), var=var)
    if "feature_types" in var and (var["feature_types"] == "Gene Expression").any():
        adata = adata[:, (var["feature_types"] == "Gene Expression").to_numpy()].copy()
    return adata


def read_counts(
    path: str | os.PathLike, *, genes: str | None = None, cells: str | None = None
) -> AnnData:
    """Read counts from an h5ad, a 10x directory or .h5, or a tsv matrix with name lists."""
    path = Path(path)
    if not path.exists():
        msg = f"input {str(path)!r} not found."
        raise ValueError(msg)
    if path.is_dir():
        return read_10x_mtx(path)
    suffixes = "".join(path.suffixes[-2:])
    if path.suffix == ".h5ad":
        with reading(path, "h5ad file"):
            return read_h5ad(path)
    if path.suffix == ".h5":
        import scanpy as sc

        with reading(path, "10x .h5 file"):
            return sc.read_10x_h5(path)
    if suffixes in (".tsv.gz", ".txt.gz") or path.suffix in (".tsv", ".txt"):
        if genes is None or cells is None:
            msg = "a tsv count matrix needs --genes and --cells files naming its rows and columns."
            raise ValueError(msg)
        return read_tsv_counts(path, Path(genes), Path(cells))
    msg = (
        f"cannot tell the format of {str(path)!r}: use .h5ad, a 10x directory, a 10x .h5, or "
        "a .tsv[.gz] genes x cells matrix with --genes/--cells."
    )
    raise ValueError(msg)


# --- writers ---------------------------------------------------------------------------


def write_h5ad_to(adata: AnnData, path: Path) -> None:
    """Write ``adata`` to ``path`` (a staged path from :class:`Outputs`)."""
    adata.write_h5ad(path)


def write_table_to(table: pd.DataFrame, path: Path, name: str | os.PathLike) -> None:
    """Write a tsv or csv table (by the suffix of ``name``), gzip-compressed if it ends in .gz."""
    name = str(name)
    separator = "," if ".csv" in Path(name).suffixes else "\t"
    table.to_csv(
        path, sep=separator, index=False, compression="gzip" if name.endswith(".gz") else None
    )


def write_h5ad(adata: AnnData, target: str | os.PathLike, *, force: bool) -> None:
    """Write one h5ad all or nothing (see :class:`Outputs`)."""
    with Outputs([target], force=force) as outputs:
        write_h5ad_to(adata, outputs.path(target))


def write_table(table: pd.DataFrame, target: str | os.PathLike, *, force: bool) -> None:
    """Write one table all or nothing (see :class:`Outputs`)."""
    with Outputs([target], force=force) as outputs:
        write_table_to(table, outputs.path(target), target)


def _existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.is_dir():
            return parent
    return Path(path.anchor or ".")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def sweep_stale(folder: Path) -> list[Path]:
    """Remove staging directories left in ``folder`` by processes of this host that died."""
    removed = []
    host = _host()
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if not entry.name.startswith(STAGING_PREFIX) or not entry.is_dir():
                continue
            parts = entry.name[len(STAGING_PREFIX) :].split(".")
            if len(parts) < 3 or parts[0] != host or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid != os.getpid() and not _alive(pid):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


#: The watchdog: waits until its standard input closes (its parent ended, however it
#: ended), then removes the staging directory named in its arguments.
_WATCHDOG = (
    "import shutil, sys\n"
    "sys.stdin.buffer.read()\n"
    "for folder in sys.argv[1:]:\n"
    "    shutil.rmtree(folder, ignore_errors=True)\n"
)


class Outputs:
    """The output files of one command, published all at once or not at all.

    Parameters
    ----------
    destinations
        Every file the command may write. Each must be new unless ``force``; this is
        checked here, before any work.
    force
        Replace existing destinations.

    Use as a context manager: :meth:`path` gives the staged path to write a destination
    to; leaving the block without an error renames every staged file onto its
    destination (creating missing folders), an error discards them all.
    """

    def __init__(self, destinations: Iterable[str | os.PathLike], *, force: bool) -> None:
        self.force = force
        self.destinations: list[Path] = []
        for destination in destinations:
            path = Path(destination)
            if path in self.destinations:
                msg = f"{str(path)!r} is named as two different outputs; give each its own file."
                raise ValueError(msg)
            self.destinations.append(path)
        self._check()
        for folder in {_existing_ancestor(d.absolute()) for d in self.destinations}:
            sweep_stale(folder)
        self._staging: dict[Path, Path] = {}
        self._staged: dict[Path, Path] = {}
        self._watchdogs: list[subprocess.Popen] = []
        #: The destinations written, once published.
        self.published: list[Path] = []

    def _check(self) -> None:
        folders = [d for d in self.destinations if d.is_dir()]
        if folders:
            msg = f"{str(folders[0])!r} is a directory; name a file as the output."
            raise ValueError(msg)
        for destination in self.destinations:
            blocker = next((p for p in destination.parents if p.exists() and not p.is_dir()), None)
            if blocker is not None:
                msg = f"cannot write {str(destination)!r}: {str(blocker)!r} is not a directory."
                raise ValueError(msg)
        existing = [str(d) for d in self.destinations if d.exists() or d.is_symlink()]
        if existing and not self.force:
            names = ", ".join(repr(e) for e in existing)
            msg = (
                f"{names} {'exists' if len(existing) == 1 else 'exist'}; pass --force to "
                f"overwrite {'it' if len(existing) == 1 else 'them'}."
            )
            raise ValueError(msg)

    def __enter__(self) -> Outputs:
        return self

    def _staging_folder(self, destination: Path) -> Path:
        parent = _existing_ancestor(destination.absolute())
        if parent not in self._staging:
            try:
                folder = Path(
                    tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{_host()}.{os.getpid()}.", dir=parent)
                )
            except OSError as error:
                msg = f"cannot write into {str(parent)!r}: {error.strerror or error}."
                raise ValueError(msg) from error
            self._staging[parent] = folder
            self._start_watchdog(folder)
        return self._staging[parent]

    def _start_watchdog(self, folder: Path) -> None:
        # Without a watchdog (cannot start a process), the next command's sweep cleans up.
        with contextlib.suppress(OSError):
            self._watchdogs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WATCHDOG, str(folder)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    close_fds=True,
                )
            )

    def path(self, destination: str | os.PathLike) -> Path:
        """Return the staged path to write ``destination`` to (declared in the constructor)."""
        destination = Path(destination)
        if destination not in self.destinations:
            msg = f"{str(destination)!r} was not declared as an output."
            raise RuntimeError(msg)
        if destination not in self._staged:
            folder = self._staging_folder(destination)
            self._staged[destination] = folder / f"{len(self._staged)}-{destination.name}"
        return self._staged[destination]

    def publish(self) -> list[Path]:
        """Rename every staged file that was written onto its destination.

        Termination signals wait until every file is in place (all or nothing).
        """
        blocked = {
            getattr(signal, name)
            for name in ("SIGTERM", "SIGHUP", "SIGINT")
            if hasattr(signal, name)
        }
        held = (
            hasattr(signal, "pthread_sigmask")
            and threading.current_thread() is threading.main_thread()
        )
        if held:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            return self._publish()
        finally:
            if held:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _publish(self) -> list[Path]:
        written = [(staged, d) for d, staged in self._staged.items() if staged.exists()]
        self.destinations = [d for _, d in written]
        self._check()  # nothing appeared meanwhile
        for staged, destination in written:
            destination.parent.mkdir(parents=True, exist_ok=True)
            if self.force:
                os.replace(staged, destination)
                self.published.append(destination)
                continue
            try:
                os.link(staged, destination)  # fails, rather than replaces, if it appeared
            except FileExistsError:
                msg = f"{str(destination)!r} appeared while the command ran; pass --force."
                raise ValueError(msg) from None
            except OSError:  # a filesystem without hard links
                os.replace(staged, destination)
            else:
                staged.unlink()
            self.published.append(destination)
        return self.published

    def discard(self) -> None:
        """Remove the staging directories and stop the watchdog."""
        for folder in self._staging.values():
            shutil.rmtree(folder, ignore_errors=True)
        self._staging.clear()
        self._staged.clear()
        for watchdog in self._watchdogs:
            assert watchdog.stdin is not None  # started with stdin=PIPE
            with contextlib.suppress(OSError):
                watchdog.stdin.close()
            watchdog.wait()
        self._watchdogs.clear()

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self.publish()
        finally:
            self.discard()
