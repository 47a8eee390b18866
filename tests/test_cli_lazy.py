"""The command line answers ``--version`` and ``--help`` without importing the library;
``import normalisr_sc`` imports its submodules on first use."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import normalisr_sc as nsc
from normalisr_sc import cli

HEAVY = ("numpy", "pandas", "scipy", "anndata", "scanpy", "dask", "matplotlib")


def _imported_after(code: str) -> tuple[list[str], str]:
    """Return the heavy modules imported by ``code`` (run in a fresh interpreter), stdout."""
    script = (
        f"import sys\n{code}\nprint('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    *out, last = result.stdout.strip().splitlines()
    assert last.startswith("HEAVY ")
    return eval(last.removeprefix("HEAVY ")), "\n".join(out)


def _main(*arguments: str) -> str:
    return (
        "from normalisr_sc.cli import main\n"
        "try:\n"
        f"    main({list(arguments)!r})\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code"
    )


@pytest.mark.slow
def test_version_imports_nothing_heavy():
    heavy, out = _imported_after(_main("--version"))
    assert heavy == []
    assert out == f"normalisr-sc {nsc.__version__}"


@pytest.mark.slow
def test_help_imports_nothing_heavy():
    heavy, out = _imported_after(_main("--help"))
    assert heavy == []
    assert "normalize" in out
    assert "gotop" in out


@pytest.mark.slow
def test_building_the_parser_imports_nothing_heavy():
    heavy, _ = _imported_after("from normalisr_sc import cli\ncli._parser()")
    assert heavy == []


@pytest.mark.slow
def test_import_package_is_light_and_submodules_load_on_use():
    heavy, out = _imported_after(
        "import normalisr_sc as nsc\nprint(sorted(set(nsc.__all__) & set(vars(nsc))))"
    )
    assert heavy == []
    assert out == "['settings']"  # pp, tl, get, pl, datasets not imported yet
    heavy, out = _imported_after("import normalisr_sc as nsc\nprint(nsc.pp.normalize.__module__)")
    assert "anndata" in heavy
    assert out == "normalisr_sc.pp._recipe"


def test_submodules_as_attributes_and_imports():
    from normalisr_sc import get, pl, pp, tl

    assert nsc.pp is pp
    assert nsc.tl is tl
    assert nsc.get is get
    assert nsc.pl is pl
    assert callable(nsc.datasets.simulate)
    assert {"datasets", "get", "pl", "pp", "tl", "settings", "__version__"} <= set(dir(nsc))
    assert nsc.__version__.count(".") >= 2
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nsc.nope  # noqa: B018


def test_qc_options_are_the_qc_keys():
    from normalisr_sc.pp._recipe import QC_KEYS

    assert set(cli.QC_OPTIONS) == set(QC_KEYS)


def test_qc_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["normalize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key, value in nsc.pp.DEFAULT_QC.items():
        assert f"{cli._option(key)} N " in text
        start = text.index(f"{cli._option(key)} N ")
        assert f"(default {value})" in text[start : start + 400], key
    assert "minimum total count of a gene (default off)" in text


def test_unset_qc_option_is_not_given():
    parser = cli._parser()
    args = parser.parse_args(["normalize", "x.h5ad", "-o", "y.h5ad", "--min-cell-counts", "7"])
    assert cli._qc_given(args) == {"min_cell_counts": 7.0}
    args = parser.parse_args(["qc", "x.h5ad", "-o", "y.h5ad"])
    assert cli._qc_given(args) == {}


def test_new_options_have_help():
    parser = cli._parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {
        action.option_strings[-1]: action
        for name in ("normalize", "gotop")
        for action in subparsers.choices[name]._actions
        if action.option_strings
    }
    assert "float32" in options["--dtype"].help
    assert options["--dtype"].choices == ["float64", "float32"]
    assert "Bonferroni" in options["--pcut"].help
    assert options["--pcut"].default == 0.05
