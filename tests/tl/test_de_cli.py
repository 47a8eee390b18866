"""The command line's ``de`` gives what ``nsc.tl.de`` gives: ``--reference`` restricts the
comparison, ``--min-cells`` skips small groups."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import normalisr_sc as nsc
from normalisr_sc.cli import main

from ._data import normalised_adata, normalised_arrays


def _labelled() -> ad.AnnData:
    expression, covariates = normalised_arrays(300, 15, seed=9)
    adata = normalised_adata(expression, covariates)
    labels = np.array(["a", "b", "other", "ref"])[np.arange(300) % 4].astype(object)
    labels[:2] = ["tiny", "tiny"]
    labels[2:4] = None
    adata.obs["cluster"] = pd.Categorical(labels)
    return adata


@pytest.mark.slow
def test_cli_reference_and_min_cells_agree_with_the_api(tmp_path):
    adata = _labelled()
    path = tmp_path / "norm.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "de.h5ad"
    code = main(
        [
            "de",
            str(path),
            "-o",
            str(out),
            "--groupby",
            "cluster",
            "--reference",
            "ref",
            "--min-cells",
            "3",
            "--table",
            str(tmp_path / "de.tsv"),
        ]
    )
    assert code in (0, None)
    nsc.tl.de(adata, "cluster", reference="ref", min_cells=3)
    back = ad.read_h5ad(out)
    assert list(back.uns["nsc_de"]["skipped"]) == ["tiny"]
    assert list(back.varm["nsc_de_logfc"].columns) == ["a", "b", "other"]
    # Each group against the 74 reference cells only.
    np.testing.assert_array_equal(
        back.uns["nsc_de"]["n_cells_test"], adata.uns["nsc_de"]["n_cells_test"]
    )
    assert (back.uns["nsc_de"]["n_cells_test"] < 150).all()
    for suffix in ("log10p", "logfc", "gamma"):
        np.testing.assert_allclose(
            back.varm[f"nsc_de_{suffix}"], adata.varm[f"nsc_de_{suffix}"], rtol=1e-12
        )
    table = pd.read_csv(tmp_path / "de.tsv", sep="\t")
    assert {"logfc", "log2fc"} <= set(table.columns)
