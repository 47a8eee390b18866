"""Sphinx configuration of the normalisr_sc documentation.

The tutorials (``notebooks/``, linked as ``tutorials/``) are executed by this build, so
the pages show their outputs and figures; the test suite builds the docs and does not
execute the notebooks a second time. Those that read ``../shared/data`` are shown
without outputs when that folder is absent.

Types of the API link to the docs of numpy, scipy, pandas, anndata, scanpy... through
intersphinx. An inventory is read from ``NORMALISR_SC_INVENTORIES`` (a folder of
``<project>.inv`` files, default ``docs/_intersphinx``) when there, else fetched from the
project's site; a project whose site cannot be reached (an offline build) is left out,
and its types are shown as plain text, so that the build works without network.
"""

from __future__ import annotations

import importlib
import os
import socket
import warnings
from importlib.metadata import version as _version
from pathlib import Path
from urllib.parse import urlparse

from sphinx.deprecation import RemovedInSphinx10Warning
from sphinx.util import logging as _logging

_HERE = Path(__file__).resolve().parent
_SHARED_DATA = _HERE.parents[1] / "shared" / "data"
_LOG = _logging.getLogger(__name__)

project = "normalisr_sc"
author = "normalisr_sc developers"
release = _version("normalisr-sc")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# sphinx-autodoc-typehints: the types of the signature go into the parameter list.
always_document_param_types = False
typehints_document_rtype = True
typehints_use_signature = False
typehints_defaults = "comma"
# Shown as the alias (a link), not as its expansion (a union of numpy internals).
autodoc_type_aliases = {"DTypeLike": ":py:data:`~numpy.typing.DTypeLike`"}
# sphinx-autodoc-typehints 3.6 calls an API that Sphinx 9 deprecates; nothing to act on.
warnings.filterwarnings(
    "ignore", category=RemovedInSphinx10Warning, module="sphinx_autodoc_typehints"
)
myst_enable_extensions = ["dollarmath"]

# --- the tutorials, executed at build time ---------------------------------------------
nb_execution_mode = "force"
nb_execution_timeout = 900  # seconds per cell
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# Notebooks that read ../shared/data are not executed when it is absent.
_NEEDS_SHARED_DATA = [
    f"tutorials/{path.name}"
    for path in sorted((_HERE / "tutorials").glob("*.ipynb"))
    if "shared/data" in path.read_text(encoding="utf-8")
]
nb_execution_excludepatterns = [] if _SHARED_DATA.is_dir() else _NEEDS_SHARED_DATA
# No progress bars in the pages (tqdm's own switch, read by normalisr_sc and the kernel).
os.environ["TQDM_DISABLE"] = "1"

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "tutorials/README.md"]
html_theme = "furo"
html_title = "normalisr_sc"

# --- intersphinx ------------------------------------------------------------------------
_SITES = {
    "python": "https://docs.python.org/3/",
    "numpy": "https://numpy.org/doc/stable/",
    "scipy": "https://docs.scipy.org/doc/scipy/",
    "pandas": "https://pandas.pydata.org/docs/",
    "anndata": "https://anndata.readthedocs.io/en/stable/",
    "scanpy": "https://scanpy.readthedocs.io/en/stable/",
    "matplotlib": "https://matplotlib.org/stable/",
    "dask": "https://docs.dask.org/en/stable/",
    "mudata": "https://mudata.readthedocs.io/en/latest/",
}
_INVENTORIES = Path(os.environ.get("NORMALISR_SC_INVENTORIES", _HERE / "_intersphinx"))


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a connection to the host of ``url`` opens within ``timeout`` seconds."""
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _mapping() -> dict[str, tuple[str, str | None]]:
    mapping, offline = {}, []
    for name, site in _SITES.items():
        local = _INVENTORIES / f"{name}.inv"
        if local.is_file():
            mapping[name] = (site, str(local))
        elif _reachable(site):
            mapping[name] = (site, None)
        else:
            offline.append(name)
    if offline:
        _LOG.info(
            "intersphinx: no inventory for %s (not in %s, site unreachable); "
            "their types are shown without links",
            ", ".join(offline),
            _INVENTORIES,
        )
    return mapping


intersphinx_mapping = _mapping()
intersphinx_timeout = 10


def _public_name(target: str) -> str:
    """Return the shortest public path of the object ``target`` names.

    Type hints name classes where they are defined (``pandas.core.frame.DataFrame``,
    ``anndata._core.anndata.AnnData``); the inventories list them where users import
    them from (``pandas.DataFrame``, ``anndata.AnnData``).
    """
    module_path, _, name = target.rpartition(".")
    parts = module_path.split(".")
    if len(parts) < 2 or parts[0] == "normalisr_sc":
        return target
    try:
        found = getattr(importlib.import_module(module_path), name)
    except (ImportError, AttributeError):
        return target
    for end in range(1, len(parts)):
        if any(part.startswith("_") for part in parts[:end]):
            break
        try:
            public = getattr(importlib.import_module(".".join(parts[:end])), name)
        except (ImportError, AttributeError):
            continue
        if public is found:
            return ".".join([*parts[:end], name])
    return target


def _link_public_names(app, doctree) -> None:
    from sphinx.addnodes import pending_xref

    for node in doctree.findall(pending_xref):
        if node.get("refdomain") == "py" and "." in node.get("reftarget", ""):
            node["reftarget"] = _public_name(node["reftarget"])


def setup(app) -> None:
    """Point type references at the public names the inventories list."""
    app.connect("doctree-read", _link_public_names)
