"""Reading count files and writing outputs atomically."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from scipy import io as scipy_io
from scipy import sparse

import normalisr_sc as nsc
from normalisr_sc import _io


@pytest.fixture
def small():
    return nsc.datasets.simulate(n_cells=30, n_genes=25, n_modules=1, seed=2)


def test_tsv_layout_round_trip(small, tmp_path):
    counts = small.X.toarray().T
    np.savetxt(tmp_path / "reads.tsv.gz", counts, fmt="%d", delimiter="\t")
    with gzip.open(tmp_path / "genes.txt.gz", "wt") as stream:
        stream.write("\n".join(small.var_names) + "\n")
    (tmp_path / "cells.txt").write_text("\n".join(small.obs_names) + "\n")
    adata = _io.read_counts(tmp_path / "reads.tsv.gz", genes=tmp_path / "genes.txt.gz",
                            cells=tmp_path / "cells.txt")
    np.testing.assert_array_equal(adata.X.toarray(), small.X.toarray())
    assert list(adata.var_names) == list(small.var_names)
    assert list(adata.obs_names) == list(small.obs_names)


def test_tsv_shape_mismatch(small, tmp_path):
    np.savetxt(tmp_path / "reads.tsv", small.X.toarray(), fmt="%d", delimiter="\t")  # cells x genes
    (tmp_path / "genes.txt").write_text("\n".join(small.var_names))
    (tmp_path / "cells.txt").write_text("\n".join(small.obs_names))
    with pytest.raises(ValueError, match="must be genes x cells"):
        _io.read_counts(tmp_path / "reads.tsv", genes=tmp_path / "genes.txt",
                        cells=tmp_path / "cells.txt")


def test_10x_directory(small, tmp_path):
    folder = tmp_path / "filtered"
    folder.mkdir()
    scipy_io.mmwrite(folder / "matrix.mtx", sparse.csr_matrix(small.X.T))
    pd.DataFrame({"id": [f"ENSG{i}" for i in range(small.n_vars)], "name": small.var_names,
                  "type": "Gene Expression"}).to_csv(folder / "features.tsv", sep="\t",
                                                      header=False, index=False)
    (folder / "barcodes.tsv").write_text("\n".join(small.obs_names) + "\n")
    for name in ("matrix.mtx", "features.tsv", "barcodes.tsv"):
        with open(folder / name, "rb") as source, gzip.open(folder / f"{name}.gz", "wb") as target:
            target.write(source.read())
        (folder / name).unlink()
    adata = _io.read_counts(folder)
    np.testing.assert_array_equal(adata.X.toarray(), small.X.toarray())
    assert list(adata.var_names) == list(small.var_names)


def test_unknown_inputs(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        _io.read_counts(tmp_path / "missing.h5ad")
    (tmp_path / "data.xyz").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        _io.read_counts(tmp_path / "data.xyz")
    with pytest.raises(ValueError, match=r"no matrix\.mtx"):
        _io.read_counts(tmp_path)


def test_atomic_write_keeps_existing_file_on_failure(small, tmp_path):
    target = tmp_path / "out.h5ad"
    _io.write_h5ad(small, target, force=False)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="--force"):
        _io.write_h5ad(small, target, force=False)

    def interrupted_write() -> None:
        with _io.atomic_path(target, force=True) as temporary:
            temporary.write_bytes(b"partial")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


def test_tables_by_suffix(tmp_path):
    table = pd.DataFrame({"gene": ["a", "b"], "pval": [0.1, 0.2]})
    _io.write_table(table, tmp_path / "t.csv", force=False)
    _io.write_table(table, tmp_path / "t.tsv.gz", force=False)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), table)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.tsv.gz", sep="\t"), table)


def test_10x_h5(small, tmp_path):
    import h5py

    matrix = sparse.csc_matrix(small.X.T)  # 10x stores genes x cells, compressed by cell
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    with h5py.File(path, "w") as store:
        group = store.create_group("matrix")
        group["data"] = matrix.data.astype(np.int32)
        group["indices"] = matrix.indices.astype(np.int64)
        group["indptr"] = matrix.indptr.astype(np.int64)
        group["shape"] = np.array(matrix.shape, dtype=np.int32)
        group["barcodes"] = np.array(small.obs_names, dtype="S")
        features = group.create_group("features")
        features["id"] = np.array([f"ENSG{i}" for i in range(small.n_vars)], dtype="S")
        features["name"] = np.array(small.var_names, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * small.n_vars, dtype="S")
        features["genome"] = np.array(["GRCh38"] * small.n_vars, dtype="S")
    adata = _io.read_counts(path)
    np.testing.assert_array_equal(adata.X.toarray(), small.X.toarray())
    assert list(adata.var_names) == list(small.var_names)
