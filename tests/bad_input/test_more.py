"""More bad input (plots, GO covariates, guides, the record, simulate): refused with a
ValueError naming the problem, the AnnData unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import normalisr_sc as nsc

from ._catalogue import (
    NOT_CHUNKED,
    Case,
    case_params,
    duplicate_var_names,
    go_files,
    param_cases,
    run_refusal,
)
from .test_get_pl import _PLOTS

pp, tl = nsc.pp, nsc.tl
G0, G1, G2 = "gene00000", "gene00001", "gene00002"
NOT_SHOW = ["yes", 2]


def _gotop(adata, **kwargs):
    obo, gaf, _ = go_files()
    return tl.gotop(adata, obo, gaf, **{"n_principal": 10, "min_genes": 3, **kwargs})


CASES: list[Case] = []

# ---- pp

CASES += [
    Case(
        "lcpm-user-uns-nsc_written-string",
        "counts",
        lambda a: pp.lcpm(a),
        r"adata.uns\['nsc_written'\]",
        setup=lambda a: a.uns.__setitem__("nsc_written", "mine"),
    ),
    Case(
        "normalize-user-uns-normalisr-list",
        "counts",
        lambda a: pp.normalize(a, ["batch"], qc=None),
        r"adata.uns\['normalisr'\]",
        setup=lambda a: a.uns.__setitem__("normalisr", ["mine"]),
    ),
]

# ---- tl
CASES += param_cases("gotop", _gotop, "analysed", {"evidence": [5, []]})
CASES += [
    Case(
        "assign_guides-0guides",
        "normalised",
        lambda a: tl.assign_guides(a),
        r"grna_counts.*(0 guides|no guide|empty)|(0 guides|no guide|empty).*grna_counts",
        setup=lambda a: a.obsm.__setitem__("grna_counts", a.obsm["grna_counts"].iloc[:, :0]),
    ),
    Case(
        "assign_guides-counts-complex",
        "normalised",
        lambda a: tl.assign_guides(a),
        r"adata.obsm\['grna_counts'\]",
        setup=lambda a: a.obsm.__setitem__("grna_counts", a.obsm["grna_counts"] + 1j),
    ),
]

# ---- pl
for _name, _plot in _PLOTS.items():
    CASES += param_cases(_name, _plot, "analysed", {"show": NOT_SHOW, "ax": [5, "ax"]})
CASES += param_cases(
    "coex_heatmap",
    _PLOTS["coex_heatmap"],
    "analysed",
    {
        "genes": [5, [G0, G0], None],
        "key": [5, None],
    },
    match={"genes": r"\bgenes?\b|'nope'", "key": r"\bkey\b|mine"},
)
CASES += param_cases(
    "weights",
    _PLOTS["weights"],
    "analysed",
    {
        "weights_key": [5, None],
        "outlier_key": [5],
    },
)
CASES += [
    Case(
        "weights-nan",
        "analysed",
        lambda a: _PLOTS["weights"](a),
        r"nsc_weight",
        setup=lambda a: a.obs.__setitem__(
            "nsc_weight", np.where(np.arange(a.n_obs) == 2, np.nan, a.obs["nsc_weight"])
        ),
    ),
]


# ---- found by the catalogue and fixed (issue 11)

CASES += [
    Case(
        "normcov-0cells",
        "lcpm",
        lambda a: pp.normcov(a, ["batch"]),
        r"\b0 cells\b|no cells|empty",
        setup=lambda a: a[:0].copy(),
    ),
    Case(
        "binnet-qval-nan",
        "analysed",
        lambda a: tl.binnet(a),
        r"nsc_coex",
        setup=lambda a: a.varp.__setitem__("nsc_coex_pvals", np.full((a.n_vars, a.n_vars), np.nan)),
    ),
    Case(
        "pccovt-constant-genes",
        "normalised",
        lambda a: tl.pccovt(a, [G0, G1]),
        r"constant|\bvar(y|iance)\b",
        setup=lambda a: a.layers.__setitem__(
            "normalisr", np.where(np.arange(a.n_vars) < 2, 1.0, a.layers["normalisr"])
        ),
    ),
    Case(
        "coex_heatmap-genes-duplicated-var_names",
        "analysed",
        lambda a: _PLOTS["coex_heatmap"](a, genes=[G0, G2]),
        r"var_names|duplicate",
        setup=duplicate_var_names,
    ),
    Case(
        "qq-pvals-nan",
        "analysed",
        lambda a: _PLOTS["qq"](a),
        r"nsc_de",
        setup=lambda a: a.varm["nsc_de_log10p"].iloc.__setitem__((2, 0), np.nan),
    ),
]
CASES += param_cases("coex", tl.coex, "normalised", {"chunked": NOT_CHUNKED})
CASES += param_cases("gotop", _gotop, "analysed", {"evidence": [["BOGUS"]]})


@pytest.mark.parametrize("case", case_params(CASES))
def test_refused(case: Case) -> None:
    run_refusal(case)
