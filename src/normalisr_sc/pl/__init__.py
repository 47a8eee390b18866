"""Plots (``nsc.pl``): matplotlib, scanpy habits (``ax=``, ``show=``, ``save=``)."""

from ._association import qq, volcano
from ._weights import weights

__all__ = ["qq", "volcano", "weights"]
