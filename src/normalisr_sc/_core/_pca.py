"""Top principal component of a few genes, optionally conditioned on covariates."""

from __future__ import annotations

import numpy as np

from ._linalg import pinv_psd


def top_principal_component(
    expression: np.ndarray, covariates: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Score of each cell on the first principal component of standardised genes.

    Parameters
    ----------
    expression
        Cells x genes, the genes of interest only.
    covariates
        Cells x covariates to remove first by least squares (together with an
        intercept), or ``None``.

    Returns
    -------
    The cell scores ``Z @ v`` where ``Z`` is the standardised expression and ``v`` the
    top eigenvector of ``Z.T @ Z`` (sign chosen so that ``v`` sums to a non-negative
    number: the component grows with the genes' average), and the fraction of the
    total variance it explains.
    """
    residual = np.array(expression, dtype=np.float64)
    if covariates is not None:
        design = np.column_stack([covariates, np.ones(residual.shape[0])])
        pinv, _ = pinv_psd(design.T @ design)
        residual -= design @ (pinv @ (design.T @ residual))
    residual -= residual.mean(axis=0)
    # A gene without variation contributes nothing instead of dividing by zero.
    residual /= np.sqrt((residual**2).mean(axis=0)) + 1e-200
    eigval, eigvec = np.linalg.eigh(residual.T @ residual)
    loading = eigvec[:, -1]
    if loading.sum() < 0:
        loading = -loading
    total = eigval.clip(min=0).sum()
    return residual @ loading, float(eigval[-1] / total) if total > 0 else 0.0
