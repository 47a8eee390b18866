"""Validated inputs shared by the association tests: expression, covariates, dimreduce."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._core._association import Effect
from .._core._reduce import is_dask
from .._store import read_params, written_key
from .._utils import covariate_frame, input_matrix, require
from .._validate import check_int

if TYPE_CHECKING:
    from anndata import AnnData

    from .._types import InputMatrix


#: Defaults of the keys read beside a normalised layer: its normalised covariates, the
#: log CPM and the un-normalised covariates of the fold changes.
COVARIATES_KEY, LOGFC_LAYER, LOGFC_COVARIATES = "nsc_covariates_norm", "lcpm", "nsc_covariates"


def layer_inputs(
    adata: AnnData,
    layer: str,
    covariates_key: str,
    logfc_layer: str = LOGFC_LAYER,
    logfc_covariates: str = LOGFC_COVARIATES,
) -> tuple[str, str, str]:
    """Return the keys of the inputs read beside the normalised ``layer``.

    A key left at its default means the one of the ``normvar`` run that wrote ``layer``,
    as its record names it (its side output, or the inputs it read), so that the tests of
    a layer normalised under another ``key_added`` never read the covariates of another
    run. Keys given otherwise are used as given.
    """
    params = read_params(adata, layer)
    if covariates_key == COVARIATES_KEY:
        covariates_key = written_key(adata, layer, "covariates_norm_key", COVARIATES_KEY)
    if logfc_layer == LOGFC_LAYER:
        logfc_layer = str(params.get("layer", LOGFC_LAYER))
    if logfc_covariates == LOGFC_COVARIATES:
        logfc_covariates = str(params.get("covariates_key", LOGFC_COVARIATES))
    return covariates_key, logfc_layer, logfc_covariates


def check_dimreduce(dimreduce: int) -> int:
    """``dimreduce`` as a non-negative int (a ValueError naming it otherwise)."""
    return check_int("dimreduce", dimreduce, minimum=0)


def _covariate_array(adata: AnnData, key: str, rerun: str) -> np.ndarray:
    covariates = covariate_frame(adata, key).to_numpy(dtype=np.float64)
    if covariates.ndim != 2 or covariates.shape[1] == 0:
        msg = f"adata.obsm[{key!r}] holds no covariate; rerun `{rerun}`."
        raise ValueError(msg)
    if not np.isfinite(covariates).all():
        msg = f"adata.obsm[{key!r}] contains NaN or infinite values."
        raise ValueError(msg)
    return covariates


def normalised_inputs(
    adata: AnnData,
    layer: str,
    covariates_key: str,
    *,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> tuple[InputMatrix, int, np.ndarray]:
    """Return the normalised expression layer, its cells per block and the covariates.

    The normalised covariates come as a float64 array.

    The layer is returned as :func:`~normalisr_sc._utils.input_matrix` chooses: a dask
    array chunked by ``chunk_size`` cells when streamed (``chunked``), else as it is. In
    memory, NaN and infinity are found by the kernel from its sums (every kernel
    reading this layer checks them with :func:`~.._core._checks.check_finite_sums`).
    """
    require(adata, "layers", layer, "nsc.pp.normvar")
    require(adata, "obsm", covariates_key, "nsc.pp.normvar")
    covariates = _covariate_array(adata, covariates_key, "nsc.pp.normcov")
    expression, size = input_matrix(
        adata,
        layer,
        chunked=chunked,
        chunk_size=chunk_size,
        what="normalised expression",
        finite_in_sums=True,
    )
    return expression, size, covariates


def effect_inputs(
    adata: AnnData,
    expression: InputMatrix,
    layer: str,
    covariates_key: str,
    logfc_layer: str,
    logfc_covariates: str,
    *,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> tuple[InputMatrix, Effect]:
    """Return the normalised expression and the fold change's inputs, read in the same pass.

    The log CPM layer and the normalised layer are both streamed (dask) or neither: when
    one of them is a lazy layer, the other is streamed too.
    """
    for container, key, parameter, made_by in (
        ("layers", logfc_layer, "logfc_layer", "nsc.pp.lcpm"),
        ("obsm", logfc_covariates, "logfc_covariates", "nsc.pp.normcov"),
    ):
        if key not in getattr(adata, container):
            what = "Bayesian log CPM" if container == "layers" else "un-normalised covariates"
            msg = (
                f"adata.{container}[{key!r}] not found: the fold change `logfc` is fitted to "
                f"the {what}. Run `{made_by}` (`nsc.pp.normalize` keeps it), or name the key "
                f"that holds it with `{parameter}=`."
            )
            raise ValueError(msg)
    covariates = _covariate_array(adata, logfc_covariates, "nsc.pp.normcov")
    log_cpm, _ = input_matrix(
        adata,
        logfc_layer,
        chunk_size=chunk_size,
        chunked=True if is_dask(expression) else chunked,
        what="log CPM",
        finite_in_sums=True,
    )
    if is_dask(log_cpm) and not is_dask(expression):
        expression, _ = input_matrix(
            adata,
            layer,
            chunked=True,
            chunk_size=chunk_size,
            what="normalised expression",
            finite_in_sums=True,
        )
    return expression, Effect(log_cpm, covariates)
