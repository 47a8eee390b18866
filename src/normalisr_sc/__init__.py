"""normalisr_sc: the Normalisr method for single-cell RNA-seq on AnnData.

>>> import normalisr_sc as nsc
>>> nsc.pp.normalize(adata, covariates=["batch"])
"""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, get, pl, pp, tl
from ._settings import settings

try:
    __version__ = version("normalisr-sc")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["datasets", "get", "pl", "pp", "settings", "tl"]
