"""Package-wide settings: progress bars, block sizes and threads."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

__all__ = ["settings"]


def _running_interactively() -> bool:
    """Whether a person is likely watching: a terminal on stderr or a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        return True
    stream = getattr(sys, "stderr", None)
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def available_cores() -> int:
    """Return the number of CPU cores this process may run on.

    The process's CPU affinity where the platform reports it (a container or ``taskset``
    may allow fewer cores than the machine has), else ``os.cpu_count()``.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
    n_jobs
        Number of threads of every computation: normalisr_sc's own thread pools, the
        BLAS and OpenMP libraries (limited with threadpoolctl while a step runs) and the
        local dask scheduler of streamed passes. Default: the cores available to the
        process (its CPU affinity). Assign a positive integer, or ``None`` to go back to
        the default. Results do not depend on it. A ``dask.distributed`` cluster keeps
        its own workers and threads. (Kernels read it through
        ``normalisr_sc._core._reduce.thread_count`` and run inside
        ``normalisr_sc._core._reduce.limit_threads``.)
    """

    progress: bool | None = None
    block_cells: int = 4096
    _n_jobs: int | None = field(default=None, repr=False)

    @property
    def n_jobs(self) -> int:
        """Threads used by every step (default: the cores available to the process)."""
        return available_cores() if self._n_jobs is None else self._n_jobs

    @n_jobs.setter
    def n_jobs(self, value: int | None) -> None:
        from ._validate import check_int

        self._n_jobs = check_int("nsc.settings.n_jobs", value, minimum=1, allow_none=True)

    def show_progress(self) -> bool:
        return _running_interactively() if self.progress is None else bool(self.progress)


settings = _Settings()
