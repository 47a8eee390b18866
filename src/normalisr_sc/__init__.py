"""normalisr_sc: the Normalisr method for single-cell RNA-seq on AnnData.

>>> import normalisr_sc as nsc
>>> nsc.pp.normalize(adata, covariates=["batch"])

The submodules ``pp``, ``tl``, ``get``, ``pl`` and ``datasets`` are imported on first
use (``nsc.pp``, ``from normalisr_sc import tl`` or ``import normalisr_sc.pl`` all
work), so that ``import normalisr_sc`` and the command line's ``--version`` and
``--help`` do not wait for numpy, anndata, scanpy and dask.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._settings import settings

if TYPE_CHECKING:
    from . import datasets, get, pl, pp, tl

__all__ = ["datasets", "get", "pl", "pp", "settings", "tl"]

_SUBMODULES = frozenset({"datasets", "get", "pl", "pp", "tl"})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("normalisr-sc")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def __getattr__(name: str) -> Any:
    """Import a submodule (``nsc.pp``...) or find ``__version__`` on first use."""
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")  # also binds it on the package
    if name == "__version__":
        value = globals()["__version__"] = _version()
        return value
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, "__version__"})
