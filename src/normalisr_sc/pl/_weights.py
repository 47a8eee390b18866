"""Cell variance weights against library size."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._utils import require
from ._utils import finish, new_axes

if TYPE_CHECKING:
    import os

    from anndata import AnnData
    from matplotlib.axes import Axes


def weights(
    adata: AnnData,
    *,
    weights_key: str = "nsc_weight",
    outlier_key: str = "nsc_outlier",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes:
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
    ax
        Axes to draw into; a new figure otherwise.
    show
        Call ``plt.show()``.
    save
        Save the figure to this path.

    Returns
    -------
    The Axes; its first collection holds the inlier points and, if any, the second the
    outliers.
    """
    require(adata, "obs", weights_key, "nsc.pp.compute_var")
    require(adata, "obsm", "nsc_cov", "nsc.pp.lcpm")
    log_total = np.asarray(adata.obsm["nsc_cov"]["log_total_counts"], dtype=float)
    weight = adata.obs[weights_key].to_numpy(dtype=float)
    outlier = (adata.obs[outlier_key].to_numpy(dtype=bool) if outlier_key in adata.obs
               else np.zeros(adata.n_obs, dtype=bool))
    ax = new_axes(ax)
    ax.scatter(log_total[~outlier], weight[~outlier], s=4, alpha=0.5, color="tab:blue",
               label="cells", rasterized=True)
    if outlier.any():
        ax.scatter(log_total[outlier], weight[outlier], s=10, color="tab:red",
                   label=f"outliers ({outlier.sum()})")
    ax.set_xlabel("log total counts")
    ax.set_ylabel("variance weight")
    ax.legend(frameon=False)
    return finish(ax, show=show, save=save)
