"""The pair QC kernel (``_core/_pair_qc.py``): cells with a nonzero count per set of cells
and gene, against an explicit dense count, in memory, block by block and as dask."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

from normalisr_sc._core._pair_qc import (
    dense_nonzero_counts,
    family_qvalues,
    locate_pairs,
    nonzero_counts,
    qc_pass,
    read_pairs,
)


def _data(seed: int = 0, n_cells: int = 257, n_genes: int = 31, n_sets: int = 6):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.5, 1.0, n_genes), (n_cells, n_genes)).astype(np.float32)
    # Each cell in 0 to 3 sets, so that sets overlap as the groups of a high-MOI screen.
    indicators = (rng.random((n_cells, n_sets)) < 0.25).astype(np.float64)
    return counts, indicators


def _explicit(counts: np.ndarray, indicators: np.ndarray) -> np.ndarray:
    """Loops over sets and genes: cells of the set whose count of the gene is not 0."""
    out = np.zeros((indicators.shape[1], counts.shape[1]), dtype=np.int64)
    for s in range(indicators.shape[1]):
        cells = indicators[:, s] == 1
        for g in range(counts.shape[1]):
            out[s, g] = int(np.count_nonzero(counts[cells, g]))
    return out


@pytest.mark.parametrize("block_cells", [1, 7, 64, 10_000])
@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_in_memory_and_block_by_block(fmt, block_cells):
    counts, indicators = _data()
    expected = _explicit(counts, indicators)
    matrix = {"dense": counts, "csr": sparse.csr_matrix(counts), "csc": sparse.csc_matrix(counts)}
    found = nonzero_counts(
        sparse.csr_matrix(indicators),
        matrix[fmt].tocsr() if fmt == "csc" else matrix[fmt],
        block_cells=block_cells,
    )
    assert found.dtype == np.int64
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(dense_nonzero_counts(indicators, counts), expected)


@pytest.mark.parametrize("lazy", [False, True])
def test_extra_set_of_cells_is_a_last_row(lazy):
    counts, indicators = _data(seed=6)
    cells = np.random.default_rng(6).random(counts.shape[0]) < 0.7
    matrix = sparse.csr_matrix(counts)
    if lazy:
        matrix = da.from_array(matrix, chunks=(60, -1), asarray=False)
    found = nonzero_counts(indicators, matrix, block_cells=45, cells=cells)
    expected = _explicit(counts, np.column_stack([indicators, cells]))
    np.testing.assert_array_equal(found, expected)
    with pytest.raises(ValueError, match="cell mask"):
        nonzero_counts(indicators, counts, block_cells=45, cells=cells[1:])


def test_explicit_zeros_and_dense_indicators():
    counts, indicators = _data(seed=1)
    matrix = sparse.csr_matrix(counts)
    matrix.data[::3] = 0.0  # stored zeros are not nonzero counts
    dense = matrix.toarray()
    found = nonzero_counts(indicators, matrix, block_cells=50)
    np.testing.assert_array_equal(found, _explicit(dense, indicators))
    assert matrix.nnz == sparse.csr_matrix(counts).nnz  # the user's matrix is untouched


@pytest.mark.parametrize("sparse_chunks", [False, True])
def test_dask(sparse_chunks):
    counts, indicators = _data(seed=2)
    source = sparse.csr_matrix(counts) if sparse_chunks else counts
    lazy = da.from_array(source, chunks=(40, -1), asarray=False)
    found = nonzero_counts(indicators, lazy, block_cells=33)
    np.testing.assert_array_equal(found, _explicit(counts, indicators))


@pytest.mark.slow
def test_on_local_cluster(dask_client):
    counts, indicators = _data(seed=3)
    lazy = da.from_array(sparse.csr_matrix(counts), chunks=(50, -1), asarray=False)
    found = nonzero_counts(indicators, lazy, block_cells=50)
    np.testing.assert_array_equal(found, _explicit(counts, indicators))


def test_negative_values_wrong_cells_and_values_are_refused():
    counts, indicators = _data(seed=4)
    negative = counts.copy()
    negative[100, 3] = -1.0
    with pytest.raises(ValueError, match="negative values"):
        nonzero_counts(indicators, sparse.csr_matrix(negative), block_cells=64)
    with pytest.raises(ValueError, match="same cells"):
        nonzero_counts(indicators[:-1], counts, block_cells=64)
    with pytest.raises(ValueError, match="0/1"):
        nonzero_counts(2 * indicators, counts, block_cells=64)


def test_qc_pass_and_family_qvalues_equal_bh_on_the_remaining():
    rng = np.random.default_rng(5)
    pvals = rng.uniform(size=(40, 3)) ** 2
    n_group = rng.integers(0, 20, (40, 3))
    n_control = rng.integers(0, 20, (40, 3))
    passing = qc_pass(n_group, n_control, 7)
    np.testing.assert_array_equal(passing, (n_group >= 7) & (n_control >= 7))
    per_group = family_qvalues(pvals, passing, axis=0)
    for j in range(3):
        kept = passing[:, j]
        assert np.isnan(per_group[~kept, j]).all()
        np.testing.assert_allclose(
            per_group[kept, j], stats.false_discovery_control(pvals[kept, j]), rtol=1e-12
        )
    joint = family_qvalues(pvals, passing, axis=None)
    np.testing.assert_allclose(
        joint[passing], stats.false_discovery_control(pvals[passing]), rtol=1e-12
    )
    assert np.isnan(joint[~passing]).all()
    np.testing.assert_allclose(
        family_qvalues(pvals[:, 0]), stats.false_discovery_control(pvals[:, 0]), rtol=1e-12
    )


def test_read_pairs_layouts():
    ours = pd.DataFrame({"gene": ["a", "b"], "group": ["x", "y"], "other": [1, 2]})
    sceptre = pd.DataFrame({"response_id": ["a", "b"], "grna_group": ["x", "y"]})
    for table in (ours, sceptre, [("x", "a"), ("y", "b")], [["x", "a"], ["y", "b"]]):
        groups, genes = read_pairs("pairs", table)
        assert list(groups) == ["x", "y"]
        assert list(genes) == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (pd.DataFrame({"target": ["x"], "gene": ["a"]}), "columns"),
        (pd.DataFrame({"group": ["x", "x"], "gene": ["a", "a"]}), "more than once"),
        (pd.DataFrame({"group": ["x", None], "gene": ["a", "b"]}), "missing"),
        (pd.DataFrame({"group": [], "gene": []}), "no pair"),
        ([("x", "a", "b")], "two names"),
        ("x", "DataFrame"),
        (3, "DataFrame"),
    ],
)
def test_read_pairs_refuses(value, match):
    with pytest.raises(ValueError, match=match):
        read_pairs("pairs", value)


def test_locate_pairs_names_unknowns():
    groups, genes = read_pairs("pairs", [("x", "a"), ("z", "b"), ("y", "q")])
    with pytest.raises(ValueError, match=r"unknown group\(s\) \['z'\].*\['q'\] not in"):
        locate_pairs("pairs", groups, genes, ["x", "y"], ["a", "b"])
    with pytest.raises(ValueError, match="reference group"):
        locate_pairs("pairs", groups, genes, ["x", "y"], ["a", "b", "q"], reference=["z"])
    group_pos, gene_pos = locate_pairs("pairs", groups[[0, 2]], genes[[0, 2]], ["y", "x"], "abq")
    np.testing.assert_array_equal(group_pos, [1, 0])
    np.testing.assert_array_equal(gene_pos, [0, 2])
