"""Exact bit-pattern sums of the fingerprints (``_core._fingerprint``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from normalisr_sc._core._fingerprint import dense_bit_sums, entry_bit_sums


def _by_definition(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column sums of the float64 patterns, -0.0 as 0.0 and one NaN (numpy)."""
    values = np.array(matrix, dtype=np.float64)
    values[values == 0] = 0.0
    values[np.isnan(values)] = np.nan
    bits = values.view(np.uint64)
    return bits.sum(axis=1, dtype=np.uint64), bits.sum(axis=0, dtype=np.uint64)


def _special(shape: tuple[int, int]) -> np.ndarray:
    matrix = np.random.default_rng(0).normal(size=shape) * 1e3
    matrix[0, 0], matrix[1, 1], matrix[2, 2], matrix[3, 3] = -0.0, np.nan, np.inf, -np.inf
    matrix[4, 4] = -np.array(np.nan)  # a NaN with the sign bit set
    matrix[5] = 0.0
    return matrix


@pytest.mark.parametrize(
    "layout",
    [
        "c",
        "fortran",
        "strided",
        "column_block",
        "row_block_of_fortran",
        "float32",
        "int32",
        "bool",
        "one_column",
    ],
)
def test_dense_sums_equal_their_definition(layout):
    matrix = _special((41, 17))
    matrix = {
        "c": matrix,
        "fortran": np.asfortranarray(matrix),
        "strided": matrix[:, ::2],
        "column_block": matrix[:, 3:11],  # rows contiguous, the matrix not
        "row_block_of_fortran": np.asfortranarray(matrix)[3:20],
        "float32": matrix.astype(np.float32),
        "int32": np.nan_to_num(matrix, posinf=0, neginf=0).astype(np.int32),
        "bool": matrix > 0,
        "one_column": matrix[:, :1],
    }[layout]
    rows, columns = dense_bit_sums(matrix)
    expected_rows, expected_columns = _by_definition(matrix)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(columns, expected_columns)


def test_signs_of_zero_and_nan_do_not_count_and_every_edit_does():
    matrix = _special((8, 6))
    rows, columns = dense_bit_sums(matrix)
    same = matrix.copy()
    same[0, 0], same[4, 4] = 0.0, np.nan
    for got, expected in zip(dense_bit_sums(same), (rows, columns), strict=True):
        np.testing.assert_array_equal(got, expected)
    for i, j in [(0, 5), (7, 0), (3, 3)]:
        edited = matrix.copy()
        edited[i, j] = np.nextafter(edited[i, j], np.inf)
        edited_rows, edited_columns = dense_bit_sums(edited)
        assert edited_rows[i] != rows[i]
        assert edited_columns[j] != columns[j]


def test_entry_sums_of_a_sparse_matrix_equal_the_dense_ones():
    matrix = sparse.random(30, 20, density=0.2, random_state=1, format="coo")
    matrix.data[:3] = [np.nan, -0.0, np.inf]
    rows, columns = entry_bit_sums(matrix.row, matrix.col, matrix.data, matrix.shape)
    expected_rows, expected_columns = dense_bit_sums(matrix.toarray())
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(columns, expected_columns)


@pytest.mark.parametrize("n_jobs", [1, 2, 3])
@pytest.mark.parametrize("layout", ["c", "fortran"])
def test_threaded_sums_equal_their_definition(n_jobs, layout, monkeypatch):
    """A matrix large enough for threads: the same sums however its rows are shared out."""
    import normalisr_sc as nsc
    from normalisr_sc._core import _fingerprint

    monkeypatch.setattr(nsc.settings, "_n_jobs", n_jobs)
    matrix = _special((2049, 2051))
    assert matrix.size >= _fingerprint.THREADED_ENTRIES
    if layout == "fortran":
        matrix = np.asfortranarray(matrix)
    rows, columns = dense_bit_sums(matrix)
    expected_rows, expected_columns = _by_definition(matrix)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(columns, expected_columns)
