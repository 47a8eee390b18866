"""Tools: association tests, co-expression networks and GO covariates (``nsc.tl``)."""

from ._calibration import Calibration, calibration_check
from ._coex import binnet, coex
from ._de import de
from ._go_covariates import coex_peel, gotop, pccovt
from ._guides import assign_guides

__all__ = [
    "Calibration",
    "assign_guides",
    "binnet",
    "calibration_check",
    "coex",
    "coex_peel",
    "de",
    "gotop",
    "pccovt",
]
