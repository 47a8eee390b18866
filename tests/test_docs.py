"""The Sphinx documentation builds with warnings as errors and shows what users need.

The full build executes the tutorials (``docs/conf.py``: myst-nb, ``nb_execution_mode``)
so their pages show outputs and figures; ``tests/test_notebooks.py`` does not execute
them a second time. The same build checks that the types of the API pages link through
intersphinx, from local inventories.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHARED_DATA = ROOT.parent / "shared" / "data"
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
NEEDS_SHARED_DATA = {  # as docs/conf.py decides
    p.stem for p in (ROOT / "notebooks").glob("*.ipynb") if "shared/data" in p.read_text()
}


def _build(tmp_path: Path, *options: str, env: dict[str, str] | None = None) -> Path:
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    pytest.importorskip("sphinx_autodoc_typehints")
    html = tmp_path / "html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-q",
            *options,
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(html),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return html


def _output_cells(page: str) -> list[str]:
    return re.findall(r'<div class="cell_output docutils container">', page)


def _check_tutorial_page(html: Path, name: str) -> None:
    page = (html / "tutorials" / f"{name}.html").read_text()
    if name in NEEDS_SHARED_DATA and not SHARED_DATA.is_dir():
        assert _output_cells(page) == [], name  # shown unexecuted without the data
        return
    assert len(_output_cells(page)) >= 3, name
    images = re.findall(r'<img [^>]*src="(\.\./_images/[^"]+\.png)"', page)
    assert len(images) >= 2, name  # the figures of the notebook
    for image in images:
        assert (html / "tutorials" / image).resolve().stat().st_size > 1000, (name, image)
    for text in ("Traceback", "TqdmWarning", "it/s]"):  # errors, progress bars
        assert text not in page, (name, text)


def _inventory(project: str, entries: list[tuple[str, str, str]]) -> bytes:
    """Return a Sphinx (v2) inventory of ``(name, role, uri)`` entries."""
    header = (
        f"# Sphinx inventory version 2\n# Project: {project}\n# Version: 1\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in entries)
    return header.encode() + zlib.compress(body.encode())


#: Local inventories the build reads (NORMALISR_SC_INVENTORIES) instead of the sites'.
INVENTORIES = {
    "anndata": [("anndata.AnnData", "py:class", "generated/anndata.AnnData.html#$")],
    "pandas": [("pandas.DataFrame", "py:class", "reference/api/pandas.DataFrame.html#$")],
    "numpy": [
        ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#$"),
        ("numpy.typing.DTypeLike", "py:data", "reference/typing.html#$"),
    ],
}


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    # One test, one build (it executes the notebooks), so that one xdist worker runs it.
    # The inventories of anndata, pandas and numpy are local; the other projects' sites
    # cannot be reached offline and the build must go on without them.
    inventories = tmp_path / "inventories"
    inventories.mkdir()
    for project, rows in INVENTORIES.items():
        (inventories / f"{project}.inv").write_bytes(_inventory(project, rows))
    html = _build(tmp_path, env={**os.environ, "NORMALISR_SC_INVENTORIES": str(inventories)})
    api_page = (html / "generated" / "normalisr_sc.pp.lcpm.html").read_text()
    assert "digamma" in api_page
    assert "layers['normalisr']" in (html / "method.html").read_text()
    assert "01_quickstart" in NOTEBOOKS
    assert "01_quickstart" not in NEEDS_SHARED_DATA
    assert "02_crispr_lowmoi_papalexi" in NEEDS_SHARED_DATA
    for name in NOTEBOOKS:  # every notebook is a tutorial page, with its outputs
        _check_tutorial_page(html, name)
    quickstart = (html / "tutorials" / "01_quickstart.html").read_text()
    assert "planted DE genes found at q &lt; 0.05" in quickstart  # a printed line
    assert "null fraction p &lt; 0.05" in quickstart
    assert re.search(r"<table[^>]*dataframe", quickstart)  # the DE table, rendered
    storage = (html / "storage.html").read_text()
    assert "float32" in storage
    assert 'href="storage.html"' in (html / "index.html").read_text()
    _check_api_types(html)


def _check_api_types(html: Path) -> None:
    normalize = (html / "generated" / "normalisr_sc.pp.normalize.html").read_text()
    # adata's type is anndata's AnnData (type hints name anndata._core.anndata.AnnData)
    assert (
        'href="https://anndata.readthedocs.io/en/stable/generated/anndata.AnnData.html' in normalize
    )
    assert (
        'href="https://numpy.org/doc/stable/reference/typing.html#numpy.typing.DTypeLike"'
        in normalize
    )
    assert "_DTypeDict" not in normalize  # the alias, not its expansion
    de_df = (html / "generated" / "normalisr_sc.get.de_df.html").read_text()
    assert 'href="https://pandas.pydata.org/docs/reference/api/pandas.DataFrame.html' in de_df
    # parameter types are shown (sphinx-autodoc-typehints)
    assert re.search(
        r"<strong>covariates</strong> \(<span class=\"sphinx_autodoc_typehints-type\">",
        normalize,
    )
