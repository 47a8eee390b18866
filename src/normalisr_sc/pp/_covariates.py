"""Covariate matrix assembly and normalisation (METHOD 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._normalize import standardize_covariates
from .._store import check_writable, store, written_key
from .._utils import complete_obs_column, numeric_values, obs_columns, require
from .._validate import as_names, check_bool, check_str
from ._lcpm import COV_KEY, SUMMARY_COLUMNS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

#: Name of the intercept column of ``adata.obsm['nsc_covariates']``.
INTERCEPT = "intercept"


def _obs_covariate(adata: AnnData, column: str) -> pd.DataFrame:
    """One ``obs`` column as covariate columns: numeric as is, categorical one-hot."""
    values = complete_obs_column(adata, column, "using it as a covariate")
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        numbers = numeric_values(
            values, f"adata.obs[{column!r}]", "fix those values or drop those cells first."
        )
        return pd.DataFrame({column: numbers}, index=adata.obs_names)
    categories = values.astype("category").cat.remove_unused_categories()
    if len(categories.cat.categories) < 2:
        msg = (
            f"adata.obs[{column!r}] has a single level {list(categories.cat.categories)}: a "
            "constant covariate carries no information; leave it out."
        )
        raise ValueError(msg)
    one_hot = pd.get_dummies(categories, drop_first=True, dtype=np.float64)
    one_hot.columns = [f"{column}[{level}]" for level in one_hot.columns]
    return one_hot


def normcov(
    adata: AnnData,
    covariates: Sequence[str] | str | None = None,
    *,
    intercept: bool = True,
    summary: bool = True,
    layer: str = "lcpm",
    key_added: str = "nsc_covariates",
) -> None:
    """Assemble and normalise the covariate matrix removed from expression.

    The cellular summary covariates of :func:`normalisr_sc.pp.lcpm` are joined by the
    ``adata.obs`` columns named in ``covariates``: numeric and boolean columns as they
    are, categorical (or string) columns one-hot encoded dropping their first level.
    Continuous covariates (any value other than 0 and 1) are centred and scaled to unit
    population variance; binary ones stay 0/1; an intercept column of ones is appended.

    Parameters
    ----------
    adata
        AnnData on which :func:`normalisr_sc.pp.lcpm` has run (if ``summary``).
    covariates
        ``adata.obs`` column name(s) to include, e.g. batch or replicate.
    intercept
        Append a column of ones named ``'intercept'``.
    summary
        Include the cellular summary covariates of :func:`~normalisr_sc.pp.lcpm`.
    layer
        The ``key_added`` of the :func:`~normalisr_sc.pp.lcpm` run whose summary
        covariates are taken: the ``obsm`` key its record ``uns[layer]['cov_key']``
        names (``adata.obsm['nsc_cov']`` for the default ``'lcpm'``).
    key_added
        ``adata.obsm`` key receiving the covariate DataFrame.

    Returns
    -------
    Nothing; sets ``adata.obsm[key_added]`` (cells x covariates DataFrame with readable
    column names such as ``log_total_counts`` and ``batch[b2]``), and its parameters in
    ``adata.uns[key_added]['params']``.

    Examples
    --------
    >>> nsc.pp.normcov(adata, covariates=["batch"])
    >>> list(adata.obsm["nsc_covariates"].columns)
    ['log_total_counts', 'n_zero_genes', 'log_total_counts_sq', 'batch[b2]', 'intercept']
    """
    columns = obs_columns(adata, as_names("covariates", covariates))
    if adata.n_obs == 0:
        msg = "adata has 0 cells: there are no covariates to normalise."
        raise ValueError(msg)
    check_bool("intercept", intercept)
    check_bool("summary", summary)
    check_str("layer", layer)
    check_str("key_added", key_added)
    check_writable(adata, {"obsm": [key_added], "uns": [key_added]})
    parts = []
    if summary:
        cov_key = written_key(adata, layer, "cov_key", COV_KEY)
        require(adata, "obsm", cov_key, "nsc.pp.lcpm")
        where = f"adata.obsm[{cov_key!r}]"
        cov = adata.obsm[cov_key]
        values = numeric_values(cov, where, "rerun `nsc.pp.lcpm`.")
        names = list(cov.columns) if isinstance(cov, pd.DataFrame) else list(SUMMARY_COLUMNS)
        if values.ndim != 2 or values.shape[1] != len(names):
            msg = f"{where} must hold the {len(SUMMARY_COLUMNS)} summary covariates; rerun `nsc.pp.lcpm`."
            raise ValueError(msg)
        parts.append(pd.DataFrame(values, index=adata.obs_names, columns=names))
    parts += [_obs_covariate(adata, column) for column in columns]
    if not parts:
        msg = "no covariates: pass obs columns in `covariates=` or keep `summary=True`."
        raise ValueError(msg)
    raw = pd.concat(parts, axis=1)
    names = [str(name) for name in raw.columns]
    _refuse_clashes(names, columns, intercept)
    normalized = standardize_covariates(raw.to_numpy(dtype=np.float64), names, intercept=intercept)
    if intercept:
        names.append(INTERCEPT)
    store(
        adata,
        key_added,
        {
            "covariates": columns,
            "intercept": intercept,
            "summary": summary,
            "layer": layer if summary else None,
            "key_added": key_added,
            "columns": names,
        },
        obsm={key_added: pd.DataFrame(normalized, index=adata.obs_names, columns=names)},
    )


def _refuse_clashes(names: list[str], columns: list[str], intercept: bool) -> None:
    """Refuse covariate column names that repeat.

    E.g. an obs column named like a summary covariate or ``'intercept'``: h5ad cannot store
    them and the fit could not tell them apart.
    """
    taken = [*names, *([INTERCEPT] if intercept else [])]
    clashes = sorted({name for name in taken if taken.count(name) > 1})
    if clashes:
        msg = (
            f"covariate column name(s) {clashes} would occur more than once in the covariate "
            f"matrix (the summary covariates are {list(SUMMARY_COLUMNS)}"
            + (f" and {INTERCEPT!r}" if intercept else "")
            + f"; obs covariates {columns}). Rename the adata.obs column(s), e.g. "
            "`adata.obs.rename(columns={'intercept': 'my_intercept'})`."
        )
        raise ValueError(msg)
