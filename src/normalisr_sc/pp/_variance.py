"""Cell variance weights (METHOD 5) and mean/variance normalisation (METHOD 7)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._core._blocks import count_non_finite_in, float_block, row_block, row_slices
from .._core._moments import in_parts
from .._core._normalize import (
    NormalisationFit,
    cell_weights,
    fit_normalisation,
    normalised_block,
    normalize_covariates,
)
from .._core._reduce import is_dask, thread_count
from .._docs import doc_chunked_layer, doc_params
from .._progress import progress
from .._settings import settings
from .._store import check_writable, side_key, store, written_key
from .._utils import (
    FLOAT_TYPES,
    covariate_frame,
    float_dtype,
    input_matrix,
    logger,
    matrix_name,
    non_finite_message,
    numeric_values,
    require,
)
from .._validate import check_bool, check_int, check_number, check_str
from ._lcpm import SCALE_KEY, check_chunking

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from anndata import AnnData
    from numpy.typing import DTypeLike

    from .._types import InputMatrix

#: Keys :func:`normvar` writes besides its layer.
NORMVAR_KEY, COVARIATES_NORM_KEY = "nsc_normvar", "nsc_covariates_norm"


def _expression_and_covariates(
    adata: AnnData, layer: str, covariates_key: str, chunked: bool | None, chunk_size: int | None
) -> tuple[InputMatrix, int, pd.DataFrame]:
    check_str("layer", layer)
    check_str("covariates_key", covariates_key)
    check_chunking(chunked, chunk_size)
    require(adata, "layers", layer, "nsc.pp.lcpm")
    require(adata, "obsm", covariates_key, "nsc.pp.normcov")
    covariates = covariate_frame(adata, covariates_key)
    n_cov = covariates.shape[1]
    if adata.n_obs <= n_cov + 1:
        msg = (
            f"{adata.n_obs} cells are too few for {n_cov} covariates: at least {n_cov + 2} are "
            "needed (and the method is meant for hundreds of cells)."
        )
        raise ValueError(msg)
    # In memory the passes find NaN and infinity through their sums (see _refuser): the
    # layer is not read once more only to check it first. Streamed, each block is checked.
    expression, size = input_matrix(
        adata, layer, chunked=chunked, chunk_size=chunk_size, what="log CPM", finite_in_sums=True
    )
    return expression, size, covariates


def _refuser(expression: InputMatrix, layer: str) -> Callable[[], NoReturn]:
    """Return what refuses ``expression`` when the sums of a pass over it are not finite.

    The values are counted then (in memory or block by block when streamed), and the
    message is that of every step's input check.
    """

    def refuse() -> NoReturn:
        where = matrix_name(layer)
        count = count_non_finite_in(expression, settings.block_cells)
        if count:
            fix = "log CPM must be finite: repair or remove those entries first."
            raise ValueError(non_finite_message(where, count, fix))
        msg = (
            f"{where} holds values so large that sums of their squares overflow float64; "
            "the log CPM of `nsc.pp.lcpm` is needed."
        )
        raise ValueError(msg)

    return refuse


def _times(block: np.ndarray, factor: np.ndarray, part: slice) -> None:
    block[part] *= factor


def _normalised_chunk(
    block: np.ndarray,
    covariates: np.ndarray,
    log_weights: np.ndarray,
    coefficients: np.ndarray,
    scale: np.ndarray,
    factor: np.ndarray,
    out_dtype: np.dtype,
) -> np.ndarray:
    values = normalised_block(block, covariates, log_weights, coefficients, scale, factor)
    return values.astype(out_dtype, copy=False)


def lazy_normalised(
    expression, covariates: np.ndarray, weights: np.ndarray, fit: NormalisationFit, dtype: np.dtype
):
    """Return the normalised expression as a dask array, computed block by block."""
    import dask.array as da

    rows = expression.chunks[0]
    return da.blockwise(
        _normalised_chunk,
        "ij",
        expression,
        "ij",
        da.from_array(covariates, chunks=(rows, -1)),
        "ik",
        da.from_array(np.log(weights), chunks=(rows,)),
        "i",
        concatenate=True,
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
        coefficients=fit.coefficients,
        scale=fit.scale,
        factor=fit.factor,
        out_dtype=dtype,
    )


@doc_params(doc_chunked_layer=doc_chunked_layer)
def compute_var(
    adata: AnnData,
    *,
    stepmax: int = 1,
    eps: float = 1e-6,
    layer: str = "lcpm",
    covariates_key: str = "nsc_covariates",
    key_added: str = "nsc_weight",
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> None:
    """Fit each cell's technical variance and derive its weight.

    Each gene's log CPM is regressed on the covariates; the residuals are standardised
    per gene; each cell's log root-mean-square standardised residual is fitted by least
    squares on the covariates and an intercept. The weight of a cell is the inverse of
    its fitted standard deviation, scaled so the smallest weight is 1.

    Parameters
    ----------
    adata
        AnnData on which :func:`~normalisr_sc.pp.lcpm` and
        :func:`~normalisr_sc.pp.normcov` have run.
    stepmax
        Maximum number of alternating mean/variance fits (1: a single fit). With more,
        the step whose cell scale changed least relative to the previous is kept.
    eps
        Stop iterating once the largest relative change of the cell scale is below this.
    layer
        Layer holding the log CPM.
    covariates_key
        ``adata.obsm`` key of the normalised covariates.
    key_added
        ``adata.obs`` column receiving the weights.
    {doc_chunked_layer}

    Returns
    -------
    Nothing; sets ``adata.obs[key_added]`` (float, minimum 1), and its parameters in
    ``adata.uns[key_added]['params']``.
    """
    stepmax = check_int("stepmax", stepmax, minimum=1)
    eps = check_number("eps", eps, minimum=0, min_open=True)
    check_str("key_added", key_added)
    check_writable(adata, {"obs": [key_added], "uns": [key_added]})
    expression, size, covariates = _expression_and_covariates(
        adata, layer, covariates_key, chunked, chunk_size
    )
    weights, steps, change = cell_weights(
        expression,
        covariates.to_numpy(dtype=np.float64),
        stepmax=stepmax,
        eps=eps,
        block_cells=size,
        progress=progress,
        on_non_finite=_refuser(expression, layer),
    )
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        msg = "the cell variance fit gave non-finite weights; check covariates and QC."
        raise ValueError(msg)
    store(
        adata,
        key_added,
        {
            "stepmax": stepmax,
            "eps": eps,
            "layer": layer,
            "covariates_key": covariates_key,
            "key_added": key_added,
            "steps": steps,
            "max_relative_change": change,
        },
        obs={key_added: weights},
    )
    logger.info(
        "compute_var: weights in [%.3g, %.3g] after %d step(s)", weights.min(), weights.max(), steps
    )


def normvar(
    adata: AnnData,
    *,
    keepvar: bool = True,
    key_added: str = "normalisr",
    layer: str = "lcpm",
    covariates_key: str = "nsc_covariates",
    weights_key: str = "nsc_weight",
    scale_key: str = SCALE_KEY,
    dtype: DTypeLike | None = None,
    chunked: bool | None = None,
    chunk_size: int | None = None,
) -> None:
    """Normalise expression and covariates for association tests.

    Gene ``x`` is multiplied by ``w ** f_x`` (cell weights ``w`` from
    :func:`~normalisr_sc.pp.compute_var`, scaling factor ``f_x`` from
    :func:`~normalisr_sc.pp.lcpm`), and its least-squares fit on the covariates, also
    weighted by ``w ** f_x``, is removed. With ``keepvar`` each gene's residual is
    rescaled by ``(sd_before / rms_after) ** f_x`` so it keeps its variance scale, which
    keeps log fold changes interpretable. Continuous covariates and the intercept are
    multiplied by ``w``; binary covariates are left as they are.

    Parameters
    ----------
    adata
        AnnData after :func:`~normalisr_sc.pp.compute_var` (and usually
        :func:`~normalisr_sc.pp.qc_outlier`).
    keepvar
        Keep each gene's variance scale.
    key_added
        Layer receiving the normalised expression. The side outputs keep their names
        (``varm['nsc_normvar']``, ``obsm['nsc_covariates_norm']``) with the default
        ``'normalisr'`` and are keyed by any other (``varm[key_added + '_normvar']``,
        ``obsm[key_added + '_covariates_norm']``); the record ``uns[key_added]`` names
        them (``'normvar_key'``, ``'covariates_norm_key'``).
    layer
        Layer holding the log CPM.
    covariates_key
        ``adata.obsm`` key of the normalised covariates.
    weights_key
        ``adata.obs`` column of the cell weights.
    scale_key
        ``adata.var`` column of the gene scaling factors. The default stands for the
        column written by the :func:`~normalisr_sc.pp.lcpm` run of ``layer``, as its
        record ``uns[layer]['scale_key']`` names it (``'nsc_scale'`` itself for the
        default run); any other value is taken as given.
    dtype
        Float type of the stored layer, ``'float32'`` or ``'float64'``; ``None``
        (default) takes that of ``layer`` (float64 unless ``layer`` is float32). The
        fit and the normalised values are computed in float64 (a float32 ``layer`` is
        read as float64 block by block) and rounded once, when stored.
    chunked
        Stream ``layer`` as a dask array in blocks of ``chunk_size`` cells and store the
        result as a lazy dask array, recomputed block by block from ``layer`` and the
        fitted per-gene parameters whenever it is read (no dense cells x genes matrix is
        held). Default: when the layer already is a dask array or ``adata`` is backed.
    chunk_size
        Cells per block; default ``nsc.settings.block_cells``.

    Returns
    -------
    Nothing; sets ``adata.layers[key_added]`` (dense cells x genes, or lazy dask when
    chunked), ``adata.obsm['nsc_covariates_norm']`` (DataFrame, same columns as the
    covariates) and the fitted per-gene parameters in ``adata.varm['nsc_normvar']``
    (covariate coefficients, then the rescaling factor), keyed by ``key_added`` when it
    is not the default (see ``key_added``); ``adata.uns[key_added]`` names those two
    keys (``normvar_key``, ``covariates_norm_key``) and holds the parameters
    (``params``).
    """
    check_bool("keepvar", keepvar)
    for name, value in (
        ("key_added", key_added),
        ("weights_key", weights_key),
        ("scale_key", scale_key),
        ("layer", layer),
    ):
        check_str(name, value)
    if scale_key == SCALE_KEY:
        scale_key = written_key(adata, layer, "scale_key", SCALE_KEY)
    normvar_key = side_key(key_added, "normalisr", NORMVAR_KEY, "normvar")
    covariates_norm_key = side_key(key_added, "normalisr", COVARIATES_NORM_KEY, "covariates_norm")
    dtype = float_dtype("dtype", dtype, allow_none=True)
    check_writable(
        adata,
        {
            "layers": [key_added],
            "varm": [normvar_key],
            "obsm": [covariates_norm_key],
            "uns": [key_added],
        },
    )
    expression, size, covariates = _expression_and_covariates(
        adata, layer, covariates_key, chunked, chunk_size
    )
    require(adata, "obs", weights_key, "nsc.pp.compute_var")
    require(adata, "var", scale_key, "nsc.pp.lcpm")
    weights_where, scale_where = f"adata.obs[{weights_key!r}]", f"adata.var[{scale_key!r}]"
    weights = numeric_values(adata.obs[weights_key], weights_where, "rerun compute_var.")
    scale = numeric_values(adata.var[scale_key], scale_where, "rerun lcpm.")
    if not (weights > 0).all():
        msg = f"{weights_where} must hold finite positive weights; rerun compute_var."
        raise ValueError(msg)
    if not (scale >= 0).all():
        msg = f"{scale_where} must hold finite non-negative factors; rerun lcpm."
        raise ValueError(msg)
    if dtype is None:
        dtype = expression.dtype if expression.dtype.name in FLOAT_TYPES else np.dtype(np.float64)
    cov = covariates.to_numpy(dtype=np.float64)
    refuse = _refuser(expression, layer)
    # In memory and float64, the fit's last pass writes the normalised values into the
    # layer itself; otherwise the passes keep nothing and the layer is built afterwards.
    in_place = not is_dask(expression) and dtype == np.float64
    out = np.empty(adata.shape, dtype=dtype) if in_place else None
    fit = fit_normalisation(
        expression,
        cov,
        weights,
        scale,
        keepvar=keepvar,
        block_cells=size,
        progress=progress,
        out=out,
        on_non_finite=refuse,
    )
    if is_dask(expression):
        out = lazy_normalised(expression, cov, weights, fit, dtype)
    elif out is not None:
        for rows in row_slices(adata.n_obs, size):
            block = out[rows]
            in_parts(
                partial(_times, block, fit.factor), block.shape[0], adata.n_vars, thread_count()
            )
    else:
        # Narrower storage: each block is computed whole in float64 (factor included)
        # and rounded once, as the streamed path does.
        out = np.empty(adata.shape, dtype=dtype)
        log_weights = np.log(weights)
        for rows in row_slices(adata.n_obs, size):

            def fill(part: slice, start: int = rows.start) -> None:
                chosen = slice(start + part.start, start + part.stop)
                out[chosen] = normalised_block(
                    float_block(row_block(expression, chosen)),
                    cov[chosen],
                    log_weights[chosen],
                    fit.coefficients,
                    fit.scale,
                    fit.factor,
                )

            in_parts(fill, rows.stop - rows.start, adata.n_vars, thread_count())
    fitted = pd.DataFrame(
        np.column_stack([fit.coefficients, fit.factor]),
        index=adata.var_names,
        columns=[*map(str, covariates.columns), "factor"],
    )
    covariates_norm = pd.DataFrame(
        normalize_covariates(cov, weights), index=adata.obs_names, columns=covariates.columns
    )
    store(
        adata,
        key_added,
        {
            "keepvar": keepvar,
            "key_added": key_added,
            "layer": layer,
            "covariates_key": covariates_key,
            "weights_key": weights_key,
            "scale_key": scale_key,
            "dtype": dtype.name,
        },
        layers={key_added: out},
        varm={normvar_key: fitted},
        obsm={covariates_norm_key: covariates_norm},
        uns={
            key_added: {
                "normvar_key": normvar_key,
                "covariates_norm_key": covariates_norm_key,
            }
        },
    )
    logger.info("normvar: wrote adata.layers[%r]", key_added)
