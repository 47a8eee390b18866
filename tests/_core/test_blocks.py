"""The matrix helpers of ``_core._blocks`` and the type guards of ``_types``, on every format."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import sparse

from normalisr_sc._core._blocks import (
    _kept_block,
    canonical,
    count_non_finite,
    keep_rows_lazily,
    materialize,
    row_block,
)
from normalisr_sc._core._reduce import is_dask
from normalisr_sc._types import is_sparse

#: Every scipy sparse format, as matrix and as array.
FORMATS = ("csr", "csc", "coo", "lil", "dok", "bsr", "dia")
CLASSES = [getattr(sparse, f"{f}_{kind}") for f in FORMATS for kind in ("matrix", "array")]


def _with_bad_values() -> np.ndarray:
    values = np.zeros((6, 5))
    values[0, 1] = 2.0
    values[1, 2] = np.nan
    values[3, 0] = np.inf
    values[4, 4] = -np.inf
    values[5, 3] = 1.5
    return values


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_count_non_finite_reads_every_sparse_format(cls):
    dense = _with_bad_values()
    matrix = cls(dense)
    assert is_sparse(matrix)
    assert count_non_finite(matrix) == 3
    assert count_non_finite(cls(np.nan_to_num(dense, nan=0.0, posinf=0.0, neginf=0.0))) == 0


def test_count_non_finite_of_arrays():
    assert count_non_finite(_with_bad_values()) == 3
    assert count_non_finite(np.arange(6).reshape(2, 3)) == 0  # integers are finite
    assert count_non_finite(np.empty((0, 3))) == 0
    assert count_non_finite([1.0, np.nan]) == 1


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_materialize_gives_read_only_canonical_csr(cls):
    dense = np.arange(30, dtype=np.float64).reshape(6, 5) % 4
    block = materialize(cls(dense))
    assert isinstance(block, sparse.csr_matrix)
    assert block.has_canonical_format
    np.testing.assert_array_equal(block.toarray(), dense)
    with pytest.raises(ValueError, match="read-only"):
        block.data[0] = 1.0


def test_materialize_of_dense_and_dask():
    dense = np.arange(12.0).reshape(4, 3)
    view = materialize(dense)
    assert isinstance(view, np.ndarray)
    assert np.shares_memory(view, dense)
    assert not view.flags.writeable
    assert dense.flags.writeable  # the source stays writable
    np.testing.assert_array_equal(materialize(da.from_array(dense, chunks=2)), dense)


def test_canonical_sums_duplicates_on_a_copy():
    # Entry (0, 1) stored twice and the indices of row 0 unsorted.
    matrix = sparse.csr_matrix(
        (np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1]), np.array([0, 3, 3])), shape=(2, 2)
    )
    data_before = matrix.data.copy()
    fixed = canonical(matrix)
    assert fixed is not matrix
    assert fixed.has_canonical_format
    np.testing.assert_array_equal(fixed.toarray(), [[2.0, 4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(matrix.data, data_before)  # the input is left as it was
    assert canonical(fixed) is fixed


def test_row_block_of_csr_shares_and_is_canonical():
    dense = np.arange(40.0).reshape(8, 5) % 3
    matrix = sparse.csr_array(dense)
    block = row_block(matrix, slice(2, 6))
    assert isinstance(block, sparse.csr_matrix)
    np.testing.assert_array_equal(block.toarray(), dense[2:6])
    assert np.shares_memory(block.data, matrix.data)
    np.testing.assert_array_equal(row_block(dense, slice(6, 8)), dense[6:8])


def test_type_guards():
    assert is_dask(da.zeros((2, 2)))
    assert not is_dask(np.zeros((2, 2)))
    assert not is_dask(dask.delayed(sum)([1, 2]))  # a dask object, but not an array
    assert not is_dask(sparse.csr_matrix((2, 2)))
    assert not is_sparse(np.zeros((2, 2)))
    assert not is_sparse(da.zeros((2, 2)))


@pytest.mark.parametrize("as_sparse", [False, True])
def test_keep_rows_lazily_keeps_each_row_in_its_chunk(as_sparse: bool) -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(size=(50, 4))
    keep = rng.random(50) > 0.2
    source = sparse.csr_matrix(values) if as_sparse else values
    matrix = da.from_array(source, chunks=(16, 4), asarray=False)
    kept = keep_rows_lazily(matrix, keep)
    starts = range(0, 50, 16)
    assert kept.chunks[0] == tuple(int(keep[start : start + 16].sum()) for start in starts)
    result = kept.compute()
    assert sparse.issparse(result) == as_sparse
    np.testing.assert_array_equal(result.toarray() if as_sparse else result, values[keep])


@pytest.mark.parametrize("column_chunk", [7, 3])
@pytest.mark.parametrize("as_sparse", [False, True])
def test_keep_rows_lazily_drops_columns_in_the_same_copy(as_sparse: bool, column_chunk) -> None:
    rng = np.random.default_rng(6)
    values = rng.poisson(1.0, size=(50, 7)).astype(np.float64)
    keep = rng.random(50) > 0.2
    keep[16:32] = True  # a chunk keeping every cell still loses the columns
    genes = np.array([True, False, True, True, False, True, True])
    source = sparse.csr_matrix(values) if as_sparse else values
    matrix = da.from_array(source, chunks=(16, column_chunk), asarray=False)
    kept = keep_rows_lazily(matrix, keep, genes)
    assert sum(kept.chunks[1]) == 5
    result = kept.compute()
    assert sparse.issparse(result) == as_sparse
    np.testing.assert_array_equal(result.toarray() if as_sparse else result, values[keep][:, genes])


def test_chunks_keeping_everything_are_not_copied() -> None:
    block = sparse.csr_matrix(np.eye(4))
    assert _kept_block(block, np.ones((4, 1), dtype=bool), None) is block
    dense_chunk = np.eye(4)
    assert _kept_block(dense_chunk, np.ones((4, 1), dtype=bool), None) is dense_chunk
    matrix = da.from_array(dense_chunk, chunks=(2, 4))
    assert keep_rows_lazily(matrix, np.ones(4, dtype=bool)) is matrix
    assert keep_rows_lazily(matrix, np.ones(4, dtype=bool), np.ones(4, dtype=bool)) is matrix
