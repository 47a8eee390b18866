"""The demo: a generated low-MOI CRISPR screen through the whole pipeline, scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import datasets, get, pl, pp, tl
from ._core._pvalues import genomic_inflation
from .datasets._simulate import NON_TARGETING

if TYPE_CHECKING:
    from anndata import AnnData


@dataclass(frozen=True)
class ScreenScore:
    """Calibration on null pairs and recovery of planted knock-downs."""

    n_null: int
    null_fraction_below_005: float
    null_inflation: float
    n_planted: int
    n_recovered: int


def run_screen(
    n_cells: int = 4000, n_genes: int = 400, n_targets: int = 20, seed: int = 0
) -> AnnData:
    """Simulate a low-MOI screen, assign guides, normalise and test every gene x target."""
    adata = datasets.simulate(
        n_cells=n_cells, n_genes=n_genes, n_targets=n_targets, n_non_targeting=6, seed=seed
    )
    tl.assign_guides(adata, "grna_counts", groups="grna_group")
    pp.normalize(adata, covariates=["batch"])
    tl.de(adata, "nsc_guides", design="low_moi", reference=NON_TARGETING)
    return adata


def score_screen(adata: AnnData, qval_cutoff: float = 0.1) -> ScreenScore:
    """Score DE results against the truth planted by :func:`normalisr_sc.datasets.simulate`."""
    table = get.de_df(adata)
    truth = adata.uns["simulation"]["targets"]
    planted = set(zip(truth["grna_group"], truth["gene"], strict=True))
    is_planted = np.array(
        [(g, n) in planted for g, n in zip(table["group"], table["gene"], strict=True)]
    )
    null = table.loc[~is_planted]
    null_log10p = -np.log10(np.clip(null["pval"].to_numpy(dtype=float), 1e-300, None))
    recovered = table.loc[is_planted & (table["qval"] < qval_cutoff).to_numpy()]
    return ScreenScore(
        n_null=len(null),
        null_fraction_below_005=float((null["pval"] < 0.05).mean()),
        null_inflation=genomic_inflation(null_log10p),
        n_planted=len(planted),
        n_recovered=len(recovered),
    )


def write_plots(adata: AnnData, folder) -> list:
    import matplotlib.pyplot as plt

    paths = []
    group = adata.uns["simulation"]["targets"]["grna_group"].iloc[0]
    for name, draw in [
        ("qq.png", lambda: pl.qq(adata, show=False)),
        ("volcano.png", lambda: pl.volcano(adata, group, show=False)),
        ("weights.png", lambda: pl.weights(adata, show=False)),
    ]:
        ax = draw()
        ax.figure.savefig(folder / name, dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        paths.append(folder / name)
    return paths
