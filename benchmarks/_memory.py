"""Resident memory of this process (Linux /proc), shared by the benchmark scripts."""

from __future__ import annotations

import re


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1))


def rss_kib() -> int:
    """Current resident set size, KiB."""
    return _status_kib("VmRSS")


def peak_kib() -> int:
    """Peak resident set size since the process started or :func:`reset_peak`, KiB."""
    return _status_kib("VmHWM")


def reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True
