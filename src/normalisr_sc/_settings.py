"""Package-wide settings: progress bars and block sizes."""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = ["settings"]


def _running_interactively() -> bool:
    """Whether a person is likely watching: a terminal on stderr or a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        return True
    stream = getattr(sys, "stderr", None)
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


@dataclass
class _Settings:
    """Settings of :mod:`normalisr_sc`, changed by assigning attributes of ``nsc.settings``.

    Attributes
    ----------
    progress
        Show tqdm progress bars for long computations. ``None`` (default) shows them
        only when running interactively (a terminal or a Jupyter kernel).
    block_cells
        Number of cells processed per block by the streaming kernels. Memory of the
        working buffers grows linearly with it; every result is independent of it.
    """

    progress: bool | None = None
    block_cells: int = 4096

    def show_progress(self) -> bool:
        return _running_interactively() if self.progress is None else bool(self.progress)


settings = _Settings()
