"""Cell variance weights against library size."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._docs import doc_params
from .._store import read_params, written_key
from .._utils import require
from .._validate import check_str
from ._utils import check_plot_args, doc_show_save_ax, finish, finite_values, new_axes

if TYPE_CHECKING:
    import os

    from anndata import AnnData
    from matplotlib.axes import Axes


@doc_params(doc_show_save_ax=doc_show_save_ax)
def weights(
    adata: AnnData,
    *,
    weights_key: str = "nsc_weight",
    outlier_key: str = "nsc_outlier",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes | None:
    """Scatter of each cell's variance weight against its log total count.

    Cells flagged by :func:`normalisr_sc.pp.qc_outlier` (with ``inplace=False``) are
    drawn in red.

    Parameters
    ----------
    adata
        AnnData after :func:`normalisr_sc.pp.compute_var`.
    weights_key
        ``adata.obs`` column of the weights.
    outlier_key
        ``adata.obs`` column of the outlier flags, if present.
    {doc_show_save_ax}

    Returns
    -------
    The Axes (``None`` if shown); its first collection holds the inlier points and, if any, the second the
    outliers.
    """
    check_str("weights_key", weights_key)
    check_str("outlier_key", outlier_key)
    check_plot_args(ax, show, save)
    require(adata, "obs", weights_key, "nsc.pp.compute_var")
    # The summary covariates of the lcpm run the weights were fitted to, as named by
    # the records of compute_var (its layer) and of that lcpm run (its cov_key).
    layer = read_params(adata, weights_key).get("layer", "lcpm")
    cov_key = written_key(adata, str(layer), "cov_key", "nsc_cov")
    require(adata, "obsm", cov_key, "nsc.pp.lcpm")
    log_total = finite_values(
        adata.obsm[cov_key]["log_total_counts"], f"adata.obsm[{cov_key!r}]['log_total_counts']"
    )
    weight = finite_values(adata.obs[weights_key], f"adata.obs[{weights_key!r}]")
    outlier = (
        adata.obs[outlier_key].to_numpy(dtype=bool)
        if outlier_key in adata.obs
        else np.zeros(adata.n_obs, dtype=bool)
    )
    ax = new_axes(ax)
    ax.scatter(
        log_total[~outlier],
        weight[~outlier],
        s=4,
        alpha=0.5,
        color="tab:blue",
        label="cells",
        rasterized=True,
    )
    if outlier.any():
        ax.scatter(
            log_total[outlier],
            weight[outlier],
            s=10,
            color="tab:red",
            label=f"outliers ({outlier.sum()})",
        )
    ax.set_xlabel("log total counts")
    ax.set_ylabel("variance weight")
    ax.legend(frameon=False)
    return finish(ax, show=show, save=save)
