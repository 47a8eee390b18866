"""Cells dropped by the recipe or the read-count QC leave lazy matrices in their chunks."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
from scipy import sparse

from normalisr_sc.pp._recipe import _subset_cells


def test_dask_matrices_keep_their_chunks_and_values() -> None:
    rng = np.random.default_rng(2)
    counts = sparse.random(60, 5, density=0.5, format="csr", random_state=1)
    dense = rng.normal(size=(60, 5))
    adata = ad.AnnData(
        X=da.from_array(counts, chunks=(16, 5), asarray=False),
        layers={"lazy": da.from_array(dense, chunks=(16, 5)), "memory": dense.copy()},
    )
    positions = np.flatnonzero(rng.random(60) > 0.1)
    _subset_cells(adata, positions)
    assert adata.n_obs == positions.size
    keep = np.isin(np.arange(60), positions)
    in_chunks = tuple(int(keep[start : start + 16].sum()) for start in range(0, 60, 16))
    for matrix in (adata.X, adata.layers["lazy"]):
        assert matrix.chunks[0] == in_chunks  # dask's own indexing regroups the rows
    np.testing.assert_array_equal(adata.X.compute().toarray(), counts[positions].toarray())
    np.testing.assert_array_equal(adata.layers["lazy"].compute(), dense[positions])
    np.testing.assert_array_equal(adata.layers["memory"], dense[positions])


def test_read_count_qc_subset_keeps_dask_chunks() -> None:
    from normalisr_sc.pp._qc import _subset

    counts = sparse.random(60, 8, density=0.4, format="csr", random_state=0)
    adata = ad.AnnData(X=da.from_array(counts, chunks=(16, 8), asarray=False))
    cells = np.random.default_rng(1).random(60) > 0.2
    genes = np.arange(8) % 3 > 0
    kept = _subset(adata, cells, genes)
    in_chunks = tuple(int(cells[start : start + 16].sum()) for start in range(0, 60, 16))
    assert kept.X.chunks[0] == in_chunks
    np.testing.assert_array_equal(kept.X.compute().toarray(), counts[cells][:, genes].toarray())
    assert adata.X.shape == (60, 8)  # the input keeps its counts
