"""Plots (``nsc.pl``): matplotlib, scanpy habits (``ax=``, ``show=``, ``save=``)."""

from ._association import qq, volcano
from ._calibration import calibration
from ._network import coex_heatmap, coex_network
from ._weights import weights

__all__ = ["calibration", "coex_heatmap", "coex_network", "qq", "volcano", "weights"]
