"""Helpers shared by the test folders (assertions, input formats, block sizes)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

import normalisr_sc as nsc

if TYPE_CHECKING:
    from collections.abc import Iterator

FORMATS = ("dense", "csr", "csc")


def as_format(counts: np.ndarray, fmt: str):
    """``counts`` as a dense array, a CSR or a CSC matrix."""
    if fmt == "dense":
        return np.asarray(counts)
    return {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[fmt](counts)


def counts_adata(counts: np.ndarray, fmt: str = "csr", *, batch: bool = True) -> AnnData:
    """AnnData of ``counts`` in format ``fmt`` with named cells/genes and a ``batch`` column."""
    n_cells, n_genes = counts.shape
    adata = AnnData(
        X=as_format(counts, fmt),
        obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]),
    )
    if batch:
        adata.obs["batch"] = pd.Categorical(np.where(np.arange(n_cells) % 3 == 0, "b1", "b2"))
    return adata


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


@contextmanager
def block_size(n_cells: int) -> Iterator[None]:
    """Temporarily set ``nsc.settings.block_cells``."""
    old = nsc.settings.block_cells
    nsc.settings.block_cells = n_cells
    try:
        yield
    finally:
        nsc.settings.block_cells = old


def assert_matrix_equal(before, after) -> None:
    """Same storage (dense / sparse format), dtype, shape and values (NaN equal to NaN)."""
    assert sparse.issparse(before) == sparse.issparse(after)
    if sparse.issparse(before):
        assert before.format == after.format
    assert before.dtype == after.dtype
    assert before.shape == after.shape
    np.testing.assert_array_equal(dense(after), dense(before))


def assert_nested_equal(before, after, path: str = "uns") -> None:
    """Dicts, DataFrames, arrays and scalars equal, recursively."""
    if isinstance(before, dict):
        assert isinstance(after, dict), path
        assert set(after) == set(before), f"{path}: keys {set(after)} != {set(before)}"
        for key in before:
            assert_nested_equal(before[key], after[key], f"{path}[{key!r}]")
    elif isinstance(before, pd.DataFrame):
        pd.testing.assert_frame_equal(after, before)
    elif isinstance(before, np.ndarray | sparse.spmatrix | sparse.sparray | list | tuple):
        np.testing.assert_array_equal(dense(after), dense(before), err_msg=path)
    else:
        assert after == before, f"{path}: {after!r} != {before!r}"


def assert_unchanged(before: AnnData, after: AnnData) -> None:
    """``after`` is exactly ``before``: X, layers, obs, var, obsm, varm, uns, names and shape."""
    assert after.shape == before.shape
    pd.testing.assert_index_equal(after.obs_names, before.obs_names)
    pd.testing.assert_index_equal(after.var_names, before.var_names)
    if before.X is None:
        assert after.X is None
    else:
        assert_matrix_equal(before.X, after.X)
    assert set(after.layers) == set(before.layers)
    for key in before.layers:
        assert_matrix_equal(before.layers[key], after.layers[key])
    pd.testing.assert_frame_equal(after.obs, before.obs)
    pd.testing.assert_frame_equal(after.var, before.var)
    for name in ("obsm", "varm", "obsp", "varp"):
        old, new = getattr(before, name), getattr(after, name)
        assert set(new) == set(old), name
        for key in old:
            if isinstance(old[key], pd.DataFrame):
                pd.testing.assert_frame_equal(new[key], old[key])
            else:
                assert_matrix_equal(old[key], new[key])
    assert_nested_equal(dict(before.uns), dict(after.uns))


def binary_covariates_well_posed(covariates, minimum: int = 3) -> bool:
    """Whether every binary covariate (not the intercept) has ``minimum`` cells of each value.

    A binary covariate (e.g. ``n_zero_genes`` in {0, 1}) set in only one or two cells fits
    those cells exactly: their residual is ~0 and their variance weight explodes (~1e12),
    which amplifies rounding differences beyond any sensible tolerance.
    """
    cov = np.asarray(covariates, dtype=np.float64)
    binary = np.isin(cov, [0, 1]).all(axis=0) & ~(cov == 1).all(axis=0)
    ones = cov[:, binary].sum(axis=0)
    return bool(((ones >= minimum) & (ones <= cov.shape[0] - minimum)).all())


def assert_close(actual, desired, *, rtol: float = 1e-12) -> None:
    """Relative agreement with an absolute floor scaled to the magnitude of ``desired``."""
    actual, desired = dense(actual), dense(desired)
    assert actual.shape == desired.shape
    scale = max(float(np.abs(desired).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale)
