"""Mixture-model guide assignment (``_core._guide_mixture``): truth, degenerate guides, inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from normalisr_sc._core._guide_mixture import assign_mixture, simulate_guide_counts


def exact_match(assigned: sparse.csr_matrix, truth: sparse.csr_matrix) -> float:
    """Fraction of cells whose assigned guides are exactly their true guides."""
    wrong = np.asarray((sparse.csr_matrix(assigned, dtype=bool) != truth).sum(axis=1)).ravel()
    return float(np.mean(wrong == 0))


@pytest.fixture(scope="module")
def simulated():
    return simulate_guide_counts(8_000, 150, seed=4)


@pytest.fixture(scope="module")
def fitted(simulated):
    return assign_mixture(simulated[0], posterior=True)


def test_accuracy_against_truth(simulated, fitted):
    counts, truth = simulated
    assigned = fitted.assigned
    assert assigned.shape == counts.shape
    assert assigned.dtype == bool
    true_positive = assigned.multiply(truth).nnz
    assert true_positive / assigned.nnz > 0.995  # precision
    assert true_positive / truth.nnz > 0.99  # recall (a few carried guides have 0-2 UMIs)
    assert exact_match(assigned, truth) > 0.99
    params = fitted.params
    assert (params["status"] == "fitted").all()
    assert params["converged"].all()
    np.testing.assert_array_equal(params["n_assigned"], np.diff(assigned.tocsc().indptr))
    # the mixture explains the data better than the background alone, for every guide
    assert (params["loglik"] > params["loglik_background"]).all()


def test_posteriors_at_nonzero_counts_only(simulated, fitted):
    counts, _ = simulated
    post = fitted.posterior
    assert post.shape == counts.shape
    # stored only where a count is, all probabilities, and the assignment is post > 0.5
    assert (abs(post).astype(bool) > (counts != 0)).nnz == 0
    assert post.data.min() > 0
    assert post.data.max() <= 1
    np.testing.assert_array_equal((post > 0.5).toarray(), fitted.assigned.toarray())
    # cells with count 0 all have the same posterior, negligible here
    assert fitted.params["posterior_at_zero"].max() < 1e-3


def test_better_than_any_fixed_threshold_at_low_background():
    # low background (3 UMIs per cell spread over 200 guides) and weakly captured guides
    # (median 10 UMIs): a fixed UMI threshold either misses carriers or takes background
    counts, truth = simulate_guide_counts(10_000, 200, background=3, present_median=10, seed=7)
    ours = exact_match(assign_mixture(counts).assigned, truth)
    rule = {t: exact_match(counts >= t, truth) for t in range(1, 11)}
    assert ours > rule[5] + 0.1  # the default threshold of assign_guides
    assert ours > max(rule.values()) + 0.01  # and the best threshold in hindsight


def test_degenerate_guides():
    rng = np.random.default_rng(0)
    n_cells = 3_000
    counts, _ = simulate_guide_counts(n_cells, 20, seed=1)
    counts = counts.toarray()
    counts[:, 0] = 0  # never observed
    counts[:, 1] = 0
    counts[rng.choice(n_cells, 30, replace=False), 1] = 1  # one count value, a background one
    counts[:, 2] = 0
    high = rng.choice(n_cells, 25, replace=False)
    counts[high, 2] = 60  # one count value, high: carried
    counts[:, 3] = rng.poisson(0.05, n_cells)  # background alone
    result = assign_mixture(sparse.csr_matrix(counts), posterior=True)
    status = result.params["status"]
    assert status[0] == "empty"
    assert status[1] == "not_separable"
    assert status[3] == "not_separable"
    assert status[2] == "fitted"
    columns = result.assigned.tocsc()
    for j in (0, 1, 3):
        assert columns[:, j].nnz == 0
        assert result.posterior.tocsc()[:, j].nnz == 0
        assert result.params["n_assigned"][j] == 0
    np.testing.assert_array_equal(np.sort(columns[:, 2].indices), np.sort(high))
    assert result.params["min_assigned_count"][2] == 60
    assert (status[4:] == "fitted").all()
    for key, values in result.params.items():
        assert len(values) == 20, key


def test_independent_of_block_size_and_dense_equals_sparse(simulated):
    counts, _ = simulated
    counts = counts[:3_000]
    whole = assign_mixture(counts, posterior=True)
    for other in (
        assign_mixture(counts, posterior=True, block_size=7),
        assign_mixture(counts.toarray(), posterior=True, block_size=1_000),
    ):
        assert (whole.assigned != other.assigned).nnz == 0
        np.testing.assert_array_equal(whole.posterior.toarray(), other.posterior.toarray())
        for key in whole.params:
            np.testing.assert_array_equal(whole.params[key], other.params[key], err_msg=key)


def test_input_left_unchanged_and_explicit_zeros(simulated):
    counts = simulated[0][:2_000].astype(np.float32)
    before = counts.copy()
    with_zeros = counts.copy()
    with_zeros.data[::5] = 0  # explicit zeros in the sparse structure
    assign_mixture(counts)
    assert (counts != before).nnz == 0
    dense = with_zeros.toarray()
    a = assign_mixture(with_zeros, posterior=True)
    b = assign_mixture(dense, posterior=True)
    assert (a.assigned != b.assigned).nnz == 0
    assert (abs(a.posterior).astype(bool) > sparse.csr_matrix(dense != 0)).nnz == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": 0}, "threshold"),
        ({"tol": 0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"min_sd": -1}, "min_sd"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        assign_mixture(np.ones((3, 2)), **kwargs)


@pytest.mark.parametrize(
    "bad",
    [np.array([[1.5, 0], [0, 2]]), np.array([[-1, 0], [0, 2]]), np.array([[np.nan, 0], [0, 2]])],
)
def test_non_count_input_refused(bad):
    with pytest.raises(ValueError, match="non-negative integers"):
        assign_mixture(bad)


@pytest.mark.slow  # reads the Papalexi screen
def test_papalexi_agrees_with_max(shared_data):
    ad = pytest.importorskip("anndata")
    adata = ad.read_h5ad(shared_data / "papalexi_lowmoi.h5ad")
    counts = sparse.csr_matrix(adata.obsm["grna_counts"])
    result = assign_mixture(counts)
    per_cell = np.diff(result.assigned.indptr)
    single = np.flatnonzero(per_cell == 1)
    chosen = result.assigned.indices[result.assigned.indptr[single]]
    top = np.asarray(counts.argmax(axis=1)).ravel()
    # measured: 18,382 of 20,729 cells get one guide, 99.8% of them their max guide
    assert single.size > 0.85 * counts.shape[0]
    assert np.mean(chosen == top[single]) > 0.99
    # a low-MOI screen: few cells carry several guides
    assert np.mean(per_cell >= 2) < 0.15
    assert (result.params["status"] == "fitted").sum() >= 100
