"""Checks shared by the association and co-expression kernels."""

from __future__ import annotations

import weakref
from typing import NoReturn

import numpy as np

from ._blocks import count_non_finite_in

#: A residual sum of squares below this fraction of the raw sum of squares is zero.
ZERO_VARIANCE_RTOL = 1e-9

#: Names of the matrices read by the kernels, as the user knows them (``id`` -> (weak
#: reference, name)); set by the door that hands the matrix over (:func:`name_source`).
_SOURCES: dict[int, tuple[weakref.ref, str]] = {}


def name_source(matrix: object, name: str) -> None:
    """Record ``name`` (e.g. ``"adata.layers['normalisr']"``) for the messages about ``matrix``.

    A kernel that checks its sums with :func:`check_finite_sums` then names the layer.
    """
    key = id(matrix)

    def forget(_: weakref.ref) -> None:
        _SOURCES.pop(key, None)

    try:
        reference = weakref.ref(matrix, forget)
    except TypeError:  # not weakly referenceable: no name recorded
        return
    _SOURCES[key] = (reference, name)


def source_name(matrix: object, default: str) -> str:
    """Return the name recorded for ``matrix`` by :func:`name_source`, else ``default``."""
    entry = _SOURCES.get(id(matrix))
    if entry is not None and entry[0]() is matrix:
        return entry[1]
    return default


def check_df(df: np.ndarray, tested: np.ndarray) -> None:
    if (df[tested] < 1).any():
        worst = int(df[tested].min())
        msg = (
            f"too few cells for the degrees of freedom: a test has {worst} residual degrees "
            "of freedom (cells - 1 - covariate rank - dimreduce); at least 1 is needed. Use "
            "more cells, fewer covariates or a smaller `dimreduce`."
        )
        raise ValueError(msg)


def check_finite_sums(
    sums: np.ndarray, what: str = "normalised expression", matrix: object = None
) -> None:
    """Refuse the input ``matrix`` when the sums accumulated over it are not finite.

    The kernels check their inputs through the sums their pass makes anyway: a NaN or an
    infinity anywhere in the matrix makes the sum of squares of its cells (each a
    non-negative term, so nothing cancels: ``inf - inf`` is NaN and stays NaN) NaN or
    infinite (see :func:`raise_non_finite`).
    """
    if not np.isfinite(sums).all():
        raise_non_finite(what, matrix)


def raise_non_finite(what: str = "normalised expression", matrix: object = None) -> NoReturn:
    """Refuse ``matrix``, whose sums were found not finite, naming why and the fix.

    The matrix (in memory or dask) is read again to tell NaN or infinite values from
    finite values so large that their squares overflow.
    """
    rerun = "nsc.pp.lcpm" if what == "log CPM" else "nsc.pp.normvar"
    name = source_name(matrix, f"the {what}")
    count = count_non_finite_in(matrix)
    if count == 0:
        msg = (
            f"{name} holds values so large that their sums of squares overflow float64; "
            f"association tests need the {what} on a usual scale (rerun `{rerun}`)."
        )
        raise ValueError(msg)
    counted = f" ({count} of them)" if count is not None else ""
    msg = (
        f"{name} contains NaN or infinite values{counted}; association tests need "
        f"finite {what} (rerun `{rerun}`)."
    )
    raise ValueError(msg)
