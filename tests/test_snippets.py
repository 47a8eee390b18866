"""Every python code block of README.md and docs/*.md runs as written.

Each block runs on its own, in a fresh folder next to a link to ``../shared/data`` (so
the paths of the README work); blocks reading the shared data skip when it is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: ``../shared/data`` as the conftest's ``shared_data`` fixture finds it.
SHARED_DATA = ROOT.parent / "shared" / "data"
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: Modules some blocks need beyond the package's dependencies.
OPTIONAL = ("zarr", "distributed")


def snippets() -> list:
    found = []
    for path in SOURCES:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 2
            where = f"{path.relative_to(ROOT)}:{line}"
            found.append(pytest.param(where, match.group(1), id=where))
    return found


def test_the_snippets_are_found():
    where = [param.values[0] for param in snippets()]
    assert sum(w.startswith("README.md") for w in where) >= 4
    assert any(w.startswith("docs/") for w in where)
    readme = (ROOT / "README.md").read_text()
    assert 'guide_names="grna_ids"' in readme  # the real screen needs it


@pytest.mark.slow
@pytest.mark.parametrize(("where", "code"), snippets())
def test_snippet_runs(where, code, tmp_path, monkeypatch, request):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "../shared/data" in code:
        request.getfixturevalue("shared_data")  # skips when absent
    for module in OPTIONAL:
        if re.search(rf"^\s*(from|import) {module}\b", code, re.MULTILINE):
            pytest.importorskip(module)
    folder = tmp_path / "repository"
    folder.mkdir()
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    monkeypatch.chdir(folder)
    try:
        exec(compile(code, where, "exec"), {"__name__": "__snippet__"})
    finally:
        plt.close("all")
