"""The tutorial notebooks are ready for the docs build, which executes them.

``docs/conf.py`` has myst-nb execute every notebook when the documentation is built
(``tests/test_docs.py`` builds it and checks the outputs and figures of each page), so
the notebooks are not executed a second time here: these tests check that each one is
valid, stored without outputs, and built (and so executed) as a tutorial page.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DOCS = ROOT / "docs"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def _read(name: str):
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    return notebook


def test_there_are_tutorials():
    assert {"01_quickstart.ipynb", "02_crispr_lowmoi_papalexi.ipynb"} <= set(NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs(name):
    notebook = _read(name)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, name
    for cell in code:
        assert cell.get("outputs") == [], cell.source[:60]
        assert cell.get("execution_count") is None, cell.source[:60]
    assert notebook.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_code_cells_are_python(name):
    for cell in _read(name).cells:
        if cell.cell_type == "code":
            ast.parse(cell.source)  # raises SyntaxError on a broken cell


@pytest.mark.parametrize("name", NAMES)
def test_each_notebook_is_a_tutorial_page(name):
    tutorials = DOCS / "tutorials"
    assert tutorials.resolve() == NOTEBOOKS.resolve()  # run in notebooks/: its paths hold
    assert (tutorials / name).is_file()
    toctree = (DOCS / "tutorials.md").read_text()
    assert ":glob:\n" in toctree
    assert "\ntutorials/*\n" in toctree  # every notebook, in the order of their names


def test_the_docs_build_executes_them():
    conf = (DOCS / "conf.py").read_text()
    assert re.search(r'^nb_execution_mode = "(force|cache)"$', conf, re.M)
    assert re.search(r"^nb_execution_raise_on_error = True$", conf, re.M)
    assert re.search(r"^nb_execution_timeout = \d+", conf, re.M)
