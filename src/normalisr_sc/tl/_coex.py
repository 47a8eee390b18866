"""Co-expression of all gene pairs (METHOD 8) and its binary network (METHOD 9)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import sparse

from .._core._blocks import dense_block
from .._core._checks import name_source
from .._core._coex import coex_matrices, coex_network, coex_stats, pvalue_network
from .._core._reduce import is_dask
from .._docs import doc_chunked_layer, doc_params
from .._progress import progress
from .._readers import coex_block, network_only
from .._store import check_writable, read_record
from .._store import store as store_results
from .._utils import gene_positions, logger, matrix_name
from .._validate import as_names, check_number, check_str
from ._inputs import check_dimreduce, layer_inputs, normalised_inputs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from numpy.typing import DTypeLike

    from .._types import RowSliceable

#: Matrices of ``adata.varp`` written by :func:`coex`, by suffix.
COEX_MATRICES = ("pvals", "log10p", "r")
#: What :func:`coex` can store.
STORE_OPTIONS = ("all", "network")
#: Default q-value cutoff of the network (:func:`binnet` and ``coex(store='network')``).
QCUT = 0.05


class _Columns:
    """Some columns of a row-sliceable in-memory matrix, itself row-sliceable."""

    def __init__(self, matrix, columns: np.ndarray) -> None:
        self.matrix = matrix
        self.columns = columns
        self.shape = (matrix.shape[0], columns.size)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return dense_block(self.matrix[rows][:, self.columns])


def _gene_index(adata: AnnData, genes: Sequence[str] | None) -> np.ndarray | None:
    if genes is None:
        return None
    index = gene_positions(adata, as_names("genes", genes))
    if index.size < 2:
        msg = f"co-expression needs at least 2 genes, got {index.size}."
        raise ValueError(msg)
    return np.sort(index)


def _check_qcut(qcut: float) -> None:
    check_number("qcut", qcut, minimum=0, maximum=1, min_open=True, max_open=True)


def _output_dtype(dtype: DTypeLike) -> np.dtype:
    try:
        out = np.dtype(dtype)
    except TypeError:
        out = None
    if out not in (np.float32, np.float64):
        msg = f"dtype must be float32 or float64, got {dtype!r}."
        raise ValueError(msg)
    return out


def _check_store(store: str, qcut: float | None) -> float | None:
    """Return the q-value cutoff of the stored network (None when the matrices are stored)."""
    if store not in STORE_OPTIONS:
        msg = f"store must be one of {STORE_OPTIONS}, got {store!r}."
        raise ValueError(msg)
    if store == "all":
        if qcut is not None:
            msg = (
                "qcut applies to store='network' only; with store='all', binarise afterwards "
                "with `nsc.tl.binnet(adata, qcut=...)`."
            )
            raise ValueError(msg)
        return None
    qcut = QCUT if qcut is None else qcut
    _check_qcut(qcut)
    return qcut


def _block_matrix(n_vars: int, index: np.ndarray, block: np.ndarray) -> sparse.csr_matrix:
    """Return an ``n_vars`` square CSR matrix storing ``block`` at rows and columns ``index``."""
    rows = np.repeat(index, index.size)
    cols = np.tile(index, index.size)
    matrix = sparse.csr_matrix((block.ravel(), (rows, cols)), shape=(n_vars, n_vars))
    matrix.sort_indices()
    return matrix


def _network_matrix(
    n_vars: int, index: np.ndarray | None, rows: np.ndarray, cols: np.ndarray
) -> sparse.csr_matrix:
    """Return the boolean square CSR network with edges ``(rows, cols)`` among ``index``."""
    if index is not None:
        rows, cols = index[rows], index[cols]
    return sparse.csr_matrix((np.ones(rows.size, dtype=bool), (rows, cols)), shape=(n_vars, n_vars))


def _check_not_empty(n_edges: int, qcut: float) -> None:
    if n_edges == 0:
        msg = (
            f"the co-expression network is empty at qcut={qcut}: no gene pair has a per-row "
            "q-value below it. Use a larger qcut or more cells."
        )
        raise ValueError(msg)


def _network_record(net: sparse.csr_matrix, qcut: float) -> dict:
    logger.info("binnet: %d edges at qcut=%g", net.nnz, qcut)
    return {"qcut": qcut, "n_edges": int(net.nnz)}


@doc_params(doc_chunked_layer=doc_chunked_layer)
def coex(
    adata: AnnData,
    *,
    layer: str = "normalisr",
    genes: Sequence[str] | None = None,
    covariates_key: str = "nsc_covariates_norm",
    key_added: str = "nsc_coex",
    dimreduce: int = 0,
    dtype: DTypeLike = np.float64,
    store: Literal["all", "network"] = "all",
    qcut: float | None = None,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> None:
    """Test co-expression of every pair of genes.

    For genes ``i`` and ``j`` the model is ``y_i = gamma * y_j + alpha . C + noise`` with
    the normalised covariates ``C`` removed by least squares; the exact p-value of
    ``gamma = 0`` is a two-sided t-test with ``df = cells - 1 - rank(C) - dimreduce``,
    symmetric in ``i`` and ``j``. The whole computation rests on one Gram matrix of the
    expression, accumulated over blocks of cells; the tests are then computed in bands
    of genes.

    Memory: the Gram matrix takes ``8 g^2`` bytes for ``g`` genes (1.35 GB at 13,000
    genes), and each stored matrix ``8 g^2`` bytes in float64 or ``4 g^2`` in float32;
    in float64 the r matrix reuses the memory of the Gram matrix. With
    ``store='network'`` no dense result is held: only the Gram matrix and the edges.
    Streamed, every dask thread also holds the partial Gram matrix of its blocks until
    it is merged (about 3 Gram matrices at once with 2 threads).

    Parameters
    ----------
    adata
        Normalised AnnData (:func:`normalisr_sc.pp.normalize`).
    layer
        Layer holding the normalised expression.
    genes
        Compute only among these genes (``var_names``); default all genes.
    covariates_key
        ``adata.obsm`` key of the normalised covariates. The default means those of the
        :func:`~normalisr_sc.pp.normvar` run that wrote ``layer``.
    key_added
        Prefix of the result keys.
    dimreduce
        Extra degrees of freedom already used up by the expression.
    dtype
        Data type of the stored matrices, ``float64`` or ``float32`` (half the memory).
        The tests are computed in float64 either way. In float32, r and p-values keep
        about 7 significant digits and p-values below about 1e-45 underflow to 0, while
        ``-log10`` p-values keep the strength of such pairs.
    store
        ``'all'``: the p-value, ``-log10`` p-value and r matrices. ``'network'``: only
        the binary network at ``qcut``, exactly as :func:`binnet` would make it from the
        stored p-values, for when the gene x gene matrices are too large to keep.
    qcut
        Q-value cutoff of the network stored with ``store='network'`` (default 0.05);
        not used with ``store='all'``.
    {doc_chunked_layer}

    Returns
    -------
    Nothing. With ``store='all'``, sets n_vars x n_vars matrices

    - ``adata.varp[key_added + '_pvals']``: p-values (diagonal 1);
    - ``adata.varp[key_added + '_log10p']``: ``-log10`` p-values, exact beyond float
      underflow (diagonal 0);
    - ``adata.varp[key_added + '_r']``: Pearson r after covariate removal (diagonal 1).

    With ``store='network'``, sets ``adata.varp[key_added + '_net']`` and
    ``adata.uns[key_added]['binnet']`` as :func:`binnet` does; results of an earlier run
    under the same key are removed. Both set ``adata.var[key_added + '_var']``
    (residual variance of each gene) and ``adata.uns[key_added]`` (``n_cells``, ``df``,
    ``store`` and ``params``). The matrices are dense when all genes are used. With
    ``genes=``, they are sparse (CSR) and store only the computed block, among the
    listed genes (``adata.uns[key_added]['genes']``); the entries of other genes are
    absent (read them as "not tested", not as 0), and their variance is NaN.
    :func:`normalisr_sc.get.coex_df` gives the tested pairs as a table.

    Examples
    --------
    >>> nsc.tl.coex(adata)
    >>> adata.varp["nsc_coex_r"].shape == (adata.n_vars, adata.n_vars)
    True

    Only the network, for many genes:

    >>> nsc.tl.coex(adata, store="network", qcut=0.01)
    >>> adata.varp["nsc_coex_net"].nnz
    """
    check_str("layer", layer)
    check_str("covariates_key", covariates_key)
    check_str("key_added", key_added)
    covariates_key = layer_inputs(adata, layer, covariates_key)[0]
    check_dimreduce(dimreduce)
    dtype = _output_dtype(dtype)
    qcut = _check_store(store, qcut)
    check_writable(
        adata,
        {
            "var": [f"{key_added}_var"],
            "uns": [key_added],
            "varp": [f"{key_added}_{name}" for name in (*COEX_MATRICES, "net")],
        },
    )
    expression, size, covariates = normalised_inputs(
        adata, layer, covariates_key, chunked=chunked, chunk_size=chunk_size
    )
    index = _gene_index(adata, genes)
    source: RowSliceable = expression
    if index is not None:
        source = expression[:, index] if is_dask(expression) else _Columns(expression, index)
        name_source(source, matrix_name(layer))
    stats = coex_stats(
        source, covariates, dimreduce=int(dimreduce), block_cells=size, progress=progress
    )
    n_genes, n_cells, df = stats.inv_sd.size, stats.n_cells, stats.df
    variance = stats.var
    if index is not None:
        variance = np.full(adata.n_vars, np.nan)
        variance[index] = stats.var
    if qcut is None:
        dense = dict(
            zip(COEX_MATRICES, coex_matrices(stats, dtype=dtype, progress=progress), strict=True)
        )
        matrices: dict[str, np.ndarray | sparse.csr_matrix] = (
            dict(dense)
            if index is None
            else {name: _block_matrix(adata.n_vars, index, block) for name, block in dense.items()}
        )
        stale = [f"{key_added}_net"]
    else:
        rows, cols = coex_network(stats, qcut=qcut, progress=progress)
        _check_not_empty(rows.size, qcut)
        network = _network_matrix(adata.n_vars, index, rows, cols)
        matrices = {"net": network}
        stale = [f"{key_added}_{name}" for name in COEX_MATRICES]
    record: dict[str, Any] = {"n_cells": n_cells, "df": df, "store": store}
    if index is not None:
        record["genes"] = list(adata.var_names[index])
    if qcut is not None:
        record["binnet"] = _network_record(network, qcut)
    params = {
        "layer": layer,
        "covariates_key": covariates_key,
        "dimreduce": int(dimreduce),
        "store": store,
        "qcut": qcut,
        "dtype": dtype.name,
        "n_genes": None if index is None else int(index.size),
        "key_added": key_added,
    }
    store_results(
        adata,
        key_added,
        params,
        drop={"varp": stale},
        var={f"{key_added}_var": variance},
        varp={f"{key_added}_{name}": matrix for name, matrix in matrices.items()},
        uns={key_added: record},
    )
    logger.info("coex: %d genes, %d cells, df=%d", n_genes, n_cells, df)


def binnet(adata: AnnData, *, qcut: float = QCUT, key: str = "nsc_coex") -> None:
    """Binarise the co-expression p-values into a network (METHOD 9).

    Per gene (row), Benjamini-Hochberg q-values are computed over its p-values with all
    other genes (the diagonal excluded); an edge ``i -> j`` is drawn where
    ``q_ij <= qcut``. Because each row is corrected separately, the network can be
    asymmetric. The p-values are read in bands of genes, without dense temporaries.

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
    edges in ``adata.uns[key]['binnet']``. After ``coex(..., store='network')``, which
    stored no p-values, the network is already there: calling ``binnet`` with the same
    ``qcut`` does nothing and another ``qcut`` is an error.

    Examples
    --------
    >>> nsc.tl.coex(adata)
    >>> nsc.tl.binnet(adata, qcut=0.05)
    >>> adata.varp["nsc_coex_net"].sum()
    """
    check_str("key", key)
    _check_qcut(qcut)
    check_writable(adata, {"varp": [f"{key}_net"], "uns": [key]})
    stored_qcut = network_only(adata, key)
    if stored_qcut == qcut:
        logger.info("binnet: %r already holds the network at qcut=%g", key, qcut)
        return
    if stored_qcut is not None:
        msg = (
            f"`nsc.tl.coex(..., store='network')` kept only the network at qcut={stored_qcut} "
            f"under key {key!r}, not the p-values needed for another cutoff; rerun it with "
            f"qcut={qcut}."
        )
        raise ValueError(msg)
    index, pvals = coex_block(adata, key, "pvals")
    if not np.isfinite(pvals).all():
        msg = f"adata.varp[{key + '_pvals'!r}] holds NaN or infinite p-values; rerun `nsc.tl.coex`."
        raise ValueError(msg)
    rows, cols = pvalue_network(pvals, qcut=qcut)
    _check_not_empty(rows.size, qcut)
    net = _network_matrix(adata.n_vars, index, rows, cols)
    # The network's record (qcut, edges) beside coex's results and params.
    record = {**read_record(adata, key), "binnet": _network_record(net, qcut)}
    store_results(adata, varp={f"{key}_net": net}, uns={key: record})
