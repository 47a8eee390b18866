"""Progress bars that follow :attr:`normalisr_sc.settings.progress`.

In a terminal every pass over the data gets its own tqdm bar, drawn on one line and
cleared when the pass ends. In a Jupyter kernel a cell shows ONE bar: the first pass of
the cell opens it, later passes reuse it (description and total reset), and it is
closed when the cell has run. It is an ipywidgets bar when ipywidgets can be imported
and tqdm's plain text bar otherwise (never tqdm.auto's ``IProgress not found`` warning).
With ``settings.progress`` left at ``None`` (automatic), the environment variable
``TQDM_DISABLE`` (tqdm's own switch; set by the documentation build) turns bars off.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any, TypeVar

from ._settings import settings

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

T = TypeVar("T")

#: The bar of the running Jupyter cell (``None`` outside a cell or before its first pass).
_cell_bar: Any = None
#: Whether a pass is iterating the cell's bar (a nested pass then draws none).
_cell_bar_busy = False
#: Whether the end-of-cell hook is registered with the kernel's shell.
_hook_registered = False


def _kernel_shell() -> Any:
    """Return the IPython shell of the Jupyter kernel this process runs in, else ``None``."""
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return None
    try:
        shell = ipython.get_ipython()
    except AttributeError:  # a partial IPython
        return None
    if shell is None or "IPKernelApp" not in getattr(shell, "config", {}):
        return None
    return shell


def _widgets_available() -> bool:
    """Whether ipywidgets can be imported (notebook bars need it)."""
    try:
        return importlib.util.find_spec("ipywidgets") is not None
    except ValueError:  # a module without a spec in sys.modules
        return "ipywidgets" in sys.modules


def _bar_class(*, in_kernel: bool, widgets: bool) -> type:
    """Return the notebook bar in a kernel with ipywidgets, the plain text bar otherwise."""
    if in_kernel and widgets:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    from tqdm.std import tqdm as text_tqdm

    return text_tqdm


def _disabled_by_environment() -> bool:
    value = os.environ.get("TQDM_DISABLE", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def _shown() -> bool:
    if settings.progress is None and _disabled_by_environment():
        return False
    return settings.show_progress()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """Iterate ``iterable`` behind a progress bar, unless progress display is off.

    Parameters
    ----------
    iterable
        The blocks of one pass over the data.
    total
        Number of items (``len(iterable)`` when ``None`` and it has one).
    desc
        What the pass does, shown before the bar.

    Returns
    -------
    The items of ``iterable``, in order.
    """
    if not _shown():
        return iterable
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    shell = _kernel_shell()
    if shell is None:
        bar = _bar_class(in_kernel=False, widgets=False)
        return bar(iterable, total=total, desc=desc, leave=False)
    return _in_cell_bar(shell, iterable, total, desc)


def _in_cell_bar(shell: Any, iterable: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
    """Iterate ``iterable`` on the running cell's one bar (opened on first use)."""
    global _cell_bar, _cell_bar_busy, _hook_registered
    if _cell_bar_busy:  # a pass inside a pass: the outer one owns the bar
        yield from iterable
        return
    if not _hook_registered:
        shell.events.register("post_run_cell", _close_cell_bar)
        _hook_registered = True
    if _cell_bar is None:
        bar_class = _bar_class(in_kernel=True, widgets=_widgets_available())
        _cell_bar = bar_class(total=total, desc=desc, leave=False)
    else:
        _cell_bar.reset(total=total)
        _cell_bar.set_description(desc, refresh=True)
    bar = _cell_bar
    _cell_bar_busy = True
    try:
        for item in iterable:
            yield item
            bar.update()
    finally:
        _cell_bar_busy = False


def _close_cell_bar(*_: Any) -> None:
    """Close the running cell's bar (IPython's ``post_run_cell`` event)."""
    global _cell_bar, _cell_bar_busy
    bar, _cell_bar, _cell_bar_busy = _cell_bar, None, False
    if bar is not None:
        bar.close()
