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
    adata = _io.read_counts(
        tmp_path / "reads.tsv.gz", genes=tmp_path / "genes.txt.gz", cells=tmp_path / "cells.txt"
    )
    np.testing.assert_array_equal(adata.X.toarray(), small.X.toarray())
    assert list(adata.var_names) == list(small.var_names)
    assert list(adata.obs_names) == list(small.obs_names)


def test_tsv_shape_mismatch(small, tmp_path):
    np.savetxt(tmp_path / "reads.tsv", small.X.toarray(), fmt="%d", delimiter="\t")  # cells x genes
    (tmp_path / "genes.txt").write_text("\n".join(small.var_names))
    (tmp_path / "cells.txt").write_text("\n".join(small.obs_names))
    with pytest.raises(ValueError, match="must be genes x cells"):
        _io.read_counts(
            tmp_path / "reads.tsv", genes=tmp_path / "genes.txt", cells=tmp_path / "cells.txt"
        )


def test_10x_directory(small, tmp_path):
    folder = tmp_path / "filtered"
    folder.mkdir()
    scipy_io.mmwrite(folder / "matrix.mtx", sparse.csr_matrix(small.X.T))
    pd.DataFrame(
        {
            "id": [f"ENSG{i}" for i in range(small.n_vars)],
            "name": small.var_names,
            "type": "Gene Expression",
        }
    ).to_csv(folder / "features.tsv", sep="\t", header=False, index=False)
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


def test_write_keeps_existing_file_on_failure(small, tmp_path):
    target = tmp_path / "out.h5ad"
    _io.write_h5ad(small, target, force=False)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="--force"):
        _io.write_h5ad(small, target, force=False)

    def interrupted_write() -> None:
        with _io.Outputs([target], force=True) as outputs:
            outputs.path(target).write_bytes(b"partial")
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


def _write_10x(small, folder, names=("matrix.mtx", "features.tsv", "barcodes.tsv"), compress=True):
    folder.mkdir()
    scipy_io.mmwrite(folder / "matrix.mtx", sparse.csr_matrix(small.X.T))
    pd.DataFrame(
        {
            "id": [f"ENSG{i}" for i in range(small.n_vars)],
            "name": small.var_names,
            "type": "Gene Expression",
        }
    ).to_csv(folder / "features.tsv", sep="\t", header=False, index=False)
    (folder / "barcodes.tsv").write_text("\n".join(small.obs_names) + "\n")
    for name in ("matrix.mtx", "features.tsv", "barcodes.tsv"):
        if name not in names:
            (folder / name).unlink()
        elif compress:
            with (
                open(folder / name, "rb") as source,
                gzip.open(folder / f"{name}.gz", "wb") as target,
            ):
                target.write(source.read())
            (folder / name).unlink()


def test_10x_directory_plain_files_and_legacy_names(small, tmp_path):
    _write_10x(small, tmp_path / "plain", compress=False)  # gunzipped v3 folder
    adata = _io.read_counts(tmp_path / "plain")
    np.testing.assert_array_equal(adata.X.toarray(), small.X.toarray())
    assert list(adata.obs_names) == list(small.obs_names)
    assert list(adata.var["gene_ids"]) == [f"ENSG{i}" for i in range(small.n_vars)]
    _write_10x(small, tmp_path / "v2", compress=False)
    (tmp_path / "v2" / "features.tsv").rename(tmp_path / "v2" / "genes.tsv")
    assert list(_io.read_counts(tmp_path / "v2").var_names) == list(small.var_names)


@pytest.mark.parametrize(
    ("kept", "missing"),
    [
        (("matrix.mtx", "features.tsv"), "barcodes.tsv[.gz]"),
        (("matrix.mtx", "barcodes.tsv"), "features.tsv[.gz] (or genes.tsv)"),
        (("features.tsv", "barcodes.tsv"), "matrix.mtx[.gz]"),
    ],
)
def test_10x_directory_names_the_missing_file(small, tmp_path, kept, missing):
    _write_10x(small, tmp_path / "10x", names=kept)
    with pytest.raises(ValueError, match="10x directory") as error:
        _io.read_counts(tmp_path / "10x")
    assert f"has no {missing};" in str(error.value)
    assert str(tmp_path / "10x") in str(error.value)


def test_10x_directory_bad_contents(small, tmp_path):
    _write_10x(small, tmp_path / "short")
    with gzip.open(tmp_path / "short" / "barcodes.tsv.gz", "wt") as stream:
        stream.write("\n".join(small.obs_names[:-2]) + "\n")
    with pytest.raises(
        ValueError,
        match=r"barcodes\.tsv\.gz' lists 28 entries but .*"
        r"has 30 columns \(cells\)",
    ):
        _io.read_counts(tmp_path / "short")
    _write_10x(small, tmp_path / "cut")
    data = (tmp_path / "cut" / "matrix.mtx.gz").read_bytes()
    (tmp_path / "cut" / "matrix.mtx.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read 10x matrix .*matrix\.mtx\.gz'.*truncated"):
        _io.read_counts(tmp_path / "cut")


def test_bad_files_name_the_file_and_problem(small, tmp_path):
    (tmp_path / "broken.h5ad").write_bytes(b"this is not HDF5")
    with pytest.raises(ValueError, match=r"cannot read h5ad file .*broken\.h5ad'"):
        _io.read_counts(tmp_path / "broken.h5ad")
    small.write_h5ad(tmp_path / "cut.h5ad")
    data = (tmp_path / "cut.h5ad").read_bytes()
    (tmp_path / "cut.h5ad").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cannot read h5ad file .*cut\.h5ad'"):
        _io.read_counts(tmp_path / "cut.h5ad")
    (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ValueError, match=r"cannot read 10x \.h5 file .*x\.h5'"):
        _io.read_counts(tmp_path / "x.h5")
    # A tsv matrix with a non-count value; name lists missing or empty.
    (tmp_path / "m.tsv").write_text("1\t2\n3\t0.5\n")
    (tmp_path / "g.txt").write_text("a\nb\n")
    (tmp_path / "c.txt").write_text("x\ny\n")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"m\.tsv' holds non-integer values \(column 2"):
        _io.read_counts(tmp_path / "m.tsv", genes=tmp_path / "g.txt", cells=tmp_path / "c.txt")
    with pytest.raises(ValueError, match=r"cell names file .*nope\.txt' not found"):
        _io.read_counts(tmp_path / "m.tsv", genes=tmp_path / "g.txt", cells=tmp_path / "nope.txt")
    with pytest.raises(ValueError, match=r"gene names file .*empty\.txt' lists no name"):
        _io.read_counts(tmp_path / "m.tsv", genes=tmp_path / "empty.txt", cells=tmp_path / "c.txt")
    (tmp_path / "gz.tsv.gz").write_bytes(gzip.compress(b"1\t2\n3\t4\n" * 1000)[:40])
    with pytest.raises(ValueError, match=r"cannot read tsv count matrix .*gz\.tsv\.gz'"):
        _io.read_counts(tmp_path / "gz.tsv.gz", genes=tmp_path / "g.txt", cells=tmp_path / "c.txt")


def test_truncated_go_files(tmp_path):
    from normalisr_sc import _go

    obo = "format-version: 1.2\n\n" + "".join(
        f"[Term]\nid: GO:{i:07d}\nname: term {i}\nnamespace: biological_process\n\n"
        for i in range(1, 2000)
    )
    compressed = gzip.compress(obo.encode())
    (tmp_path / "cut.obo.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(
        ValueError,
        match=r"cannot read GO OBO file .*cut\.obo\.gz': it is "
        r"truncated or corrupt",
    ):
        _go.read_godag(tmp_path / "cut.obo.gz")
    (tmp_path / "bin.obo").write_bytes(b"format-version: 1.2\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"bin\.obo': it is not UTF-8 text"):
        _go.read_godag(tmp_path / "bin.obo")
    record = (
        "NCBIGene\t{0}\tG{0}\tinvolved_in\tGO:0000001\tref\tIDA\t\tP\t\t\tprotein\t"
        "taxon:9606\t20220101\tsrc\t\t\n"
    )
    gaf = "!gaf-version: 2.2\n" + "".join(record.format(i) for i in range(1, 500))
    (tmp_path / "cut.gaf").write_text(gaf[: len(gaf) // 2])  # cut in the middle of a record
    with pytest.raises(
        ValueError,
        match=r"GO annotation file .*cut\.gaf', line \d+: expected "
        r"a gaf record of 15 tab-separated columns",
    ):
        _go.read_annotations(tmp_path / "cut.gaf")
    compressed = gzip.compress(gaf.encode())
    (tmp_path / "cut.gaf.gz").write_bytes(compressed[: len(compressed) - 20])
    with pytest.raises(ValueError, match=r"cut\.gaf\.gz': it is truncated or corrupt"):
        _go.read_annotations(tmp_path / "cut.gaf.gz")
    (tmp_path / "whole.gaf").write_text(gaf)
    annotations = _go.read_annotations(tmp_path / "whole.gaf")
    assert len(annotations.gene_to_terms) == 499
    assert annotations.symbol_to_gene["G7"] == "7"


@pytest.mark.slow
def test_cli_reader_error_is_one_line(tmp_path, capsys):
    from normalisr_sc.cli import main

    compressed = gzip.compress(b"format-version: 1.2\n" + b"[Term]\nid: GO:0000001\n" * 500)
    (tmp_path / "cut.obo.gz").write_bytes(compressed[: len(compressed) // 2])
    (tmp_path / "a.gaf").write_text("!gaf-version: 2.2\n")
    adata = nsc.datasets.simulate(n_cells=30, n_genes=25, n_modules=1, seed=2)
    net = np.zeros((25, 25), dtype=bool)
    net[:10, :10] = True
    np.fill_diagonal(net, False)
    adata.varp["nsc_coex_net"] = sparse.csr_matrix(net)
    adata.write_h5ad(tmp_path / "in.h5ad")
    assert (
        main(
            [
                "gotop",
                str(tmp_path / "in.h5ad"),
                "-o",
                str(tmp_path / "go.h5ad"),
                "--obo",
                str(tmp_path / "cut.obo.gz"),
                "--annotations",
                str(tmp_path / "a.gaf"),
                "--n-principal",
                "5",
            ]
        )
        == 1
    )
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert error[0].startswith("normalisr-sc gotop: error: ")
    assert "cut.obo.gz" in error[0]
