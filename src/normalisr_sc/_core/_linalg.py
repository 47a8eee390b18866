"""Pseudo-inverses of symmetric positive semi-definite (Gram) matrices."""

from __future__ import annotations

import numpy as np

#: Eigenvalues below this fraction of the largest are treated as zero (METHOD 7-8).
PINV_RTOL = 1e-8


def pinv_psd(gram: np.ndarray, rtol: float = PINV_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Moore-Penrose pseudo-inverse and rank of one or a stack of PSD matrices.

    Parameters
    ----------
    gram
        Array of shape ``(..., k, k)``, symmetric positive semi-definite.
    rtol
        Eigenvalues smaller than ``rtol`` times the largest eigenvalue of the same
        matrix are discarded.

    Returns
    -------
    The pseudo-inverses, shape ``(..., k, k)``, and the ranks, shape ``(...)``.
    """
    gram = np.asarray(gram, dtype=np.float64)
    eigval, eigvec = np.linalg.eigh(gram)
    top = eigval[..., -1:]
    keep = (eigval >= rtol * top) & (top > 0)
    inv_eigval = np.divide(1.0, eigval, out=np.zeros_like(eigval), where=keep)
    pinv = (eigvec * inv_eigval[..., None, :]) @ np.swapaxes(eigvec, -1, -2)
    return pinv, keep.sum(axis=-1)
