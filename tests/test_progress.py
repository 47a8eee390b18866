"""Progress bars: one per Jupyter cell, plain text without ipywidgets, no TqdmWarning."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from tqdm.std import tqdm as text_tqdm

import normalisr_sc as nsc
from normalisr_sc import _progress


class _Events:
    def __init__(self) -> None:
        self.registered: list[tuple[str, object]] = []

    def register(self, event: str, callback: object) -> None:
        self.registered.append((event, callback))


class _Shell:
    """What ``_progress`` reads of a Jupyter kernel's IPython shell."""

    def __init__(self) -> None:
        self.events = _Events()
        self.config = {"IPKernelApp": {}}


@pytest.fixture
def bars(monkeypatch):
    """Record every bar opened (drawn into a buffer); progress display on."""
    opened: list[text_tqdm] = []

    class Recorded(text_tqdm):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, file=io.StringIO(), **kwargs)
            opened.append(self)

    monkeypatch.setattr(_progress, "_bar_class", lambda **_: Recorded)
    monkeypatch.setattr(_progress, "_cell_bar", None)
    monkeypatch.setattr(_progress, "_cell_bar_busy", False)
    monkeypatch.setattr(_progress, "_hook_registered", False)
    monkeypatch.setattr(nsc.settings, "progress", True)
    return opened


@pytest.fixture
def kernel(monkeypatch):
    shell = _Shell()
    monkeypatch.setattr(_progress, "_kernel_shell", lambda: shell)
    return shell


@pytest.mark.slow
def test_plain_text_bar_without_ipywidgets():
    assert _progress._bar_class(in_kernel=True, widgets=False) is text_tqdm
    assert _progress._bar_class(in_kernel=False, widgets=True) is text_tqdm
    notebook_bar = _progress._bar_class(in_kernel=True, widgets=True)
    assert notebook_bar is not text_tqdm
    assert notebook_bar.__module__ == "tqdm.notebook"


def test_items_pass_through_in_order(bars, kernel):
    assert list(_progress.progress(range(5), desc="pass")) == [0, 1, 2, 3, 4]
    assert list(_progress.progress(iter("abc"), desc="pass")) == ["a", "b", "c"]


def test_one_bar_per_cell_for_normalize(bars, kernel):
    adata = nsc.datasets.simulate(n_cells=300, n_genes=60, seed=1)
    nsc.pp.normalize(adata, covariates=["batch"])
    nsc.tl.de(adata, "group", reference="control")
    assert len(bars) == 1  # every pass of both steps drew on the cell's one bar
    assert [event for event, _ in kernel.events.registered] == ["post_run_cell"]
    (bar,) = bars
    assert not bar.disable
    assert bar.n > 0
    _, close = kernel.events.registered[0]
    close(None)  # the cell has run
    assert _progress._cell_bar is None
    assert bar.disable  # tqdm marks a closed bar disabled
    list(_progress.progress(range(3), desc="next cell"))
    assert len(bars) == 2  # the next cell opens its own bar
    assert len(kernel.events.registered) == 1  # the hook is registered once


def test_nested_pass_draws_no_second_bar(bars, kernel):
    seen = []
    for outer in _progress.progress(range(2), desc="outer"):
        seen.extend((outer, inner) for inner in _progress.progress(range(3), desc="inner"))
    assert len(seen) == 6
    assert len(bars) == 1
    assert bars[0].n == 2  # counts the outer pass only


def test_a_bar_per_pass_in_a_terminal(bars, monkeypatch):
    monkeypatch.setattr(_progress, "_kernel_shell", lambda: None)
    for _ in range(3):
        assert list(_progress.progress(range(4), desc="pass")) == [0, 1, 2, 3]
    assert len(bars) == 3
    assert all(bar.disable for bar in bars)  # each closed at the end of its pass
    assert _progress._cell_bar is None


def test_switched_off(bars, kernel, monkeypatch):
    monkeypatch.setattr(nsc.settings, "progress", False)
    items = [1, 2]
    assert _progress.progress(items) is items
    assert bars == []


@pytest.mark.parametrize(
    ("value", "shown"), [("1", False), ("true", False), ("0", True), ("", True)]
)
def test_tqdm_disable_environment(bars, kernel, monkeypatch, value, shown):
    monkeypatch.setenv("TQDM_DISABLE", value)
    monkeypatch.setattr(nsc.settings, "progress", None)
    monkeypatch.setattr(_progress.settings, "show_progress", lambda: True)
    list(_progress.progress(range(2)))
    assert (len(bars) == 1) is shown


def test_explicit_progress_wins_over_environment(bars, kernel, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    list(_progress.progress(range(2)))  # settings.progress is True
    assert len(bars) == 1


@pytest.mark.slow
def test_tqdm_auto_is_not_imported():
    code = (
        "import sys, normalisr_sc as nsc\n"
        "nsc.settings.progress = True\n"
        "adata = nsc.datasets.simulate(n_cells=200, n_genes=40, seed=0)\n"
        "nsc.pp.normalize(adata)\n"
        "print(sorted(m for m in sys.modules if m.startswith('tqdm.auto')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    assert "TqdmWarning" not in result.stderr


@pytest.mark.slow
def test_notebook_cell_shows_one_bar_and_no_warning(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    count_bars = (
        "import normalisr_sc as nsc\n"
        "from normalisr_sc import _progress\n"
        "opened = []\n"
        "_choose = _progress._bar_class\n"
        "def _counting(**kwargs):\n"
        "    base = _choose(**kwargs)\n"
        "    class Counted(base):\n"
        "        def __init__(self, *args, **kw):\n"
        "            super().__init__(*args, **kw)\n"
        "            opened.append(type(self).__mro__[1].__module__)\n"
        "    return Counted\n"
        "_progress._bar_class = _counting"
    )
    run = (
        "adata = nsc.datasets.simulate(n_cells=400, n_genes=80, seed=2)\n"
        "nsc.pp.normalize(adata, covariates=['batch'])"
    )
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(count_bars),
        nbformat.v4.new_code_cell(run),
        nbformat.v4.new_code_cell("print(opened, _progress._cell_bar)"),
    ]
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    client.execute()
    streams = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    stderr = "".join(o.get("text", "") for o in streams if o.get("name") == "stderr")
    assert "TqdmWarning" not in stderr
    assert "IProgress" not in stderr
    assert "normvar" in stderr  # the bar was drawn, as plain text
    expected = ["tqdm.std"] if not _progress._widgets_available() else ["tqdm.notebook"]
    assert notebook.cells[2].outputs[0]["text"].strip() == f"{expected} None"
