"""A seeded generator of UMI counts with planted truth.

The truth (differentially expressed genes, co-expression modules, guide targets) is
stored in ``adata.uns['simulation']`` so that results can be scored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._validate import check_int, check_number

#: Name of the negative-control guide group, as in real screens.
NON_TARGETING = "non-targeting"


def _guides(
    rng: np.random.Generator,
    n_cells: int,
    n_targets: int,
    guides_per_target: int,
    n_non_targeting: int,
    moi: float | None,
    guide_umis: float,
) -> tuple[sparse.csr_matrix, pd.DataFrame, np.ndarray]:
    """Guide UMI counts (cells x guides), the guide -> group table and who carries what.

    Low MOI (``moi=None``): every cell gets exactly one guide. High MOI: each cell gets a
    Poisson(``moi``) number of distinct guides. Carried guides have many UMIs, the others
    a little ambient noise, so the customary assignments recover the truth.
    """
    groups = [f"target{t:03d}" for t in range(n_targets) for _ in range(guides_per_target)]
    groups += [NON_TARGETING] * n_non_targeting
    guide_ids = [
        f"{g}_g{i % guides_per_target + 1}" if g != NON_TARGETING else f"NT_g{i}"
        for i, g in enumerate(groups)
    ]
    n_guides = len(groups)
    carried = np.zeros((n_cells, n_guides), dtype=bool)
    if moi is None:
        carried[np.arange(n_cells), rng.integers(n_guides, size=n_cells)] = True
    else:
        per_cell = np.minimum(rng.poisson(moi, size=n_cells), n_guides)
        for cell, count in enumerate(per_cell):
            carried[cell, rng.choice(n_guides, size=count, replace=False)] = True
    umis = rng.poisson(np.where(carried, guide_umis, 0.05))
    table = pd.DataFrame({"grna_id": guide_ids, "grna_group": groups})
    return sparse.csr_matrix(umis.astype(np.int32)), table, carried


def simulate(
    n_cells: int = 2000,
    n_genes: int = 500,
    *,
    n_batches: int = 2,
    de_fraction: float = 0.05,
    de_log_fold_change: float = 0.7,
    n_modules: int = 2,
    module_size: int = 10,
    module_strength: float = 0.4,
    n_targets: int = 0,
    guides_per_target: int = 2,
    n_non_targeting: int = 4,
    moi: float | None = None,
    knockdown: float = 1.0,
    dispersion: float = 0.2,
    mean_total_counts: float = 4000.0,
    seed: int = 0,
) -> AnnData:
    """Simulate raw UMI counts of a case-control experiment or a CRISPR screen.

    Counts are negative binomial (gamma-Poisson) around gene proportions times cell
    library sizes; library sizes vary log-normally, so zeros depend non-linearly on
    depth as in real data. Batches shift library size and gene means. Planted truth:

    - case-control: half of the cells are ``'case'``; a fraction of genes changes its
      mean in cases by ``exp(±de_log_fold_change)``. Counts are a library's
      proportions, so strong changes of many genes also shift every other gene's
      proportion a little in cases (a compositional effect, which a test of log CPM
      detects): for calibration on genes that are exactly null, use ``de_fraction=0``;
    - co-expression modules: groups of genes share a latent cell factor;
    - a pooled CRISPR screen (``n_targets > 0``): each target group's guides knock down
      one gene by ``exp(-knockdown)``; non-targeting guides do nothing. Low MOI
      (``moi=None``) gives each cell one guide; high MOI a Poisson(``moi``) number.

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
    n_modules, module_size, module_strength
        Number of co-expression modules, genes per module, and the standard deviation
        of the shared log-scale factor.
    n_targets
        Number of targeted genes (guide groups) of a screen; 0 for no screen.
    guides_per_target, n_non_targeting
        Guides per target group and number of non-targeting control guides.
    moi
        ``None`` for low MOI (one guide per cell), else the mean number of guides per
        cell (high MOI).
    knockdown
        Natural-log decrease of a target gene's mean in cells carrying its guide.
    dispersion
        Negative-binomial dispersion (variance = mean + dispersion * mean^2).
    mean_total_counts
        Typical total count per cell.
    seed
        Seed of the generator; the same seed gives the same data.

    Returns
    -------
    AnnData with CSR integer counts in ``X`` and categorical ``obs['group']`` and
    ``obs['batch']``. A screen adds guide UMI counts in ``obsm['grna_counts']`` (a
    cells x guides DataFrame) and the guide table ``uns['grna_group']`` (``grna_id``,
    ``grna_group``). ``uns['simulation']`` holds the truth: ``de_genes``,
    ``de_log_fold_change`` (case over control, natural log), ``modules`` (gene lists),
    ``targets`` (DataFrame of ``grna_group``, ``gene``, ``log_fold_change``),
    ``guides_carried`` (cells x guides 0/1, sparse) and the parameters.

    Examples
    --------
    >>> adata = nsc.datasets.simulate(n_cells=500, n_genes=200, seed=1)
    >>> screen = nsc.datasets.simulate(n_targets=10, moi=5.0)
    """
    check_int("n_cells", n_cells, minimum=4)
    check_int("n_genes", n_genes, minimum=2)
    check_int("n_batches", n_batches, minimum=1)
    check_number("de_fraction", de_fraction, minimum=0, maximum=1)
    check_number("de_log_fold_change", de_log_fold_change)
    check_int("n_modules", n_modules, minimum=0)
    check_int("module_size", module_size, minimum=0)
    check_number("module_strength", module_strength, minimum=0)
    check_int("n_targets", n_targets, minimum=0)
    check_int("guides_per_target", guides_per_target, minimum=1)
    check_int("n_non_targeting", n_non_targeting, minimum=0)
    check_number("moi", moi, minimum=0, min_open=True, allow_none=True)
    check_number("knockdown", knockdown)
    check_number("dispersion", dispersion, minimum=0, min_open=True)
    check_number("mean_total_counts", mean_total_counts, minimum=0, min_open=True)
    check_int("seed", seed, minimum=0)
    n_planted = n_modules * module_size + n_targets
    if n_cells < 4 or n_genes < 2:
        msg = f"need at least 4 cells and 2 genes, got {n_cells} x {n_genes}."
        raise ValueError(msg)
    if n_planted > n_genes:
        msg = (
            f"n_modules * module_size + n_targets = {n_modules} * {module_size} + "
            f"{n_targets} = {n_planted} planted genes, but n_genes={n_genes}; raise n_genes."
        )
        raise ValueError(msg)
    if not 0 <= de_fraction <= 1:
        msg = f"de_fraction must be in [0, 1], got {de_fraction!r}."
        raise ValueError(msg)
    if moi is not None and moi <= 0:
        msg = f"moi must be positive (or None for low MOI), got {moi!r}."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    gene_names = np.array([f"gene{i:05d}" for i in range(n_genes)])
    log_proportion = rng.normal(0.0, 1.5, n_genes)
    log_proportion -= np.log(np.exp(log_proportion).sum())
    batch = rng.integers(n_batches, size=n_cells)
    case = rng.permutation(n_cells) < n_cells // 2
    log_depth = (
        np.log(mean_total_counts)
        + rng.normal(0.0, 0.2, n_batches)[batch]
        + rng.normal(0, 0.4, n_cells)
    )
    log_mean = log_proportion + rng.normal(0.0, 0.1, (n_batches, n_genes))[batch]
    log_mean += log_depth[:, None]

    n_de = round(de_fraction * n_genes)
    de_index = np.sort(rng.choice(n_genes, size=n_de, replace=False))
    de_effect = de_log_fold_change * rng.choice([-1.0, 1.0], size=n_de)
    log_mean[:, de_index] += np.outer(case, de_effect)

    # Modules and targets use disjoint genes among the better expressed ones, so the
    # planted signal is detectable.
    planted = rng.permutation(np.argsort(log_proportion)[::-1][: max(n_planted * 2, 1)])[:n_planted]
    modules = [planted[m * module_size : (m + 1) * module_size] for m in range(n_modules)]
    for genes in modules:
        log_mean[:, genes] += module_strength * rng.normal(size=(n_cells, 1))
    obsm: dict[str, Any] = {}
    uns: dict[str, Any] = {}
    targets = pd.DataFrame(columns=["grna_group", "gene", "log_fold_change"])
    if n_targets:
        umis, guide_table, carried = _guides(
            rng, n_cells, n_targets, guides_per_target, n_non_targeting, moi, guide_umis=20.0
        )
        target_genes = planted[n_modules * module_size :]
        group_names = [f"target{t:03d}" for t in range(n_targets)]
        for name, gene in zip(group_names, target_genes, strict=True):
            has_guide = carried[:, (guide_table["grna_group"] == name).to_numpy()].any(axis=1)
            log_mean[has_guide, gene] -= knockdown
        targets = pd.DataFrame(
            {
                "grna_group": group_names,
                "gene": gene_names[target_genes],
                "log_fold_change": -knockdown,
            }
        )
        cell_names = [f"cell{i:05d}" for i in range(n_cells)]
        obsm["grna_counts"] = pd.DataFrame(
            umis.toarray(), index=cell_names, columns=guide_table["grna_id"].to_numpy()
        )
        uns["grna_group"] = guide_table
        uns["guides_carried"] = sparse.csr_matrix(carried.astype(np.int8))

    rate = rng.gamma(1.0 / dispersion, dispersion * np.exp(log_mean))
    counts = sparse.csr_matrix(rng.poisson(rate).astype(np.int32))
    obs = pd.DataFrame(
        {
            "group": pd.Categorical(
                np.where(case, "case", "control"), categories=["control", "case"]
            ),
            "batch": pd.Categorical([f"b{b + 1}" for b in batch]),
        },
        index=[f"cell{i:05d}" for i in range(n_cells)],
    )
    adata = AnnData(X=counts, obs=obs, var=pd.DataFrame(index=gene_names), obsm=obsm)
    if "grna_group" in uns:
        adata.uns["grna_group"] = uns.pop("grna_group")
    adata.uns["simulation"] = {
        "de_genes": gene_names[de_index].tolist(),
        "de_log_fold_change": de_effect,
        "modules": {f"module{m + 1}": gene_names[g].tolist() for m, g in enumerate(modules)},
        "targets": targets,
        **uns,
        "params": {
            "n_batches": n_batches,
            "de_fraction": de_fraction,
            "de_log_fold_change": de_log_fold_change,
            "n_modules": n_modules,
            "module_size": module_size,
            "module_strength": module_strength,
            "n_targets": n_targets,
            "guides_per_target": guides_per_target,
            "n_non_targeting": n_non_targeting,
            "moi": "low" if moi is None else moi,
            "knockdown": knockdown,
            "dispersion": dispersion,
            "mean_total_counts": mean_total_counts,
            "seed": seed,
        },
    }
    return adata
