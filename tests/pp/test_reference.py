"""Agreement with the reference package normalisr 1.0.0 (genes x cells) to 1e-8 relative."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import read_h5ad

import normalisr_sc as nsc

from .._helpers import assert_close, counts_adata

pytest.importorskip("normalisr")
import normalisr.normalisr as ref

RTOL = 1e-8


def one_hot(values: pd.Series) -> np.ndarray:
    """Cells x (levels - 1), dropping the first level, as normcov encodes a category."""
    return pd.get_dummies(values.astype("category"), drop_first=True, dtype=float).to_numpy()


def reference_pipeline(
    counts: np.ndarray,
    extra: np.ndarray | None = None,
    *,
    stepmax: int = 1,
    keepvar: bool = True,
    remove_outliers: bool = True,
) -> dict:
    """The reference functions in the order of the recipe, on cells x genes counts."""
    reads = np.ascontiguousarray(counts.T).astype(np.int64)
    dt, _, _, summary = ref.lcpm(reads, nth=1)
    scale = ref.scaling_factor(reads)
    raw = summary if extra is None else np.vstack([summary, extra.T])
    dc = ref.normcov(raw)
    weights = ref.compute_var(dt, dc, stepmax=stepmax)
    keep = ref.qc_outlier(weights) if remove_outliers else np.ones(weights.size, dtype=bool)
    dtn, dcn = ref.normvar(dt[:, keep], dc[:, keep], weights[keep], scale, keepvar=keepvar)
    return {
        "lcpm": dt.T,
        "summary": summary.T,
        "scale": scale,
        "covariates": dc.T,
        "weights": weights,
        "keep": keep,
        "normalized": dtn.T,
        "covariates_norm": dcn.T,
    }


def planted_counts(
    make_counts, seed: int, n_cells: int, n_genes: int, mean_total: float, n_deep: int
) -> np.ndarray:
    counts = make_counts(n_cells, n_genes, seed=seed, mean_total=mean_total)
    if n_deep:
        rng = np.random.default_rng(seed)
        deep = rng.choice(n_cells, n_deep, replace=False)
        counts[deep] = counts[deep] * 40 + rng.poisson(5, (n_deep, n_genes))
    return counts


CASES = {
    "plain": {"seed": 0, "n_cells": 300, "n_genes": 80, "mean_total": 2000.0},
    "categorical": {
        "seed": 1,
        "n_cells": 500,
        "n_genes": 120,
        "mean_total": 500.0,
        "category": True,
    },
    "stepmax3": {
        "seed": 2,
        "n_cells": 400,
        "n_genes": 60,
        "mean_total": 3000.0,
        "category": True,
        "stepmax": 3,
    },
    "outliers": {"seed": 0, "n_cells": 400, "n_genes": 100, "mean_total": 2000.0, "n_deep": 6},
    "outliers_categorical_nokeepvar": {
        "seed": 4,
        "n_cells": 300,
        "n_genes": 150,
        "mean_total": 1000.0,
        "n_deep": 4,
        "category": True,
        "stepmax": 2,
        "keepvar": False,
    },
}


# Quick: the first case; the full run: every case.
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[pytest.mark.slow] if i else []) for i, c in enumerate(CASES)]
)
def test_steps_agree_with_reference(make_counts, case):
    spec = {"category": False, "stepmax": 1, "keepvar": True, "n_deep": 0} | CASES[case]
    counts = planted_counts(
        make_counts,
        spec["seed"],
        spec["n_cells"],
        spec["n_genes"],
        spec["mean_total"],
        spec["n_deep"],
    )
    adata = counts_adata(counts, "csr", batch=False)
    covariates, extra = [], None
    if spec["category"]:
        levels = np.random.default_rng(spec["seed"]).integers(3, size=adata.n_obs)
        adata.obs["donor"] = pd.Categorical([f"d{i}" for i in levels])
        covariates, extra = ["donor"], one_hot(adata.obs["donor"])
    expected = reference_pipeline(counts, extra, stepmax=spec["stepmax"], keepvar=spec["keepvar"])

    nsc.pp.lcpm(adata)
    assert_close(adata.layers["lcpm"], expected["lcpm"], rtol=RTOL)
    assert_close(adata.obsm["nsc_cov"].to_numpy(), expected["summary"], rtol=RTOL)
    assert_close(adata.var["nsc_scale"].to_numpy(), expected["scale"], rtol=RTOL)
    nsc.pp.normcov(adata, covariates)
    assert_close(adata.obsm["nsc_covariates"].to_numpy(), expected["covariates"], rtol=RTOL)
    nsc.pp.compute_var(adata, stepmax=spec["stepmax"])
    assert_close(adata.obs["nsc_weight"].to_numpy(), expected["weights"], rtol=RTOL)
    nsc.pp.qc_outlier(adata)
    kept = adata.obs_names.str.removeprefix("cell").astype(int)
    np.testing.assert_array_equal(kept, np.flatnonzero(expected["keep"]))
    if spec["n_deep"]:
        assert (~expected["keep"]).sum() >= spec["n_deep"]  # the mask is not trivial
    nsc.pp.normvar(adata, keepvar=spec["keepvar"])
    assert_close(adata.layers["normalisr"], expected["normalized"], rtol=RTOL)
    assert_close(
        adata.obsm["nsc_covariates_norm"].to_numpy(), expected["covariates_norm"], rtol=RTOL
    )


def test_recipe_agrees_with_reference(make_counts):
    counts = planted_counts(make_counts, 3, 400, 100, 2000.0, 5)
    adata = counts_adata(counts, "csc")
    result = nsc.pp.normalize(adata, ["batch"], qc=None, copy=True)
    expected = reference_pipeline(counts, one_hot(adata.obs["batch"]))
    keep = expected["keep"]
    assert (~keep).sum() >= 5
    np.testing.assert_array_equal(result.obs_names, adata.obs_names[keep])
    assert_close(result.layers["lcpm"], expected["lcpm"][keep], rtol=RTOL)
    assert_close(result.obs["nsc_weight"].to_numpy(), expected["weights"][keep], rtol=RTOL)
    assert_close(result.layers["normalisr"], expected["normalized"], rtol=RTOL)
    assert_close(
        result.obsm["nsc_covariates_norm"].to_numpy(), expected["covariates_norm"], rtol=RTOL
    )


@pytest.mark.parametrize(
    "bounds",
    [
        {
            "min_gene_cells": 50,
            "min_gene_cell_fraction": 0.02,
            "min_cell_counts": 500,
            "min_cell_genes": 40,
        },
        {"min_gene_counts": 400, "min_cell_gene_fraction": 0.5},
        {"min_gene_cell_fraction": 0.6, "min_cell_counts": 300, "min_cell_genes": 25},
    ],
)
def test_qc_reads_agrees_with_reference(make_counts, bounds):
    counts = make_counts(400, 90, seed=8, mean_total=800.0)
    cells, genes = nsc.pp.qc_reads(counts_adata(counts), **bounds, inplace=False)
    b = {
        "min_gene_counts": 0,
        "min_gene_cells": 0,
        "min_gene_cell_fraction": 0,
        "min_cell_counts": 0,
        "min_cell_genes": 0,
        "min_cell_gene_fraction": 0,
    } | bounds
    ref_genes, ref_cells = ref.qc_reads(
        counts.T,
        b["min_gene_counts"],
        b["min_gene_cells"],
        b["min_gene_cell_fraction"],
        b["min_cell_counts"],
        b["min_cell_genes"],
        b["min_cell_gene_fraction"],
    )
    np.testing.assert_array_equal(np.flatnonzero(cells), ref_cells)
    np.testing.assert_array_equal(np.flatnonzero(genes), ref_genes)
    assert 0 < cells.sum() < cells.size or 0 < genes.sum() < genes.size


@pytest.mark.parametrize(("pcut", "outrate"), [(1e-10, 0.02), (1e-3, 0.05), (0.3, 0.2)])
def test_qc_outlier_agrees_with_reference(pcut, outrate):
    rng = np.random.default_rng(int(pcut * 1e3) + 1)
    weights = 3.0 + np.abs(rng.standard_t(3.0, 800))
    weights[:4] = [30.0, 25.0, 40.0, 0.01]
    adata = counts_adata(np.ones((800, 2), dtype=int), "dense", batch=False)
    adata.obs["nsc_weight"] = weights
    nsc.pp.qc_outlier(adata, pcut=pcut, outrate=outrate, inplace=False)
    expected_outliers = ~ref.qc_outlier(weights, pcut=pcut, outrate=outrate)
    assert expected_outliers[:3].all()
    np.testing.assert_array_equal(adata.obs["nsc_outlier"].to_numpy(), expected_outliers)


@pytest.mark.slow  # the recipe and its reference on all 20,729 cells
def test_papalexi_agrees_with_reference(shared_data):
    """The real low-MOI screen (a 299-gene panel): the recipe with covariates=['bio_rep']."""
    path = shared_data / "papalexi_lowmoi.h5ad"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    adata = read_h5ad(path)
    result = nsc.pp.normalize(adata, covariates=["bio_rep"], qc=None, copy=True)
    counts = adata.X.toarray()
    expected = reference_pipeline(counts, one_hot(adata.obs["bio_rep"]))
    keep = expected["keep"]
    np.testing.assert_array_equal(result.obs_names, adata.obs_names[keep])
    assert result.n_vars == adata.n_vars
    assert_close(result.layers["lcpm"], expected["lcpm"][keep], rtol=RTOL)
    assert_close(result.var["nsc_scale"].to_numpy(), expected["scale"], rtol=RTOL)
    assert_close(result.obsm["nsc_covariates"].to_numpy(), expected["covariates"][keep], rtol=RTOL)
    assert_close(result.obs["nsc_weight"].to_numpy(), expected["weights"][keep], rtol=RTOL)
    assert_close(result.layers["normalisr"], expected["normalized"], rtol=RTOL)
    assert_close(
        result.obsm["nsc_covariates_norm"].to_numpy(), expected["covariates_norm"], rtol=RTOL
    )
