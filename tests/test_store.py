"""The single result writer: ownership by fingerprint, refusal before any change."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from normalisr_sc._store import RECORD, check_writable, fingerprint, owned, store, subsetting


def _adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    return ad.AnnData(
        X=sparse.csr_matrix(rng.poisson(1.0, (20, 6)).astype(np.float32)),
        obs=pd.DataFrame({"batch": list("ab") * 10}, index=[f"c{i}" for i in range(20)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(6)]),
    )


def test_store_writes_and_records_then_may_replace_its_own():
    adata = _adata()
    store(
        adata,
        "step",
        {"a": 1, "b": None},
        layers={"lcpm": np.ones((20, 6))},
        obs={"nsc_w": np.arange(20.0)},
        uns={"nsc_x": {"n": 3}},
    )
    assert adata.uns[RECORD]["step"] == {"a": 1}
    assert owned(adata, "layers", "lcpm")
    assert owned(adata, "obs", "nsc_w")
    store(adata, "step", {}, layers={"lcpm": np.zeros((20, 6))})
    np.testing.assert_array_equal(adata.layers["lcpm"], 0)


@pytest.mark.parametrize(
    ("container", "key", "value"),
    [
        ("layers", "counts", np.ones((20, 6))),
        ("obs", "batch", np.zeros(20)),
        ("uns", "mine", {"x": 1}),
        ("obsm", "mine", np.zeros((20, 2))),
    ],
)
def test_user_data_is_refused_before_any_change(container, key, value):
    adata = _adata()
    if container == "layers":
        adata.layers[key] = adata.X.copy()
    elif container == "uns":
        adata.uns[key] = {"user": True}
    elif container == "obsm":
        adata.obsm[key] = np.ones((20, 2))
    before = adata.copy()
    with pytest.raises(ValueError, match=f"{key}.*not written by normalisr_sc"):
        store(adata, "step", {}, var={"nsc_new": np.ones(6)}, **{container: {key: value}})
    assert "nsc_new" not in adata.var
    assert RECORD not in adata.uns
    assert set(adata.uns) == set(before.uns)


def test_result_replaced_by_the_user_is_theirs():
    adata = _adata()
    store(adata, "step", {}, layers={"lcpm": np.ones((20, 6))})
    adata.layers["lcpm"] = np.full((20, 6), 7.0)
    with pytest.raises(ValueError, match="changed since normalisr_sc wrote it"):
        store(adata, "step", {}, layers={"lcpm": np.zeros((20, 6))})
    np.testing.assert_array_equal(adata.layers["lcpm"], 7.0)


def test_record_key_is_reserved():
    with pytest.raises(ValueError, match="record"):
        check_writable(_adata(), {"uns": [RECORD]})


def test_ownership_survives_h5ad_round_trip(tmp_path):
    adata = _adata()
    frame = pd.DataFrame(np.arange(12.0).reshape(6, 2), columns=["A", "B"])
    store(
        adata,
        "step",
        {"groups": ["A", "B"], "n": 2},
        layers={"lcpm": np.ones((20, 6))},
        obs={"nsc_flag": np.arange(20) % 2 == 0},
        varm={"nsc_de_pvals": frame},
        uns={"nsc_de": {"groups": ["A", "B"], "df": np.array([3, 4]), "design": "x"}},
        varp={"nsc_net": sparse.random(6, 6, density=0.3, format="csr", random_state=0)},
    )
    adata.write_h5ad(tmp_path / "a.h5ad")
    read = ad.read_h5ad(tmp_path / "a.h5ad")
    for container, key in [
        ("layers", "lcpm"),
        ("obs", "nsc_flag"),
        ("varm", "nsc_de_pvals"),
        ("uns", "nsc_de"),
        ("varp", "nsc_net"),
    ]:
        assert owned(read, container, key), (container, key)


def test_lazy_layer_has_the_fingerprint_of_its_values():
    values = np.random.default_rng(1).normal(size=(50, 4))
    assert fingerprint(da.from_array(values, chunks=(7, 4))) == fingerprint(values)


def test_subsetting_keeps_own_keys_only():
    adata = _adata()
    store(adata, "step", {}, layers={"lcpm": np.ones((20, 6)), "other": np.ones((20, 6))})
    adata.layers["other"] = np.full((20, 6), 2.0)  # now the user's
    with subsetting(adata):
        adata._inplace_subset_obs(np.arange(10))
    assert owned(adata, "layers", "lcpm")
    assert not owned(adata, "layers", "other")


def test_drop_removes_own_stale_keys_and_refuses_user_keys():
    adata = _adata()
    store(adata, "step", {}, varp={"nsc_coex_r": np.eye(6)})
    store(adata, "step", {}, drop={"varp": ["nsc_coex_r", "absent"]}, varp={"nsc_net": np.eye(6)})
    assert "nsc_coex_r" not in adata.varp
    adata.varp["mine"] = np.eye(6)
    with pytest.raises(ValueError, match="mine"):
        store(adata, "step", {}, drop={"varp": ["mine"]}, varp={"nsc_net": np.zeros((6, 6))})
    np.testing.assert_array_equal(adata.varp["nsc_net"], np.eye(6))


@pytest.mark.parametrize("foreign", ["mine", ["mine"], {"written": "x"}])
def test_a_foreign_record_is_refused_by_name(foreign):
    adata = _adata()
    adata.uns[RECORD] = foreign
    with pytest.raises(ValueError, match=r"adata\.uns\['normalisr'\] holds something"):
        store(adata, "step", {}, layers={"lcpm": np.ones((20, 6))})
    assert "lcpm" not in adata.layers
