"""Co-expression of all gene pairs (METHOD 8) and its binary network (METHOD 9)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from .._core._association import bh_qvalues
from .._core._blocks import dense_block
from .._core._coex import coexpression
from .._progress import progress
from .._utils import block_cells, ensure_actual, gene_positions, logger, require
from ._inputs import check_dimreduce, normalised_inputs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

#: Matrices of ``adata.varp`` written by :func:`coex`, by suffix.
COEX_MATRICES = ("pvals", "log10p", "r")


class _Columns:
    """Some columns of a row-sliceable matrix, itself row-sliceable."""

    def __init__(self, matrix, columns: np.ndarray) -> None:
        self.matrix = matrix
        self.columns = columns
        self.shape = (matrix.shape[0], columns.size)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return dense_block(self.matrix[rows])[:, self.columns]


def _gene_index(adata: AnnData, genes: Sequence[str] | None) -> np.ndarray | None:
    if genes is None:
        return None
    index = gene_positions(adata, [genes] if isinstance(genes, str) else list(genes))
    if np.unique(index).size != index.size:
        msg = "`genes` contains duplicates; pass each gene once."
        raise ValueError(msg)
    if index.size < 2:
        msg = f"co-expression needs at least 2 genes, got {index.size}."
        raise ValueError(msg)
    return np.sort(index)


def _block_matrix(n_vars: int, index: np.ndarray, block: np.ndarray) -> sparse.csr_matrix:
    """An ``n_vars`` square CSR matrix storing ``block`` at rows and columns ``index``."""
    rows = np.repeat(index, index.size)
    cols = np.tile(index, index.size)
    matrix = sparse.csr_matrix((block.ravel(), (rows, cols)), shape=(n_vars, n_vars))
    matrix.sort_indices()
    return matrix


def coex(
    adata: AnnData,
    *,
    layer: str = "normalisr",
    genes: Sequence[str] | None = None,
    covariates_key: str = "nsc_covariates_norm",
    key_added: str = "nsc_coex",
    dimreduce: int = 0,
) -> None:
    """Test co-expression of every pair of genes.

    For genes ``i`` and ``j`` the model is ``y_i = gamma * y_j + alpha . C + noise`` with
    the normalised covariates ``C`` removed by least squares; the exact p-value of
    ``gamma = 0`` is a two-sided t-test with ``df = cells - 1 - rank(C) - dimreduce``,
    symmetric in ``i`` and ``j``. The whole computation rests on one Gram matrix of the
    expression, accumulated over blocks of cells.

    Parameters
    ----------
    adata
        Normalised AnnData (:func:`normalisr_sc.pp.normalize`).
    layer
        Layer holding the normalised expression.
    genes
        Compute only among these genes (``var_names``); default all genes.
    covariates_key
        ``adata.obsm`` key of the normalised covariates.
    key_added
        Prefix of the result keys.
    dimreduce
        Extra degrees of freedom already used up by the expression.

    Returns
    -------
    Nothing; sets n_vars x n_vars matrices

    - ``adata.varp[key_added + '_pvals']``: p-values (diagonal 1);
    - ``adata.varp[key_added + '_log10p']``: ``-log10`` p-values, exact beyond float
      underflow (diagonal 0);
    - ``adata.varp[key_added + '_r']``: Pearson r after covariate removal (diagonal 1);

    ``adata.var[key_added + '_var']`` (residual variance of each gene) and
    ``adata.uns[key_added]`` (``n_cells``, ``df`` and the parameters). The matrices are
    dense when all genes are used. With ``genes=``, they are sparse (CSR) and store only
    the computed block, among the listed genes (``adata.uns[key_added]['genes']``); the
    entries of other genes are absent (read them as "not tested", not as 0), and their
    variance is NaN. :func:`normalisr_sc.get.coex_df` gives the tested pairs as a table.

    Examples
    --------
    >>> nsc.tl.coex(adata)
    >>> adata.varp["nsc_coex_r"].shape == (adata.n_vars, adata.n_vars)
    True
    """
    check_dimreduce(dimreduce)
    expression, covariates = normalised_inputs(adata, layer, covariates_key)
    index = _gene_index(adata, genes)
    if index is not None:
        expression = _Columns(expression, index)
    result = coexpression(
        expression, covariates, dimreduce=int(dimreduce), block_cells=block_cells(),
        progress=progress,
    )
    matrices = dict(zip(COEX_MATRICES, (result.pvals, result.neg_log10_pvals, result.r),
                        strict=True))
    variance = result.var
    if index is not None:
        matrices = {name: _block_matrix(adata.n_vars, index, block)
                    for name, block in matrices.items()}
        variance = np.full(adata.n_vars, np.nan)
        variance[index] = result.var
    ensure_actual(adata)
    for name, matrix in matrices.items():
        adata.varp[f"{key_added}_{name}"] = matrix
    adata.var[f"{key_added}_var"] = variance
    adata.uns[key_added] = {
        "n_cells": result.n_cells, "df": result.df, "layer": layer,
        "covariates_key": covariates_key, "dimreduce": int(dimreduce),
    }
    if index is not None:
        adata.uns[key_added]["genes"] = list(adata.var_names[index])
    logger.info("coex: %d genes, %d cells, df=%d", result.r.shape[0], result.n_cells, result.df)


def coex_block(adata: AnnData, key: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the genes covered by :func:`coex` and the dense block of one matrix."""
    varp_key = f"{key}_{name}"
    require(adata, "varp", varp_key, "nsc.tl.coex")
    matrix = adata.varp[varp_key]
    genes = adata.uns.get(key, {}).get("genes")
    if genes is None:
        return np.arange(adata.n_vars), np.asarray(matrix)
    index = adata.var_names.get_indexer(np.asarray(genes, dtype=str))
    if (index < 0).any():
        msg = f"adata.uns[{key!r}]['genes'] names genes absent from adata; rerun `nsc.tl.coex`."
        raise ValueError(msg)
    return index, sparse.csr_matrix(matrix)[index][:, index].toarray()


def binnet(adata: AnnData, *, qcut: float = 0.05, key: str = "nsc_coex") -> None:
    """Binarise the co-expression p-values into a network (METHOD 9).

    Per gene (row), Benjamini-Hochberg q-values are computed over its p-values with all
    other genes (the diagonal excluded); an edge ``i -> j`` is drawn where
    ``q_ij <= qcut``. Because each row is corrected separately, the network can be
    asymmetric.

    Parameters
    ----------
    adata
        AnnData after :func:`coex`.
    qcut
        Q-value cutoff, strictly between 0 and 1.
    key
        Key of the co-expression results (``key_added`` of :func:`coex`).

    Returns
    -------
    Nothing; sets ``adata.varp[key + '_net']`` (sparse boolean, n_vars x n_vars; only
    genes covered by :func:`coex` can have edges) and records ``qcut`` and the number of
    edges in ``adata.uns[key]['binnet']``.

    Examples
    --------
    >>> nsc.tl.coex(adata)
    >>> nsc.tl.binnet(adata, qcut=0.05)
    >>> adata.varp["nsc_coex_net"].sum()
    """
    if not 0 < qcut < 1:
        msg = f"qcut must be strictly between 0 and 1, got {qcut!r}."
        raise ValueError(msg)
    index, pvals = coex_block(adata, key, "pvals")
    pvals = pvals.astype(np.float64, copy=True)
    np.fill_diagonal(pvals, np.nan)
    edges = bh_qvalues(pvals, axis=1) <= qcut
    n_edges = int(edges.sum())
    if n_edges == 0:
        msg = (
            f"the co-expression network is empty at qcut={qcut}: no gene pair has a per-row "
            "q-value below it. Use a larger qcut or more cells."
        )
        raise ValueError(msg)
    rows, cols = np.nonzero(edges)
    net = sparse.csr_matrix(
        (np.ones(rows.size, dtype=bool), (index[rows], index[cols])),
        shape=(adata.n_vars, adata.n_vars),
    )
    ensure_actual(adata)
    adata.varp[f"{key}_net"] = net
    adata.uns[key]["binnet"] = {"qcut": qcut, "n_edges": n_edges}
    logger.info("binnet: %d edges at qcut=%g", n_edges, qcut)
