"""The one harness of the benchmarks: runners, memory, load average, medians, tables.

Every ``bench_*.py`` measures through this module, so that all figures are taken and
printed the same way:

- :func:`timed` runs one call in this process; :func:`in_child` runs one call in a fresh
  process forked from the benchmark (Linux), so that its peak memory is its own. Both
  stop a call after ``cap`` seconds and read the machine's 1-minute load average
  (:func:`os.getloadavg`) just before and just after the call. Each returns a
  :class:`Run`.
- :func:`alternate` repeats several measurements in turn (ours, peer, ours, peer, ...)
  so that a change of the machine's load hits all of them alike.
- :func:`median` and :func:`ratio` summarise the runs: ratios are always taken between
  the medians of runs alternated in the same session.
- :func:`print_table` prints one row per scenario: the median of each method, its ratio
  to the reference method, the range of the load average over the row's measurements
  and whether the row can be trusted; then the verdict of the load rule.

The load rule (:func:`load_limit`): a measurement is trusted when the 1-minute load
average, before and after it, is at most ``own + LOAD_MARGIN x cores``, where ``own`` is
what the benchmark itself may keep busy (by default every core: the library's thread
pools and BLAS use them all) and ``LOAD_MARGIN = 0.5``. Above it, other jobs held more
than half of the machine's cores beside the benchmark, and the row is marked ``BUSY``.
On a virtual machine, the host's other guests do not show in the load average but in
the time the hypervisor takes from this guest (steal, ``/proc/stat``): a run during
which more than ``STEAL_LIMIT`` of the CPU time was stolen is ``BUSY`` too.

Allocating new memory costs what the machine charges for its first touch
(:func:`first_touch_seconds_per_gb`, printed in the header): on a virtual machine that
returns freed memory to its host, several seconds per GB, paid again by every new
allocation, so that a method producing more output pays more than on bare metal.

Memory is read from Linux ``/proc/self/status``: :func:`rss_kib`, :func:`peak_kib`
(VmHWM) and :func:`reset_peak` (``/proc/self/clear_refs``), the last two meant for the
child of :func:`in_child` after it has loaded its input.

A minimal benchmark::

    import _harness as h

    runs = h.alternate({"ours": lambda: h.timed(ours, data),
                        "peer": lambda: h.timed(peer, data, cap=60)}, repeat=3)
    h.print_table([h.Row("scenario", runs)], ["ours", "peer"], reference="ours")
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import platform
import re
import signal
import statistics
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

MB = 2**20
GB = 2**30
#: The real data sets, ``../shared/data`` next to the repository (benchmarks skip them
#: with a message when absent).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Measurements per method by default (each method this many times, in turn).
DEFAULT_REPEAT = 3
#: Share of the cores other jobs may keep busy before a measurement is not trusted.
LOAD_MARGIN = 0.5
#: Share of the CPU time the hypervisor may take (steal) before a run is not trusted.
STEAL_LIMIT = 0.05
#: Environment variables setting the number of threads of the BLAS libraries.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# ---------------------------------------------------------------- memory (Linux /proc)


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        found = re.search(rf"{field_name}:\s+(\d+)", status.read())
    return int(found.group(1)) if found else 0


def rss_kib() -> int:
    """Current resident set size of this process, KiB."""
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


# ---------------------------------------------------------------- machine load


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_1min() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def load_limit(own: float | None = None) -> float:
    """Highest trusted 1-minute load average: ``own + LOAD_MARGIN x cores``.

    ``own`` is what the benchmark itself may keep busy (default: every core).
    """
    return (cores() if own is None else own) + LOAD_MARGIN * cores()


def cpu_times() -> tuple[int, int]:
    """Stolen and total CPU time of the machine so far (Linux ``/proc/stat``), in ticks.

    ``(0, 0)`` where there is no ``/proc/stat``: the steal of a run is then 0.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0, 0
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    ticks = [int(value) for value in fields[:8]]
    return ticks[7] if len(ticks) > 7 else 0, sum(ticks)


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of the CPU time between two :func:`cpu_times` that the hypervisor took."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def first_touch_seconds_per_gb(megabytes: int = 256) -> float:
    """Seconds per GB to write newly allocated memory for the first time, measured now.

    About 0.1-0.3 s/GB on bare metal; far more on a virtual machine whose freed memory
    goes back to the host (virtio-balloon free page reporting), where every new
    allocation is backed again by the host on first touch (see the module's text).
    """
    import numpy as np

    start = time.perf_counter()
    np.ones(megabytes * MB // 8)
    return (time.perf_counter() - start) * GB / (megabytes * MB)


#: Where Linux drops its page cache on request (root only).
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def can_drop_page_cache() -> bool:
    """Whether this process may drop the page cache (Linux, as root)."""
    return DROP_CACHES.exists() and os.access(DROP_CACHES, os.W_OK)


def drop_page_cache() -> None:
    """Write dirty pages back and drop the clean page cache: files are read from disk again.

    For runs that should each start with their data on disk, whatever the runs before
    them read (see :func:`can_drop_page_cache`).
    """
    os.sync()
    DROP_CACHES.write_text("1\n")


def set_threads(threads: int | None) -> None:
    """Limit the BLAS/OpenMP threads of this process and of the processes it starts."""
    if threads is None:
        return
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)


# ---------------------------------------------------------------- one measurement


@dataclass
class Run:
    """One measured call.

    Attributes
    ----------
    seconds
        Wall-clock seconds of the call (``inf`` if it was stopped at its cap or failed).
    load
        1-minute load average just before and just after the call.
    capped
        The call was stopped after ``cap`` seconds; ``seconds`` is then ``inf``.
    error
        The error of a failed call (its last lines), else None.
    data
        What the measured function returned (for :func:`in_child`: its dict, e.g.
        peak memory or per-step times).
    own
        What the benchmark itself may keep busy (cores), for :func:`load_limit`.
    steal
        Share of the machine's CPU time the hypervisor took during the call
        (:func:`steal_share`).
    """

    seconds: float
    load: tuple[float, float]
    capped: bool = False
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    own: float | None = None
    steal: float = 0.0

    @property
    def busy(self) -> bool:
        """The load average exceeded :func:`load_limit` before or after the call, or the
        hypervisor took more than :data:`STEAL_LIMIT` of the CPU time during it."""
        return max(self.load) > load_limit(self.own) or self.steal > STEAL_LIMIT

    @property
    def ok(self) -> bool:
        """Finished within its cap, without error."""
        return not self.capped and self.error is None


class _Capped(Exception):
    pass


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    if seconds is None:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise _Capped

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed(
    function: Callable[..., Any],
    *args: Any,
    cap: float | None = None,
    own: float | None = None,
    **kwargs: Any,
) -> Run:
    """Run ``function(*args, **kwargs)`` once in this process and time it.

    A call still running after ``cap`` seconds is interrupted (at the next Python
    instruction: a long C call finishes first) and returned as capped. A dict returned
    by the function is kept as :attr:`Run.data`.
    """
    before, ticks = load_1min(), cpu_times()
    start = time.perf_counter()
    try:
        with _alarm(cap):
            result = function(*args, **kwargs)
    except _Capped:
        steal = steal_share(ticks, cpu_times())
        return Run(math.inf, (before, load_1min()), capped=True, own=own, steal=steal)
    seconds = time.perf_counter() - start
    data = result if isinstance(result, dict) else {}
    steal = steal_share(ticks, cpu_times())
    return Run(seconds, (before, load_1min()), data=data, own=own, steal=steal)


def _child(connection: Any, function: Callable[..., dict], args: tuple, kwargs: dict) -> None:
    os.setpgid(0, 0)  # its own process group, so that a cap also stops its helpers
    try:
        connection.send(("ok", function(*args, **kwargs)))
    except BaseException:  # the parent prints it
        connection.send(("error", traceback.format_exc()))
    connection.close()


def _kill_group(process: Any) -> None:
    """Kill the child and its process group (it may not have made the group yet)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.kill()
    process.join()


def in_child(
    function: Callable[..., dict],
    *args: Any,
    cap: float | None = None,
    own: float | None = None,
    **kwargs: Any,
) -> Run:
    """Run ``function(*args, **kwargs)`` once in a fresh process forked from this one.

    The child inherits the modules imported so far (import them before, so that they
    are not timed) but not the memory it allocates: it loads its input, calls
    :func:`reset_peak`, runs the method and returns a dict of plain values, whose
    ``'seconds'`` entry is the measured time (without it, the wall time of the whole
    child is taken). After ``cap`` seconds the child and its process group are killed
    and the run is capped. A failed child gives a run with its error; nothing is raised.
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    before, ticks = load_1min(), cpu_times()
    start = time.perf_counter()
    process = context.Process(target=_child, args=(send, function, args, kwargs))
    process.start()
    send.close()
    try:
        ready = receive.poll(cap)
    except BaseException:  # e.g. Ctrl-C: the child is in its own group, stop it too
        _kill_group(process)
        raise
    wall = time.perf_counter() - start
    if not ready:
        _kill_group(process)
        steal = steal_share(ticks, cpu_times())
        return Run(math.inf, (before, load_1min()), capped=True, own=own, steal=steal)
    try:
        status, result = receive.recv()
    except EOFError:
        status, result = "error", f"child exited with code {process.join() or process.exitcode}"
    process.join()
    after, steal = load_1min(), steal_share(ticks, cpu_times())
    if status == "error":
        return Run(math.inf, (before, after), error=result, own=own, steal=steal)
    seconds = float(result.get("seconds", wall))
    return Run(seconds, (before, after), data=result, own=own, steal=steal)


def alternate(
    measures: Mapping[str, Callable[[], Run]],
    repeat: int = DEFAULT_REPEAT,
    *,
    progress: str | None = None,
) -> dict[str, list[Run]]:
    """Run every measurement ``repeat`` times in turn: a, b, c, a, b, c, ...

    A measurement that was capped or failed is not repeated (a capped time is a lower
    bound; more of them cost the cap each). With ``progress``, one line per run is
    printed, prefixed by it.
    """
    runs: dict[str, list[Run]] = {name: [] for name in measures}
    for index in range(repeat):
        for name, measure in measures.items():
            if runs[name] and not runs[name][-1].ok:
                continue
            run = measure()
            runs[name].append(run)
            if progress is not None:
                print(f"{progress} {name} [{index + 1}/{repeat}]: {describe(run)}", flush=True)
    return runs


def describe(run: Run) -> str:
    """One line: seconds (or capped / failed) and the load average around the run."""
    loads = (
        f"load {run.load[0]:.1f}->{run.load[1]:.1f}, steal {run.steal:.0%}"
        f"{' BUSY' if run.busy else ''}"
    )
    if run.capped:
        return f"stopped at the cap, {loads}"
    if run.error is not None:
        return f"FAILED, {loads}\n{run.error[-3000:]}"
    return f"{run.seconds:.2f}s, {loads}"


# ---------------------------------------------------------------- summaries


def median(runs: Sequence[Run], key: str = "seconds") -> float:
    """Median of ``key`` (``'seconds'`` or an entry of :attr:`Run.data`) over the runs.

    ``inf`` if a run was capped or failed (the time is then a lower bound), ``nan``
    without runs.
    """
    if not runs:
        return math.nan
    if not all(run.ok for run in runs):
        return math.inf
    values = [run.seconds if key == "seconds" else float(run.data[key]) for run in runs]
    return float(statistics.median(values))


def ratio(runs: Sequence[Run], reference: Sequence[Run], key: str = "seconds") -> float:
    """``median(runs) / median(reference)`` (above 1: the reference is faster)."""
    return median(runs, key) / median(reference, key)


def load_range(runs: Sequence[Run]) -> tuple[float, float]:
    """Lowest and highest 1-minute load average read around the runs."""
    loads = [value for run in runs for value in run.load]
    return (min(loads), max(loads)) if loads else (math.nan, math.nan)


def most_steal(runs: Sequence[Run]) -> float:
    """Highest share of CPU time stolen by the hypervisor during one of the runs."""
    return max((run.steal for run in runs), default=0.0)


def load_note(runs: Sequence[Run]) -> str:
    """``[load 1m low-high, steal <=x%, ok|BUSY]``: beside any figure drawn from ``runs``."""
    low, high = load_range(runs)
    busy = "BUSY" if any(r.busy for r in runs) else "ok"
    return f"[load 1m {low:.1f}-{high:.1f}, steal <={most_steal(runs):.0%}, {busy}]"


@dataclass
class Row:
    """One scenario of a table: the runs of each method, and extra columns as text."""

    label: str
    runs: dict[str, list[Run]]
    extra: dict[str, str] = field(default_factory=dict)

    def all_runs(self) -> list[Run]:
        return [run for runs in self.runs.values() for run in runs]

    @property
    def busy(self) -> bool:
        return any(run.busy for run in self.all_runs())


def _figure(value: float) -> str:
    """Two decimals, or three significant digits below 1 (0.00312, not 0.00)."""
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _cell(runs: list[Run], reference: list[Run] | None, cap: float | None, unit: str) -> str:
    if not runs:
        return ""
    if any(run.error is not None for run in runs):
        return "failed"
    if any(run.capped for run in runs):
        bound = f" (>{cap / median(reference):.0f}x)" if cap and reference else ""
        return f">{cap:.0f}{unit}{bound}" if cap else "capped"
    text = f"{_figure(median(runs))}{unit}"
    if reference and runs is not reference and median(reference) > 0:
        text += f" ({_figure(ratio(runs, reference))}x)"
    return text


def print_table(
    rows: Sequence[Row],
    methods: Sequence[str],
    *,
    reference: str | None = "ours",
    extra: Sequence[str] = (),
    cap: float | None = None,
    title: str | None = None,
    unit: str = "s",
) -> bool:
    """Print the medians of ``rows`` with ratios, load ranges and the load verdict.

    One column per method: the median seconds over the row's runs of it and, in
    brackets, its ratio to the median of ``reference`` in the same row (peer / ours:
    above 1, the reference is faster); ``>cap`` for a capped method (the ratio then a
    lower bound). Then the ``extra`` columns (texts in :attr:`Row.extra`), ``n`` (runs
    per method), ``load 1m`` (lowest-highest 1-minute load average around the row's
    runs) and ``trust`` (``BUSY`` when a run broke the load rule). Returns whether every
    row can be trusted.
    """
    if title:
        print(f"\n{title}")
    texts = [
        [
            _cell(row.runs.get(m, []), row.runs.get(reference) if reference else None, cap, unit)
            for m in methods
        ]
        for row in rows
    ]
    label_width = max([len("scenario"), *(len(row.label) for row in rows)])
    widths = [max([len(m), *(len(t[i]) for t in texts)]) for i, m in enumerate(methods)]
    extra_widths = [max([len(e), *(len(row.extra.get(e, "")) for row in rows)]) for e in extra]
    header = " ".join(
        [
            f"{'scenario':<{label_width}}",
            *(f"{m:>{w}}" for m, w in zip(methods, widths, strict=True)),
            *(f"{e:>{w}}" for e, w in zip(extra, extra_widths, strict=True)),
            f"{'n':>3} {'load 1m':>11} {'steal':>5} {'trust':>5}",
        ]
    )
    print(header + "\n" + "-" * len(header))
    for row, cells in zip(rows, texts, strict=True):
        low, high = load_range(row.all_runs())
        counts = sorted({len(runs) for runs in row.runs.values() if runs})
        n = "/".join(str(c) for c in counts) or "0"
        print(
            " ".join(
                [
                    f"{row.label:<{label_width}}",
                    *(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)),
                    *(
                        f"{row.extra.get(e, ''):>{w}}"
                        for e, w in zip(extra, extra_widths, strict=True)
                    ),
                    f"{n:>3} {f'{low:.1f}-{high:.1f}':>11} "
                    f"{most_steal(row.all_runs()):>5.0%} {'BUSY' if row.busy else 'ok':>5}",
                ]
            )
        )
    if reference:
        print(
            f"medians of n alternating runs; (x): median / median of {reference!r} in the "
            "same row"
            + (f"; '>{cap:.0f}{unit}': stopped at the cap, ratio a lower bound" if cap else "")
        )
    return verdict(rows)


def print_markdown(
    rows: Sequence[Row],
    methods: Sequence[str],
    *,
    reference: str | None = "ours",
    cap: float | None = None,
    unit: str = "s",
) -> None:
    """Print the table of :func:`print_table` in Markdown, ready to paste into a README.

    The same cells (medians, ratios to ``reference``), the number of runs and the range
    of the 1-minute load average and the highest steal of each row, and a last line
    giving the date, the cores and whether the load rule held.
    """
    used = [m for m in methods if any(row.runs.get(m) for row in rows)]
    print("\n| scenario | " + " | ".join(used) + " | n | load 1m | steal |")
    print("|---|" + "---|" * len(used) + "---|---|---|")
    for row in rows:
        cells = [
            _cell(row.runs.get(m, []), row.runs.get(reference) if reference else None, cap, unit)
            for m in used
        ]
        low, high = load_range(row.all_runs())
        counts = sorted({len(runs) for runs in row.runs.values() if runs})
        n = "/".join(str(c) for c in counts) or "0"
        busy = " (busy)" if row.busy else ""
        steal = f"{most_steal(row.all_runs()):.0%}"
        print(
            f"| {row.label} | "
            + " | ".join(cells)
            + f" | {n} | {low:.1f}-{high:.1f}{busy} | {steal} |"
        )
    trusted = not any(row.busy for row in rows)
    print(
        f"\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cores()} cores; "
        + (
            "quiet machine (load rule held)."
            if trusted
            else f"machine BUSY (load above {load_limit():.1f} or steal above "
            f"{STEAL_LIMIT:.0%}): indicative only."
        )
        + (f" (x): median / median of {reference!r} in the same row." if reference else "")
    )


def verdict(rows: Sequence[Row]) -> bool:
    """Print whether the load rule held for every row; return it."""
    runs = [run for row in rows for run in row.all_runs()]
    if not runs:
        print("verdict: nothing was measured")
        return False
    limit = load_limit(runs[0].own)
    rule = (
        f"load rule: 1-minute load average <= {limit:.1f} ({limit - LOAD_MARGIN * cores():g}"
        f" own + {LOAD_MARGIN} x {cores()} cores) before and after every run, and at most "
        f"{STEAL_LIMIT:.0%} of the CPU time stolen by the hypervisor during it"
    )
    busy = [row.label for row in rows if row.busy]
    if not busy:
        print(f"verdict: quiet machine, every row can be trusted ({rule})")
        return True
    highest = max(load_range(runs))
    print(
        f"verdict: MACHINE TOO BUSY to trust {len(busy)} of {len(rows)} rows (load up to "
        f"{highest:.1f}, steal up to {most_steal(runs):.0%}; {rule}): {', '.join(busy)}. "
        "Re-measure on a quiet machine."
    )
    return False


# ---------------------------------------------------------------- command line


def add_arguments(parser: Any, *, cap: float | None = None, quick_repeat: int = 1) -> None:
    """Add ``--quick``, ``--repeat``, ``--threads`` (and ``--cap`` if given) to ``parser``.

    ``--repeat`` defaults to :data:`DEFAULT_REPEAT`, or ``quick_repeat`` with ``--quick``
    (see :func:`repeats`).
    """
    parser.add_argument(
        "--quick", action="store_true", help="small shapes, a smoke run well under a minute"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help=f"runs per method, alternating (default {DEFAULT_REPEAT}; --quick: {quick_repeat})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS threads of every method (default: the libraries' own)",
    )
    if cap is not None:
        parser.add_argument(
            "--cap",
            type=float,
            default=cap,
            help=f"seconds after which a call is stopped (default {cap:g})",
        )
    parser.set_defaults(_quick_repeat=quick_repeat)


def repeats(args: Any) -> int:
    """``--repeat`` or its default (fewer with ``--quick``)."""
    if args.repeat is not None:
        return args.repeat
    return args._quick_repeat if args.quick else DEFAULT_REPEAT


def yes(condition: bool) -> str:
    """``'yes'`` or ``'NO'``, for the lines checking targets."""
    return "yes" if condition else "NO"


def print_header(packages: Sequence[str] = ("normalisr-sc",), **settings: object) -> None:
    """Print the machine, the package versions, the settings, the load average, steal and
    the cost of new memory now."""
    versions = []
    for package in packages:
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    text = ", ".join(
        [
            f"python {platform.python_version()}",
            f"{cores()} cores",
            *versions,
            *(f"{k} {v}" for k, v in settings.items()),
        ]
    )
    ticks = cpu_times()
    time.sleep(1.0)
    steal = steal_share(ticks, cpu_times())
    one, five, fifteen = os.getloadavg()
    print(
        f"{text}; load average {one:.1f} {five:.1f} {fifteen:.1f} (trusted up to "
        f"{load_limit():.1f}); steal {steal:.0%} over 1 s (trusted up to {STEAL_LIMIT:.0%}); "
        f"first touch of new memory {first_touch_seconds_per_gb():.2f} s/GB",
        flush=True,
    )
