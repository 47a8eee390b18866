"""A seeded generator of UMI counts with planted differential expression."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def simulate(
    n_cells: int = 2000,
    n_genes: int = 500,
    *,
    n_batches: int = 2,
    de_fraction: float = 0.05,
    de_log_fold_change: float = 0.7,
    dispersion: float = 0.2,
    mean_total_counts: float = 4000.0,
    seed: int = 0,
) -> AnnData:
    """Simulate a case-control experiment of raw UMI counts with planted truth.

    Counts are negative binomial (gamma-Poisson) around gene proportions times cell
    library sizes; library sizes vary log-normally, so zeros depend non-linearly on
    depth as in real data. Batches shift library size and gene means. Half of the cells
    are ``'case'``, half ``'control'``; a fraction of genes changes its mean in cases by
    ``exp(±de_log_fold_change)``.

    Parameters
    ----------
    n_cells, n_genes
        Size of the count matrix.
    n_batches
        Number of batches, in ``obs['batch']``.
    de_fraction
        Fraction of genes differentially expressed between case and control.
    de_log_fold_change
        Absolute natural-log fold change of the DE genes (sign drawn at random).
    dispersion
        Negative-binomial dispersion (variance = mean + dispersion * mean^2).
    mean_total_counts
        Typical total count per cell.
    seed
        Seed of the generator; the same seed gives the same data.

    Returns
    -------
    AnnData with CSR integer counts in ``X``, ``obs['group']`` and ``obs['batch']``
    (categorical) and the truth in ``uns['simulation']``: ``de_genes`` (names) and
    ``de_log_fold_change`` (natural log, case over control) and the parameters.

    Examples
    --------
    >>> adata = nsc.datasets.simulate(n_cells=500, n_genes=200, seed=1)
    >>> adata.uns["simulation"]["de_genes"][:3]
    """
    if n_cells < 4 or n_genes < 2:
        msg = f"need at least 4 cells and 2 genes, got {n_cells} x {n_genes}."
        raise ValueError(msg)
    if not 0 <= de_fraction <= 1:
        msg = f"de_fraction must be in [0, 1], got {de_fraction!r}."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    log_proportion = rng.normal(0.0, 1.5, n_genes)
    log_proportion -= np.log(np.exp(log_proportion).sum())
    batch = rng.integers(n_batches, size=n_cells)
    batch_gene_shift = rng.normal(0.0, 0.1, (n_batches, n_genes))
    batch_depth_shift = rng.normal(0.0, 0.2, n_batches)
    case = rng.permutation(n_cells) < n_cells // 2

    n_de = round(de_fraction * n_genes)
    de_index = np.sort(rng.choice(n_genes, size=n_de, replace=False))
    de_effect = np.zeros(n_genes)
    de_effect[de_index] = de_log_fold_change * rng.choice([-1.0, 1.0], size=n_de)

    log_depth = np.log(mean_total_counts) + batch_depth_shift[batch] + rng.normal(0, 0.4, n_cells)
    log_mean = (
        log_proportion[None, :] + batch_gene_shift[batch] + np.outer(case, de_effect)
        + log_depth[:, None]
    )
    mean = np.exp(log_mean)
    rate = rng.gamma(1.0 / dispersion, dispersion * mean)
    counts = sparse.csr_matrix(rng.poisson(rate).astype(np.int32))

    gene_names = np.array([f"gene{i:05d}" for i in range(n_genes)])
    obs = pd.DataFrame(
        {
            "group": pd.Categorical(np.where(case, "case", "control"),
                                    categories=["control", "case"]),
            "batch": pd.Categorical([f"b{b + 1}" for b in batch]),
        },
        index=[f"cell{i:05d}" for i in range(n_cells)],
    )
    adata = AnnData(X=counts, obs=obs, var=pd.DataFrame(index=gene_names))
    adata.uns["simulation"] = {
        "de_genes": gene_names[de_index].tolist(),
        "de_log_fold_change": de_effect[de_index],
        "params": {
            "n_batches": n_batches, "de_fraction": de_fraction,
            "de_log_fold_change": de_log_fold_change, "dispersion": dispersion,
            "mean_total_counts": mean_total_counts, "seed": seed,
        },
    }
    return adata
