"""Plots (``nsc.pl``): matplotlib, scanpy habits (``ax=``, ``show=``, ``save=``)."""

from ._association import qq, volcano
from ._network import coex_heatmap, coex_network
from ._weights import weights

__all__ = ["coex_heatmap", "coex_network", "qq", "volcano", "weights"]
