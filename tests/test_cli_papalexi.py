"""The Papalexi low-MOI CRISPR screen run from a shell, as a user would (issue 12, item 3)."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # two real CLI runs on the Papalexi screen, about a minute


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "normalisr_sc", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


@pytest.fixture(scope="module")
def screen_run(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("papalexi")
    normalize = _cli(
        "normalize",
        shared_data / "papalexi_lowmoi.h5ad",
        "-o",
        "norm.h5ad",
        "--covariates",
        "bio_rep",
        "--no-qc",
        cwd=folder,
    )
    assert normalize.returncode == 0, normalize.stderr
    de = _cli(
        "de",
        "norm.h5ad",
        "-o",
        "de.h5ad",
        "--guides",
        "grna_counts",
        "--guide-names",
        "grna_ids",
        "--guide-groups",
        "grna_group",
        "--design",
        "low_moi",
        "--reference",
        "non-targeting",
        "--min-cells",
        "2",
        "--table",
        "de.tsv",
        cwd=folder,
    )
    assert de.returncode == 0, de.stderr
    return folder, normalize, de


def test_positive_controls_top_the_table(shared_data, screen_run):
    folder, normalize, _ = screen_run
    assert "cells: 20,729 of 20,729 kept" in normalize.stdout  # the QC summary is printed
    table = pd.read_csv(folder / "de.tsv", sep="\t")
    assert {"group", "gene", "pval", "log10p", "qval", "logfc"} <= set(table.columns)
    assert table["log10p"].is_monotonic_decreasing
    assert "non-targeting" not in set(table["group"])
    pairs = ad.read_h5ad(shared_data / "papalexi_lowmoi.h5ad", backed="r").uns["pc_pairs"]
    assert len(pairs) == 9
    ranks = []
    for group, gene in zip(pairs["grna_group"], pairs["response_id"], strict=True):
        row = table.index[(table["group"] == group) & (table["gene"] == gene)]
        assert len(row) == 1, (group, gene)
        ranks.append(int(row[0]))
        assert table.loc[row[0], "pval"] < 1e-10, (group, gene)
        assert table.loc[row[0], "logfc"] < 0, (group, gene)  # the knocked-out gene drops
    # Every positive control among the first 100 of the ~7,500 rows (the others above
    # them are trans effects of the same interferon pathway knock-outs).
    assert max(ranks) < 100, ranks
    assert ranks.count(0) == 1
    assert len(table) > 7000


def test_small_groups_skipped_with_a_warning_in_cli_words(screen_run):
    folder, _, de = screen_run
    assert "--min-cells 2" in de.stderr
    assert "CD274" in de.stderr
    assert "min_cells" not in de.stderr
    result = ad.read_h5ad(folder / "de.h5ad")
    tested = list(result.uns["nsc_de"]["groups"])
    assert "CD274" not in tested
    assert "STAT1" in tested
    n_carrying = np.asarray(result.uns["nsc_de"]["n_cells"]).ravel()
    assert n_carrying.min() >= 2


def test_outputs_have_the_usual_permissions(screen_run):
    folder, _, _ = screen_run
    umask = os.umask(0)
    os.umask(umask)
    for name in ("norm.h5ad", "de.h5ad", "de.tsv"):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert sorted(p.name for p in folder.iterdir()) == ["de.h5ad", "de.tsv", "norm.h5ad"]


def test_report_of_the_screen(screen_run):
    folder, _, _ = screen_run
    report = _cli("report", "de.h5ad", cwd=folder)
    assert report.returncode == 0, report.stderr
    assert "$" not in report.stdout
    assert "20,729 cells x 299 genes" in report.stdout
    assert "genomic inflation (lambda) =" in report.stdout
    assert "STAT1 / STAT1" in report.stdout  # the most significant pair
