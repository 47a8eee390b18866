"""Checks shared by the association and co-expression kernels."""

from __future__ import annotations

import numpy as np

#: A residual sum of squares below this fraction of the raw sum of squares is zero.
ZERO_VARIANCE_RTOL = 1e-9


def check_df(df: np.ndarray, tested: np.ndarray) -> None:
    if (df[tested] < 1).any():
        worst = int(df[tested].min())
        msg = (
            f"too few cells for the degrees of freedom: a test has {worst} residual degrees "
            "of freedom (cells - 1 - covariate rank - dimreduce); at least 1 is needed. Use "
            "more cells, fewer covariates or a smaller `dimreduce`."
        )
        raise ValueError(msg)


def check_finite_sums(sums: np.ndarray, what: str = "normalised expression") -> None:
    if not np.isfinite(sums).all():
        rerun = "nsc.pp.lcpm" if what == "log CPM" else "nsc.pp.normvar"
        msg = (
            f"the {what} contains NaN or infinite values; association tests need "
            f"finite {what} (rerun `{rerun}`)."
        )
        raise ValueError(msg)
