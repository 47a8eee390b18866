"""Pseudo-inverses of symmetric positive semi-definite (Gram) matrices."""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

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


def pinv_gram(gram: np.ndarray) -> tuple[np.ndarray, int]:
    """Pseudo-inverse and rank of a large Gram matrix, as :func:`pinv_psd`.

    When ``gram`` is positive definite with a 1-norm condition number of at most
    ``1 / PINV_RTOL`` (which bounds the 2-norm one), ``pinv_psd`` keeps every eigenvalue
    and its pseudo-inverse is the inverse: computed from a Cholesky factorisation, many
    times faster than an eigendecomposition for thousands of groups. Otherwise the
    eigendecomposition decides the rank.
    """
    factor, failed = lapack.dpotrf(gram, lower=0, clean=1)
    if not failed:
        inverse, failed = lapack.dpotri(factor, lower=0, overwrite_c=1)
        del factor
    if not failed:
        inverse = np.triu(inverse)
        inverse += np.triu(inverse, 1).T
        condition = np.abs(gram).sum(axis=0).max() * np.abs(inverse).sum(axis=0).max()
        if condition * PINV_RTOL <= 1.0:
            return inverse, gram.shape[0]
    pinv, rank = pinv_psd(gram)
    return pinv, int(rank)
