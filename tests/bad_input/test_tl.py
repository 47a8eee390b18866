"""Bad input to ``nsc.tl``: refused with a ValueError naming the problem, AnnData unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import normalisr_sc as nsc

from ._catalogue import (
    NOT_BOOL,
    NOT_CHUNK_SIZE,
    NOT_CHUNKED,
    NOT_KEY,
    Case,
    case_params,
    duplicate_var_names,
    go_files,
    param_cases,
    run_refusal,
    spoil_layer,
    spoil_obsm,
)

tl = nsc.tl
G0, G1, G2 = "gene00000", "gene00001", "gene00002"
NOT_QCUT = [np.nan, -0.1, 0.0, 1.5, "0.05", True]
NOT_DIMREDUCE = [-1, "1", True, 1.5, np.nan, 10**6]
NOT_NAMES = [5, [G0, G0], ["nope", G1], [G0, 3.5]]


def _gotop(adata, **kwargs):
    obo, gaf, _ = go_files()
    return tl.gotop(
        adata,
        kwargs.pop("go_obo", obo),
        kwargs.pop("annotations", gaf),
        **{"n_principal": 10, "min_genes": 3, **kwargs},
    )


def _coex_peel(adata, **kwargs):
    obo, gaf, _ = go_files()
    return tl.coex_peel(
        adata,
        kwargs.pop("go_obo", obo),
        kwargs.pop("annotations", gaf),
        **{"rounds": 1, "n_principal": 10, "min_genes": 3, **kwargs},
    )


CASES: list[Case] = []

# ------------------------------------------------------------------ de

CASES += param_cases(
    "de",
    lambda a, **k: tl.de(a, **{"groupby": "group", **k}),
    "normalised",
    {
        "groupby": [5, None, ["group"]],
        "design": ["bogus", 1, None],
        "reference": [5, ["case", "case"]],
        "groups": [5, ["case", "case"], [True]],
        "layer": [5, None],
        "covariates_key": [5, None],
        "key_added": NOT_KEY,
        "dimreduce": NOT_DIMREDUCE,
        "chunked": NOT_CHUNKED,
        "chunk_size": NOT_CHUNK_SIZE,
    },
)
CASES += [
    Case("de-groupby-missing", "normalised", lambda a: tl.de(a, "site"), r"'site'"),
    Case(
        "de-reference-unknown",
        "normalised",
        lambda a: tl.de(a, "group", reference="nope"),
        r"'nope'",
    ),
    Case(
        "de-groups-unknown", "normalised", lambda a: tl.de(a, "group", groups=["nope"]), r"'nope'"
    ),
    Case(
        "de-groups-all-reference",
        "normalised",
        lambda a: tl.de(a, "group", reference="case", groups=["case"]),
        r"'case'",
    ),
    Case(
        "de-layer-missing",
        "normalised",
        lambda a: tl.de(a, "group", layer="mine"),
        r"adata.layers\['mine'\]",
    ),
    Case(
        "de-covariates_key-missing",
        "normalised",
        lambda a: tl.de(a, "group", covariates_key="mine"),
        r"adata.obsm\['mine'\]",
    ),
    Case(
        "de-before-normalize",
        "counts",
        lambda a: tl.de(a, "group"),
        r"adata.layers\['normalisr'\].*nsc.pp",
    ),
    Case(
        "de-key_added-nsc_written",
        "normalised",
        lambda a: tl.de(a, "group", key_added="nsc_written"),
        r"nsc_written",
    ),
    Case(
        "de-key_added-user-uns",
        "normalised",
        lambda a: tl.de(a, "group", key_added="note"),
        r"adata.uns\['note'\]",
    ),
    Case(
        "de-key_added-user-varm",
        "normalised",
        lambda a: tl.de(a, "group", key_added="mine"),
        r"adata.varm\['mine_pvals'\]",
        setup=lambda a: a.varm.__setitem__("mine_pvals", np.zeros((a.n_vars, 2))),
    ),
    Case(
        "de-user-replaced-result",
        "analysed",
        lambda a: tl.de(a, "group"),
        r"adata.varm\['nsc_de_pvals'\]",
        setup=lambda a: a.varm.__setitem__("nsc_de_pvals", a.varm["nsc_de_pvals"] * 0.5),
    ),
    Case(
        "de-groupby-obsm-wrong-shape",
        "normalised",
        lambda a: tl.de(a, "pos"),
        r"'pos'",
        setup=lambda a: a.obsm.__setitem__("pos", np.full((a.n_obs, 2), 0.5)),
    ),
    Case(
        "de-groupby-single-level",
        "normalised",
        lambda a: tl.de(a, "one"),
        r"'one'|'x'",
        setup=lambda a: a.obs.__setitem__("one", pd.Categorical(["x"] * a.n_obs)),
    ),
    Case(
        "de-0cells",
        "normalised",
        lambda a: tl.de(a, "group"),
        r"\b0 cells\b|no cells|empty",
        setup=lambda a: a[:0].copy(),
    ),
    Case(
        "de-0genes",
        "normalised",
        lambda a: tl.de(a, "group"),
        r"\b0 genes\b|no genes|empty",
        setup=lambda a: a[:, :0].copy(),
    ),
]
for _value, _label in ((np.nan, "nan"), (np.inf, "inf")):
    CASES += [
        Case(
            f"de-normalisr-{_label}",
            "normalised",
            lambda a: tl.de(a, "group"),
            r"adata.layers\['normalisr'\].*(NaN|infinite)",
            setup=spoil_layer("normalisr", _value),
        ),
        Case(
            f"de-covariates-{_label}",
            "normalised",
            lambda a: tl.de(a, "group"),
            r"adata.obsm\['nsc_covariates_norm'\].*(NaN|infinite)",
            setup=spoil_obsm("nsc_covariates_norm", _value),
        ),
        Case(
            f"de-guides-{_label}",
            "analysed",
            lambda a: tl.de(a, "grna", design="low_moi"),
            r"adata.obsm\['grna'\]",
            setup=lambda a, v=_value: a.obsm.__setitem__(
                "grna",
                np.where(np.arange(a.n_obs)[:, None] == 3, v, a.obsm["nsc_guides"].toarray()),
            ),
        ),
    ]

# ------------------------------------------------------------------ coex and binnet

CASES += param_cases(
    "coex",
    tl.coex,
    "normalised",
    {
        "layer": [5, None],
        "genes": [*NOT_NAMES, [G0]],
        "covariates_key": [5, None],
        "key_added": NOT_KEY,
        "dimreduce": NOT_DIMREDUCE,
        "dtype": ["bogus", np.int32, np.complex128],
        "store": ["bogus", None, 1],
        "qcut": NOT_QCUT,
        "chunk_size": NOT_CHUNK_SIZE,
    },
    match={"genes": r"\bgenes?\b|'nope'"},
)
CASES += [
    Case(
        "coex-genes-duplicated-var_names",
        "normalised",
        lambda a: tl.coex(a, genes=[G0, G2]),
        r"var_names|duplicate",
        setup=duplicate_var_names,
    ),
    Case(
        "coex-layer-missing",
        "normalised",
        lambda a: tl.coex(a, layer="mine"),
        r"adata.layers\['mine'\]",
    ),
    Case("coex-before-normalize", "counts", lambda a: tl.coex(a), r"adata.layers\['normalisr'\]"),
    Case(
        "coex-key_added-user-uns",
        "normalised",
        lambda a: tl.coex(a, key_added="note"),
        r"adata.uns\['note'\]",
    ),
    Case(
        "coex-key_added-nsc_written",
        "normalised",
        lambda a: tl.coex(a, key_added="nsc_written"),
        r"nsc_written",
    ),
    Case(
        "coex-key_added-user-varp",
        "normalised",
        lambda a: tl.coex(a, key_added="mine"),
        r"adata.varp\['mine_r'\]",
        setup=lambda a: a.varp.__setitem__("mine_r", np.zeros((a.n_vars, a.n_vars))),
    ),
    Case(
        "coex-user-replaced-result",
        "analysed",
        lambda a: tl.coex(a),
        r"adata.varp\['nsc_coex_r'\]",
        setup=lambda a: a.varp.__setitem__("nsc_coex_r", a.varp["nsc_coex_r"] * 0.5),
    ),
]
for _value, _label in ((np.nan, "nan"), (np.inf, "inf")):
    CASES += [
        Case(
            f"coex-normalisr-{_label}",
            "normalised",
            lambda a: tl.coex(a),
            r"adata.layers\['normalisr'\].*(NaN|infinite)",
            setup=spoil_layer("normalisr", _value),
        ),
        Case(
            f"coex-covariates-{_label}",
            "normalised",
            lambda a: tl.coex(a),
            r"adata.obsm\['nsc_covariates_norm'\].*(NaN|infinite)",
            setup=spoil_obsm("nsc_covariates_norm", _value),
        ),
    ]
CASES += param_cases("binnet", tl.binnet, "analysed", {"qcut": [*NOT_QCUT, None], "key": [5, None]})
CASES += [
    Case(
        "binnet-before-coex",
        "normalised",
        lambda a: tl.binnet(a),
        r"nsc_coex.*nsc.tl.coex|nsc.tl.coex.*nsc_coex",
    ),
    Case("binnet-key-missing", "analysed", lambda a: tl.binnet(a, key="mine"), r"\bmine"),
]

# ------------------------------------------------------------------ GO covariates

CASES += param_cases(
    "gotop",
    _gotop,
    "analysed",
    {
        "n_principal": [0, -1, "10", True, 2.5],
        "min_genes": [-1, "3", True, 2.5],
        "evidence": [[None]],
        "gene_id": [5, None, "missing_column"],
        "key": [5, None],
        "key_added": NOT_KEY,
    },
)
CASES += [
    Case(
        "gotop-obo-missing",
        "analysed",
        lambda a: _gotop(a, go_obo="/nonexistent/go.obo"),
        r"/nonexistent/go.obo",
        exc=(ValueError, FileNotFoundError),
    ),
    Case(
        "gotop-obo-truncated",
        "analysed",
        lambda a: _gotop(a, go_obo=go_files()[2]),
        r"truncated.obo.gz",
    ),
    Case(
        "gotop-annotations-missing",
        "analysed",
        lambda a: _gotop(a, annotations="/nonexistent/a.gaf"),
        r"/nonexistent/a.gaf",
        exc=(ValueError, FileNotFoundError),
    ),
    Case(
        "gotop-annotations-not-a-gaf",
        "analysed",
        lambda a: _gotop(a, annotations=go_files()[0]),
        r"tiny.obo",
    ),
    Case("gotop-before-coex", "normalised", lambda a: _gotop(a), r"nsc_coex"),
    Case(
        "gotop-key_added-user-uns",
        "analysed",
        lambda a: _gotop(a, key_added="note"),
        r"adata.uns\['note'\]",
    ),
    Case(
        "gotop-key_added-nsc_written",
        "analysed",
        lambda a: _gotop(a, key_added="nsc_written"),
        r"nsc_written",
    ),
]
CASES += param_cases(
    "coex_peel",
    _coex_peel,
    "analysed",
    {
        "rounds": [0, -1, "1", True, 1.5],
        "qcut": NOT_QCUT,
        "n_principal": [0, "10", True],
        "min_genes": [-1, "3", True],
        "genes": NOT_NAMES,
        "key": [5, None],
        "layer": [5, None],
        "covariates_key": [5, None],
    },
    match={"genes": r"\bgenes?\b|'nope'"},
)
CASES += [
    Case(
        "coex_peel-obo-truncated",
        "analysed",
        lambda a: _coex_peel(a, go_obo=go_files()[2]),
        r"truncated.obo.gz",
    ),
    Case(
        "coex_peel-layer-missing",
        "analysed",
        lambda a: _coex_peel(a, layer="mine"),
        r"adata.layers\['mine'\]",
    ),
    Case(
        "coex_peel-genes-duplicated-var_names",
        "analysed",
        lambda a: _coex_peel(a, genes=[G0, G2]),
        r"var_names|duplicate",
        setup=duplicate_var_names,
    ),
    Case(
        "coex_peel-normalisr-nan",
        "analysed",
        lambda a: _coex_peel(a),
        r"adata.layers\['normalisr'\].*(NaN|infinite)",
        setup=spoil_layer("normalisr"),
    ),
]
CASES += param_cases(
    "pccovt",
    lambda a, **k: tl.pccovt(a, **{"genes": [G0, G1, G2], **k}),
    "normalised",
    {
        "genes": [*NOT_NAMES, [G0], [], None],
        "condition_on_covariates": NOT_BOOL,
        "name": [5, "", ["a"]],
        "layer": [5, None],
        "covariates_key": [5, None],
    },
    match={"genes": r"\bgenes?\b|'nope'"},
)
CASES += [
    Case(
        "pccovt-name-intercept",
        "normalised",
        lambda a: tl.pccovt(a, [G0, G1], name="intercept"),
        r"intercept",
    ),
    Case(
        "pccovt-name-existing-column",
        "normalised",
        lambda a: tl.pccovt(a, [G0, G1], name="batch[b2]"),
        r"batch\[b2\]",
    ),
    Case(
        "pccovt-genes-duplicated-var_names",
        "normalised",
        lambda a: tl.pccovt(a, [G0, G2]),
        r"var_names|duplicate",
        setup=duplicate_var_names,
    ),
    Case(
        "pccovt-layer-missing",
        "normalised",
        lambda a: tl.pccovt(a, [G0, G1], layer="mine"),
        r"adata.layers\['mine'\]",
    ),
    Case(
        "pccovt-before-normalize",
        "counts",
        lambda a: tl.pccovt(a, [G0, G1]),
        r"adata.layers\['normalisr'\]",
    ),
    Case(
        "pccovt-normalisr-nan",
        "normalised",
        lambda a: tl.pccovt(a, [G0, G1]),
        r"adata.layers\['normalisr'\].*(NaN|infinite)",
        setup=spoil_layer("normalisr", where=(2, 1)),
    ),
    Case(
        "pccovt-covariates-nan",
        "normalised",
        lambda a: tl.pccovt(a, [G0, G1]),
        r"adata.obsm\['nsc_covariates_norm'\].*(NaN|infinite)",
        setup=spoil_obsm("nsc_covariates_norm"),
    ),
]

# ------------------------------------------------------------------ assign_guides

CASES += param_cases(
    "assign_guides",
    tl.assign_guides,
    "normalised",
    {
        "obsm_key": [5, None],
        "mode": ["bogus", None, 1],
        "groups": [5, "missing_key"],
        "guide_names": [5, ["g1"], "missing_key"],
        "key_added": NOT_KEY,
    },
    match={"guide_names": r"guide.names"},
)
CASES += param_cases(
    "assign_guides-threshold",
    lambda a, **k: tl.assign_guides(a, mode="threshold", **k),
    "normalised",
    {
        "threshold": [np.nan, np.inf, -1, 0, "5", True, None],
    },
)
CASES += [
    Case(
        "assign_guides-obsm-missing",
        "counts",
        lambda a: tl.assign_guides(a, "guides"),
        r"adata.obsm\['guides'\]",
    ),
    Case(
        "assign_guides-key_added-grna_counts",
        "normalised",
        lambda a: tl.assign_guides(a, key_added="grna_counts"),
        r"grna_counts",
    ),
    Case(
        "assign_guides-key_added-nsc_written",
        "normalised",
        lambda a: tl.assign_guides(a, key_added="nsc_written"),
        r"nsc_written",
    ),
    Case(
        "assign_guides-key_added-user-obsm",
        "normalised",
        lambda a: tl.assign_guides(a, key_added="pos"),
        r"adata.obsm\['pos'\]",
    ),
    Case(
        "assign_guides-key_added-user-uns",
        "normalised",
        lambda a: tl.assign_guides(a, key_added="note"),
        r"adata.uns\['note'\]",
    ),
    Case(
        "assign_guides-groups-one-column",
        "normalised",
        lambda a: tl.assign_guides(a, groups=a.uns["grna_group"].iloc[:, :1]),
        r"two columns",
    ),
    Case(
        "assign_guides-guide_names-duplicated",
        "normalised",
        lambda a: tl.assign_guides(a, guide_names=["g"] * a.obsm["grna_counts"].shape[1]),
        r"guide_names|'g'",
    ),
    Case(
        "assign_guides-no-guide-in-groups",
        "normalised",
        lambda a: tl.assign_guides(a, groups={"x": "y"}),
        r"mapping|groups",
    ),
]
for _label, _value in (("nan", np.nan), ("inf", np.inf), ("negative", -1.0)):
    CASES.append(
        Case(
            f"assign_guides-counts-{_label}",
            "normalised",
            lambda a: tl.assign_guides(a),
            r"adata.obsm\['grna_counts'\]",
            setup=spoil_obsm("grna_counts", _value, where=(3, 1)),
        )
    )


@pytest.mark.parametrize("case", case_params(CASES))
def test_refused(case: Case) -> None:
    run_refusal(case)
