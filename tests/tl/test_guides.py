"""``nsc.tl.assign_guides``: max and threshold assignment, pooling by target, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import normalisr_sc as nsc

from .._helpers import assert_unchanged

COUNTS = np.array(
    [
        [0, 7, 2, 0],
        [3, 3, 0, 9],
        [0, 0, 0, 0],
        [6, 0, 5, 1],
        [1, 0, 0, 0],
    ]
)
NAMES = ["A1", "A2", "B1", "NT1"]
TARGETS = pd.DataFrame({"grna_id": NAMES, "grna_group": ["A", "A", "B", "non-targeting"]})


@pytest.fixture
def adata():
    adata = ad.AnnData(np.zeros((5, 2)))
    adata.obsm["grna_counts"] = sparse.csr_matrix(COUNTS)
    adata.uns["grna_ids"] = np.array(NAMES)
    adata.uns["grna_group"] = TARGETS
    return adata


def test_max_assignment(adata):
    nsc.tl.assign_guides(adata, guide_names="grna_ids")
    assigned = adata.obsm["nsc_guides"]
    assert sparse.issparse(assigned)
    expected = np.zeros((5, 4), dtype=bool)
    expected[[0, 1, 3, 4], [1, 3, 0, 0]] = True  # cell 2 has no guide count
    np.testing.assert_array_equal(assigned.toarray(), expected)
    assert adata.uns["nsc_guides"]["names"] == NAMES
    # Counts per guide would go stale when cells are filtered: they are not stored.
    assert "n_cells" not in adata.uns["nsc_guides"]
    assert adata.uns["nsc_guides"]["params"]["mode"] == "max"


def test_threshold_assignment_pooled_by_target(adata):
    nsc.tl.assign_guides(
        adata,
        mode="threshold",
        threshold=5,
        guide_names=NAMES,
        groups="grna_group",
        key_added="targets",
    )
    assert adata.uns["targets"]["names"] == ["A", "B", "non-targeting"]
    expected = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(adata.obsm["targets"].toarray(), expected)


def test_assignment_feeds_de_and_survives_h5ad(adata, tmp_path):
    adata.obsm["grna_counts"] = pd.DataFrame(COUNTS, columns=NAMES, index=adata.obs_names)
    nsc.tl.assign_guides(adata, groups=dict(zip(NAMES, TARGETS["grna_group"], strict=True)))
    path = tmp_path / "guides.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(
        back.obsm["nsc_guides"].toarray(), adata.obsm["nsc_guides"].toarray()
    )
    assert list(back.uns["nsc_guides"]["names"]) == ["A", "B", "non-targeting"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"obsm_key": "missing"}, "not found"),
        ({"mode": "median"}, "mode"),
        ({"mode": "threshold", "threshold": 0}, "threshold"),
        ({"guide_names": ["a", "b"]}, "2 guide names"),
        ({"guide_names": "absent"}, "not an adata.uns key"),
        ({"guide_names": "grna_ids", "groups": {"x": "y"}}, "no guide name"),
        ({"groups": pd.DataFrame({"only": NAMES})}, "two columns"),
        # Positional columns and a mapping by name: the error names the missing argument.
        ({"groups": "grna_group"}, r"`guide_names=`.*guide_names='grna_ids'"),
        ({"guide_names": ["A1", "A1", "B1", "NT1"]}, "more than once"),
        ({"threshold": -1, "mode": "threshold"}, "`threshold`"),
        ({"groups": 3}, "`groups`"),
        ({"key_added": ""}, "`key_added`"),
    ],
)
def test_bad_input_leaves_adata_unchanged(adata, kwargs, match):
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        nsc.tl.assign_guides(adata, **kwargs)
    assert_unchanged(before, adata)


def test_user_key_is_not_replaced(adata):
    adata.uns["nsc_guides"] = {"mine": 1}
    before = adata.copy()
    with pytest.raises(ValueError, match="was not written by normalisr_sc"):
        nsc.tl.assign_guides(adata, guide_names="grna_ids")
    assert_unchanged(before, adata)


def test_rerun_replaces_own_result(adata):
    nsc.tl.assign_guides(adata, guide_names="grna_ids")
    nsc.tl.assign_guides(adata, guide_names="grna_ids", groups="grna_group")
    assert adata.uns["nsc_guides"]["names"] == ["A", "B", "non-targeting"]


def test_negative_counts_are_an_error(adata):
    adata.obsm["grna_counts"] = sparse.csr_matrix(-COUNTS)
    before = adata.copy()
    with pytest.raises(ValueError, match="non-negative"):
        nsc.tl.assign_guides(adata)
    assert_unchanged(before, adata)


def _generated_screen(seed: int = 3) -> tuple[ad.AnnData, sparse.csr_matrix]:
    from normalisr_sc._core._guide_mixture import simulate_guide_counts

    counts, truth = simulate_guide_counts(3000, 20, seed=seed)
    adata = ad.AnnData(np.zeros((3000, 2)))
    adata.obsm["grna_counts"] = counts
    adata.uns["grna_ids"] = np.array([f"g{i}" for i in range(20)])
    return adata, truth


def test_mixture_mode_finds_the_carried_guides_and_stores_its_fit():
    adata, truth = _generated_screen()
    nsc.tl.assign_guides(adata, mode="mixture", guide_names="grna_ids", posterior=True)
    assigned = adata.obsm["nsc_guides"].toarray()
    exact = (assigned == truth.toarray()).all(axis=1).mean()
    assert exact > 0.95
    fit = adata.uns["nsc_guides"]["mixture"]
    assert list(fit.index) == [f"g{i}" for i in range(20)]
    assert (fit["status"] == "fitted").all()
    posterior = adata.obsm["nsc_guides_posterior"]
    # Stored at the nonzero counts only, and assigned exactly where it passes 0.5.
    np.testing.assert_array_equal(posterior.indices, adata.obsm["grna_counts"].indices)
    np.testing.assert_array_equal((posterior > 0.5).toarray(), assigned)
    # A later run without posteriors removes the stale ones it had written.
    nsc.tl.assign_guides(adata, mode="max", guide_names="grna_ids")
    assert "nsc_guides_posterior" not in adata.obsm


def test_mixture_beats_a_fixed_threshold_at_low_background():
    from normalisr_sc._core._guide_mixture import simulate_guide_counts

    counts, truth = simulate_guide_counts(4000, 30, background=3.0, present_median=10.0, seed=7)
    exact = {}
    for mode in ("mixture", "threshold"):
        adata = ad.AnnData(np.zeros((4000, 1)))
        adata.obsm["grna_counts"] = counts
        nsc.tl.assign_guides(adata, mode=mode, threshold=5)
        exact[mode] = (adata.obsm["nsc_guides"].toarray() == truth.toarray()).all(axis=1).mean()
    assert exact["mixture"] > exact["threshold"] + 0.05


def test_guide_counts_are_read_not_changed():
    adata = ad.AnnData(np.zeros((2, 1)))
    # Two stored entries for cell 0, guide 1 (legal in scipy): read as their sum, 1 + 1.
    counts = sparse.csr_matrix(
        (np.array([1.0, 1.0, 1.0]), np.array([1, 1, 0]), np.array([0, 2, 3])), shape=(2, 2)
    )
    adata.obsm["grna_counts"] = counts
    data, indices = counts.data.copy(), counts.indices.copy()
    nsc.tl.assign_guides(adata)
    np.testing.assert_array_equal(adata.obsm["nsc_guides"].toarray(), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(counts.data, data)
    np.testing.assert_array_equal(counts.indices, indices)


@pytest.mark.parametrize(
    ("counts", "kwargs", "match"),
    [
        (np.zeros((5, 0)), {}, "no guide column"),
        (COUNTS.astype(complex), {}, "real guide UMI counts"),
        (COUNTS + 0.5, {"mode": "mixture"}, "integer UMI counts"),
        (COUNTS, {"mode": "mixture", "min_posterior": 1.0}, "min_posterior"),
        (COUNTS, {"mode": "mixture", "posterior": "yes"}, "posterior"),
    ],
)
def test_bad_counts_and_mixture_options_are_refused(counts, kwargs, match):
    adata = ad.AnnData(np.zeros((5, 2)))
    adata.obsm["grna_counts"] = counts
    before = adata.copy()
    with pytest.raises(ValueError, match=match):
        nsc.tl.assign_guides(adata, **kwargs)
    assert_unchanged(before, adata)
