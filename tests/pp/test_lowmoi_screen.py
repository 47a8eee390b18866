"""The genome-wide low-MOI benchmark's pipeline: streamed from disk equals in memory.

``benchmarks/bench_genomewide.py`` normalises a generated low-MOI screen and tests it
with ``design='low_moi'`` reading the counts lazily from the h5ad file; here the same
pipeline on a small screen written by its generator (``benchmarks/_screen.py``) is
compared with the in-memory path on the same file.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _screen  # noqa: E402
from bench_genomewide import pipeline  # noqa: E402

SCREEN = replace(
    _screen.QUICK_LOW_MOI, n_cells=1_500, n_genes=200, n_perturbations=25, n_planted=4, seed=5
)
CHUNK = 211  # not a divisor of the number of cells


def _call(name, function, *args, **kwargs):
    function(*args, **kwargs)


@pytest.fixture(scope="module")
def screen_path(tmp_path_factory) -> Path:
    path, stats = _screen.low_moi_file(SCREEN, tmp_path_factory.mktemp("screen"))
    assert not stats["cached"]
    return path


@pytest.mark.slow
def test_generated_screen_is_a_low_moi_screen(screen_path):
    adata = ad.read_h5ad(screen_path)
    assert adata.shape == (SCREEN.n_cells, SCREEN.n_genes)
    labels = adata.obs[_screen.PERTURBATION]
    assert labels.notna().all()  # one label per cell
    assert 0.1 < (labels == _screen.NON_TARGETING).mean() < 0.3  # nt_fraction 0.2
    truth = adata.uns["simulation"]
    assert len(truth["planted_groups"]) == SCREEN.n_planted
    counts = adata.X.toarray()
    assert (counts == np.round(counts)).all()
    assert (counts >= 0).all()
    # each planted knock-down lowers its target's mean in the cells carrying it
    totals = counts.sum(axis=1, keepdims=True)
    share = counts / totals
    nt = (labels == _screen.NON_TARGETING).to_numpy()
    for group, gene in zip(truth["planted_groups"], truth["planted_genes"], strict=True):
        column = adata.var_names.get_loc(gene)
        carrying = (labels == group).to_numpy()
        assert share[carrying, column].mean() < 0.7 * share[nt, column].mean()


@pytest.mark.slow
def test_streamed_from_disk_equals_in_memory(screen_path):
    streamed = _screen.load_low_moi(str(screen_path), SCREEN.n_cells, CHUNK)
    assert isinstance(streamed.X, da.Array)
    pipeline(streamed, CHUNK, _call)
    in_memory = ad.read_h5ad(screen_path)
    in_memory.obs[_screen.PERTURBATION] = in_memory.obs[
        _screen.PERTURBATION
    ].cat.remove_unused_categories()
    pipeline(in_memory, None, _call)

    assert streamed.shape == in_memory.shape
    assert list(streamed.obs_names) == list(in_memory.obs_names)
    for key in ("lcpm", "normalisr"):
        assert isinstance(streamed.layers[key], da.Array)
        np.testing.assert_allclose(
            streamed.layers[key].compute(), in_memory.layers[key], rtol=1e-8, atol=1e-10
        )
    np.testing.assert_allclose(streamed.obs["nsc_weight"], in_memory.obs["nsc_weight"], rtol=1e-10)
    for field in ("pvals", "logfc", "gamma"):
        got, expected = streamed.varm[f"nsc_de_{field}"], in_memory.varm[f"nsc_de_{field}"]
        pd.testing.assert_index_equal(got.columns, expected.columns)
        np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-7, atol=1e-12)
    # and the benchmark's checks read the same planted truth from both
    assert _screen.check_planted(streamed) == pytest.approx(_screen.check_planted(in_memory))
    calibration = _screen.null_calibration(streamed)
    assert calibration == pytest.approx(_screen.null_calibration(in_memory), rel=1e-6)
    assert 0.0 < calibration["null_p05_all"] < 0.15
