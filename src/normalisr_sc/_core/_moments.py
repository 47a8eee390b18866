"""Column means and variances accumulated over blocks of rows."""

from __future__ import annotations

import numpy as np


class ColumnMoments:
    """Running count, mean and centred sum of squares of each column.

    Blocks are merged with the pairwise update of Chan, Golub and LeVeque, which
    stays accurate when the mean is large compared with the spread.
    """

    def __init__(self, n_columns: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_columns)
        self.m2 = np.zeros(n_columns)

    def update(self, block: np.ndarray, *, overwrite: bool = False) -> None:
        """Add the rows of ``block``; ``overwrite`` lets it serve as scratch space."""
        n_block = block.shape[0]
        if n_block == 0:
            return
        block_mean = block.mean(axis=0)
        centred = np.subtract(block, block_mean, out=block if overwrite else None)
        self._combine(n_block, block_mean, np.einsum("ij,ij->j", centred, centred))

    def merge(self, other: ColumnMoments) -> ColumnMoments:
        """Add the rows summarised by ``other``; returns ``self``."""
        if other.count:
            self._combine(other.count, other.mean, other.m2)
        return self

    def _combine(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * (count / total)
        self.m2 += m2 + delta**2 * (self.count * count / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        """Population variance (divisor n)."""
        return self.m2 / self.count

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (divisor n)."""
        return np.sqrt(self.variance)
