"""The benchmark harness (``benchmarks/_harness.py``) and a smoke run of every benchmark.

The harness tests run in this process and check its logic (alternation, medians, caps,
the load rule, the child runner). The smoke tests run each ``benchmarks/bench_*.py
--quick`` in a subprocess and check that it finishes and prints its tables with the load
average beside every row; they assert no timing.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _harness as h  # noqa: E402


def _registered(marker: str) -> bool:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())
    markers = options.get("tool", {}).get("pytest", {}).get("ini_options", {}).get("markers", [])
    return any(entry.split(":")[0].strip() == marker for entry in markers)


#: The smoke runs take tens of seconds: marked slow once the marker is registered.
slow = pytest.mark.slow if _registered("slow") else (lambda function: function)


# ---------------------------------------------------------------- harness logic


def _run(seconds: float, load: float = 0.0, **kwargs) -> h.Run:
    return h.Run(seconds, (load, load), **kwargs)


def test_alternate_runs_in_turn_and_skips_capped():
    order = []

    def measure(name, capped=False):
        def run():
            order.append(name)
            return h.Run(math.inf if capped else 1.0, (0.0, 0.0), capped=capped)

        return run

    runs = h.alternate(
        {"ours": measure("ours"), "peer": measure("peer"), "slow": measure("slow", capped=True)},
        repeat=3,
    )
    assert order == ["ours", "peer", "slow", "ours", "peer", "ours", "peer"]
    assert [len(runs[name]) for name in ("ours", "peer", "slow")] == [3, 3, 1]


def test_median_and_ratio_of_medians():
    ours = [_run(1.0), _run(5.0), _run(2.0)]
    peer = [_run(3.0), _run(4.0), _run(100.0)]
    assert h.median(ours) == 2.0
    assert h.ratio(peer, ours) == 2.0
    assert h.median([_run(1.0, data={"mb": 7}), _run(3.0, data={"mb": 9})], "mb") == 8.0
    assert h.median([_run(1.0), h.Run(math.inf, (0, 0), capped=True)]) == math.inf
    assert math.isnan(h.median([]))


def test_load_rule(monkeypatch):
    monkeypatch.setattr(h, "cores", lambda: 4)
    assert h.load_limit() == 6.0  # 4 own + 0.5 x 4
    assert h.load_limit(own=1) == 3.0
    assert not _run(1.0, load=6.0).busy
    assert h.Run(1.0, (1.0, 6.5)).busy
    assert not h.Run(1.0, (1.0, 2.9), own=1).busy


def test_steal_rule(monkeypatch, capsys):
    monkeypatch.setattr(h, "cores", lambda: 2)
    assert h.steal_share((10, 1000), (30, 1100)) == 0.2
    assert h.steal_share((10, 1000), (10, 1000)) == 0.0  # no time passed
    assert not _run(1.0, steal=0.05).busy
    stolen = _run(1.0, steal=0.2)
    assert stolen.busy  # a quiet load average, but the host took a fifth of the CPU
    assert "steal 20% BUSY" in h.describe(stolen)
    assert h.print_table([h.Row("stolen", {"ours": [_run(1.0), stolen]})], ["ours"]) is False
    out = capsys.readouterr().out
    assert re.search(r"stolen\s+1\.00s\s+2\s+0\.0-0\.0\s+20%\s+BUSY", out)
    assert "steal up to 20%" in out
    assert "steal <=20%, BUSY" in h.load_note([stolen])


def test_runs_record_the_steal_of_their_call(monkeypatch):
    ticks = iter([(0, 1000), (50, 1100)])
    monkeypatch.setattr(h, "cpu_times", lambda: next(ticks))
    assert h.timed(lambda: None).steal == 0.5


def test_first_touch_is_measured():
    assert 0 < h.first_touch_seconds_per_gb(16) < 60


def test_page_cache_drop_is_asked_of_the_kernel(monkeypatch, tmp_path):
    request = tmp_path / "drop_caches"
    monkeypatch.setattr(h, "DROP_CACHES", request)
    assert not h.can_drop_page_cache()  # no such file: refused before any run
    request.write_text("0\n")
    assert h.can_drop_page_cache()
    h.drop_page_cache()
    assert request.read_text() == "1\n"  # clean page cache only


def test_timed_caps_a_long_call():
    run = h.timed(time.sleep, 5, cap=0.2)
    assert run.capped
    assert run.seconds == math.inf
    assert not run.ok
    quick = h.timed(lambda: {"answer": 42})
    assert quick.ok
    assert quick.data == {"answer": 42}
    assert 0 <= quick.seconds < 5


def _allocate(megabytes: int) -> dict:
    h.reset_peak()
    before = h.rss_kib()
    block = np.ones(megabytes * h.MB // 8)
    return {"seconds": 0.5, "extra_mb": (h.peak_kib() - before) / 1024, "sum": float(block[0])}


def _fail() -> dict:
    msg = "broken on purpose"
    raise ValueError(msg)


def test_in_child_returns_its_result_and_memory():
    parent_peak = h.peak_kib()
    run = h.in_child(_allocate, 200)
    assert run.ok
    assert run.seconds == 0.5  # the child's own measured seconds
    assert run.data["extra_mb"] > 150  # the child's allocation is counted there...
    assert h.peak_kib() - parent_peak < 150  # ...not in this process
    assert len(run.load) == 2


def test_in_child_reports_errors_and_caps():
    failed = h.in_child(_fail)
    assert failed.error is not None
    assert "broken on purpose" in failed.error
    capped = h.in_child(time.sleep, 30, cap=0.5)
    assert capped.capped
    assert capped.seconds == math.inf


def test_table_prints_medians_ratios_loads_and_verdict(capsys, monkeypatch):
    monkeypatch.setattr(h, "cores", lambda: 2)
    quiet = h.Row(
        "quiet",
        {
            "ours": [_run(1.0, 0.5), _run(2.0, 1.0), _run(3.0, 0.7)],
            "peer": [_run(4.0, 0.6), _run(6.0, 0.9), _run(8.0, 0.8)],
        },
    )
    busy = h.Row(
        "busy", {"ours": [_run(1.0, 9.0)], "peer": [h.Run(math.inf, (9.0, 9.5), capped=True)]}
    )
    assert h.print_table([quiet], ["ours", "peer"]) is True
    out = capsys.readouterr().out
    assert re.search(r"quiet\s+2\.00s\s+6\.00s \(3\.00x\)\s+3\s+0\.5-1\.0\s+0%\s+ok", out)
    assert "verdict: quiet machine" in out
    assert h.print_table([quiet, busy], ["ours", "peer"], cap=10) is False
    out = capsys.readouterr().out
    assert re.search(r"busy\s+1\.00s\s+>10s \(>10x\)\s+1\s+9\.0-9\.5\s+0%\s+BUSY", out)
    assert "MACHINE TOO BUSY to trust 1 of 2 rows" in out
    assert "<= 3.0" in out  # 2 own + 0.5 x 2 cores


# ---------------------------------------------------------------- smoke runs

#: A table row ends with the runs per method, the load range, the steal and the trust mark.
ROW_END = re.compile(r"\s\d+(/\d+)?\s+\d+\.\d-\d+\.\d\s+\d+%\s+(ok|BUSY)$")


def _smoke(script: str, *options: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *options],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "load average" in out.splitlines()[0] or "load average" in out
    tables = [i for i, line in enumerate(out.splitlines()) if line.startswith("scenario ")]
    assert tables, out
    lines = out.splitlines()
    for start in tables:
        assert "load 1m" in lines[start]
        assert "steal" in lines[start]
        assert "trust" in lines[start]
        rows = []
        for line in lines[start + 2 :]:
            if not ROW_END.search(line):
                break
            rows.append(line)
        assert rows, f"no rows with a load range below {lines[start]!r}:\n{out}"
        assert "FAILED" not in out
        assert " failed " not in " ".join(rows)
    assert out.count("verdict: ") == len(tables)
    return out


#: Every benchmark script; each must have a ``--quick`` smoke run.
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("bench_*.py"))
#: Scripts that cannot run without ``../shared/data``.
NEEDS_DATA = {"bench_go.py"}
#: What each script's quick run must print besides its tables.
EXPECTED = {
    "bench_association.py": ("case_control", "low_moi", "high MOI", "coex", "floor"),
    "bench_normalize.py": ("peak extra memory", "steps generated", "targets generated"),
    "bench_scale.py": ("(a) normalize + high-MOI DE", "(b) co-expression", "targets at"),
    "bench_go.py": ("round 1", "round 2", "GO share"),
}


def test_every_benchmark_is_smoke_tested():
    assert {"bench_association.py", "bench_go.py", "bench_normalize.py", "bench_scale.py"} <= set(
        SCRIPTS
    )


@slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run(script, request, tmp_path):
    if script in NEEDS_DATA:
        request.getfixturevalue("shared_data")
    # bench_scale caches its generated screen in --workdir: a fresh one per test run
    options = ["--workdir", str(tmp_path)] if script == "bench_scale.py" else []
    out = _smoke(script, *options)
    for text in EXPECTED.get(script, ()):
        assert text in out, f"{text!r} missing from the output of {script}:\n{out}"
