"""The command line: the demo, the workflow subcommands, errors and safe outputs."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import normalisr_sc as nsc
from normalisr_sc.cli import main


@pytest.mark.slow
def test_demo_summary_and_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--quiet", "demo", "--out", str(out), "--n-cells", "2500"]) == 0
    printed = capsys.readouterr().out
    assert "fraction p < 0.05" in printed
    assert "recovered at q < 0.1" in printed
    for name in ("demo.h5ad", "de.tsv.gz", "qq.png", "volcano.png", "weights.png"):
        assert (out / name).stat().st_size > 0
    adata = ad.read_h5ad(out / "demo.h5ad")
    assert "nsc_de_pvals" in adata.varm
    table = pd.read_csv(out / "de.tsv.gz", sep="\t")
    assert {"group", "gene", "pval", "qval", "logfc"} <= set(table.columns)
    # An existing output is not overwritten without --force.
    assert main(["--quiet", "demo", "--out", str(out), "--n-cells", "2500"]) == 1
    assert "--force" in capsys.readouterr().err


@pytest.mark.slow
def test_workflow_subcommands(tmp_path, capsys):
    raw = nsc.datasets.simulate(n_cells=800, n_genes=150, seed=7)
    raw.write_h5ad(tmp_path / "raw.h5ad")
    steps = [
        [
            "qc",
            str(tmp_path / "raw.h5ad"),
            "-o",
            str(tmp_path / "qc.h5ad"),
            "--min-gene-cells",
            "10",
            "--min-cell-counts",
            "100",
            "--min-gene-cell-fraction",
            "0",
            "--min-cell-genes",
            "10",
        ],
        [
            "normalize",
            str(tmp_path / "qc.h5ad"),
            "-o",
            str(tmp_path / "norm.h5ad"),
            "--covariates",
            "batch",
            "--no-qc",
        ],
        [
            "de",
            str(tmp_path / "norm.h5ad"),
            "-o",
            str(tmp_path / "de.h5ad"),
            "--groupby",
            "group",
            "--reference",
            "control",
            "--table",
            str(tmp_path / "de.csv"),
        ],
        [
            "coex",
            str(tmp_path / "de.h5ad"),
            "-o",
            str(tmp_path / "coex.h5ad"),
            "--table",
            str(tmp_path / "coex.tsv.gz"),
        ],
        ["binnet", str(tmp_path / "coex.h5ad"), "-o", str(tmp_path / "net.h5ad")],
    ]
    for step in steps:
        assert main(["--quiet", *step]) == 0, step
    final = ad.read_h5ad(tmp_path / "net.h5ad")
    assert {"nsc_de_pvals"} <= set(final.varm)
    assert {"nsc_coex_pvals", "nsc_coex_net"} <= set(final.varp)
    assert len(pd.read_csv(tmp_path / "de.csv")) == final.n_vars
    capsys.readouterr()
    assert main(["report", str(tmp_path / "net.h5ad"), "--plots", str(tmp_path / "plots")]) == 0
    assert "nsc_de" in capsys.readouterr().out
    assert (tmp_path / "plots" / "nsc_coex_qq.png").exists()


def test_bad_input_is_one_line_without_traceback(tmp_path, capsys):
    assert main(["normalize", str(tmp_path / "missing.h5ad"), "-o", str(tmp_path / "o.h5ad")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"normalisr-sc normalize: error: input {str(tmp_path / 'missing.h5ad')!r} not found."
    ]
    assert not (tmp_path / "o.h5ad").exists()
    with pytest.raises(ValueError, match="not found"):
        main(
            ["--debug", "normalize", str(tmp_path / "missing.h5ad"), "-o", str(tmp_path / "o.h5ad")]
        )


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "normalisr_sc", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    for command in ("qc", "normalize", "de", "coex", "binnet", "gotop", "report", "demo"):
        assert command in result.stdout


@pytest.mark.slow
def test_gotop_subcommand(tmp_path):
    import gzip

    from scipy import sparse

    from .tl.test_go_covariates import N_GENES, OBO, _annotation_lines, _gaf_line

    rng = np.random.default_rng(0)
    adata = ad.AnnData(X=rng.normal(size=(30, N_GENES)))
    adata.var_names = [f"G{i}" for i in range(N_GENES)]
    net = np.zeros((N_GENES, N_GENES), dtype=bool)
    net[:10, :10] = True
    np.fill_diagonal(net, False)
    adata.varp["nsc_coex_net"] = sparse.csr_matrix(net)
    adata.write_h5ad(tmp_path / "net.h5ad")
    (tmp_path / "go.obo").write_text(OBO)
    with gzip.open(tmp_path / "anno.gaf.gz", "wt") as stream:
        stream.write(
            "\n".join(["!gaf-version: 2.2", *(_gaf_line(*r) for r in _annotation_lines())])
        )
    assert (
        main(
            [
                "--quiet",
                "gotop",
                str(tmp_path / "net.h5ad"),
                "-o",
                str(tmp_path / "go.h5ad"),
                "--obo",
                str(tmp_path / "go.obo"),
                "--annotations",
                str(tmp_path / "anno.gaf.gz"),
                "--n-principal",
                "10",
                "--table",
                str(tmp_path / "go.tsv"),
            ]
        )
        == 0
    )
    assert ad.read_h5ad(tmp_path / "go.h5ad").uns["nsc_gotop"]["top_term"] == "GO:0000002"
    assert pd.read_csv(tmp_path / "go.tsv", sep="\t")["term"].iloc[0] == "GO:0000002"


@pytest.mark.slow
def test_normalize_streamed_equals_in_memory(tmp_path):
    raw = nsc.datasets.simulate(n_cells=600, n_genes=120, seed=8)
    raw.write_h5ad(tmp_path / "raw.h5ad")
    for name, extra in (("memory", []), ("streamed", ["--chunk-size", "128"])):
        assert (
            main(
                [
                    "--quiet",
                    "normalize",
                    str(tmp_path / "raw.h5ad"),
                    "--covariates",
                    "batch",
                    "-o",
                    str(tmp_path / f"{name}.h5ad"),
                    *extra,
                ]
            )
            == 0
        )
    memory, streamed = (ad.read_h5ad(tmp_path / f"{name}.h5ad") for name in ("memory", "streamed"))
    assert streamed.uns["lcpm"]["params"] == memory.uns["lcpm"]["params"]
    np.testing.assert_allclose(
        streamed.layers["normalisr"], memory.layers["normalisr"], rtol=1e-8, atol=1e-10
    )
