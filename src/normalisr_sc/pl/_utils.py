"""Shared plumbing of the plots: axes creation and scanpy's show/save habits."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

    from matplotlib.axes import Axes


def new_axes(ax: Axes | None, figsize: tuple[float, float] = (4.5, 4.0)) -> Axes:
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def finish(ax: Axes, *, show: bool | None, save: str | os.PathLike | None) -> Axes:
    """Save and/or show the figure of ``ax`` and return ``ax``."""
    import matplotlib.pyplot as plt

    if save is not None:
        ax.figure.savefig(save, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
    return ax
