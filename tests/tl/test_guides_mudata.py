"""``nsc.tl.assign_guides`` on a screen held as a MuData (pertpy's and pysceptre's layout)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import normalisr_sc as nsc

mudata = pytest.importorskip("mudata")


@pytest.fixture(scope="module")
def papalexi(shared_data) -> ad.AnnData:
    return ad.read_h5ad(shared_data / "papalexi_lowmoi.h5ad")


def _screen(papalexi: ad.AnnData, guide_mod: str = "grna", drop: int = 500):
    """A MuData from Papalexi: guide modality with targets in var, cells shuffled and the
    last ``drop`` expression cells absent from it."""
    rng = np.random.default_rng(0)
    guide_names = [str(g) for g in papalexi.uns["grna_ids"]]
    targets = papalexi.uns["grna_group"].set_index("grna_id")["grna_group"]
    order = rng.permutation(papalexi.n_obs - drop)
    guides = ad.AnnData(
        X=sparse.csr_matrix(papalexi.obsm["grna_counts"])[order],
        obs=pd.DataFrame(index=papalexi.obs_names[order]),
        var=pd.DataFrame(
            {"target_gene_name": targets.reindex(guide_names).to_numpy()}, index=guide_names
        ),
    )
    rna = ad.AnnData(
        X=papalexi.X.copy(),
        obs=papalexi.obs[["bio_rep"]].copy(),
        var=pd.DataFrame(index=papalexi.var_names),
    )
    return mudata.MuData({"rna": rna, guide_mod: guides})


@pytest.mark.parametrize("guide_mod", ["grna", pytest.param("gdo", marks=pytest.mark.slow)])
def test_mudata_assignment_equals_the_anndata_path(papalexi, guide_mod):
    mdata = _screen(papalexi, guide_mod)
    guide_counts = mdata[guide_mod].X.copy()
    nsc.tl.assign_guides(mdata, groups="target_gene_name")
    rna = mdata["rna"]
    reference = papalexi.copy()
    nsc.tl.assign_guides(reference, guide_names="grna_ids", groups="grna_group")
    assert rna.uns["nsc_guides"]["names"] == reference.uns["nsc_guides"]["names"]
    kept = papalexi.n_obs - 500
    np.testing.assert_array_equal(
        rna.obsm["nsc_guides"][:kept].toarray(), reference.obsm["nsc_guides"][:kept].toarray()
    )
    assert rna.obsm["nsc_guides"][kept:].nnz == 0  # absent from the guide modality
    np.testing.assert_array_equal(mdata[guide_mod].X.toarray(), guide_counts.toarray())


@pytest.mark.slow  # normalize and de on the Papalexi screen
def test_mudata_screen_runs_through_normalize_and_de(papalexi):
    mdata = _screen(papalexi)
    nsc.tl.assign_guides(mdata, groups="target_gene_name")
    rna = mdata["rna"]
    nsc.pp.normalize(rna, covariates=["bio_rep"])
    nsc.tl.de(rna, "nsc_guides", design="low_moi", reference="non-targeting")
    log10p = rna.varm["nsc_de_log10p"]
    for _, pair in papalexi.uns["pc_pairs"].iterrows():
        assert log10p.loc[pair["response_id"], pair["grna_group"]] > 10


def test_mudata_modalities_are_checked(papalexi):
    mdata = _screen(papalexi)
    with pytest.raises(ValueError, match="no modality 'expr'"):
        nsc.tl.assign_guides(mdata, rna_mod="expr")
    both = mudata.MuData({"rna": mdata["rna"], "gdo": mdata["grna"], "grna": mdata["grna"]})
    with pytest.raises(ValueError, match="guide_mod="):
        nsc.tl.assign_guides(both)
    assert "nsc_guides" not in mdata["rna"].obsm
