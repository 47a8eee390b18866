"""Progress bars that follow :attr:`normalisr_sc.settings.progress`."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from tqdm.auto import tqdm

from ._settings import settings

if TYPE_CHECKING:
    from collections.abc import Iterable

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar unless progress display is off."""
    return tqdm(iterable, total=total, desc=desc, disable=not settings.show_progress(), leave=False)
