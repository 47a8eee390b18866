"""Covariate matrix assembly and normalisation (METHOD 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._normalize import standardize_covariates
from .._utils import (
    complete_obs_column,
    ensure_actual,
    obs_columns,
    record_params,
    require,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

#: Name of the intercept column of ``adata.obsm['nsc_covariates']``.
INTERCEPT = "intercept"


def _obs_covariate(adata: AnnData, column: str) -> pd.DataFrame:
    """One ``obs`` column as covariate columns: numeric as is, categorical one-hot."""
    values = complete_obs_column(adata, column, "using it as a covariate")
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return pd.DataFrame({column: values.astype(np.float64)}, index=adata.obs_names)
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
        Include the cellular summary covariates ``adata.obsm['nsc_cov']``.
    key_added
        ``adata.obsm`` key receiving the covariate DataFrame.

    Returns
    -------
    Nothing; sets ``adata.obsm[key_added]`` (cells x covariates DataFrame with readable
    column names such as ``log_total_counts`` and ``batch[b2]``).

    Examples
    --------
    >>> nsc.pp.normcov(adata, covariates=["batch"])
    >>> list(adata.obsm["nsc_covariates"].columns)
    ['log_total_counts', 'n_zero_genes', 'log_total_counts_sq', 'batch[b2]', 'intercept']
    """
    columns = obs_columns(adata, covariates)
    parts = []
    if summary:
        require(adata, "obsm", "nsc_cov", "nsc.pp.lcpm")
        parts.append(pd.DataFrame(adata.obsm["nsc_cov"], index=adata.obs_names))
    parts += [_obs_covariate(adata, column) for column in columns]
    if not parts:
        msg = "no covariates: pass obs columns in `covariates=` or keep `summary=True`."
        raise ValueError(msg)
    raw = pd.concat(parts, axis=1)
    if not np.isfinite(raw.to_numpy(dtype=np.float64)).all():
        msg = "covariates contain NaN or infinite values; fix them before normalisation."
        raise ValueError(msg)
    names = [str(name) for name in raw.columns]
    normalized = standardize_covariates(raw.to_numpy(dtype=np.float64), names, intercept=intercept)
    if intercept:
        names.append(INTERCEPT)
    ensure_actual(adata)
    adata.obsm[key_added] = pd.DataFrame(normalized, index=adata.obs_names, columns=names)
    record_params(adata, "normcov", {
        "covariates": columns, "intercept": intercept, "summary": summary,
        "key_added": key_added, "columns": names,
    })
