"""Shared plumbing of the plots: argument checks, axes creation and scanpy's show/save habits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._validate import check_bool

if TYPE_CHECKING:
    import os

    from matplotlib.axes import Axes

#: The ``ax``, ``show`` and ``save`` parameters of every plot (filled by ``doc_params``).
doc_show_save_ax = """\
ax
        Axes to draw into; default a new figure.
    show
        Show the figure (``plt.show()``) and return nothing; default
        ``scanpy.settings.autoshow``, as in scanpy's plots. Pass ``show=False`` to get the
        Axes.
    save
        Save the figure to this path (the format follows the suffix: ``.png``, ``.pdf``,
        ``.svg``, ...); its folder is created if missing."""


def check_plot_args(ax: Axes | None, show: bool | None, save: str | os.PathLike | None) -> None:
    """Refuse wrong ``ax``/``show``/``save`` before anything is drawn."""
    from matplotlib.axes import Axes

    if ax is not None and not isinstance(ax, Axes):
        msg = f"`ax` must be a matplotlib Axes or None, got {type(ax).__name__}."
        raise ValueError(msg)
    check_bool("show", show, allow_none=True)
    if save is not None:
        if not isinstance(save, str | Path) or not str(save):
            msg = f"`save` must be a file path or None, got {save!r}."
            raise ValueError(msg)
        parent = Path(save).parent
        if parent.exists() and not parent.is_dir():
            msg = f"cannot save the figure to {str(save)!r}: {str(parent)!r} is not a folder."
            raise ValueError(msg)


def finite_values(values: np.ndarray, where: str) -> np.ndarray:
    """``values`` as float, refusing NaN or infinite entries of stored results."""
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).all():
        msg = (
            f"{where} holds {int((~np.isfinite(values)).sum())} NaN or infinite values; "
            "rerun the step that wrote it."
        )
        raise ValueError(msg)
    return values


def new_axes(ax: Axes | None, figsize: tuple[float, float] = (4.5, 4.0)) -> Axes:
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def finish(ax: Axes, *, show: bool | None, save: str | os.PathLike | None) -> Axes | None:
    """Save and/or show the figure of ``ax``; return ``ax`` unless it was shown."""
    import matplotlib.pyplot as plt

    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        root = ax.figure.figure  # the whole figure, also when ax is in a subfigure
        root.savefig(path, dpi=150, bbox_inches="tight")
    if show is None:
        from scanpy import settings

        show = settings.autoshow
    if show:
        plt.show()
        return None
    return ax
