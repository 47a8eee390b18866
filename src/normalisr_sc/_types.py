"""Structural types shared by the layers (for type checkers and readers of signatures)."""

from __future__ import annotations

from typing import Any, Protocol


class RowSliceable(Protocol):
    """A 2-D matrix of cells x features that can be read a block of rows at a time.

    What the kernels ask of a matrix: its ``shape`` and ``matrix[rows]`` for a slice of
    rows (read into memory with :func:`normalisr_sc._core._blocks.materialize`). numpy
    arrays, scipy sparse matrices and arrays, the h5py-backed matrices of a backed AnnData
    and dask arrays all qualify.
    """

    @property
    def shape(self) -> tuple[int, ...]:
        """Return the number of rows and columns."""
        ...

    def __getitem__(self, key: Any, /) -> Any:
        """Return a selection of the matrix, e.g. a slice of rows."""
        ...
