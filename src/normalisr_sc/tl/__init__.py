"""Tools: association tests, co-expression networks and GO covariates (``nsc.tl``)."""

from ._go_covariates import gotop, pccovt

__all__ = ["gotop", "pccovt"]
