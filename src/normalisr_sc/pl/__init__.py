"""Plots (``nsc.pl``): matplotlib, scanpy habits (``ax=``, ``show=``, ``save=``)."""

from ._weights import weights

__all__ = ["weights"]
