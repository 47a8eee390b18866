"""tl.pccovt keeps the records of each covariate frame apart (scanpy's key rule)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

import normalisr_sc as nsc

from ..conftest import random_counts


def test_pccovt_records_follow_the_covariates_key():
    adata = ad.AnnData(X=random_counts(seed=2).astype(np.float64))
    adata.obs["batch"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 3 == 0, "b1", "b2"))
    nsc.pp.normalize(adata, covariates=["batch"])
    nsc.pp.normvar(adata, key_added="norm2", keepvar=False)  # a second frame
    mine = "norm2_covariates_norm"
    genes = list(adata.var_names[:12])
    nsc.tl.pccovt(adata, genes)  # default frame: uns['nsc_pccovt'], as before
    assert list(adata.uns["nsc_pccovt"]) == ["pc_covariate_1"]
    nsc.tl.pccovt(adata, list(adata.var_names[20:35]), layer="norm2", covariates_key=mine)
    # the other frame's record is its own: numbered from 1, the default one untouched
    assert list(adata.uns[f"{mine}_pccovt"]) == ["pc_covariate_1"]
    assert list(adata.uns["nsc_pccovt"]) == ["pc_covariate_1"]
    assert list(adata.uns["nsc_pccovt"]["pc_covariate_1"]["genes"]) == genes
    assert adata.uns[f"{mine}_pccovt"]["pc_covariate_1"]["params"]["covariates_key"] == mine
    first = adata.obsm["nsc_covariates_norm"]["pc_covariate_1"].to_numpy()
    second = adata.obsm[mine]["pc_covariate_1"].to_numpy()
    assert not np.allclose(np.abs(first), np.abs(second))
