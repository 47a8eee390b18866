"""The QQ plot of a calibration check's negative-control pairs: ``nsc.pl.calibration``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .._docs import doc_params
from .._store import read_params, read_record
from .._validate import check_bool, check_str
from ._association import SERIES_COLORS, draw_qq
from ._utils import check_plot_args, doc_show_save_ax, finish, finite_values, new_axes

if TYPE_CHECKING:
    import os

    from anndata import AnnData
    from matplotlib.axes import Axes

#: Entries of a calibration check's record the plot reads.
NEEDED = ("log10p", "group", "groups", "fraction_below_05", "n_false_discoveries")


def _record(adata: AnnData, key: str) -> Mapping:
    record = read_record(adata, key)
    if any(entry not in record for entry in NEEDED):
        msg = (
            f"no calibration check under adata.uns[{key!r}]; run "
            f"`nsc.tl.calibration_check(adata, key_added={key!r})` first."
        )
        raise ValueError(msg)
    return record


@doc_params(doc_show_save_ax=doc_show_save_ax)
def calibration(
    adata: AnnData,
    key: str = "nsc_calibration",
    *,
    by_group: bool = False,
    clip: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
) -> Axes | None:
    """QQ plot of the negative-control pairs of :func:`normalisr_sc.tl.calibration_check`.

    The observed ``-log10`` p-values of the NT pairs against those expected of uniform
    p-values, inside the grey band (pointwise 95% range of uniform order statistics)
    when the tests are calibrated; the inflation factor ``lambda`` is in the legend, the
    fraction of p-values below 0.05 and the false discoveries (q-value over the NT
    pairs at most the check's ``qcut``) in the corner. As :func:`normalisr_sc.pl.qq`,
    the axes span the expected range and stronger values sit at the top edge as
    triangles unless ``clip=False``.

    Parameters
    ----------
    adata
        AnnData on which :func:`normalisr_sc.tl.calibration_check` ran.
    key
        ``key_added`` of the check.
    by_group
        One colour per NT group (its own expected range and lambda; at most 10 groups
        get their own colour, more repeat them), e.g. to spot one NT guide that acts.
    clip
        Keep the axes on the expected range; ``False`` extends the y axis to the
        largest observed value.
    {doc_show_save_ax}

    Returns
    -------
    The Axes (``None`` if shown). ``ax.nsc_qq`` maps each series' label to its
    ``(expected, observed)`` arrays, sorted from the most significant.
    """
    check_str("key", key)
    check_bool("by_group", by_group)
    check_bool("clip", clip)
    check_plot_args(ax, show, save)
    record = _record(adata, key)
    log10p = finite_values(record["log10p"], f"adata.uns[{key!r}]['log10p']")
    if log10p.size == 0:
        msg = f"the calibration check under adata.uns[{key!r}] holds no NT pair."
        raise ValueError(msg)
    if by_group:
        group = np.asarray(record["group"], dtype=np.int64)
        names = [str(n) for n in np.asarray(record["groups"]).ravel()]
        series = {
            names[j]: np.sort(log10p[group == j])[::-1]
            for j in range(len(names))
            if (group == j).any()
        }
    else:
        series = {f"{log10p.size} NT pairs": np.sort(log10p)[::-1]}
    ax = draw_qq(new_axes(ax), series, clip=clip)
    if by_group and len(series) > len(SERIES_COLORS):
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
    params = read_params(adata, key)
    qcut = params.get("qcut", 0.1)
    ax.text(
        0.97,
        0.03,
        f"{float(record['fraction_below_05']):.1%} of p below 0.05\n"
        f"{int(record['n_false_discoveries'])} false discoveries at q $\\leq$ {float(qcut):g}",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
    )
    construction = str(params.get("construction", ""))
    per_group = int(params.get("guides_per_group", 1))
    built = {
        "guides": "one NT guide" if per_group == 1 else f"{per_group} NT guides",
        "random": "random NT cells",
    }.get(construction, construction)
    design = params.get("design")
    ax.set_title(
        f"calibration ({design}): NT groups of {built}" if design else "calibration",
        fontsize=9,
    )
    return finish(ax, show=show, save=save)
