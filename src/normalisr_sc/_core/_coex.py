"""Co-expression of all gene pairs (METHOD 8 with ``x`` and ``y`` both genes)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.linalg.blas import dsyrk

from ._association import ZERO_VARIANCE_RTOL, _check_df, _check_finite, _expression_blocks
from ._linalg import pinv_psd
from ._pvalues import association_pvalues
from ._reduce import no_progress

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ._reduce import Progress


@dataclass
class CoexResult:
    """Co-expression of ``g`` genes: p-values, ``-log10`` p-values, Pearson r (g, g),
    residual variances (g,), and the degrees of freedom."""

    pvals: np.ndarray
    neg_log10_pvals: np.ndarray
    r: np.ndarray
    var: np.ndarray
    n_cells: int
    df: int


def _gram_accumulate(
    expression: ArrayLike, covariates: np.ndarray, block_cells: int, progress: Progress
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Y'Y`` (upper triangle valid), ``C'Y`` and ``C'C`` summed over blocks of cells."""
    n_genes = expression.shape[1]
    n_cov = covariates.shape[1]
    gram = np.zeros((n_genes, n_genes), order="F")
    cy = np.zeros((n_cov, n_genes))
    cc = np.zeros((n_cov, n_cov))
    for rows, y in _expression_blocks(expression, block_cells, progress, "coex: Gram matrix"):
        c = covariates[rows]
        gram = dsyrk(1.0, y.T, beta=1.0, c=gram, trans=0, lower=0, overwrite_c=1)
        cy += (y.T @ c).T
        cc += c.T @ c
    return gram, cy, cc


def coexpression(
    expression: ArrayLike,
    covariates: np.ndarray,
    *,
    dimreduce: int = 0,
    block_cells: int,
    progress: Progress = no_progress,
    band_rows: int = 256,
) -> CoexResult:
    """All gene pairs: the association test with ``x`` and ``y`` both genes (METHOD 8).

    One Gram matrix of the expression (a symmetric rank-k update per block of cells)
    gives every covariate-removed inner product at once. The test statistics are then
    computed in bands of ``band_rows`` genes, in parallel threads, each band once for
    the upper triangle and mirrored. Diagonal: p = 1, r = 1.
    """
    n_cells, n_genes = expression.shape
    gram, cy, cc = _gram_accumulate(expression, covariates, block_cells, progress)
    pinv, rank = pinv_psd(cc)
    df = n_cells - 1 - int(rank) - dimreduce
    _check_df(np.array([df]), np.array([True]))
    raw = np.diag(gram).copy()
    _check_finite(raw)
    fitted = pinv @ cy
    res = raw - np.einsum("kg,kg->g", cy, fitted)
    zero = res <= ZERO_VARIANCE_RTOL * raw
    res[zero] = n_cells
    inv_sd = np.where(zero, 0.0, 1.0 / np.sqrt(res))

    pvals = np.empty((n_genes, n_genes))
    neg_log10 = np.empty((n_genes, n_genes))
    r = np.empty((n_genes, n_genes))

    def band(start: int) -> None:
        rows = slice(start, min(start + band_rows, n_genes))
        dot = gram[rows, start:] - cy[:, rows].T @ fitted[:, start:]
        # Only the upper triangle of the Gram matrix is filled: mirror it in the diagonal block.
        width = rows.stop - start
        diagonal = dot[:, :width]
        dot[:, :width] = np.triu(diagonal) + np.triu(diagonal, 1).T
        band_r = dot * (inv_sd[rows, None] * inv_sd[None, start:])
        band_p, band_log = association_pvalues(1.0 - band_r * band_r, df)
        for out, values in ((r, band_r), (pvals, band_p), (neg_log10, band_log)):
            out[rows, start:] = values
            out[start:, rows] = values.T

    starts = range(0, n_genes, band_rows)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(progress(pool.map(band, starts), len(starts), "coex: tests"))
    for out, diagonal in ((r, 1.0), (pvals, 1.0), (neg_log10, 0.0)):
        np.fill_diagonal(out, diagonal)
    return CoexResult(pvals, neg_log10, r, res / n_cells, n_cells, df)
