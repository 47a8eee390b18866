"""Shared plumbing of the plots: axes creation and scanpy's show/save habits."""

from __future__ import annotations

from pathlib import Path
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
    """Save and/or show the figure of ``ax`` and return ``ax``.

    The folder of ``save`` is created if missing, as scanpy does for its figure folder.
    """
    import matplotlib.pyplot as plt

    if save is not None:
        path = Path(save)
        if path.parent.exists() and not path.parent.is_dir():
            msg = f"cannot save the figure to {str(path)!r}: {str(path.parent)!r} is not a folder."
            raise ValueError(msg)
        path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(path, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
    return ax
