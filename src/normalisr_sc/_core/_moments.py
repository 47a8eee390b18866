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
        block_m2 = np.einsum("ij,ij->j", centred, centred)
        total = self.count + n_block
        delta = block_mean - self.mean
        self.mean += delta * (n_block / total)
        self.m2 += block_m2 + delta**2 * (self.count * n_block / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        """Population variance (divisor n)."""
        return self.m2 / self.count

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (divisor n)."""
        return np.sqrt(self.variance)
