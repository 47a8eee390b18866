"""Bad input to ``nsc.pp``: each case is refused with a ValueError naming the problem, and
the AnnData is exactly as it was; odd but legal storage gives the canonical results."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import sparse

import normalisr_sc as nsc

from ._catalogue import (
    NOT_BOOL,
    NOT_CHUNK_SIZE,
    NOT_CHUNKED,
    NOT_COUNT,
    NOT_FRACTION,
    NOT_KEY,
    NOT_LAYER,
    USER_LAYER,
    Case,
    assert_same_as_canonical,
    base,
    case_params,
    csr_explicit_zeros,
    csr_unsorted,
    csr_with_duplicates,
    delete,
    param_cases,
    quick_first,
    run_refusal,
    set_x,
    spoil_column,
    spoil_layer,
    spoil_obsm,
    spoil_x,
)

pp = nsc.pp

COUNT_STEPS = {
    "qc_reads": (lambda a, **k: pp.qc_reads(a, **k)),
    "lcpm": (lambda a, **k: pp.lcpm(a, **k)),
    "scaling_factor": (lambda a, **k: pp.scaling_factor(a, **k)),
    "normalize": (lambda a, **k: pp.normalize(a, ["batch"], qc=None, **k)),
    "cpm": (lambda a, **k: pp.cpm(a, **k)),
}
SIMPLE_STEPS = {"cpm": pp.cpm, "minmax": pp.minmax}

# ------------------------------------------------------------------ parameters

CASES: list[Case] = []
CASES += param_cases(
    "qc_reads",
    pp.qc_reads,
    "counts",
    {
        "min_gene_counts": NOT_COUNT,
        "min_gene_cells": NOT_COUNT,
        "min_gene_cell_fraction": NOT_FRACTION,
        "min_cell_counts": NOT_COUNT,
        "min_cell_genes": NOT_COUNT,
        "min_cell_gene_fraction": NOT_FRACTION,
        "layer": NOT_LAYER,
        "inplace": NOT_BOOL,
        "chunked": NOT_CHUNKED,
        "chunk_size": NOT_CHUNK_SIZE,
    },
)
CASES += param_cases(
    "lcpm",
    pp.lcpm,
    "counts",
    {
        "layer": NOT_LAYER,
        "key_added": NOT_KEY,
        "varscale": ["0.1", True, np.nan, np.inf, -0.1],
        "seed": ["1", 1.5, True, -1],
        "dtype": ["bogus", np.int32, np.complex128, bool],
        "chunked": NOT_CHUNKED,
        "chunk_size": NOT_CHUNK_SIZE,
    },
)
CASES += param_cases(
    "scaling_factor",
    pp.scaling_factor,
    "counts",
    {
        "variable": ["bogus", 1, None],
        "zero_at": [np.nan, np.inf, "median", [0.0], True],
        "one_at": [np.nan, -np.inf, "median", None],
        "layer": NOT_LAYER,
        "key_added": NOT_KEY,
        "inplace": NOT_BOOL,
        "chunked": NOT_CHUNKED,
        "chunk_size": NOT_CHUNK_SIZE,
    },
)
CASES += param_cases(
    "cpm",
    pp.cpm,
    "counts",
    {
        "layer": NOT_LAYER,
        "key_added": NOT_KEY,
        "target_sum": ["1e6", True, 0, -1.0, np.nan, np.inf, None],
    },
)
CASES += param_cases(
    "minmax",
    pp.minmax,
    "counts",
    {
        "layer": NOT_LAYER,
        "key_added": NOT_KEY,
        "feature_range": [
            (0, 1, 2),
            (1,),
            (1, 0),
            (0, 0),
            (np.nan, 1),
            (0, np.inf),
            ("0", "1"),
            5,
            "01",
            None,
            (True, 2),
        ],
    },
)
CASES += param_cases(
    "normalize",
    lambda a, **k: pp.normalize(a, **k),
    "counts",
    {
        "covariates": [5, ["batch", "batch"], ["batch", 3.5], [True]],
        "qc": [
            {"bogus": 1},
            {"min_cell_counts": "500"},
            {"min_cell_counts": -1},
            "strict",
            [1],
            {"min_gene_cell_fraction": 2.0},
        ],
        "remove_outliers": NOT_BOOL,
        "layer": NOT_LAYER,
        "stepmax": [0, -1, 1.5, "1", True],
        "keepvar": NOT_BOOL,
        "chunked": NOT_CHUNKED,
        "chunk_size": NOT_CHUNK_SIZE,
        "copy": NOT_BOOL,
    },
    fixed={"qc": None},
    match={"covariates": r"\bcovariates?\b"},
)
CASES += param_cases(
    "normcov",
    lambda a, **k: pp.normcov(a, **k),
    "lcpm",
    {
        "covariates": [5, ["batch", "batch"], [None], [True]],
        "intercept": NOT_BOOL,
        "summary": NOT_BOOL,
        "key_added": NOT_KEY,
    },
    match={"covariates": r"\bcovariates?\b"},
)
CASES += param_cases(
    "compute_var",
    pp.compute_var,
    "covariates",
    {
        "stepmax": [0, -1, 1.5, "1", True],
        "eps": [0.0, -1e-6, np.nan, np.inf, "1e-6", True],
        "layer": [5, None],
        "covariates_key": [5, None],
        "key_added": NOT_KEY,
        "chunked": NOT_CHUNKED,
        "chunk_size": NOT_CHUNK_SIZE,
    },
)
CASES += param_cases(
    "normvar",
    pp.normvar,
    "weighted",
    {
        "keepvar": NOT_BOOL,
        "key_added": NOT_KEY,
        "layer": [5, None],
        "covariates_key": [5, None],
        "weights_key": [5, None],
        "scale_key": [5, None],
        "dtype": ["bogus", np.int32, np.complex64],
        "chunked": NOT_CHUNKED,
        "chunk_size": NOT_CHUNK_SIZE,
    },
)
CASES += param_cases(
    "qc_outlier",
    pp.qc_outlier,
    "weighted",
    {
        "pcut": [0.0, 1.0, -0.1, np.nan, "0.1", True],
        "outrate": [0.0, 0.5, -0.1, np.nan, "0.02"],
        "weights_key": [5, None],
        "key_added": NOT_KEY,
        "inplace": NOT_BOOL,
    },
)

# ------------------------------------------------------------------ unknown keys

for _name, _step in COUNT_STEPS.items():
    CASES.append(
        Case(
            f"{_name}-layer-missing",
            "counts",
            lambda a, s=_step: s(a, layer="raw_counts"),
            r"'raw_counts'.*not found",
        )
    )
CASES += [
    Case(
        "minmax-layer-missing",
        "counts",
        lambda a: pp.minmax(a, layer="raw_counts"),
        r"'raw_counts'.*not found",
    ),
    Case(
        "normcov-covariate-missing",
        "lcpm",
        lambda a: pp.normcov(a, ["batch", "site"]),
        r"\['site'\] not found in adata.obs",
    ),
    Case(
        "normalize-covariate-missing",
        "counts",
        lambda a: pp.normalize(a, "site", qc=None),
        r"\['site'\] not found in adata.obs",
    ),
    Case(
        "compute_var-layer-missing",
        "covariates",
        lambda a: pp.compute_var(a, layer="mine"),
        r"adata.layers\['mine'\]",
    ),
    Case(
        "compute_var-covariates_key-missing",
        "covariates",
        lambda a: pp.compute_var(a, covariates_key="mine"),
        r"adata.obsm\['mine'\]",
    ),
    Case(
        "normvar-layer-missing",
        "weighted",
        lambda a: pp.normvar(a, layer="mine"),
        r"adata.layers\['mine'\]",
    ),
    Case(
        "normvar-covariates_key-missing",
        "weighted",
        lambda a: pp.normvar(a, covariates_key="mine"),
        r"adata.obsm\['mine'\]",
    ),
    Case(
        "normvar-weights_key-missing",
        "weighted",
        lambda a: pp.normvar(a, weights_key="mine"),
        r"adata.obs\['mine'\]",
    ),
    Case(
        "normvar-scale_key-missing",
        "weighted",
        lambda a: pp.normvar(a, scale_key="mine"),
        r"adata.var\['mine'\]",
    ),
    Case(
        "qc_outlier-weights_key-missing",
        "weighted",
        lambda a: pp.qc_outlier(a, weights_key="mine"),
        r"adata.obs\['mine'\]",
    ),
]

# ------------------------------------------------------------------ missing prerequisites

CASES += [
    Case(
        "normcov-before-lcpm",
        "counts",
        lambda a: pp.normcov(a, ["batch"]),
        r"adata.obsm\['nsc_cov'\].*nsc.pp.lcpm",
    ),
    Case(
        "compute_var-before-lcpm",
        "counts",
        lambda a: pp.compute_var(a),
        r"adata.layers\['lcpm'\].*nsc.pp.lcpm",
    ),
    Case(
        "compute_var-before-normcov",
        "lcpm",
        lambda a: pp.compute_var(a),
        r"adata.obsm\['nsc_covariates'\].*nsc.pp.normcov",
    ),
    Case(
        "normvar-before-compute_var",
        "covariates",
        lambda a: pp.normvar(a),
        r"adata.obs\['nsc_weight'\].*nsc.pp.compute_var",
    ),
    Case("normvar-before-lcpm", "counts", lambda a: pp.normvar(a), r"adata.layers\['lcpm'\]"),
    Case(
        "qc_outlier-before-compute_var",
        "covariates",
        lambda a: pp.qc_outlier(a),
        r"adata.obs\['nsc_weight'\].*nsc.pp.compute_var",
    ),
    Case(
        "normvar-without-scale",
        "weighted",
        lambda a: pp.normvar(a),
        r"adata.var\['nsc_scale'\]",
        setup=delete("var", "nsc_scale"),
    ),
    Case(
        "lcpm-X-None",
        "counts",
        lambda a: pp.lcpm(a),
        r"adata.X",
        setup=lambda a: setattr(a, "X", None),
    ),
    Case(
        "cpm-X-None",
        "counts",
        lambda a: pp.cpm(a),
        r"adata.X",
        setup=lambda a: setattr(a, "X", None),
    ),
    Case(
        "minmax-X-None",
        "counts",
        lambda a: pp.minmax(a),
        r"adata.X",
        setup=lambda a: setattr(a, "X", None),
    ),
    Case(
        "qc_reads-X-None",
        "counts",
        lambda a: pp.qc_reads(a),
        r"adata.X",
        setup=lambda a: setattr(a, "X", None),
    ),
]

# ------------------------------------------------------------------ bad counts

_BAD_VALUES = {
    "nan": (np.nan, np.float64, r"NaN|infinite"),
    "inf": (np.inf, np.float64, r"NaN|infinite"),
    "-inf": (-np.inf, np.float64, r"NaN|infinite"),
    "negative": (-2, np.int64, r"negative"),
    "non-integer": (2.5, np.float64, r"non-integer"),
    "complex": (1 + 2j, np.complex128, r"complex"),
    "complex-real": (3 + 0j, np.complex128, r"complex"),
    "huge": (2.0**64, np.float64, r"2\*\*63|too large|exceed"),
}
for _name, _step in COUNT_STEPS.items():
    for _bad, (_value, _dtype, _match) in _BAD_VALUES.items():
        if _name == "cpm" and _bad in ("non-integer", "huge"):
            continue  # cpm scales any non-negative finite values
        for _fmt in ("csr", "dense"):
            CASES.append(
                Case(
                    f"{_name}-X-{_bad}-{_fmt}",
                    "counts",
                    lambda a, s=_step: s(a),
                    rf"adata.X.*({_match})|({_match}).*adata.X",
                    setup=spoil_x(_value, _dtype, fmt=_fmt),
                )
            )
    CASES.append(
        Case(
            f"{_name}-layer-nan",
            "counts",
            lambda a, s=_step: s(a, layer=USER_LAYER),
            rf"adata.layers\['{USER_LAYER}'\].*(NaN|infinite)",
            setup=spoil_layer(USER_LAYER, np.nan),
        )
    )
for _bad in ("nan", "inf", "complex", "complex-real"):
    _value, _dtype, _match = _BAD_VALUES[_bad]
    CASES.append(
        Case(
            f"minmax-X-{_bad}",
            "counts",
            lambda a: pp.minmax(a),
            rf"adata.X.*({_match})",
            setup=spoil_x(_value, _dtype),
        )
    )
CASES += [
    Case(
        "cpm-X-negative",
        "counts",
        lambda a: pp.cpm(a),
        r"adata.X.*negative",
        setup=spoil_x(-2, np.int64),
    ),
    Case(
        "cpm-X-string",
        "counts",
        lambda a: pp.cpm(a),
        r"adata.X.*(dtype|numeric)",
        setup=set_x(lambda a: a.X.toarray().astype(str)),
    ),
]

# Degenerate shapes: 0 cells or 0 genes.
_EMPTY = {"0cells": (slice(0, 0), slice(None)), "0genes": (slice(None), slice(0, 0))}
for _name, _step in {**COUNT_STEPS, "minmax": lambda a, **k: pp.minmax(a, **k)}.items():
    for _what, (_rows, _cols) in _EMPTY.items():
        CASES.append(
            Case(
                f"{_name}-{_what}",
                "counts",
                lambda a, s=_step: s(a),
                r"\b0 (cells|genes)\b|no (cells|genes)|empty",
                setup=lambda a, r=_rows, c=_cols: a[r, c].copy(),
            )
        )
for _what, (_rows, _cols) in _EMPTY.items():
    CASES.append(
        Case(
            f"compute_var-{_what}",
            "covariates",
            lambda a: pp.compute_var(a),
            r"\b0 (cells|genes)\b|no (cells|genes)|empty",
            setup=lambda a, r=_rows, c=_cols: a[r, c].copy(),
        )
    )

# ------------------------------------------------------------------ non-finite intermediates

for _value, _label in ((np.nan, "nan"), (np.inf, "inf")):
    CASES += [
        Case(
            f"compute_var-lcpm-{_label}",
            "covariates",
            lambda a: pp.compute_var(a),
            r"adata.layers\['lcpm'\].*(NaN|infinite)",
            setup=spoil_layer("lcpm", _value),
        ),
        Case(
            f"normvar-lcpm-{_label}",
            "weighted",
            lambda a: pp.normvar(a),
            r"adata.layers\['lcpm'\].*(NaN|infinite)",
            setup=spoil_layer("lcpm", _value),
        ),
        Case(
            f"compute_var-covariates-{_label}",
            "covariates",
            lambda a: pp.compute_var(a),
            r"adata.obsm\['nsc_covariates'\].*(NaN|infinite)",
            setup=spoil_obsm("nsc_covariates", _value),
        ),
        Case(
            f"normvar-covariates-{_label}",
            "weighted",
            lambda a: pp.normvar(a),
            r"adata.obsm\['nsc_covariates'\].*(NaN|infinite)",
            setup=spoil_obsm("nsc_covariates", _value),
        ),
        Case(
            f"normcov-nsc_cov-{_label}",
            "lcpm",
            lambda a: pp.normcov(a, ["batch"]),
            r"adata.obsm\['nsc_cov'\].*(NaN|infinite)",
            setup=spoil_obsm("nsc_cov", _value),
        ),
        Case(
            f"normcov-obs-{_label}",
            "lcpm",
            lambda a: pp.normcov(a, ["dose"]),
            r"adata.obs\['dose'\]",
            setup=spoil_column("obs", "dose", _value),
        ),
        Case(
            f"qc_outlier-weight-{_label}",
            "weighted",
            lambda a: pp.qc_outlier(a),
            r"adata.obs\['nsc_weight'\]",
            setup=spoil_column("obs", "nsc_weight", _value),
        ),
        Case(
            f"normvar-weight-{_label}",
            "weighted",
            lambda a: pp.normvar(a),
            r"adata.obs\['nsc_weight'\]",
            setup=spoil_column("obs", "nsc_weight", _value),
        ),
        Case(
            f"normvar-scale-{_label}",
            "weighted",
            lambda a: pp.normvar(a),
            r"adata.var\['nsc_scale'\]",
            setup=spoil_column("var", "nsc_scale", _value),
        ),
    ]
CASES.append(
    Case(
        "scaling_factor-zero_at-nan-with-one_at",
        "counts",
        lambda a: pp.scaling_factor(a, zero_at=np.nan, one_at=1.0),
        r"\bzero_at\b",
    )
)
CASES.append(
    Case(
        "compute_var-lcpm-complex",
        "covariates",
        lambda a: pp.compute_var(a),
        r"adata.layers\['lcpm'\].*(complex|dtype)",
        setup=lambda a: a.layers.__setitem__("lcpm", a.layers["lcpm"] + 1j),
    )
)

# ------------------------------------------------------------------ clashing keys


def _user_layer(key):
    def setup(adata):
        adata.layers[key] = adata.X.copy()

    return setup


def _user_obs(key):
    def setup(adata):
        adata.obs[key] = np.arange(adata.n_obs, dtype=float)

    return setup


def _overwrite_result(container, key):
    """The user replaces a normalisr_sc result with their own values (same shape)."""

    def setup(adata):
        if container == "layers":
            layer = adata.layers[key]
            adata.layers[key] = (layer.toarray() if sparse.issparse(layer) else layer) + 1.0
        elif container == "obs":
            adata.obs[key] = adata.obs[key].to_numpy() + 1.0
        elif container == "var":
            adata.var[key] = adata.var[key].to_numpy() + 1.0
        elif container == "obsm":
            adata.obsm[key] = adata.obsm[key] + 1.0

    return setup


def _then(*steps):
    def setup(adata):
        for step in steps:
            step(adata)

    return setup


def _compute_var_then(key):
    def setup(adata):
        pp.compute_var(adata, key_added=key)  # an obs column named like the user's layer

    return setup


CASES += [
    Case(
        "lcpm-key_added-user-layer",
        "counts",
        lambda a: pp.lcpm(a, key_added=USER_LAYER),
        rf"adata.layers\['{USER_LAYER}'\]",
    ),
    Case(
        "cpm-key_added-user-layer",
        "counts",
        lambda a: pp.cpm(a, key_added=USER_LAYER),
        rf"adata.layers\['{USER_LAYER}'\]",
    ),
    Case(
        "minmax-key_added-user-layer",
        "counts",
        lambda a: pp.minmax(a, key_added=USER_LAYER),
        rf"adata.layers\['{USER_LAYER}'\]",
    ),
    Case(
        "normvar-key_added-user-layer",
        "weighted",
        lambda a: pp.normvar(a, key_added=USER_LAYER),
        rf"adata.layers\['{USER_LAYER}'\]",
    ),
    Case(
        "lcpm-after-compute_var-key_added-counts",
        "covariates",
        lambda a: pp.lcpm(a, key_added=USER_LAYER),
        rf"adata.layers\['{USER_LAYER}'\]",
        setup=_compute_var_then(USER_LAYER),
    ),
    Case(
        "lcpm-user-layer-lcpm",
        "counts",
        lambda a: pp.lcpm(a),
        r"adata.layers\['lcpm'\]",
        setup=_user_layer("lcpm"),
    ),
    Case(
        "lcpm-user-replaced-lcpm",
        "lcpm",
        lambda a: pp.lcpm(a),
        r"adata.layers\['lcpm'\]",
        setup=_overwrite_result("layers", "lcpm"),
    ),
    Case(
        "cpm-user-replaced-cpm",
        "counts",
        lambda a: pp.cpm(a),
        r"adata.layers\['cpm'\]",
        setup=_then(pp.cpm, _overwrite_result("layers", "cpm")),
    ),
    Case(
        "normalize-user-layer-normalisr",
        "counts",
        lambda a: pp.normalize(a, ["batch"], qc=None),
        r"adata.layers\['normalisr'\]",
        setup=_user_layer("normalisr"),
    ),
    Case(
        "normalize-user-layer-lcpm",
        "counts",
        lambda a: pp.normalize(a, ["batch"], qc=None),
        r"adata.layers\['lcpm'\]",
        setup=_user_layer("lcpm"),
    ),
    Case(
        "normalize-user-obs-nsc_weight",
        "counts",
        lambda a: pp.normalize(a, ["batch"], qc=None),
        r"adata.obs\['nsc_weight'\]",
        setup=_user_obs("nsc_weight"),
    ),
    Case(
        "normalize-user-replaced-normalisr",
        "normalised",
        lambda a: pp.normalize(a, ["batch"], qc=None),
        r"adata.layers\['normalisr'\]",
        setup=_overwrite_result("layers", "normalisr"),
    ),
    Case(
        "lcpm-user-var-nsc_scale",
        "counts",
        lambda a: pp.lcpm(a),
        r"adata.var\['nsc_scale'\]",
        setup=lambda a: a.var.__setitem__("nsc_scale", 0.5),
    ),
    Case(
        "lcpm-user-obsm-nsc_cov",
        "counts",
        lambda a: pp.lcpm(a),
        r"adata.obsm\['nsc_cov'\]",
        setup=lambda a: a.obsm.__setitem__("nsc_cov", np.ones((a.n_obs, 3))),
    ),
    Case(
        "scaling_factor-key_added-user-var",
        "counts",
        lambda a: pp.scaling_factor(a, key_added="symbol"),
        r"adata.var\['symbol'\]",
    ),
    Case(
        "compute_var-key_added-user-obs",
        "covariates",
        lambda a: pp.compute_var(a, key_added="dose"),
        r"adata.obs\['dose'\]",
    ),
    Case(
        "compute_var-key_added-obs-batch",
        "covariates",
        lambda a: pp.compute_var(a, key_added="batch"),
        r"adata.obs\['batch'\]",
    ),
    Case(
        "qc_outlier-key_added-user-obs",
        "weighted",
        lambda a: pp.qc_outlier(a, key_added="dose"),
        r"adata.obs\['dose'\]",
    ),
    Case(
        "normcov-key_added-user-obsm",
        "lcpm",
        lambda a: pp.normcov(a, ["batch"], key_added="pos"),
        r"adata.obsm\['pos'\]",
    ),
    Case(
        "normcov-covariate-named-intercept",
        "lcpm",
        lambda a: pp.normcov(a, ["intercept"]),
        r"intercept",
        setup=_user_obs("intercept"),
    ),
    Case(
        "normcov-covariate-named-log_total_counts",
        "lcpm",
        lambda a: pp.normcov(a, ["log_total_counts"]),
        r"log_total_counts",
        setup=_user_obs("log_total_counts"),
    ),
    Case(
        "normalize-covariate-named-intercept",
        "counts",
        lambda a: pp.normalize(a, ["intercept"], qc=None),
        r"intercept",
        setup=_user_obs("intercept"),
    ),
    Case(
        "normcov-categorical-level-clash",
        "lcpm",
        lambda a: pp.normcov(a, ["batch", "batch[b2]"]),
        r"batch\[b2\]",
        setup=_user_obs("batch[b2]"),
    ),
]

# ------------------------------------------------------------------ data checks of obs

CASES += [
    Case(
        "normcov-covariate-constant",
        "lcpm",
        lambda a: pp.normcov(a, ["flat"]),
        r"\['flat'\].*constant",
        setup=lambda a: a.obs.__setitem__("flat", 1.0),
    ),
    Case(
        "normcov-covariate-complex",
        "lcpm",
        lambda a: pp.normcov(a, ["cx"]),
        r"adata.obs\['cx'\]",
        setup=lambda a: a.obs.__setitem__("cx", np.arange(a.n_obs) * 1j),
    ),
    Case(
        "qc_outlier-weight-negative",
        "weighted",
        lambda a: pp.qc_outlier(a),
        r"adata.obs\['nsc_weight'\]",
        setup=spoil_column("obs", "nsc_weight", -1.0),
    ),
    Case(
        "normvar-scale-negative",
        "weighted",
        lambda a: pp.normvar(a),
        r"adata.var\['nsc_scale'\]",
        setup=spoil_column("var", "nsc_scale", -0.5),
    ),
]


# ------------------------------------------------------------------ views and read-only input


def _view(adata):
    return adata[:120]  # the spoiled entries (rows 2 and 3) are in the view


def _then_view(spoil):
    def setup(adata):
        spoil(adata)
        return _view(adata)

    return setup


def _then_read_only(spoil):
    def setup(adata):
        spoil(adata)
        _read_only_x(adata)

    return setup


def _read_only_x(adata):
    for array in (adata.X.data, adata.X.indices, adata.X.indptr):
        array.flags.writeable = False


CASES += [
    Case(
        "lcpm-view-dtype", "counts", lambda a: pp.lcpm(a, dtype="bogus"), r"\bdtype\b", setup=_view
    ),
    Case(
        "lcpm-view-key_added-user-layer",
        "counts",
        lambda a: pp.lcpm(a, key_added=USER_LAYER),
        rf"adata.layers\['{USER_LAYER}'\]",
        setup=_view,
    ),
    Case(
        "normalize-view-qc-unknown",
        "counts",
        lambda a: pp.normalize(a, qc={"bogus": 1}),
        r"\bqc\b",
        setup=_view,
    ),
    Case(
        "cpm-view-nan",
        "counts",
        lambda a: pp.cpm(a),
        r"NaN|infinite",
        setup=_then_view(spoil_x(np.nan)),
    ),
    Case(
        "qc_reads-view-removes-every-cell",
        "counts",
        lambda a: pp.qc_reads(a, min_cell_counts=10**9),
        r"removed every cell",
        setup=_view,
    ),
    Case(
        "compute_var-view-nan-lcpm",
        "covariates",
        lambda a: pp.compute_var(a),
        r"adata.layers\['lcpm'\].*(NaN|infinite)",
        setup=_then_view(spoil_layer("lcpm")),
    ),
    Case(
        "normalize-read-only-removes-every-gene",
        "counts",
        lambda a: pp.normalize(a, qc={"min_gene_counts": 10**9}),
        r"removed every gene",
        setup=_read_only_x,
    ),
    Case(
        "lcpm-read-only-nan",
        "counts",
        lambda a: pp.lcpm(a),
        r"NaN|infinite",
        setup=_then_read_only(spoil_x(np.nan)),
    ),
]


@pytest.mark.parametrize("case", case_params(CASES))
def test_refused(case: Case) -> None:
    run_refusal(case)


# ------------------------------------------------------------------ legal odd storage

_ODD = {
    "duplicates": csr_with_duplicates,
    "unsorted": csr_unsorted,
    "explicit-zeros": csr_explicit_zeros,
    "csc": lambda m: sparse.csc_matrix(m),
    "dense": lambda m: m.toarray(),
    "read-only-dense": lambda m: _read_only(m.toarray()),
    "read-only-csr": lambda m: _read_only(sparse.csr_matrix(m, copy=True)),
    "int64": lambda m: m.astype(np.int64),
    "float32": lambda m: m.astype(np.float32),
    "uint16": lambda m: m.astype(np.uint16),
}


def _read_only(matrix):
    arrays = (
        [matrix] if isinstance(matrix, np.ndarray) else [matrix.data, matrix.indices, matrix.indptr]
    )
    for array in arrays:
        array.flags.writeable = False
    return matrix


ACCEPTING = {
    "qc_reads-inplace=False": lambda a: pp.qc_reads(
        a, min_cell_counts=2500, min_gene_cells=40, inplace=False
    ),
    "qc_reads": lambda a: pp.qc_reads(a, min_cell_counts=2500, min_gene_cells=40),
    "lcpm": lambda a: pp.lcpm(a),
    "scaling_factor": lambda a: pp.scaling_factor(a, inplace=False),
    "cpm": lambda a: pp.cpm(a),
    "minmax": lambda a: pp.minmax(a),
    "normalize": lambda a: pp.normalize(a, ["batch"], qc=None),
    "normalize-qc": lambda a: pp.normalize(
        a, ["batch"], qc={"min_cell_counts": 2500, "min_gene_cells": 40}
    ),
    "normalize-chunked": lambda a: pp.normalize(a, ["batch"], qc=None, chunked=True, chunk_size=40),
    "lcpm-chunked": lambda a: pp.lcpm(a, chunked=True, chunk_size=40),
}


SUBSETTING = {"qc_reads", "normalize", "normalize-qc", "normalize-chunked"}


#: The costly steps run on the sparse oddities only.
_FEW = ("duplicates", "unsorted", "explicit-zeros", "csc")
ODD_CASES = [
    (step, odd)
    for step in ACCEPTING
    for odd in _ODD
    if not (step.startswith("normalize") or step.endswith("chunked")) or odd in _FEW
]
ODD_CASES = [c for c in ODD_CASES if c[0] != "normalize" or c[1] == "duplicates"]


# Quick: each step and each oddity once; the full run: every pair.
@pytest.mark.parametrize(
    ("step", "odd"), quick_first(ODD_CASES, [f"{s}-{o}" for s, o in ODD_CASES], ODD_CASES)
)
def test_odd_storage_gives_canonical_results(step, odd):
    canonical = base("counts")
    odd_adata = base("counts")
    odd_adata.X = _ODD[odd](canonical.X)
    if odd in ("int64", "float32", "uint16"):
        canonical.X = canonical.X.astype(odd_adata.X.dtype)
    assert_same_as_canonical(ACCEPTING[step], odd_adata, canonical, subsets=step in SUBSETTING)


@pytest.mark.parametrize("step", ["qc_reads-inplace=False", "lcpm", "cpm", "scaling_factor"])
def test_view_gives_results_of_its_copy(step):
    """A view of the cells: the results equal those on its copy; the parent is unchanged."""
    from ._catalogue import assert_adata_unchanged, snapshot

    parent = base("counts")
    before = snapshot(parent)
    view = parent[10:130]
    ACCEPTING[step](view)
    assert_adata_unchanged(before, parent)
    copy = parent[10:130].copy()
    twin = parent[10:130].copy()
    assert_same_as_canonical(ACCEPTING[step], copy, twin, subsets=step in SUBSETTING)


# ------------------------------------------------------------------ lazy input: dask, backed

LAZY_STEPS = {
    "qc_reads-inplace=False": ACCEPTING["qc_reads-inplace=False"],
    "lcpm": ACCEPTING["lcpm"],
    "scaling_factor": ACCEPTING["scaling_factor"],
    "cpm": ACCEPTING["cpm"],
    "minmax": ACCEPTING["minmax"],
}


def _lazy(kind: str, tmp_path):
    import anndata

    adata = base("counts")
    if kind == "backed":
        path = tmp_path / "counts.h5ad"
        adata.write_h5ad(path)
        return anndata.read_h5ad(path, backed="r")
    import dask.array as da

    matrix = adata.X if kind == "dask-sparse" else adata.X.toarray()
    adata.X = da.from_array(matrix, chunks=(40, -1), asarray=False)
    return adata


LAZY_CASES = [
    (step, kind) for step in LAZY_STEPS for kind in ("dask-sparse", "dask-dense", "backed")
]


# Quick: each step and each kind once; the full run: every pair.
@pytest.mark.parametrize(
    ("step", "kind"), quick_first(LAZY_CASES, [f"{s}-{k}" for s, k in LAZY_CASES], LAZY_CASES)
)
def test_lazy_input_read_or_refused(step, kind, tmp_path):
    """Dask or backed counts: the in-memory results, or a clear refusal leaving adata as it was."""
    from ._catalogue import assert_adata_unchanged, snapshot

    lazy = _lazy(kind, tmp_path)
    before = snapshot(lazy)
    refusal = None
    try:
        LAZY_STEPS[step](lazy)
    except ValueError as error:
        refusal = str(error)
    if refusal is not None:
        assert re.search(r"backed|dask|chunk", refusal), refusal
        assert_adata_unchanged(before, lazy)
        return
    (tmp_path / "again").mkdir()
    assert_same_as_canonical(LAZY_STEPS[step], _lazy(kind, tmp_path / "again"), base("counts"))
