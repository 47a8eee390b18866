"""The input door: every form of the same counts gives the same results, and nothing
normalisr_sc does writes into the user's arrays.

Forms: dense, CSR and CSC with duplicate entries, unsorted indices and explicit zeros,
``csr_array``, dask arrays of CSR or COO blocks, backed h5ad and views. Each result is
compared with that of the canonical dense matrix, and the user's matrix is compared
byte for byte with a copy taken before.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

import normalisr_sc as nsc

from .._helpers import assert_close, dense

FORMS = ("dense", "csr", "csc", "csr_array", "dask_csr", "dask_coo", "backed", "view")


# ---------------------------------------------------------------- building the forms


def _entries(
    counts: np.ndarray, rng: np.random.Generator, *, split: bool, zeros: bool, cancel: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triplets (row, column, value) whose sums per position are ``counts``.

    ``split`` cuts stored counts into duplicate entries (one part may be negative),
    ``zeros`` adds explicit zeros, ``cancel`` adds pairs ``+k, -k`` at zero positions.
    """
    rows, cols = np.nonzero(counts)
    values = counts[rows, cols].astype(np.int64)
    triplets = [(rows, cols, values)]
    if split and values.size:
        cut = rng.random(values.size) < 0.6
        part = rng.integers(-2, 4, values.size)
        triplets = [
            (rows, cols, np.where(cut, values - part, values)),
            (rows[cut], cols[cut], part[cut]),
        ]
    empty_rows, empty_cols = np.nonzero(counts == 0)
    if zeros and empty_rows.size:
        pick = rng.random(empty_rows.size) < 0.3
        triplets.append((empty_rows[pick], empty_cols[pick], np.zeros(pick.sum(), np.int64)))
    if cancel and empty_rows.size:
        pick = rng.random(empty_rows.size) < 0.2
        k = rng.integers(1, 3, pick.sum())
        triplets += [
            (empty_rows[pick], empty_cols[pick], k),
            (empty_rows[pick], empty_cols[pick], -k),
        ]
    row, col, value = (np.concatenate(parts) for parts in zip(*triplets, strict=True))
    order = rng.permutation(row.size)  # unsorted indices within rows and columns
    return row[order], col[order], value[order]


def _compressed(row, col, value, shape, fmt: str, dtype) -> sparse.spmatrix:
    """A CSR/CSC matrix holding exactly these entries, in this order within each row/column."""
    major, minor = (row, col) if fmt == "csr" else (col, row)
    order = np.argsort(major, kind="stable")
    n_major = shape[0] if fmt == "csr" else shape[1]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(major, minlength=n_major))])
    cls = sparse.csr_matrix if fmt == "csr" else sparse.csc_matrix
    matrix = cls(shape, dtype=dtype)
    matrix.data = value[order].astype(dtype)
    matrix.indices = minor[order].astype(np.int32)
    matrix.indptr = indptr.astype(np.int32)
    return matrix


def _dask_blocks(row, col, value, shape, kind: str, dtype, chunk: int):
    """A dask array of non-canonical CSR (or COO) blocks of ``chunk`` cells."""
    blocks = []
    for start in range(0, shape[0], chunk):
        stop = min(start + chunk, shape[0])
        inside = (row >= start) & (row < stop)
        block_shape = (stop - start, shape[1])
        if kind == "coo":
            block = sparse.coo_matrix(
                (value[inside].astype(dtype), (row[inside] - start, col[inside])), shape=block_shape
            )
        else:
            block = _compressed(
                row[inside] - start, col[inside], value[inside], block_shape, "csr", dtype
            )
        blocks.append(
            da.from_delayed(
                dask.delayed(block),
                shape=block_shape,
                dtype=dtype,
                meta=sparse.csr_matrix((0, 0), dtype=dtype),
            )
        )
    return da.concatenate(blocks, axis=0)


class Form:
    """One form of a counts matrix, with a byte-level snapshot of the user's arrays."""

    def __init__(
        self,
        counts: np.ndarray,
        form: str,
        rng: np.random.Generator,
        folder: Path,
        *,
        dtype=np.float64,
        chunk: int = 3,
    ) -> None:
        self.form = form
        self.keep_cells = None
        row, col, value = _entries(counts, rng, split=True, zeros=True, cancel=True)
        shape = counts.shape
        names = {
            "obs": pd.DataFrame(index=[f"c{i}" for i in range(shape[0])]),
            "var": pd.DataFrame(index=[f"g{j}" for j in range(shape[1])]),
        }
        self.expected = counts.astype(dtype)
        if form == "dense":
            matrix = counts.astype(dtype)
            matrix.flags.writeable = False
        elif form in ("csr", "csc", "view", "backed"):
            matrix = _compressed(row, col, value, shape, "csc" if form == "csc" else "csr", dtype)
        elif form == "csr_array":
            matrix = sparse.csr_array(_compressed(row, col, value, shape, "csr", dtype))
        else:
            matrix = _dask_blocks(row, col, value, shape, form.removeprefix("dask_"), dtype, chunk)
        if sparse.issparse(matrix):
            for array in (matrix.data, matrix.indices, matrix.indptr):
                array.flags.writeable = False  # any write into the user's arrays fails
        self.matrix = matrix
        self.snapshot = self._bytes()
        if form == "backed":
            path = folder / "counts.h5ad"
            AnnData(X=matrix, **names).write_h5ad(path)
            self.adata_factory = lambda: ad.read_h5ad(path, backed="r")
        elif form == "view":
            self.keep_cells = np.arange(shape[0]) != 1
            self.expected = self.expected[self.keep_cells]
            self.adata_factory = lambda: AnnData(X=matrix, **names)[self.keep_cells]
        else:
            self.adata_factory = lambda: AnnData(X=matrix, **names)

    def _bytes(self) -> list[bytes]:
        if sparse.issparse(self.matrix):
            return [
                a.tobytes() for a in (self.matrix.data, self.matrix.indices, self.matrix.indptr)
            ]
        if isinstance(self.matrix, np.ndarray):
            return [self.matrix.tobytes()]
        return [self.matrix.compute().toarray().tobytes()]

    def assert_untouched(self) -> None:
        assert self._bytes() == self.snapshot, f"{self.form}: the user's matrix changed"


def reference_adata(expected: np.ndarray) -> AnnData:
    return AnnData(
        X=np.asarray(expected),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(expected.shape[0])]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(expected.shape[1])]),
    )


def outcome(function, adata: AnnData, **kwargs):
    """``("ok", adata, returned)`` or ``("error", message)``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            returned = function(adata, **kwargs)
    except ValueError as error:
        return ("error", str(error).replace("adata.X", "X"))
    return ("ok", adata, returned)


def _values(matrix) -> np.ndarray:
    if hasattr(matrix, "compute"):
        matrix = matrix.compute()
    return dense(matrix)


STEPS = {
    "qc_reads": (nsc.pp.qc_reads, {"inplace": False, "min_cell_genes": 2, "min_gene_cells": 2}),
    "lcpm": (nsc.pp.lcpm, {}),
    "scaling_factor": (nsc.pp.scaling_factor, {"inplace": False}),
    "cpm": (nsc.pp.cpm, {}),
    "minmax": (nsc.pp.minmax, {}),
}


def assert_same_outcome(step: str, got, want) -> None:
    assert got[0] == want[0], (step, got, want)
    if got[0] == "error":
        assert got[1] == want[1]
        return
    _, adata, returned = got
    _, reference, expected = want
    if step == "qc_reads":
        np.testing.assert_array_equal(returned[0], expected[0])
        np.testing.assert_array_equal(returned[1], expected[1])
    elif step == "scaling_factor":
        assert_close(returned, expected, rtol=1e-10)
    elif step == "lcpm":
        assert_close(_values(adata.layers["lcpm"]), reference.layers["lcpm"], rtol=1e-10)
        assert_close(
            adata.obsm["nsc_cov"].to_numpy(), reference.obsm["nsc_cov"].to_numpy(), rtol=1e-10
        )
        scale = adata.var["nsc_scale"].to_numpy()
        assert_close(scale, reference.var["nsc_scale"].to_numpy(), rtol=1e-10)
        assert ((scale >= 0) & (scale <= 1)).all()
    else:
        assert_close(_values(adata.layers[step]), _values(reference.layers[step]), rtol=1e-12)


counts_strategy = st.builds(
    lambda n_cells, n_genes, seed: (n_cells, n_genes, seed),
    st.integers(2, 9),
    st.integers(2, 7),
    st.integers(0, 2**32 - 1),
)


def random_counts(n_cells: int, n_genes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.7, 2.0, (n_cells, n_genes)))
    counts[counts.sum(axis=1) == 0, 0] = 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=counts_strategy, dtype=st.sampled_from([np.float64, np.int64, np.float32]))
def test_every_form_reads_as_the_canonical_matrix(form, spec, dtype):
    """Results of every counts reader equal those of the canonical dense matrix, and the
    user's arrays (read-only here, so any write would fail) are byte-identical after."""
    counts = random_counts(*spec)
    rng = np.random.default_rng(spec[2])
    with tempfile.TemporaryDirectory() as folder:
        made = Form(counts, form, rng, Path(folder), dtype=dtype)
        for step, (function, kwargs) in STEPS.items():
            want = outcome(function, reference_adata(made.expected), **kwargs)
            # Blocks of 2 cells: the dask forms (blocks of 3) are rechunked.
            extra = {"chunk_size": 2} if form in ("dask_csr", "dask_coo", "backed") else {}
            got = outcome(function, made.adata_factory(), **kwargs, **extra)
            assert_same_outcome(step, got, want)
            made.assert_untouched()


def test_issue_example_duplicates_not_summed_in_place():
    """X [[1+1, 0], [0, 2]] stored as three entries stays three entries."""
    matrix = sparse.csr_matrix(
        (np.array([1.0, 1.0, 2.0]), np.array([0, 0, 1]), np.array([0, 2, 3])), shape=(2, 2)
    )
    adata = AnnData(X=matrix)
    cells, genes = nsc.pp.qc_reads(adata, inplace=False)
    assert cells.all()
    assert genes.all()
    np.testing.assert_array_equal(adata.X.data, [1.0, 1.0, 2.0])
    np.testing.assert_array_equal(adata.X.indices, [0, 0, 1])
    np.testing.assert_array_equal(adata.X.toarray(), [[2, 0], [0, 2]])


def test_duplicates_counted_as_their_sum(make_counts):
    """lcpm, n_zero_genes and nsc_scale of duplicated entries equal the canonical ones."""
    counts = make_counts(60, 20, seed=3)
    rng = np.random.default_rng(0)
    row, col, value = _entries(counts, rng, split=True, zeros=True, cancel=True)
    duplicated = _compressed(row, col, value, counts.shape, "csr", np.float64)
    assert not duplicated.has_canonical_format
    reference, adata = AnnData(X=counts.astype(float)), AnnData(X=duplicated)
    nsc.pp.lcpm(reference)
    nsc.pp.lcpm(adata)
    assert_close(adata.layers["lcpm"], reference.layers["lcpm"], rtol=1e-12)
    pd.testing.assert_frame_equal(adata.obsm["nsc_cov"], reference.obsm["nsc_cov"])
    np.testing.assert_array_equal(adata.var["nsc_scale"], reference.var["nsc_scale"])
    assert adata.var["nsc_scale"].between(0, 1).all()


def test_non_canonical_copy_is_logged(make_counts, caplog):
    counts = make_counts(30, 10, seed=1)
    row, col, value = _entries(
        counts, np.random.default_rng(1), split=True, zeros=False, cancel=False
    )
    adata = AnnData(X=_compressed(row, col, value, counts.shape, "csr", np.float64))
    with caplog.at_level("INFO", logger="normalisr_sc"):
        nsc.pp.lcpm(adata)
    assert "adata.X has duplicate entries or unsorted indices" in caplog.text
    assert "sum_duplicates()" in caplog.text


# ---------------------------------------------------------------- read-only user arrays


def _read_only_adata(counts: np.ndarray, fmt: str) -> AnnData:
    matrix = (
        counts.astype(np.float64)
        if fmt == "dense"
        else {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[fmt](counts)
    )
    arrays = [matrix] if fmt == "dense" else [matrix.data, matrix.indices, matrix.indptr]
    for array in arrays:
        array.flags.writeable = False
    adata = AnnData(X=matrix)
    adata.obs["batch"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 3 == 0, "a", "b"))
    return adata


# Quick: every format in memory, chunked on CSR; the full run: chunked on every format.
@pytest.mark.parametrize(
    ("chunked", "fmt"),
    [
        pytest.param(chunked, fmt, marks=[pytest.mark.slow] if chunked and fmt != "csr" else [])
        for chunked in (False, True)
        for fmt in ("dense", "csr", "csc")
    ],
)
def test_every_step_on_read_only_counts(make_counts, fmt, chunked):
    """X with read-only buffers: every step runs, and X is byte-identical afterwards."""
    adata = _read_only_adata(make_counts(240, 60, seed=5), fmt)
    before = adata.X.copy()
    args = {"chunked": chunked, "chunk_size": 70}
    nsc.pp.qc_reads(adata, inplace=False, min_cell_genes=5, **args)
    nsc.pp.scaling_factor(adata, inplace=False, **args)
    nsc.pp.cpm(adata, **args)
    nsc.pp.minmax(adata, **args)
    nsc.pp.lcpm(adata, **args)
    nsc.pp.normcov(adata, ["batch"])
    nsc.pp.compute_var(adata, **args)
    nsc.pp.normvar(adata, **args)
    if chunked:
        for key in ("lcpm", "normalisr", "cpm", "minmax"):
            adata.layers[key].compute()
    fresh = _read_only_adata(make_counts(240, 60, seed=5), fmt)
    users = fresh.X
    nsc.pp.normalize(fresh, ["batch"], qc={"min_cell_genes": 5}, **args)
    assert_same_buffers(users, before)
    assert_same_buffers(adata.X, before)


def assert_same_buffers(matrix, before) -> None:
    assert type(matrix) is type(before)
    if sparse.issparse(before):
        for name in ("data", "indices", "indptr"):
            assert getattr(matrix, name).tobytes() == getattr(before, name).tobytes()
    else:
        assert matrix.tobytes() == before.tobytes()


# ---------------------------------------------------------------- cpm and minmax streamed


@pytest.mark.parametrize("how", ["dask_csr", "dask_dense", "backed"])
@pytest.mark.parametrize(
    ("function", "kwargs"),
    [
        (nsc.pp.cpm, {}),
        (nsc.pp.minmax, {}),
        (nsc.pp.minmax, {"feature_range": (-1.0, 2.0)}),
    ],
)
def test_cpm_minmax_streamed_equal_in_memory(make_counts, tmp_path, how, function, kwargs):
    counts = make_counts(50, 12, seed=2)
    reference = AnnData(X=sparse.csr_matrix(counts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        function(reference, **kwargs)
        if how == "backed":
            AnnData(X=sparse.csr_matrix(counts)).write_h5ad(tmp_path / "c.h5ad")
            adata = ad.read_h5ad(tmp_path / "c.h5ad", backed="r")
        elif how == "dask_csr":
            adata = AnnData(
                X=da.from_array(sparse.csr_matrix(counts), chunks=(7, -1), asarray=False)
            )
        else:
            adata = AnnData(X=da.from_array(counts, chunks=(7, -1)))
        function(adata, chunk_size=9, **kwargs)
    key = function.__name__
    result = adata.layers[key]
    assert isinstance(result, da.Array)
    assert_close(_values(result), _values(reference.layers[key]), rtol=1e-14)
    assert adata.uns[key]["params"] == reference.uns[key]["params"]
