"""Generated datasets with known truth (``nsc.datasets``)."""

from ._simulate import simulate

__all__ = ["simulate"]
