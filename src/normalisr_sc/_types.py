"""Structural types shared by the layers (for type checkers and readers of signatures).

- :class:`RowSliceable`: any cells x features matrix a kernel reads block by block.
- ``Block``: one block of rows in memory, as the kernels receive it (dense or CSR).
- ``Compressed``: a CSR or CSC matrix or array.
- ``SparseMatrix``: any scipy sparse matrix or array; :func:`is_sparse` narrows to it
  (scipy's own ``issparse`` tells a type checker nothing of the value's attributes).
- ``InputMatrix``: what a step reads from an AnnData (in memory or a dask array).

``SparseMatrix`` and ``InputMatrix`` exist for type checkers only: import them under
``if TYPE_CHECKING:``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    import dask.array as da

    # The common base class of scipy's sparse matrices and arrays has no public name.
    from scipy.sparse._base import _spbase
    from typing_extensions import TypeIs  # typing.TypeIs is Python 3.13+

    #: Any scipy sparse matrix or array (for type checkers only).
    SparseMatrix: TypeAlias = _spbase

    #: A matrix as the steps read it from an AnnData (``_utils.input_matrix``): dense or
    #: compressed sparse in memory, or a dask array streamed by cells (for type checkers).
    InputMatrix: TypeAlias = "np.ndarray | Compressed | da.Array"

#: A block of rows in memory: a dense array or a canonical CSR matrix.
Block: TypeAlias = np.ndarray | sparse.csr_matrix

#: A compressed sparse matrix or array (CSR or CSC), whose index arrays can be checked
#: and summed in place.
Compressed: TypeAlias = sparse.csr_matrix | sparse.csr_array | sparse.csc_matrix | sparse.csc_array

#: The classes of ``Compressed``, for ``isinstance``.
COMPRESSED = (sparse.csr_matrix, sparse.csr_array, sparse.csc_matrix, sparse.csc_array)


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


def is_sparse(matrix: object) -> TypeIs[SparseMatrix]:
    """Return whether ``matrix`` is a scipy sparse matrix or array (``sparse.issparse``)."""
    return sparse.issparse(matrix)
