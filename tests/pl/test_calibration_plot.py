"""nsc.pl.calibration draws the QQ plot of a calibration check's negative-control pairs."""

from __future__ import annotations

import matplotlib as mpl

mpl.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats

import normalisr_sc as nsc
from normalisr_sc._core._pvalues import genomic_inflation
from normalisr_sc._store import fingerprint


@pytest.fixture(scope="module")
def checked():
    adata = nsc.datasets.simulate(
        n_cells=1500, n_genes=80, n_targets=4, n_non_targeting=6, n_modules=0, seed=5
    )
    nsc.tl.assign_guides(adata, "grna_counts", groups="grna_group")
    nsc.tl.assign_guides(adata, "grna_counts", key_added="guide_ids")
    nsc.pp.normalize(adata, covariates="batch", qc=None, remove_outliers=False)
    nsc.tl.de(adata, "nsc_guides", design="low_moi", reference="non-targeting")
    nsc.tl.calibration_check(adata, guides="guide_ids", nt_guides="grna_group")
    return adata


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.mark.slow
def test_points_are_the_stored_nt_pairs(checked, tmp_path):
    ax = nsc.pl.calibration(checked, save=tmp_path / "cal.png", show=False)
    assert (tmp_path / "cal.png").stat().st_size > 1000
    record = checked.uns["nsc_calibration"]
    [(label, (expected, observed))] = ax.nsc_qq.items()
    np.testing.assert_allclose(observed, np.sort(record["log10p"])[::-1])
    n = record["log10p"].size
    np.testing.assert_allclose(expected, -np.log10((np.arange(1, n + 1) - 0.5) / n))
    assert label.startswith(f"{n} NT pairs")
    assert f"{genomic_inflation(record['log10p']):.2f}" in label
    assert label in _texts(ax)
    corner = ax.texts[-1].get_text()
    assert f"{record['fraction_below_05']:.1%} of p below 0.05" in corner
    assert f"{record['n_false_discoveries']} false discoveries at q" in corner
    assert "one NT guide" in ax.get_title()
    # The band is the 95% range of uniform order statistics.
    band = ax.collections[0].get_paths()[0].vertices
    i = n // 2
    low, high = stats.beta.ppf([0.025, 0.975], i, n - i + 1)
    near = band[np.isclose(band[:, 0], -np.log10((i - 0.5) / n))]
    np.testing.assert_allclose(sorted(near[:, 1]), sorted(-np.log10([high, low])), rtol=1e-9)
    plt.close("all")


def test_one_series_per_nt_group(checked):
    ax = nsc.pl.calibration(checked, by_group=True, show=False)
    record = checked.uns["nsc_calibration"]
    assert [label.split(" (")[0] for label in ax.nsc_qq] == list(record["groups"])
    for j, (_, observed) in enumerate(ax.nsc_qq.values()):
        np.testing.assert_allclose(observed, np.sort(record["log10p"][record["group"] == j])[::-1])
    plt.close("all")


def test_plot_changes_nothing_and_follows_autoshow(checked, monkeypatch):
    import scanpy as sc

    before = fingerprint(dict(checked.uns))
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    autoshow = sc.settings.autoshow
    try:
        sc.settings.autoshow = True
        assert nsc.pl.calibration(checked) is None
        assert shown == [True]
    finally:
        sc.settings.autoshow = autoshow
    _, ax = plt.subplots()
    assert nsc.pl.calibration(checked, ax=ax, show=False) is ax
    assert fingerprint(dict(checked.uns)) == before
    plt.close("all")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"key": "missing"}, r"run `nsc.tl.calibration_check\(adata, key_added='missing'\)`"),
        ({"key": "nsc_de"}, "no calibration check under"),
        ({"key": 3}, "`key` must be"),
        ({"by_group": "yes"}, "`by_group` must be"),
        ({"clip": None}, "`clip` must be"),
        ({"ax": "axes"}, "`ax` must be a matplotlib Axes"),
        ({"show": 1}, "`show` must be"),
        ({"save": ""}, "`save` must be a file path"),
    ],
)
def test_bad_arguments_are_refused(checked, kwargs, match):
    with pytest.raises(ValueError, match=match):
        nsc.pl.calibration(checked, **kwargs)


def test_non_finite_stored_values_are_refused(checked):
    adata = checked.copy()
    adata.uns["nsc_calibration"] = {**adata.uns["nsc_calibration"]}
    adata.uns["nsc_calibration"]["log10p"] = np.full(3, np.nan)
    with pytest.raises(ValueError, match="NaN or infinite"):
        nsc.pl.calibration(adata, show=False)


@pytest.mark.slow
def test_papalexi_picture(shared_data, tmp_path):
    adata = ad.read_h5ad(shared_data / "papalexi_lowmoi.h5ad")
    nsc.tl.assign_guides(adata, "grna_counts", guide_names="grna_ids", groups="grna_group")
    nsc.tl.assign_guides(adata, "grna_counts", guide_names="grna_ids", key_added="guide_ids")
    nsc.pp.normalize(adata, covariates=["bio_rep"])
    nsc.tl.de(adata, "nsc_guides", design="low_moi", reference="non-targeting")
    nsc.tl.calibration_check(adata, guides="guide_ids", nt_guides="grna_group", guides_per_group=4)
    ax = nsc.pl.calibration(adata, save=tmp_path / "papalexi_calibration.png", show=False)
    [(expected, observed)] = ax.nsc_qq.values()
    # Calibrated: the bulk of the NT pairs lies inside the band, on the diagonal.
    middle = slice(observed.size // 10, observed.size // 2)
    np.testing.assert_allclose(observed[middle], expected[middle], atol=0.15)
    assert "4 NT guides" in ax.get_title()
    plt.close("all")
