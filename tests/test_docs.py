"""The Sphinx documentation builds with warnings as errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
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
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    api_page = (tmp_path / "html" / "generated" / "normalisr_sc.pp.lcpm.html").read_text()
    assert "digamma" in api_page
    assert (tmp_path / "html" / "tutorials" / "01_quickstart.html").exists()
    assert "layers['normalisr']" in (tmp_path / "html" / "method.html").read_text()
