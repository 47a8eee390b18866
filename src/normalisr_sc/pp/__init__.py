"""Preprocessing: quality control and the Normalisr normalisation (``nsc.pp``)."""

from ._covariates import normcov
from ._lcpm import lcpm, scaling_factor
from ._qc import format_qc_summary, qc_outlier, qc_reads
from ._recipe import DEFAULT_QC, normalize
from ._simple import cpm, minmax
from ._variance import compute_var, normvar

__all__ = [
    "DEFAULT_QC",
    "compute_var",
    "cpm",
    "format_qc_summary",
    "lcpm",
    "minmax",
    "normalize",
    "normcov",
    "normvar",
    "qc_outlier",
    "qc_reads",
    "scaling_factor",
]
