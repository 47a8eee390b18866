"""The command line's options: validated with one-line errors, help text for each, errors
and warnings in the words of the command line, --version, a plain-text report."""

from __future__ import annotations

import argparse
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import normalisr_sc as nsc
from normalisr_sc import cli
from normalisr_sc.cli import cli_words, main

from .test_cli_outputs import entries, run_cli


@pytest.fixture(scope="module")
def normalised(tmp_path_factory):
    """norm.h5ad of a simulated data set whose 'label' column has a third group and missing
    values."""
    folder = tmp_path_factory.mktemp("options")
    raw = nsc.datasets.simulate(n_cells=500, n_genes=100, seed=5)
    labels = np.asarray(raw.obs["group"], dtype=object)
    labels[:25] = np.nan
    labels[25:100] = "other"
    raw.obs["label"] = pd.Categorical(labels)
    raw.write_h5ad(folder / "raw.h5ad")
    assert (
        main(
            [
                "--quiet",
                "normalize",
                str(folder / "raw.h5ad"),
                "-o",
                str(folder / "norm.h5ad"),
                "--covariates",
                "batch",
                "--no-qc",
            ]
        )
        == 0
    )
    return folder / "norm.h5ad"


#: (arguments after the input, the option named, words of the message)
BAD_VALUES = [
    (
        ["de", "-o", "x.h5ad", "--groupby", "group", "--min-cells", "0"],
        "--min-cells",
        "must be an integer >= 1, got 0",
    ),
    (
        ["de", "-o", "x.h5ad", "--groupby", "group", "--min-cells", "two"],
        "--min-cells",
        "must be an integer >= 1, got 'two'",
    ),
    (
        ["de", "-o", "x.h5ad", "--groupby", "group", "--design", "paired"],
        "--design",
        "invalid choice: 'paired'",
    ),
    (
        ["de", "-o", "x.tsv", "--groupby", "group"],
        "-o/--output",
        "must be a file name ending in .h5ad",
    ),
    (
        ["de", "-o", "x.h5ad", "--groupby", "group", "--table", "t.xlsx"],
        "--table",
        "must be a file name ending in .tsv or .csv",
    ),
    (
        ["binnet", "-o", "x.h5ad", "--qcut", "1.5"],
        "--qcut",
        "must be a finite number in (0, 1], got 1.5",
    ),
    (["binnet", "-o", "x.h5ad", "--qcut", "nan"], "--qcut", "must be a finite number"),
    (
        ["normalize", "-o", "x.h5ad", "--chunk-size", "-3"],
        "--chunk-size",
        "must be an integer >= 1, got -3",
    ),
    (
        ["normalize", "-o", "x.h5ad", "--min-gene-cell-fraction", "2"],
        "--min-gene-cell-fraction",
        "must be a finite number in [0, 1], got 2.0",
    ),
    (
        [
            "de",
            "-o",
            "x.h5ad",
            "--guides",
            "grna_counts",
            "--threshold",
            "0",
            "--guide-mode",
            "threshold",
        ],
        "--threshold",
        "must be a finite number > 0, got 0.0",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "option", "words"), BAD_VALUES, ids=[f"{a[0]}{o}" for a, o, _ in BAD_VALUES]
)
def test_bad_values_one_line(tmp_path, arguments, option, words):
    command, *rest = arguments
    result = run_cli(command, tmp_path / "in.h5ad", *rest, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"normalisr-sc {command}: error: argument {option}: ")
    assert words in lines[0]
    assert lines[0].endswith(f"(see `normalisr-sc {command} --help`)")
    assert entries(tmp_path) == set()


@pytest.mark.slow
def test_option_combinations_refused(normalised, tmp_path, capsys):
    cases = [
        (["--groupby", "group", "--guides", "grna_counts"], "not both"),
        ([], "name the groups to compare: --groupby COLUMN, or --guides"),
        (["--groupby", "group", "--guide-names", "ids"], "--guide-names apply only with --guides"),
        (
            ["--guides", "grna_counts", "--threshold", "3"],
            "--threshold applies only with --guide-mode threshold",
        ),
    ]
    for extra, words in cases:
        assert main(["de", str(normalised), "-o", str(tmp_path / "de.h5ad"), *extra]) == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1
        assert words in error[0], error
    assert (
        main(["normalize", str(normalised), "-o", str(tmp_path / "n.h5ad"), "--genes", "g.txt"])
        == 1
    )
    assert "--genes name the rows and columns of a .tsv matrix input only" in (
        capsys.readouterr().err
    )
    assert (
        main(
            [
                "normalize",
                str(normalised),
                "-o",
                str(tmp_path / "n.h5ad"),
                "--no-qc",
                "--min-cell-counts",
                "10",
            ]
        )
        == 1
    )
    assert "--no-qc skips read-count QC: leave out --min-cell-counts" in capsys.readouterr().err
    assert entries(tmp_path) == set()


def test_every_option_has_help():
    parser = cli._parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {"normalisr-sc": parser, **subparsers.choices}
    n_options = 0
    for name, sub in parsers.items():
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, (name, action.dest)
            assert action.help != argparse.SUPPRESS, (name, action.dest)
            n_options += 1
    assert set(subparsers.choices) == {
        "qc",
        "normalize",
        "de",
        "coex",
        "binnet",
        "gotop",
        "report",
        "demo",
    }
    assert n_options > 50


@pytest.mark.slow
def test_version_and_help():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"normalisr-sc {nsc.__version__}"
    result = run_cli("de", "--help")
    assert result.returncode == 0
    for option in ("--guide-names", "--min-cells", "--groups", "--reference", "--table"):
        assert option in result.stdout


def test_api_words_become_cli_words():
    assert cli_words("adata.layers['normalisr'] not found; run `nsc.pp.normvar` first.") == (
        "adata.layers['normalisr'] not found; run `normalisr-sc normalize` first."
    )
    assert cli_words("rerun `nsc.tl.coex(..., store='all')` first") == (
        "rerun `normalisr-sc coex` first"
    )
    assert cli_words("use `nsc.tl.coex_peel`") == "use `nsc.tl.coex_peel`"  # no such command
    options = {"groups": "--groups", "min_cells": "--min-cells", "reference": "--reference"}
    assert cli_words("leave them out with `groups=` or merge them", options) == (
        "leave them out with `--groups` or merge them"
    )
    assert cli_words("e.g. `groups='grna_group'` or `groups=`", options) == (
        "e.g. `--groups grna_group` or `--groups`"
    )
    assert cli_words("`groups` names ['a'] more than once", options) == (
        "`--groups` names ['a'] more than once"
    )
    assert cli_words("fewer than min_cells=2 cells; see `reference=`", options) == (
        "fewer than --min-cells 2 cells; see `--reference`"
    )
    assert cli_words("the min_cells_total and nsc_groups=x", options) == (
        "the min_cells_total and nsc_groups=x"
    )
    assert cli_words("min_cells must be >= 1; adata.uns['min_cells']", options) == (
        "--min-cells must be >= 1; adata.uns['min_cells']"
    )


@pytest.mark.slow
def test_errors_name_commands_not_functions(tmp_path):
    raw = nsc.datasets.simulate(n_cells=200, n_genes=60, seed=1)
    raw.write_h5ad(tmp_path / "raw.h5ad")
    result = run_cli("de", tmp_path / "raw.h5ad", "-o", tmp_path / "de.h5ad", "--groupby", "group")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "run `normalisr-sc normalize` first" in lines[0]
    assert "nsc." not in lines[0]
    assert not re.search(r"Traceback", result.stderr)


@pytest.mark.slow
def test_groups_min_cells_and_missing_labels(normalised, tmp_path, caplog, capsys):
    """--groups and --reference restrict the test, cells without a label are left out, and
    the warnings of the API speak of options."""
    table = tmp_path / "de.tsv"
    assert (
        main(
            [
                "de",
                str(normalised),
                "-o",
                str(tmp_path / "de.h5ad"),
                "--groupby",
                "label",
                "--groups",
                "case",
                "--reference",
                "control",
                "--min-cells",
                "2",
                "--table",
                str(table),
            ]
        )
        == 0
    )
    result = ad.read_h5ad(tmp_path / "de.h5ad")
    assert list(result.uns["nsc_de"]["groups"]) == ["case"]
    labels = result.obs["label"]
    n_test = int(np.asarray(result.uns["nsc_de"]["n_cells_test"]).ravel()[0])
    assert n_test == int(labels.isin(["case", "control"]).sum())
    assert n_test < result.n_obs - labels.isna().sum()  # other groups left out too
    frame = pd.read_csv(table, sep="\t")
    assert set(frame["group"]) == {"case"}
    assert frame["log10p"].is_monotonic_decreasing
    # A group too small to test is skipped with a warning in the CLI's words.
    caplog.clear()
    with caplog.at_level("WARNING", logger="normalisr_sc"):
        assert (
            main(
                [
                    "de",
                    str(normalised),
                    "-o",
                    str(tmp_path / "big.h5ad"),
                    "--groupby",
                    "label",
                    "--reference",
                    "control",
                    "--min-cells",
                    "100000",
                ]
            )
            == 1
        )
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "25 cells with a missing label" in messages
    assert "fewer than --min-cells 100000 cells are not tested: case, other" in messages
    assert "min_cells" not in messages
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(
        "normalisr-sc de: error: no group is carried by at least --min-cells 100000 cells"
    )
    assert "min_cells" not in error
    assert not (tmp_path / "big.h5ad").exists()


@pytest.mark.slow
def test_report_is_plain_text(normalised, tmp_path, capsys):
    assert (
        main(
            [
                "--quiet",
                "de",
                str(normalised),
                "-o",
                str(tmp_path / "de.h5ad"),
                "--groupby",
                "group",
                "--reference",
                "control",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["report", str(tmp_path / "de.h5ad"), "--plots", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out
    assert "$" not in printed
    assert "\\lambda" not in printed
    assert re.search(r"nsc_de: [\d,]+ tests, genomic inflation \(lambda\) = \d+\.\d{3}", printed)
    assert "most significant:" in printed
    assert "written" not in printed  # the writer's fingerprints are not a step
    assert "steps recorded:" in printed
    assert entries(tmp_path / "plots") == {"nsc_de_qq.png"}
    # The plots are outputs like the others: refused when they exist.
    assert main(["report", str(tmp_path / "de.h5ad"), "--plots", str(tmp_path / "plots")]) == 1
    assert "--force" in capsys.readouterr().err


def test_pairs_positive_controls_and_pair_qc(normalised, tmp_path, capsys):
    """--pairs tests the chosen pairs (q over them), --positive-controls prints their
    recovery, --min-nonzero sets the pair QC: the same results as the API."""
    adata = ad.read_h5ad(normalised)
    genes = list(adata.var_names[:3])
    pairs = tmp_path / "pairs.tsv"
    pd.DataFrame({"group": "case", "gene": genes}).to_csv(pairs, sep="\t", index=False)
    table = tmp_path / "de.tsv"
    arguments = ["de", str(normalised), "-o", str(tmp_path / "de.h5ad"), "--groupby", "label"]
    arguments += ["--reference", "control", "--min-nonzero", "20", "--pairs", str(pairs)]
    arguments += ["--positive-controls", str(pairs), "--qcut", "0.2", "--table", str(table)]
    capsys.readouterr()
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    frame = pd.read_csv(table, sep="\t")
    nsc.tl.de(
        adata,
        "label",
        reference="control",
        min_nonzero=20,
        pairs=list(zip(["case"] * 3, genes, strict=True)),
        positive_controls=list(zip(["case"] * 3, genes, strict=True)),
        qcut=0.2,
    )
    expected = nsc.get.de_df(adata)
    assert sorted(frame["gene"]) == sorted(genes)
    merged = frame.merge(expected, on=["group", "gene"], suffixes=("", "_api"))
    np.testing.assert_allclose(merged["qval"], merged["qval_api"], rtol=1e-12)
    np.testing.assert_array_equal(merged["n_nonzero_group"], merged["n_nonzero_group_api"])
    report = adata.uns["nsc_de"]["positive_controls"]
    recovered = int(np.asarray(report["recovered"]).sum())
    assert f"positive controls: {recovered} of 3 recovered" in printed
    refused = tmp_path / "refused.h5ad"
    assert (
        main([*arguments[:2], "-o", str(refused), *arguments[4:6], "--pairs", "no_such_key"]) == 1
    )
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--pairs 'no_such_key' is neither a .tsv/.csv file nor a key of the input's uns" in error
    assert not refused.exists()
