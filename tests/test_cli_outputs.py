"""The command line's outputs: refused before any work, published all or nothing, never
left half-written or as stray temporaries (even when killed), with the usual permissions.

Tests run the real command line in a subprocess (``python -m normalisr_sc``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest

import normalisr_sc as nsc
from normalisr_sc import _io
from normalisr_sc.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``normalisr-sc ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "normalisr_sc", "--quiet", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too), by relative path, with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def entries(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, hidden ones too."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> Path:
    """A folder with raw counts (raw.h5ad) and their normalisation (norm.h5ad)."""
    folder = tmp_path_factory.mktemp("screen")
    raw = nsc.datasets.simulate(n_cells=600, n_genes=120, seed=3)
    raw.write_h5ad(folder / "raw.h5ad")
    assert (
        main(
            [
                "--quiet",
                "normalize",
                str(folder / "raw.h5ad"),
                "-o",
                str(folder / "norm.h5ad"),
                "--covariates",
                "batch",
                "--no-qc",
            ]
        )
        == 0
    )
    return folder


@pytest.mark.slow
def test_existing_outputs_refused_before_any_work(screen, tmp_path):
    (tmp_path / "de.tsv").write_text("my own table\n")
    (tmp_path / "kept.h5ad").write_bytes(b"not even an h5ad")
    before = snapshot(tmp_path)
    # The table exists: refused, although the h5ad is new...
    result = run_cli(
        "de",
        screen / "norm.h5ad",
        "-o",
        tmp_path / "new.h5ad",
        "--groupby",
        "group",
        "--table",
        tmp_path / "de.tsv",
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"normalisr-sc de: error: {str(tmp_path / 'de.tsv')!r} exists; pass --force to "
        "overwrite it."
    ]
    # ... and before the input is read (a missing input would be the other error).
    result = run_cli("normalize", tmp_path / "missing.h5ad", "-o", tmp_path / "kept.h5ad")
    assert result.returncode == 1
    assert "exists; pass --force" in result.stderr
    assert "not found" not in result.stderr
    # Both outputs existing are named together.
    result = run_cli(
        "de",
        screen / "norm.h5ad",
        "-o",
        tmp_path / "kept.h5ad",
        "--groupby",
        "group",
        "--table",
        tmp_path / "de.tsv",
    )
    assert "' exist; pass --force to overwrite them." in result.stderr
    assert str(tmp_path / "kept.h5ad") in result.stderr
    assert snapshot(tmp_path) == before
    assert entries(tmp_path) == {"de.tsv", "kept.h5ad"}


@pytest.mark.slow
def test_failing_command_writes_nothing(screen, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    before = snapshot(tmp_path)
    # The API refuses (a group that does not exist), after the outputs were checked.
    result = run_cli(
        "de",
        screen / "norm.h5ad",
        "-o",
        tmp_path / "sub" / "de.h5ad",
        "--groupby",
        "group",
        "--groups",
        "no-such-group",
        "--table",
        tmp_path / "de.tsv",
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before
    assert entries(tmp_path) == {"mine.txt"}  # not even the folder 'sub'


@pytest.mark.slow
def test_failing_h5ad_write_publishes_no_table(screen, tmp_path, monkeypatch, capsys):
    def broken(adata, path):
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(_io, "write_h5ad_to", broken)
    code = main(
        [
            "--quiet",
            "de",
            str(screen / "norm.h5ad"),
            "-o",
            str(tmp_path / "de.h5ad"),
            "--groupby",
            "group",
            "--table",
            str(tmp_path / "de.tsv"),
        ]
    )
    assert code == 1
    assert "No space left on device" in capsys.readouterr().err
    assert entries(tmp_path) == set()


@pytest.mark.slow
def test_force_replaces_all_outputs(screen, tmp_path):
    (tmp_path / "de.tsv").write_text("old\n")
    (tmp_path / "de.h5ad").write_text("old\n")
    result = run_cli(
        "de",
        screen / "norm.h5ad",
        "-o",
        tmp_path / "de.h5ad",
        "--groupby",
        "group",
        "--reference",
        "control",
        "--table",
        tmp_path / "de.tsv",
        "--force",
    )
    assert result.returncode == 0, result.stderr
    assert "nsc_de_pvals" in ad.read_h5ad(tmp_path / "de.h5ad").varm
    table = pd.read_csv(tmp_path / "de.tsv", sep="\t")
    assert table["log10p"].is_monotonic_decreasing  # most significant first, all groups
    assert entries(tmp_path) == {"de.tsv", "de.h5ad"}


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_respect_the_umask(screen, tmp_path, umask):
    script = textwrap.dedent(f"""
        import os, sys
        os.umask({umask:#o})
        from normalisr_sc.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "--quiet",
            "de",
            str(screen / "norm.h5ad"),
            "-o",
            str(tmp_path / "out" / "de.h5ad"),
            "--groupby",
            "group",
            "--table",
            str(tmp_path / "de.csv.gz"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for path in (tmp_path / "out" / "de.h5ad", tmp_path / "de.csv.gz"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask


#: Runs the CLI with a writer that stops half-way (after writing part of the file) and
#: waits to be killed, so that the kill surely falls within the write.
_STALLED_WRITE = textwrap.dedent("""
    import sys, time
    from normalisr_sc import _io
    from normalisr_sc.cli import main

    def stalled(adata, path):
        with open(path, "wb") as stream:
            stream.write(b"x" * 1_000_000)
            stream.flush()
            print("writing", path, flush=True)
            time.sleep(600)

    _io.write_h5ad_to = stalled
    sys.exit(main(sys.argv[1:]))
""")


def _wait(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killed_during_the_write_leaves_nothing(screen, tmp_path, how):
    (tmp_path / "de.h5ad").write_text("the previous result")
    before = snapshot(tmp_path)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _STALLED_WRITE,
            "--quiet",
            "de",
            str(screen / "norm.h5ad"),
            "-o",
            str(tmp_path / "de.h5ad"),
            "--groupby",
            "group",
            "--table",
            str(tmp_path / "de.tsv"),
            "--force",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    assert line.startswith("writing"), process.stderr.read()
    staged = Path(line.split(maxsplit=1)[1].strip())
    assert staged.parent.parent == tmp_path
    assert staged.parent.name.startswith(_io.STAGING_PREFIX)
    assert staged.stat().st_size == 1_000_000  # the kill falls within the write
    process.send_signal(how)
    process.wait(timeout=60)
    process.stdout.close()
    process.stderr.close()
    assert process.returncode in (-how, 128 + how)
    # The watchdog (SIGKILL) or the command itself (SIGTERM) removes the staging folder.
    assert _wait(lambda: not staged.parent.exists())
    assert snapshot(tmp_path) == before
    assert entries(tmp_path) == {"de.h5ad"}


@pytest.mark.slow
def test_stale_staging_folders_are_swept(screen, tmp_path):
    host = _io._host()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{_io.STAGING_PREFIX}{host}.{dead.pid}.abc"
    alive = tmp_path / f"{_io.STAGING_PREFIX}{host}.{os.getpid()}.abc"
    other_host = tmp_path / f"{_io.STAGING_PREFIX}elsewhere.{dead.pid}.abc"
    for folder in (stale, alive, other_host):
        folder.mkdir()
        (folder / "0-de.h5ad").write_bytes(b"x" * 1000)
    result = run_cli("binnet", screen / "norm.h5ad", "-o", tmp_path / "never.h5ad")
    assert result.returncode == 1  # no co-expression results; the sweep ran before
    assert not stale.exists()
    assert alive.exists()
    assert other_host.exists()
    assert not (tmp_path / "never.h5ad").exists()


def test_outputs_api(tmp_path):
    with pytest.raises(ValueError, match="two different outputs"):
        _io.Outputs([tmp_path / "a.h5ad", tmp_path / "a.h5ad"], force=False)
    with pytest.raises(ValueError, match="is a directory"):
        _io.Outputs([tmp_path], force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        _io.Outputs([tmp_path / "file" / "a.h5ad"], force=True)
    # An output not written is not published; undeclared outputs are a programming error.
    with _io.Outputs([tmp_path / "a.tsv", tmp_path / "b.tsv"], force=False) as outputs:
        outputs.path(tmp_path / "a.tsv").write_text("a")
        with pytest.raises(RuntimeError, match="not declared"):
            outputs.path(tmp_path / "c.tsv")
    assert outputs.published == [tmp_path / "a.tsv"]
    assert entries(tmp_path) == {"a.tsv", "file"}

    # A destination that appears meanwhile is not replaced without force.
    def racing() -> None:
        with _io.Outputs([tmp_path / "d.tsv"], force=False) as outputs:
            outputs.path(tmp_path / "d.tsv").write_text("ours")
            (tmp_path / "d.tsv").write_text("theirs")

    with pytest.raises(ValueError, match="exists"):
        racing()
    assert (tmp_path / "d.tsv").read_text() == "theirs"
    assert entries(tmp_path) == {"a.tsv", "d.tsv", "file"}
