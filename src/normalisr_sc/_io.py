"""Reading count matrices from the formats users have, and writing outputs atomically."""

from __future__ import annotations

import gzip
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData, read_h5ad
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Iterator


def _read_names(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as stream:
        return [line.rstrip("\n").split("\t")[0] for line in stream if line.strip()]


def read_tsv_counts(matrix: Path, genes: Path, cells: Path) -> AnnData:
    """The reference package's layout: a genes x cells tsv matrix and two name lists."""
    counts = pd.read_csv(matrix, sep="\t", header=None, dtype=np.int64).to_numpy()
    gene_names, cell_names = _read_names(genes), _read_names(cells)
    if counts.shape != (len(gene_names), len(cell_names)):
        msg = (
            f"{matrix} is {counts.shape[0]} x {counts.shape[1]} but {genes} lists "
            f"{len(gene_names)} genes and {cells} lists {len(cell_names)} cells; the matrix "
            "must be genes x cells."
        )
        raise ValueError(msg)
    return AnnData(X=sparse.csr_matrix(counts.T), obs=pd.DataFrame(index=cell_names),
                   var=pd.DataFrame(index=gene_names))


def read_counts(path: str | os.PathLike, *, genes: str | None = None,
                cells: str | None = None) -> AnnData:
    """Counts from an h5ad, a 10x directory or .h5, or a tsv matrix with name lists."""
    import scanpy as sc

    path = Path(path)
    if not path.exists():
        msg = f"input {str(path)!r} not found."
        raise ValueError(msg)
    if path.is_dir():
        if not any((path / f).exists() for f in ("matrix.mtx", "matrix.mtx.gz")):
            msg = f"directory {str(path)!r} has no matrix.mtx[.gz]; expected a 10x directory."
            raise ValueError(msg)
        return sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=True)
    suffixes = "".join(path.suffixes[-2:])
    if path.suffix == ".h5ad":
        return read_h5ad(path)
    if path.suffix == ".h5":
        return sc.read_10x_h5(path)
    if suffixes in (".tsv", ".tsv.gz", ".txt", ".txt.gz") or path.suffix in (".tsv", ".txt"):
        if genes is None or cells is None:
            msg = "a tsv count matrix needs --genes and --cells files naming its rows and columns."
            raise ValueError(msg)
        return read_tsv_counts(path, Path(genes), Path(cells))
    msg = (
        f"cannot tell the format of {str(path)!r}: use .h5ad, a 10x directory, a 10x .h5, or "
        "a .tsv[.gz] genes x cells matrix with --genes/--cells."
    )
    raise ValueError(msg)


@contextmanager
def atomic_path(target: str | os.PathLike, *, force: bool) -> Iterator[Path]:
    """A temporary path next to ``target``, renamed onto it only if the block succeeds."""
    target = Path(target)
    if target.exists() and not force:
        msg = f"{str(target)!r} exists; pass --force to overwrite it."
        raise ValueError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent,
                                         suffix="".join(target.suffixes))
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_h5ad(adata: AnnData, target: str | os.PathLike, *, force: bool) -> None:
    with atomic_path(target, force=force) as temporary:
        adata.write_h5ad(temporary)


def write_table(table: pd.DataFrame, target: str | os.PathLike, *, force: bool) -> None:
    """A tsv or csv table (by suffix), gzip-compressed if the name ends in .gz."""
    name = str(target)
    separator = "," if ".csv" in Path(name).suffixes else "\t"
    with atomic_path(target, force=force) as temporary:
        table.to_csv(temporary, sep=separator, index=False,
                     compression="gzip" if name.endswith(".gz") else None)
