"""Validated inputs shared by the association tests: expression, covariates, dimreduce."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._utils import covariate_frame, input_matrix, require

if TYPE_CHECKING:
    from anndata import AnnData


def check_dimreduce(dimreduce: int) -> None:
    if isinstance(dimreduce, bool) or int(dimreduce) != dimreduce or dimreduce < 0:
        msg = f"dimreduce must be a non-negative integer, got {dimreduce!r}."
        raise ValueError(msg)


def normalised_inputs(
    adata: AnnData,
    layer: str,
    covariates_key: str,
    *,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> tuple[object, int, np.ndarray]:
    """The normalised expression layer, the cells per block to read it in, and the
    normalised covariates as a float64 array.

    The layer is returned as :func:`~normalisr_sc._utils.input_matrix` chooses: a dask
    array chunked by ``chunk_size`` cells when streamed (``chunked``), else as it is.
    """
    require(adata, "layers", layer, "nsc.pp.normvar")
    require(adata, "obsm", covariates_key, "nsc.pp.normvar")
    covariates = covariate_frame(adata, covariates_key).to_numpy(dtype=np.float64)
    if covariates.ndim != 2 or covariates.shape[1] == 0:
        msg = f"adata.obsm[{covariates_key!r}] holds no covariate; rerun `nsc.pp.normcov`."
        raise ValueError(msg)
    if not np.isfinite(covariates).all():
        msg = f"adata.obsm[{covariates_key!r}] contains NaN or infinite values."
        raise ValueError(msg)
    expression, size = input_matrix(adata, layer, chunked=chunked, chunk_size=chunk_size,
                                    what="normalised expression")
    return expression, size, covariates
