"""Preprocessing: quality control and the Normalisr normalisation (``nsc.pp``)."""

from ._covariates import normcov
from ._lcpm import lcpm, scaling_factor
from ._qc import qc_outlier, qc_reads
from ._variance import compute_var, normvar

__all__ = [
    "compute_var",
    "lcpm",
    "normcov",
    "normvar",
    "qc_outlier",
    "qc_reads",
    "scaling_factor",
]
