"""Sparse storage drawn at random (hypothesis): duplicates, unsorted indices, explicit
zeros, CSC, COO-born CSR, in X or in a layer. qc_reads, lcpm and cpm give the results of
the canonical CSR matrix and never write into the user's arrays."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

import normalisr_sc as nsc

from ._catalogue import assert_same_as_canonical


@st.composite
def odd_counts(draw) -> tuple[np.ndarray, sparse.spmatrix, str]:
    """Dense counts (every cell non-empty) and the same values in an odd sparse storage."""
    n_cells = draw(st.integers(3, 8))
    n_genes = draw(st.integers(2, 6))
    values = draw(
        st.lists(st.integers(0, 12), min_size=n_cells * n_genes, max_size=n_cells * n_genes)
    )
    dense = np.array(values, dtype=np.int64).reshape(n_cells, n_genes)
    dense[-1, -1] = 0  # some gene has a zero, so the scaling factor is defined
    dense[dense.sum(axis=1) == 0, 0] = 1
    fmt = draw(st.sampled_from(["csr", "csc"]))
    major = dense if fmt == "csr" else dense.T  # rows of the compressed axis
    data, indices, indptr = [], [], [0]
    for line in major:
        entries = []
        for j, value in enumerate(line):
            if value == 0:
                if draw(st.booleans()) and draw(st.booleans()):
                    entries.append((j, 0))  # explicit zero
                continue
            parts = draw(st.integers(1, min(3, int(value)))) if value > 1 else 1
            cuts = (
                sorted(
                    draw(
                        st.lists(
                            st.integers(1, int(value) - 1),
                            min_size=parts - 1,
                            max_size=parts - 1,
                            unique=True,
                        )
                    )
                )
                if parts > 1
                else []
            )
            bounds = [0, *cuts, int(value)]
            entries += [(j, hi - lo) for lo, hi in pairwise(bounds)]
        if draw(st.booleans()):
            entries = draw(st.permutations(entries))  # unsorted indices
        indices += [j for j, _ in entries]
        data += [v for _, v in entries]
        indptr.append(len(indices))
    dtype = draw(st.sampled_from([np.int32, np.int64, np.float32, np.float64]))
    cls = sparse.csr_matrix if fmt == "csr" else sparse.csc_matrix
    odd = cls(
        (
            np.array(data, dtype=dtype),
            np.array(indices, dtype=np.int32),
            np.array(indptr, dtype=np.int32),
        ),
        shape=dense.shape,
    )
    where = draw(st.sampled_from(["X", "layer"]))
    return dense.astype(dtype), odd, where


def _adatas(dense: np.ndarray, odd, where: str) -> tuple[AnnData, AnnData, dict]:
    n_cells, n_genes = dense.shape
    obs = pd.DataFrame(index=[f"c{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    canonical = sparse.csr_matrix(dense)
    if where == "X":
        return (AnnData(X=odd, obs=obs, var=var), AnnData(X=canonical, obs=obs, var=var), {})
    filler = np.zeros(dense.shape, dtype=np.float32)
    odd_adata = AnnData(X=filler.copy(), obs=obs, var=var, layers={"raw": odd})
    canonical_adata = AnnData(X=filler.copy(), obs=obs, var=var, layers={"raw": canonical})
    return odd_adata, canonical_adata, {"layer": "raw"}


SETTINGS = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(odd_counts(), st.integers(0, 40))
def test_qc_reads_odd_storage(drawn, min_cell_counts):
    odd, canonical, layer = _adatas(*drawn)
    min_cell_counts = min(min_cell_counts, int(drawn[0].sum(axis=1).max()))  # keep a cell
    assert_same_as_canonical(
        lambda a: nsc.pp.qc_reads(a, min_cell_counts=min_cell_counts, inplace=False, **layer),
        odd,
        canonical,
    )


@pytest.mark.slow  # a hypothesis sweep (qc_reads and cpm stay quick)
@SETTINGS
@given(odd_counts())
def test_lcpm_odd_storage(drawn):
    odd, canonical, layer = _adatas(*drawn)
    assert_same_as_canonical(lambda a: nsc.pp.lcpm(a, **layer), odd, canonical)


@SETTINGS
@given(odd_counts())
def test_cpm_odd_storage(drawn):
    odd, canonical, layer = _adatas(*drawn)
    assert_same_as_canonical(lambda a: nsc.pp.cpm(a, **layer), odd, canonical)


@pytest.mark.slow  # a hypothesis sweep
@SETTINGS
@given(odd_counts())
def test_scaling_factor_odd_storage(drawn):
    odd, canonical, layer = _adatas(*drawn)
    assert_same_as_canonical(
        lambda a: nsc.pp.scaling_factor(a, inplace=False, **layer), odd, canonical
    )
