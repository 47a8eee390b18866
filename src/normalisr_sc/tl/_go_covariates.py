"""Housekeeping covariates from GO enrichment of co-expression hubs (METHOD 10)."""

from __future__ import annotations

import copy
import os
from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._core._blocks import dense_block, row_slices
from .._core._pca import top_principal_component
from .._go import (
    DEFAULT_EVIDENCE,
    enrichment,
    propagate,
    read_annotations,
    read_godag,
)
from .._store import (
    PARAMS,
    check_writable,
    fingerprints,
    owned_keys,
    read_record,
    side_key,
    store,
)
from .._utils import (
    chunk_cells,
    covariate_frame,
    gene_positions,
    get_matrix,
    logger,
    require,
)
from .._validate import as_names, check_bool, check_int, check_number, check_str

PathLike = str | os.PathLike


def _network(adata: AnnData, key: str) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Return the binary network of ``key`` and the indices of the genes it covers."""
    net_key = f"{key}_net"
    require(adata, "varp", net_key, "nsc.tl.binnet")
    net = sparse.csr_matrix(adata.varp[net_key], dtype=bool)
    genes = read_record(adata, key).get("genes")
    covered = (
        np.arange(adata.n_vars)
        if genes is None
        else adata.var_names.get_indexer(np.asarray(genes, dtype=str))
    )
    return net, covered


def _principal_genes(net: sparse.csr_matrix, covered: np.ndarray, n_principal: int) -> np.ndarray:
    """Return the indices of the ``n_principal`` genes with most edges, ties at the cut kept."""
    degree = np.asarray((net + net.T).astype(bool).sum(axis=1)).ravel()[covered]
    cut = np.sort(degree)[::-1][n_principal - 1]
    if cut == 0:
        msg = (
            f"fewer than {n_principal} genes have any edge in the network; lower "
            "`n_principal` or loosen `nsc.tl.binnet`'s qcut."
        )
        raise ValueError(msg)
    return covered[degree >= cut]


def _annotation_keys(adata: AnnData, gene_id: str | Mapping[str, str], annotations) -> pd.Series:
    """Annotation gene id of each data gene (NaN when unknown), and a helpful error if none."""
    if isinstance(gene_id, Mapping):
        keys = pd.Series([gene_id.get(g) for g in adata.var_names], index=adata.var_names)
        described = "the given mapping"
    elif gene_id == "symbol":
        keys = pd.Series(adata.var_names, index=adata.var_names)
        described = "adata.var_names"
    elif gene_id in adata.var.columns:
        keys = adata.var[gene_id].astype(str).set_axis(adata.var_names)
        described = f"adata.var[{gene_id!r}]"
    else:
        msg = (
            f"gene_id={gene_id!r} is neither 'symbol', an adata.var column "
            f"({list(adata.var.columns)}) nor a mapping of var_names to annotation ids."
        )
        raise ValueError(msg)
    by_symbol = keys.map(annotations.symbol_to_gene)
    by_id = keys.where(keys.isin(list(annotations.gene_to_terms)))
    matched = by_symbol if by_symbol.notna().sum() >= by_id.notna().sum() else by_id
    if matched.notna().sum() == 0:
        ours = list(keys.dropna().astype(str)[:3])
        theirs_ids = list(annotations.gene_to_terms)[:3]
        theirs_symbols = list(annotations.symbol_to_gene)[:3]
        msg = (
            f"no gene of the data ({described}, e.g. {ours}) is found in the annotation file, "
            f"whose genes look like ids {theirs_ids}"
            + (f" or symbols {theirs_symbols}" if theirs_symbols else "")
            + ". Pass `gene_id=` naming a var column or a mapping to those identifiers."
        )
        raise ValueError(msg)
    return matched


def _evidence_annotations(annotations: str | os.PathLike, evidence: Collection[str]):
    """Read the annotations kept by the evidence filter, refusing a filter that keeps none."""
    annotation = read_annotations(annotations, evidence=evidence)
    if not annotation.gene_to_terms:
        msg = (
            f"no annotation of {str(annotations)!r} has an evidence code among `evidence` "
            f"{sorted(evidence)[:8]}; pass codes the file uses (the default keeps every code "
            "except the expression-based ones)."
        )
        raise ValueError(msg)
    return annotation


def _check_go_params(n_principal: int, min_genes: int, pcut: float, evidence, gene_id) -> None:
    check_int("n_principal", n_principal, minimum=2)
    check_int("min_genes", min_genes, minimum=1)
    check_number("pcut", pcut, minimum=0, maximum=1, min_open=True)
    if (
        isinstance(evidence, str | bytes)
        or not hasattr(evidence, "__iter__")
        or not evidence
        or not all(isinstance(e, str) for e in evidence)
    ):
        msg = (
            f"`evidence` must be a non-empty collection of GO evidence codes such as "
            f"{sorted(DEFAULT_EVIDENCE)[:4]}, got {evidence!r}."
        )
        raise ValueError(msg)
    if not isinstance(gene_id, str | Mapping):
        msg = (
            f"`gene_id` must be 'symbol', an adata.var column name or a mapping of "
            f"var_names to annotation ids, got {gene_id!r}."
        )
        raise ValueError(msg)


def gotop(
    adata: AnnData,
    go_obo: PathLike,
    annotations: PathLike,
    *,
    n_principal: int = 100,
    min_genes: int = 5,
    pcut: float = 0.05,
    evidence: Collection[str] = DEFAULT_EVIDENCE,
    gene_id: str | Mapping[str, str] = "symbol",
    key: str = "nsc_coex",
    key_added: str = "nsc_gotop",
) -> None:
    """Find the most enriched GO term among the hubs of a co-expression network.

    The principal genes are the ``n_principal`` genes with most edges in the binary
    network ``adata.varp[key + '_net']`` (ties at the cut kept; an edge in either
    direction counts). Their GO enrichment against all genes of the network is tested
    with Fisher's exact test (goatools), using a local GO DAG and annotation file. The
    top term is the most significant one with odds ratio above 1, at least
    ``min_genes`` principal genes and a Bonferroni p-value below ``pcut``; its genes
    (annotated to the term or any descendant) present in the data form the
    housekeeping set for :func:`pccovt`. When no term passes, there is no top term: a
    WARNING says so, with the best Bonferroni p-value.

    Parameters
    ----------
    adata
        AnnData after :func:`normalisr_sc.tl.coex` and :func:`normalisr_sc.tl.binnet`.
    go_obo
        GO DAG in OBO format, plain or ``.gz``.
    annotations
        Gene annotations in GAF (2.x) or NCBI gene2go format, plain or ``.gz``.
    n_principal
        Number of principal genes, at least 2 and fewer than the network's genes.
    min_genes
        Minimum number of principal genes annotated to the top term.
    pcut
        The top term's Bonferroni-corrected p-value must be below this, in (0, 1].
    evidence
        Evidence codes kept; by default all but the expression-based IEP and HEP (and ND).
    gene_id
        How data genes are identified in the annotation file: ``'symbol'`` matches
        ``var_names`` with the file's symbols (or ids); a ``var`` column name matches
        that column; a mapping gives the identifier of each ``var_name``.
    key
        Key of the co-expression results.
    key_added
        ``adata.uns`` key receiving the results.

    Returns
    -------
    Nothing; sets ``adata.uns[key_added]`` with ``principal_genes``, ``enrichment``
    (DataFrame: term, name, namespace, depth, pval, pval_bonferroni, odds_ratio,
    study/population counts and sizes, genes), ``best_pval_bonferroni`` (of the terms
    with odds ratio above 1 and ``min_genes`` principal genes; NaN if none) and
    ``params``; with a significant term also ``top_term``, ``top_term_name``,
    ``top_term_pval_bonferroni`` and ``top_term_genes``, without one
    ``no_top_term`` (why, in words).
    """
    check_str("key", key)
    check_str("key_added", key_added)
    _check_go_params(n_principal, min_genes, pcut, evidence, gene_id)
    check_writable(adata, {"uns": [key_added]})
    net, covered = _network(adata, key)
    if net.nnz == 0:
        msg = f"the network adata.varp[{key + '_net'!r}] has no edge; loosen binnet's qcut."
        raise ValueError(msg)
    if not 2 <= n_principal < covered.size:
        msg = (
            f"n_principal must be between 2 and the number of network genes minus one "
            f"({covered.size - 1}), got {n_principal}."
        )
        raise ValueError(msg)
    dag = read_godag(go_obo)
    annotation = _evidence_annotations(annotations, evidence)
    annotation_id = _annotation_keys(adata, gene_id, annotation)
    propagated = propagate(annotation, dag)
    gene_terms = {str(gene): propagated[aid] for gene, aid in annotation_id.dropna().items()}

    principal = adata.var_names[_principal_genes(net, covered, n_principal)]
    population = adata.var_names[covered]
    table = enrichment(principal, population, gene_terms, dag)
    enriched = table[(table["odds_ratio"] > 1) & (table["study_count"] >= min_genes)]
    best = float(enriched["pval_bonferroni"].min()) if len(enriched) else float("nan")
    params = {
        "n_principal": int(n_principal),
        "min_genes": int(min_genes),
        "pcut": float(pcut),
        "key": key,
        "go_obo": str(go_obo),
        "annotations": str(annotations),
        "evidence": sorted(evidence),
    }
    result = {
        "principal_genes": list(principal),
        "enrichment": table,
        "best_pval_bonferroni": best,
    }
    candidates = enriched[enriched["pval_bonferroni"] < pcut]
    if candidates.empty:
        result["no_top_term"] = (
            f"no GO term with odds ratio > 1 and at least {min_genes} of the "
            f"{principal.size} principal genes has a Bonferroni p-value below "
            f"pcut={pcut:g} (best: {best:.3g})"
            if len(enriched)
            else f"no GO term has odds ratio > 1 with at least {min_genes} of the "
            f"{principal.size} principal genes"
        )
        logger.warning("gotop: %s; no top term.", result["no_top_term"])
    else:
        top = candidates.iloc[0]
        result["top_term"] = top["term"]
        result["top_term_name"] = top["name"]
        result["top_term_pval_bonferroni"] = float(top["pval_bonferroni"])
        result["top_term_genes"] = [g for g, terms in gene_terms.items() if top["term"] in terms]
        logger.info(
            "gotop: top term %s (%s), Bonferroni p=%.3g",
            top["term"],
            top["name"],
            top["pval_bonferroni"],
        )
    store(adata, key_added, params, uns={key_added: result})


def _covariates_removed(expression: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    """``expression`` minus its least-squares fit on ``covariates`` and an intercept.

    Projected out with an orthonormal basis of the design's column space (its thin SVD,
    directions below 1e-10 of the largest singular value dropped): the error is of
    order machine precision times the design's condition number, where the normal
    equations would square it (measured on a simulated 400-cell design of condition
    5.6e3: 2e-9 of the scale through the Gram matrix, 6e-13 this way).
    """
    design = np.column_stack([covariates, np.ones(expression.shape[0])])
    basis, singular, _ = np.linalg.svd(design, full_matrices=False)
    basis = basis[:, singular > singular[0] * 1e-10]
    return expression - basis @ (basis.T @ expression)


def _finite_or_fail(values: np.ndarray, where: str, fix: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        msg = f"{where} holds {int(bad.sum())} NaN or infinite value(s); {fix}."
        raise ValueError(msg)


def _pccovt_key(covariates_key: str) -> str:
    """Return the ``uns`` key of the records of :func:`pccovt` into ``covariates_key``.

    ``'nsc_pccovt'`` for the default covariates, ``covariates_key + '_pccovt'`` for any
    other, so that covariates added to different frames keep separate records.
    """
    return side_key(covariates_key, "nsc_covariates_norm", "nsc_pccovt", "pccovt")


#: A gene whose residual SD is below this fraction of its scale counts as constant.
CONSTANT_RTOL = 1e-9


def pccovt(
    adata: AnnData,
    genes: Collection[str],
    *,
    condition_on_covariates: bool = True,
    name: str | None = None,
    layer: str = "normalisr",
    covariates_key: str = "nsc_covariates_norm",
) -> None:
    """Add the top principal component of some genes as a covariate.

    The genes' normalised expression (after removing the existing covariates by least
    squares, if ``condition_on_covariates``) is standardised per gene, and each cell's
    score on its first principal component becomes a new column of the normalised
    covariates, so that later association tests remove it.

    Parameters
    ----------
    adata
        Normalised AnnData (:func:`normalisr_sc.pp.normvar`).
    genes
        Gene names (``var_names``), e.g. ``adata.uns['nsc_gotop']['top_term_genes']``.
    condition_on_covariates
        Remove the existing covariates from the genes first.
    name
        Column name of the new covariate; default ``'pc_covariate_<n>'``.
    layer
        Layer holding the normalised expression.
    covariates_key
        ``adata.obsm`` key of the normalised covariates, which receives the column.

    Returns
    -------
    Nothing; adds ``adata.obsm[covariates_key][name]`` and records the genes and the
    explained variance ratio in ``adata.uns['nsc_pccovt'][name]`` (with its ``params``:
    one record per covariate added); for another ``covariates_key`` than the default,
    in ``adata.uns[covariates_key + '_pccovt'][name]``. NaN or infinite
    values in the genes' expression or in the covariates are refused.
    """
    genes = as_names("genes", genes, allow_none=False)
    check_bool("condition_on_covariates", condition_on_covariates)
    check_str("name", name, allow_none=True)
    check_str("layer", layer)
    check_str("covariates_key", covariates_key)
    require(adata, "layers", layer, "nsc.pp.normvar")
    require(adata, "obsm", covariates_key, "nsc.pp.normvar")
    if len(genes) < 2:
        msg = f"pccovt needs at least 2 genes, got {len(genes)}."
        raise ValueError(msg)
    if not adata.var_names.is_unique:
        msg = (
            "adata.var_names are not unique, so `genes` cannot name genes; call "
            "`adata.var_names_make_unique()` first."
        )
        raise ValueError(msg)
    index = gene_positions(adata, genes)
    covariates = covariate_frame(adata, covariates_key)
    records_key = _pccovt_key(covariates_key)
    name = name or f"pc_covariate_{len(read_record(adata, records_key)) + 1}"
    if name in covariates.columns:
        msg = f"covariate {name!r} already exists in adata.obsm[{covariates_key!r}]; pass another `name=`."
        raise ValueError(msg)
    check_writable(adata, {"obsm": [covariates_key], "uns": [records_key]})
    covariate_values = covariates.to_numpy(dtype=np.float64)
    _finite_or_fail(
        covariate_values,
        f"adata.obsm[{covariates_key!r}]",
        "rerun nsc.pp.normvar or fix those covariates",
    )
    matrix = get_matrix(adata, layer)
    expression = np.vstack(
        [dense_block(matrix[rows])[:, index] for rows in row_slices(adata.n_obs, chunk_cells(None))]
    )
    _finite_or_fail(
        expression, f"adata.layers[{layer!r}] (the {len(genes)} genes)", "rerun nsc.pp.normvar"
    )
    expression = expression.astype(np.float64)
    scale = np.abs(expression).max(axis=0)
    if condition_on_covariates:
        expression = _covariates_removed(expression, covariate_values)
    # Rounding noise left of a gene without variation would be standardised into a
    # component of its own: such genes carry no programme and are left out.
    residual = (expression - expression.mean(axis=0)).std(axis=0)
    constant = residual <= CONSTANT_RTOL * scale
    if constant.all():
        msg = (
            f"the {len(genes)} gene(s) of `genes` have constant expression (variance 0"
            f"{' after removing the covariates' if condition_on_covariates else ''}), so "
            "they define no component; pass genes that vary."
        )
        raise ValueError(msg)
    if constant.any():
        logger.warning(
            "pccovt: %d of %d genes with constant expression are left out: %s",
            int(constant.sum()),
            len(genes),
            ", ".join(np.asarray(genes)[constant][:10]),
        )
        expression = expression[:, ~constant]
    scores, explained = top_principal_component(expression)
    records = dict(read_record(adata, records_key))
    records[name] = {
        "genes": genes,
        "explained_variance_ratio": explained,
        PARAMS: {
            "name": name,
            "condition_on_covariates": condition_on_covariates,
            "layer": layer,
            "covariates_key": covariates_key,
        },
    }
    store(
        adata,
        obsm={covariates_key: covariates.assign(**{name: scores})},
        uns={records_key: records},
    )
    logger.info(
        "pccovt: added covariate %r from %d genes (%.1f%% variance)",
        name,
        len(genes),
        100 * explained,
    )


def _changed(work: AnnData, adata: AnnData) -> dict[str, dict]:
    """Return what the rounds stored in ``work`` that ``adata`` does not hold (with params)."""
    before, after = fingerprints(adata), fingerprints(work)
    results: dict[str, dict] = {}
    for container, keys in owned_keys(work).items():
        source = getattr(work, container)
        for key in keys:
            if after[container][key] != before.get(container, {}).get(key):
                value = source[key]
                results.setdefault(container, {})[key] = (
                    value.to_numpy() if container in ("obs", "var") else value
                )
    return results


def coex_peel(
    adata: AnnData,
    go_obo: PathLike,
    annotations: PathLike,
    *,
    rounds: int = 3,
    qcut: float = 0.05,
    n_principal: int = 100,
    min_genes: int = 5,
    pcut: float = 0.05,
    evidence: Collection[str] = DEFAULT_EVIDENCE,
    gene_id: str | Mapping[str, str] = "symbol",
    genes: Collection[str] | None = None,
    key: str = "nsc_coex",
    layer: str = "normalisr",
    covariates_key: str = "nsc_covariates_norm",
    key_added: str = "nsc_coex_peel",
) -> None:
    """Peel housekeeping programmes off a co-expression network, one per round.

    Each round runs :func:`coex`, :func:`binnet` and :func:`gotop`, keeps the round's
    network, and adds the top principal component of the top term's genes as a
    covariate with :func:`pccovt`. It stops early when no term is significant (a
    WARNING and ``uns[key_added]['stopped']`` say why). The co-expression is
    finally recomputed with every peeled covariate removed.

    Parameters
    ----------
    adata
        Normalised AnnData (:func:`normalisr_sc.pp.normalize`).
    go_obo, annotations, n_principal, min_genes, pcut, evidence, gene_id
        As in :func:`gotop`.
    rounds
        Maximum number of programmes to peel.
    qcut
        Q-value cutoff of :func:`binnet`.
    genes
        Restrict co-expression to these genes, e.g. the top few thousand expressed.
    key
        Key of the co-expression results.
    layer
        Layer holding the normalised expression.
    covariates_key
        ``adata.obsm`` key of the normalised covariates, which receives the new ones.
    key_added
        ``adata.uns`` key receiving the table of peeled terms.

    Returns
    -------
    Nothing; sets the final co-expression results under ``key`` (with
    ``adata.varp[key + '_net']``), each round's network as
    ``adata.varp[key + '_net_round<r>']`` (round 1 is the network before any peeling),
    the new covariates ``go_round<r>`` in ``adata.obsm[covariates_key]`` (recorded in
    ``adata.uns['nsc_pccovt']``, or ``covariates_key + '_pccovt'``), the last round's :func:`gotop` in
    ``adata.uns['nsc_gotop']``, and ``adata.uns[key_added]`` with ``params`` and a table of the peeled terms (round, term, name,
    pval, pval_bonferroni, odds_ratio, n_genes, n_edges of the round's network) and
    ``stopped``: why the peeling ended.

    Examples
    --------
    >>> nsc.tl.coex_peel(adata, "go-basic.obo", "goa_human.gaf.gz", rounds=2)
    >>> adata.uns["nsc_coex_peel"]["terms"]
    """
    from . import binnet, coex

    check_int("rounds", rounds, minimum=1)
    check_number("qcut", qcut, minimum=0, maximum=1, min_open=True)
    _check_go_params(n_principal, min_genes, pcut, evidence, gene_id)
    for parameter, value in (
        ("key", key),
        ("layer", layer),
        ("covariates_key", covariates_key),
        ("key_added", key_added),
    ):
        check_str(parameter, value)
    if genes is not None:
        genes = as_names("genes", genes)
    # Parse the files first so that bad paths fail before any work.
    read_godag(go_obo)
    _evidence_annotations(annotations, evidence)
    require(adata, "layers", layer, "nsc.pp.normvar")
    require(adata, "obsm", covariates_key, "nsc.pp.normvar")
    check_writable(
        adata,
        {
            "obsm": [covariates_key],
            "varp": [f"{key}_net", *(f"{key}_net_round{r}" for r in range(1, int(rounds) + 1))],
            "uns": [key, "nsc_gotop", _pccovt_key(covariates_key), key_added],
        },
    )
    # The rounds run on an AnnData sharing only the (read-only) expression with ``adata``,
    # so that a failure in any round leaves ``adata`` as it was.
    work = AnnData(
        obs=pd.DataFrame(index=adata.obs_names),
        var=adata.var.copy(),
        layers={layer: adata.layers[layer]},
        obsm={covariates_key: covariate_frame(adata, covariates_key).copy()},
        uns=copy.deepcopy(dict(adata.uns)),
    )
    peeled = []
    stopped = f"peeled the {int(rounds)} round(s) asked for"
    for round_number in range(1, int(rounds) + 1):
        coex(work, layer=layer, genes=genes, covariates_key=covariates_key, key_added=key)
        binnet(work, qcut=qcut, key=key)
        store(work, varp={f"{key}_net_round{round_number}": work.varp[f"{key}_net"].copy()})
        gotop(
            work,
            go_obo,
            annotations,
            n_principal=n_principal,
            min_genes=min_genes,
            pcut=pcut,
            evidence=evidence,
            gene_id=gene_id,
            key=key,
        )
        found = work.uns["nsc_gotop"]
        if "top_term" not in found:
            stopped = f"round {round_number}: {found['no_top_term']}"
            logger.warning("coex_peel stopped in %s.", stopped)
            break
        top = found["enrichment"].set_index("term").loc[found["top_term"]]
        peeled.append(
            {
                "round": round_number,
                "term": found["top_term"],
                "name": top["name"],
                "pval": top["pval"],
                "pval_bonferroni": top["pval_bonferroni"],
                "odds_ratio": top["odds_ratio"],
                "n_genes": len(found["top_term_genes"]),
                "n_edges": int(work.varp[f"{key}_net"].nnz),
            }
        )
        pccovt(
            work,
            found["top_term_genes"],
            name=f"go_round{round_number}",
            layer=layer,
            covariates_key=covariates_key,
        )
    else:
        coex(work, layer=layer, genes=genes, covariates_key=covariates_key, key_added=key)
        binnet(work, qcut=qcut, key=key)
    params = {
        "rounds": int(rounds),
        "qcut": float(qcut),
        "n_principal": int(n_principal),
        "min_genes": int(min_genes),
        "pcut": float(pcut),
        "key": key,
        "layer": layer,
        "covariates_key": covariates_key,
        "key_added": key_added,
    }
    summary = {
        "terms": pd.DataFrame(
            peeled,
            columns=[
                "round",
                "term",
                "name",
                "pval",
                "pval_bonferroni",
                "odds_ratio",
                "n_genes",
                "n_edges",
            ],
        ),
        "stopped": stopped,
    }
    results = _changed(work, adata)
    results.setdefault("uns", {})[key_added] = summary
    store(adata, key_added, params, **results)
