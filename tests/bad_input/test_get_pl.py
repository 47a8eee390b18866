"""Bad input to ``nsc.get``, ``nsc.pl`` and ``nsc.datasets.simulate``."""

from __future__ import annotations

import numpy as np
import pytest

import normalisr_sc as nsc

from ._catalogue import (
    Case,
    assert_adata_unchanged,
    base,
    case_params,
    duplicate_var_names,
    param_cases,
    quick_first,
    run_refusal,
    snapshot,
)

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

G0, G1, G2 = "gene00000", "gene00001", "gene00002"
NOT_CUTOFF = [np.nan, -0.1, 1.5, "0.05", True]


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


CASES: list[Case] = []

# ------------------------------------------------------------------ get

CASES += param_cases(
    "de_df",
    nsc.get.de_df,
    "analysed",
    {
        "group": [5, ["case", "case"], "nope", [True]],
        "pval_cutoff": NOT_CUTOFF,
        "key": [5, None],
    },
    match={"group": r"\bgroups?\b|'nope'"},
)
CASES += param_cases(
    "coex_df",
    nsc.get.coex_df,
    "analysed",
    {
        "qval_cutoff": NOT_CUTOFF,
        "key": [5, None],
    },
)
CASES += [
    Case("de_df-before-de", "normalised", lambda a: nsc.get.de_df(a), r"nsc_de.*nsc.tl.de"),
    Case("de_df-key-missing", "analysed", lambda a: nsc.get.de_df(a, key="mine"), r"\bmine"),
    Case(
        "coex_df-before-coex", "normalised", lambda a: nsc.get.coex_df(a), r"nsc_coex.*nsc.tl.coex"
    ),
    Case("coex_df-key-missing", "analysed", lambda a: nsc.get.coex_df(a, key="mine"), r"\bmine"),
]

# ------------------------------------------------------------------ pl

_PLOTS = {
    "qq": lambda a, **k: nsc.pl.qq(a, **{"show": False, **k}),
    "volcano": lambda a, **k: nsc.pl.volcano(a, **{"group": "case", "show": False, **k}),
    "weights": lambda a, **k: nsc.pl.weights(a, **{"show": False, **k}),
    "coex_heatmap": lambda a, **k: nsc.pl.coex_heatmap(
        a, **{"genes": [G0, G1, G2], "show": False, **k}
    ),
    "coex_network": lambda a, **k: nsc.pl.coex_network(a, **{"show": False, **k}),
}
for _name, _plot in _PLOTS.items():
    CASES.append(
        Case(
            f"{_name}-save-parent-is-a-file",
            "analysed",
            lambda a, p=_plot: p(a, save=__file__ + "/figure.png"),
            r"is not a folder",
        )
    )
CASES += param_cases(
    "qq",
    _PLOTS["qq"],
    "analysed",
    {"key": [5, None], "group": [5, "nope"]},
    match={"group": r"\bgroup\b|'nope'"},
)
CASES += param_cases(
    "volcano",
    _PLOTS["volcano"],
    "analysed",
    {
        "group": [5, None, "nope"],
        "key": [5, None],
        "n_labels": [-1, "10", True, 2.5],
    },
    match={"group": r"\bgroup\b|'nope'"},
)
CASES += param_cases(
    "weights",
    _PLOTS["weights"],
    "analysed",
    {
        "weights_key": ["mine"],
    },
    match={"weights_key": r"weights_key|'mine'"},
)
CASES += param_cases(
    "coex_heatmap",
    _PLOTS["coex_heatmap"],
    "analysed",
    {
        "genes": [["nope", G1], []],
        "key": ["mine"],
    },
    match={"genes": r"\bgenes?\b|'nope'", "key": r"\bkey\b|mine"},
)
CASES += param_cases(
    "coex_network",
    _PLOTS["coex_network"],
    "analysed",
    {
        "genes": [5, [G0, G0], ["nope", G1]],
        "n_genes": [0, -1, "100", True, 2.5],
        "highlight": [5],
        "n_labels": [-1, "5", True],
        "seed": ["0", 1.5, True],
        "key": [5, None, "mine"],
    },
    match={
        "genes": r"\bgenes?\b|'nope'",
        "highlight": r"\bhighlight\b|'nope'",
        "key": r"\bkey\b|mine",
    },
)
CASES += [
    Case("qq-before-de", "normalised", lambda a: _PLOTS["qq"](a), r"nsc_de.*nsc.tl.de"),
    Case("volcano-before-de", "normalised", lambda a: _PLOTS["volcano"](a), r"nsc_de.*nsc.tl.de"),
    Case(
        "weights-before-compute_var",
        "counts",
        lambda a: _PLOTS["weights"](a),
        r"nsc_weight.*nsc.pp",
    ),
    Case(
        "coex_heatmap-before-coex",
        "normalised",
        lambda a: _PLOTS["coex_heatmap"](a),
        r"nsc_coex.*nsc.tl.coex",
    ),
    Case(
        "coex_network-before-binnet",
        "normalised",
        lambda a: _PLOTS["coex_network"](a),
        r"nsc_coex.*nsc.tl",
    ),
    Case(
        "coex_network-genes-duplicated-var_names",
        "analysed",
        lambda a: _PLOTS["coex_network"](a, genes=[G0, G2]),
        r"var_names|duplicate",
        setup=duplicate_var_names,
    ),
]


@pytest.mark.parametrize("case", case_params(CASES))
def test_refused(case: Case) -> None:
    run_refusal(case)


# Quick: the first plot; the full run: every plot.
@pytest.mark.parametrize(
    "plot", [pytest.param(p, marks=[pytest.mark.slow] if i else []) for i, p in enumerate(_PLOTS)]
)
def test_save_into_missing_folder_creates_it(plot, tmp_path):
    """``save=`` into a folder that does not exist: the folder is made, the AnnData unchanged."""
    adata = base("analysed")
    before = snapshot(adata)
    target = tmp_path / "new" / "deeper" / f"{plot}.png"
    _PLOTS[plot](adata, save=target)
    assert target.is_file()
    assert target.stat().st_size > 0
    assert_adata_unchanged(before, adata)


# ------------------------------------------------------------------ datasets.simulate

_SIMULATE_BAD = {
    "n_genes": [2.5],
    "de_fraction": [-0.1, 1.5, np.nan],
    "moi": [0.0, -1.0],
}
#: Wrong types and values found by the catalogue later (every parameter).
_SIMULATE_MORE = {
    "n_cells": [0, -1, "100", True, 2.5, np.nan],
    "n_genes": [0, -1, "50", True],
    "n_batches": [0, -1, "2", True, 1.5],
    "de_fraction": ["0.1", True],
    "de_log_fold_change": [np.nan, np.inf, "0.7", True],
    "n_modules": [-1, "2", True, 1.5],
    "module_size": [-1, "10", True, 2.5, 10**6],
    "module_strength": [np.nan, -0.1, "0.4", np.inf],
    "n_targets": [-1, "2", True, 1.5, 10**6],
    "guides_per_target": [0, -1, "2", True],
    "n_non_targeting": [-1, "4", True],
    "moi": [np.nan, np.inf, "1", True],
    "knockdown": [np.nan, np.inf, "1", True],
    "dispersion": [-0.1, np.nan, np.inf, "0.2", True],
    "mean_total_counts": [0.0, -1.0, np.nan, np.inf, "4000", True],
    "seed": ["0", 1.5, True, -1, None],
}
_SIMULATE_CASES = [
    (p, v) for bad in (_SIMULATE_BAD, _SIMULATE_MORE) for p, values in bad.items() for v in values
]


def _id(value) -> str:
    return "nan" if isinstance(value, float) and np.isnan(value) else repr(value)


# Quick: the first wrong value of each parameter; the full run: every value.
@pytest.mark.parametrize(
    ("param", "value"),
    quick_first(
        _SIMULATE_CASES,
        [f"simulate-{p}={_id(v)}" for p, v in _SIMULATE_CASES],
        [(p,) for p, _ in _SIMULATE_CASES],
    ),
)
def test_simulate_refuses(param, value):
    kwargs = {"n_cells": 40, "n_genes": 30, "n_targets": 2, "module_size": 5, param: value}
    with pytest.raises(ValueError, match=rf"\b{param}\b"):
        nsc.datasets.simulate(**kwargs)
