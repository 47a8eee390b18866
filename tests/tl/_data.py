"""Test data for the association tests: normalised arrays and simulated CRISPR screens."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def normalised_arrays(
    n_cells: int = 400, n_genes: int = 30, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random normalised expression (cells x genes) and covariates with an intercept."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 2.0, n_cells)
    covariates = np.column_stack(
        [
            rng.normal(size=n_cells) * weights,
            rng.normal(size=n_cells) * weights,
            rng.integers(0, 2, n_cells).astype(np.float64),
            weights,
        ]
    )
    expression = rng.normal(size=(n_cells, n_genes)) + covariates @ rng.normal(size=(4, n_genes))
    return expression, covariates


def normalised_adata(
    expression: np.ndarray,
    covariates: np.ndarray,
    log_cpm: np.ndarray | None = None,
    raw_covariates: np.ndarray | None = None,
) -> AnnData:
    """AnnData laid out as ``nsc.pp.normalize`` leaves it, from normalised arrays.

    The log CPM and un-normalised covariates default to the normalised ones.
    """
    n_cells, n_genes = expression.shape
    obs_names = [f"cell{i}" for i in range(n_cells)]
    adata = AnnData(
        X=np.zeros((n_cells, n_genes), dtype=np.float32),
        obs=pd.DataFrame(index=obs_names),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]),
    )
    adata.layers["normalisr"] = expression.copy()
    names = [f"cov{i}" for i in range(covariates.shape[1] - 1)] + ["intercept"]
    adata.obsm["nsc_covariates_norm"] = pd.DataFrame(covariates, index=obs_names, columns=names)
    adata.layers["lcpm"] = (expression if log_cpm is None else log_cpm).copy()
    raw = covariates if raw_covariates is None else raw_covariates
    adata.obsm["nsc_covariates"] = pd.DataFrame(raw, index=obs_names, columns=names)
    return adata


def random_guides(
    n_cells: int, n_guides: int, per_cell: float, *, seed: int = 0
) -> sparse.csr_matrix:
    """Cells x guides 0/1 CSR: each cell carries Poisson(``per_cell``) distinct random guides."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.poisson(per_cell, n_cells), n_guides)
    rows = np.repeat(np.arange(n_cells), counts)
    cols = np.concatenate([rng.choice(n_guides, c, replace=False) for c in counts])
    return sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_cells, n_guides))


def simulate_screen(
    n_cells: int = 1500,
    n_genes: int = 120,
    n_guides: int = 12,
    *,
    per_cell: float,
    knockdown: float = -1.0,
    target_proportion: float = 1e-3,
    seed: int = 0,
) -> AnnData:
    """Raw UMI counts of a CRISPR screen with planted knock-downs.

    Guide ``j`` lowers gene ``j`` (proportion ``target_proportion``) by ``exp(knockdown)``; other guide x gene pairs are
    null. Guides are in ``obsm['guides']`` (0/1, names in ``uns['guides']['names']``)
    and the truth in ``uns['targets']`` (guide -> gene).
    """
    rng = np.random.default_rng(seed)
    guides = random_guides(n_cells, n_guides, per_cell, seed=seed + 1)
    # Targets are rare transcripts, so that knocking them down barely changes the
    # composition (and thus the log CPM) of the other genes.
    log_prop = rng.normal(0.0, 1.0, n_genes)
    log_prop -= np.log(np.exp(log_prop[n_guides:]).sum())
    log_prop[:n_guides] = np.log(target_proportion)
    depth = np.log(3000.0) + rng.normal(0.0, 0.4, n_cells)
    batch = rng.integers(0, 2, n_cells)
    effect = np.zeros((n_guides, n_genes))
    effect[np.arange(n_guides), np.arange(n_guides)] = knockdown
    log_mean = log_prop + depth[:, None] + 0.1 * batch[:, None] + guides @ effect
    rate = rng.gamma(5.0, np.exp(log_mean) / 5.0)
    counts = rng.poisson(rate)
    names = [f"g{j}" for j in range(n_guides)]
    adata = AnnData(
        X=sparse.csr_matrix(counts.astype(np.int32)),
        obs=pd.DataFrame(
            {"batch": pd.Categorical(np.where(batch == 1, "b2", "b1"))},
            index=[f"cell{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]),
    )
    adata.obsm["guides"] = guides
    adata.uns["guides"] = {"names": names}
    adata.uns["targets"] = {name: f"gene{j}" for j, name in enumerate(names)}
    return adata
