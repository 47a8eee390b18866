"""Sphinx configuration of the normalisr_sc documentation."""

from importlib.metadata import version as _version

project = "normalisr_sc"
author = "normalisr_sc developers"
release = _version("normalisr-sc")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
autosummary_generate = True
autodoc_typehints = "none"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
myst_enable_extensions = ["dollarmath"]
nb_execution_mode = "off"  # the test suite executes the notebooks
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "tutorials/README.md"]
html_theme = "furo"
html_title = "normalisr_sc"
