"""The single result writer: ownership by fingerprint, refusal before any change."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from normalisr_sc._store import (
    _CHUNK,
    UNCHECKED,
    WRITTEN,
    check_writable,
    fingerprint,
    owned,
    read_params,
    read_record,
    recorded_params,
    store,
    subsetting,
    working,
)


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
    assert adata.uns["step"] == {"params": {"a": 1}}
    assert read_params(adata, "step") == {"a": 1}
    assert adata.uns["nsc_x"] == {"n": 3}
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
    assert WRITTEN not in adata.uns
    assert "step" not in adata.uns
    assert set(adata.uns) == set(before.uns)


def test_result_replaced_by_the_user_is_theirs():
    adata = _adata()
    store(adata, "step", {}, layers={"lcpm": np.ones((20, 6))})
    adata.layers["lcpm"] = np.full((20, 6), 7.0)
    with pytest.raises(ValueError, match="changed since normalisr_sc wrote it"):
        store(adata, "step", {}, layers={"lcpm": np.zeros((20, 6))})
    np.testing.assert_array_equal(adata.layers["lcpm"], 7.0)


def test_record_key_is_reserved():
    with pytest.raises(ValueError, match="fingerprints"):
        check_writable(_adata(), {"uns": [WRITTEN]})


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


def test_lazy_layer_is_sampled_and_stays_ours_in_memory_and_back():
    values = np.random.default_rng(1).normal(size=(50, 4))
    lazy = da.from_array(values, chunks=(7, 4))
    # a lazy layer is identified by the sampled form (only a few blocks computed)
    assert fingerprint(lazy) == fingerprint(values, whole=False)
    assert fingerprint(lazy) != fingerprint(values)
    assert fingerprint(lazy, whole=True) == fingerprint(values)
    adata = ad.AnnData(np.zeros((50, 4)))
    store(adata, "lcpm", {}, layers={"lcpm": lazy})
    adata.layers["lcpm"] = values.copy()  # computed: still what was written
    assert owned(adata, "layers", "lcpm")
    store(adata, "lcpm", {}, layers={"lcpm": values.copy()})
    adata.layers["lcpm"] = da.from_array(values, chunks=(7, 4))  # read back lazily
    assert owned(adata, "layers", "lcpm")
    edited = values.copy()
    edited[25, 2] += 1.0
    adata.layers["lcpm"] = da.from_array(edited, chunks=(7, 4))
    assert not owned(adata, "layers", "lcpm")


def _middle_edits():
    rng = np.random.default_rng(3)
    layer = rng.random((41, 6)).astype(np.float32)
    frame = pd.DataFrame(
        rng.random((6, 30)),
        index=[f"g{i}" for i in range(6)],
        columns=[f"c{j}" for j in range(30)],
    )
    frame["label"] = list("abcabc")
    net = sparse.random(6, 6, density=0.5, format="csr", random_state=1)
    return layer, frame, net


@pytest.mark.parametrize("container", ["layers", "varm", "varp"])
def test_an_edit_in_a_middle_row_or_column_is_refused(container):
    layer, frame, net = _middle_edits()
    adata = ad.AnnData(np.zeros((41, 6)), var=pd.DataFrame(index=[f"g{i}" for i in range(6)]))
    store(adata, "step", {}, layers={"lcpm": layer}, varm={"frame": frame}, varp={"net": net})
    assert owned(adata, container, {"layers": "lcpm", "varm": "frame", "varp": "net"}[container])
    if container == "layers":  # row 5 and column 3: neither sampled row (0, 20, 40)
        adata.layers["lcpm"][5, 3] = 0
        key = "lcpm"
    elif container == "varm":  # an entry of a middle column of a middle row
        adata.varm["frame"].iloc[1, 17] += 1e-9
        key = "frame"
    else:  # a stored entry of a middle row becomes another value
        adata.varp["net"].data[adata.varp["net"].indptr[2]] += 0.5
        key = "net"
    assert not owned(adata, container, key)
    with pytest.raises(ValueError, match="was changed since normalisr_sc wrote it"):
        store(adata, "step", {}, **{container: {key: np.zeros((41, 6))}})


def test_fingerprint_is_that_of_the_values_not_of_their_storage(tmp_path):
    layer, frame, net = _middle_edits()
    assert fingerprint(layer) == fingerprint(sparse.csr_matrix(layer))
    assert fingerprint(layer) == fingerprint(sparse.csc_matrix(layer.astype(np.float64)))
    assert fingerprint(net) == fingerprint(net.toarray())
    adata = ad.AnnData(np.zeros((41, 6)), var=pd.DataFrame(index=[f"g{i}" for i in range(6)]))
    store(adata, "step", {}, layers={"lcpm": layer}, varm={"frame": frame}, varp={"net": net})
    adata.write_h5ad(tmp_path / "a.h5ad")
    read = ad.read_h5ad(tmp_path / "a.h5ad")
    assert read.layers["lcpm"].dtype == np.float32
    for container, key in [("layers", "lcpm"), ("varm", "frame"), ("varp", "net")]:
        assert owned(read, container, key), (container, key)


def test_results_of_the_old_layout_are_explained():
    adata = _adata()
    adata.layers["lcpm"] = np.ones((20, 6))
    adata.uns["normalisr"] = {"written": {"layers": {"lcpm": "0123abcd"}}}
    with pytest.raises(ValueError, match="earlier normalisr_sc layout") as refused:
        check_writable(adata, {"layers": ["lcpm"]})
    assert "re-run the steps from the counts" in str(refused.value).lower()
    assert "del adata.layers['lcpm']" in str(refused.value)
    # without the old record, the plain message
    del adata.uns["normalisr"]
    with pytest.raises(ValueError, match="was not written by normalisr_sc"):
        check_writable(adata, {"layers": ["lcpm"]})
    # normvar's params under uns['normalisr'] are not the old record
    adata.uns["normalisr"] = {"params": {"n": 1}}
    with pytest.raises(ValueError, match="was not written by normalisr_sc"):
        check_writable(adata, {"layers": ["lcpm"]})


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
    adata.uns[WRITTEN] = foreign
    with pytest.raises(ValueError, match=r"adata\.uns\['nsc_written'\] holds something"):
        store(adata, "step", {}, layers={"lcpm": np.ones((20, 6))})
    assert "lcpm" not in adata.layers


def _rank_layout(n_genes: int, groups: list[str]) -> dict[str, np.ndarray]:
    """Scanpy's rank_genes_groups record arrays (one field per group)."""
    rng = np.random.default_rng(3)
    names = np.rec.fromarrays(
        [np.array([f"g{i}" for i in rng.permutation(n_genes)], dtype=object) for _ in groups],
        dtype=[(g, "O") for g in groups],
    )
    scores = np.rec.fromarrays(
        [rng.normal(size=n_genes).astype(np.float32) for _ in groups],
        dtype=[(g, "float32") for g in groups],
    )
    return {"names": names, "scores": scores}


def test_params_go_beside_the_record_of_results():
    adata = _adata()
    store(adata, "nsc_de", {"groupby": "batch", "method": "x"}, uns={"nsc_de": {"df": 3}})
    assert adata.uns["nsc_de"] == {"df": 3, "params": {"groupby": "batch", "method": "x"}}
    assert read_record(adata, "nsc_de")["df"] == 3
    store(adata, "lcpm", {"seed": 0}, layers={"lcpm": np.ones((20, 6))})
    assert recorded_params(adata) == {
        "nsc_de": {"groupby": "batch", "method": "x"},
        "lcpm": {"seed": 0},
    }
    assert owned(adata, "uns", "lcpm")
    assert read_params(adata, "absent") == {}
    adata.uns["mine"] = "text"
    assert read_record(adata, "mine") == {}


def test_params_key_of_user_data_is_refused_before_any_change():
    adata = _adata()
    adata.uns["lcpm"] = {"user": True}
    with pytest.raises(ValueError, match=r"uns\['lcpm'\].*not written by normalisr_sc"):
        store(adata, "lcpm", {"seed": 0}, layers={"lcpm": np.ones((20, 6))})
    assert "lcpm" not in adata.layers
    assert adata.uns["lcpm"] == {"user": True}


def test_rank_genes_groups_layout_round_trip(tmp_path):
    adata = _adata()
    groups = ["A", "B", "C"]
    record = _rank_layout(adata.n_vars, groups)
    mixed = pd.DataFrame({"n": np.arange(6), "x": np.linspace(0, 1, 6), "s": list("abcdef")})
    store(
        adata,
        "nsc_de",
        {"groupby": "batch", "reference": "rest", "reference_groups": []},
        uns={"nsc_de": record},
        varm={"nsc_de_mixed": mixed},
    )
    adata.write_h5ad(tmp_path / "a.h5ad")
    read = ad.read_h5ad(tmp_path / "a.h5ad")
    assert owned(read, "uns", "nsc_de")
    assert owned(read, "varm", "nsc_de_mixed")
    assert read_params(read, "nsc_de")["groupby"] == "batch"
    # still replaceable after the round trip, and a user's edit is noticed
    store(read, "nsc_de", {"groupby": "batch"}, uns={"nsc_de": record})
    read.uns["nsc_de"]["scores"]["C"][-1] += 1
    assert not owned(read, "uns", "nsc_de")


def test_fingerprint_sees_every_value_of_large_arrays():
    values = np.arange(3 * _CHUNK + 5, dtype=np.float32)
    base = fingerprint({"x": values})
    changed = values.copy()
    changed[-1] += 1
    assert fingerprint({"x": changed}) != base
    assert fingerprint({"x": values.astype(np.float64)}) == base  # dtype-independent
    names = np.array([f"g{i}" for i in range(_CHUNK + 3)], dtype=object)
    renamed = names.copy()
    renamed[-1] = "other"
    assert fingerprint(names) != fingerprint(renamed)
    layout = _rank_layout(200, ["A", "B"])
    edited = {k: v.copy() for k, v in layout.items()}
    edited["names"]["B"][-1] = "gX"
    assert fingerprint(layout) != fingerprint(edited)
    # numbers of a record: an entry away from the sampled rows, and two entries swapped
    for edit in ("one", "swap"):
        numbers = {k: v.copy() for k, v in layout.items()}
        if edit == "one":
            value = numbers["scores"]["A"][77]
            numbers["scores"]["A"][77] = np.nextafter(value, np.float32(np.inf))  # one ulp
        else:
            a, b = numbers["scores"]["A"][77], numbers["scores"]["B"][78]
            numbers["scores"]["A"][77], numbers["scores"]["B"][78] = b, a
        assert fingerprint(numbers) != fingerprint(layout), edit
    assert fingerprint(layout) == fingerprint({k: v.copy() for k, v in layout.items()})


def test_a_working_object_is_not_fingerprinted_and_is_refused_once_out():
    adata = _adata()
    with working(adata):
        store(adata, "step", {"a": 1}, layers={"x": adata.X.toarray()})
        assert adata.uns[WRITTEN]["layers"]["x"] == UNCHECKED
        assert owned(adata, "layers", "x")
        store(adata, "step", {"a": 2}, layers={"x": adata.X.toarray() + 1})  # its own
    # Out of the block nothing vouches for the value: it is never taken as ours.
    assert not owned(adata, "layers", "x")
    with pytest.raises(ValueError, match="was changed since normalisr_sc wrote it"):
        check_writable(adata, {"layers": ["x"]})


def test_normalize_fingerprints_what_it_stores_in_the_users_anndata():
    import normalisr_sc as nsc

    adata = nsc.datasets.simulate(n_cells=300, n_genes=80, seed=3)
    nsc.pp.normalize(adata, covariates=["batch"], qc=None)
    written = adata.uns[WRITTEN]
    assert UNCHECKED not in {digest for keys in written.values() for digest in keys.values()}
    for container, keys in written.items():
        for key, digest in keys.items():
            assert digest == fingerprint(getattr(adata, container)[key]), (container, key)
    adata.layers["normalisr"][150, 40] += 1e-9  # an edit the next run must not overwrite
    with pytest.raises(ValueError, match=r"layers\['normalisr'\] already exists and was changed"):
        nsc.pp.normalize(adata, covariates=["batch"], qc=None)
