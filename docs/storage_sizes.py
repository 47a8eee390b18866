"""Measure what each result of ``normalize``, ``de`` and ``coex`` costs on PBMC 3k.

Run from the repository: ``python docs/storage_sizes.py [PATH_TO_pbmc3k_raw.h5ad]``
(default ``../shared/data/pbmc3k_raw.h5ad``). For float64 and float32 layers, it prints
one row per stored array: its size in memory (``nbytes``, summed over the arrays of a
sparse matrix or a data frame) and on disk (bytes of its datasets in the h5ad, which
anndata writes uncompressed by default), then the size of each h5ad file. The numbers
of ``docs/storage.md`` come from this script.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from scipy import sparse

import normalisr_sc as nsc

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_raw.h5ad"


def _nbytes(value: object) -> int:
    if sparse.issparse(value):
        return sum(a.nbytes for a in (value.data, value.indices, value.indptr))
    if isinstance(value, pd.DataFrame):
        return int(value.memory_usage(index=False, deep=True).sum())
    if isinstance(value, pd.Series):
        return int(value.memory_usage(index=False, deep=True))
    return int(np.asarray(value).nbytes)


def _on_disk(group: h5py.Group | h5py.Dataset) -> int:
    if isinstance(group, h5py.Dataset):
        return group.id.get_storage_size()
    return sum(_on_disk(child) for child in group.values())


def _rows(adata: ad.AnnData, path: Path, dtype: str) -> list[dict[str, object]]:
    rows = []
    with h5py.File(path, "r") as file:
        for container in ("X", "layers", "obsm", "varm", "varp"):
            items = {"X": adata.X} if container == "X" else dict(getattr(adata, container))
            for key, value in items.items():
                where = "X" if container == "X" else f"{container}/{key}"
                rows.append(
                    {
                        "dtype": dtype,
                        "key": where if container != "X" else "X (raw counts)",
                        "shape": "x".join(map(str, np.shape(value))),
                        "memory_MB": _nbytes(value) / 1e6,
                        "disk_MB": _on_disk(file[where]) / 1e6,
                    }
                )
        for key in ("normalisr", "nsc_de", "nsc_coex"):
            if key in file["uns"]:
                rows.append(
                    {
                        "dtype": dtype,
                        "key": f"uns/{key}",
                        "shape": "",
                        "memory_MB": float("nan"),
                        "disk_MB": _on_disk(file[f"uns/{key}"]) / 1e6,
                    }
                )
    return rows


def main(source: Path) -> None:
    tables = []
    sizes = {"input": source.stat().st_size / 1e6}
    for dtype in ("float64", "float32"):
        adata = ad.read_h5ad(source)
        labelled = adata.obs["seurat_cell_type"].notna().to_numpy()
        nsc.pp.normalize(adata, dtype=dtype)
        print(f"{dtype}: {adata.n_obs} cells x {adata.n_vars} genes after QC", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            after = Path(scratch) / "normalized.h5ad"
            adata.write_h5ad(after)
            sizes[f"normalize ({dtype})"] = after.stat().st_size / 1e6
            labelled = adata.obs["seurat_cell_type"].notna().sum()
            nsc.tl.de(adata, "seurat_cell_type")
            nsc.tl.coex(adata, dtype=dtype)
            done = Path(scratch) / "all.h5ad"
            adata.write_h5ad(done)
            sizes[f"normalize + de + coex ({dtype})"] = done.stat().st_size / 1e6
            tables.extend(_rows(adata, done, dtype))
            if dtype == "float32":  # the network alone: coex(store="network")
                net = Path(scratch) / "network.h5ad"
                nsc.tl.coex(adata, dtype=dtype, store="network", key_added="nsc_coex_only_net")
                adata.write_h5ad(net)
                with h5py.File(net, "r") as file:
                    for key in adata.varp:
                        if key.startswith("nsc_coex_only_net"):
                            size = _on_disk(file[f"varp/{key}"]) / 1e6
                            memory = _nbytes(adata.varp[key]) / 1e6
                            print(
                                f"coex(store='network') varp/{key}: {memory:.1f} MB, {size:.1f} MB on disk"
                            )
        print(f"  de on {labelled} labelled cells, {len(adata.uns['nsc_de']['groups'])} groups")
    table = pd.DataFrame(tables)
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    for name, size in sizes.items():
        print(f"h5ad {name}: {size:.1f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
