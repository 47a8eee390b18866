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
from .._utils import (
    chunk_cells,
    covariate_frame,
    ensure_actual,
    gene_positions,
    get_matrix,
    logger,
    require,
)

PathLike = str | os.PathLike


def _network(adata: AnnData, key: str) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The binary network of ``key`` and the indices of the genes it covers."""
    net_key = f"{key}_net"
    require(adata, "varp", net_key, "nsc.tl.binnet")
    net = sparse.csr_matrix(adata.varp[net_key], dtype=bool)
    genes = adata.uns.get(key, {}).get("genes")
    covered = (np.arange(adata.n_vars) if genes is None
               else adata.var_names.get_indexer(np.asarray(genes, dtype=str)))
    return net, covered


def _principal_genes(net: sparse.csr_matrix, covered: np.ndarray, n_principal: int) -> np.ndarray:
    """Indices of the ``n_principal`` genes with most edges, ties at the cut kept."""
    degree = np.asarray((net + net.T).astype(bool).sum(axis=1)).ravel()[covered]
    cut = np.sort(degree)[::-1][n_principal - 1]
    if cut == 0:
        msg = (
            f"fewer than {n_principal} genes have any edge in the network; lower "
            "`n_principal` or loosen `nsc.tl.binnet`'s qcut."
        )
        raise ValueError(msg)
    return covered[degree >= cut]


def _annotation_keys(
    adata: AnnData, gene_id: str | Mapping[str, str], annotations
) -> pd.Series:
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


def gotop(
    adata: AnnData,
    go_obo: PathLike,
    annotations: PathLike,
    *,
    n_principal: int = 100,
    min_genes: int = 5,
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
    top term is the most significant one with odds ratio above 1 and at least
    ``min_genes`` principal genes; its genes (annotated to the term or any descendant)
    present in the data form the housekeeping set for :func:`pccovt`.

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
    study/population counts and sizes, genes), ``top_term``, ``top_term_name``,
    ``top_term_genes`` (absent when no term qualifies) and the parameters.
    """
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
    if min_genes < 1:
        msg = f"min_genes must be at least 1, got {min_genes}."
        raise ValueError(msg)
    dag = read_godag(go_obo)
    annotation = read_annotations(annotations, evidence=evidence)
    annotation_id = _annotation_keys(adata, gene_id, annotation)
    propagated = propagate(annotation, dag)
    gene_terms = {gene: propagated[aid] for gene, aid in annotation_id.dropna().items()}

    principal = adata.var_names[_principal_genes(net, covered, n_principal)]
    population = adata.var_names[covered]
    table = enrichment(principal, population, gene_terms, dag)
    candidates = table[(table["odds_ratio"] > 1) & (table["study_count"] >= min_genes)]
    result = {
        "principal_genes": list(principal),
        "enrichment": table,
        "params": {"n_principal": n_principal, "min_genes": min_genes, "key": key,
                   "go_obo": str(go_obo), "annotations": str(annotations),
                   "evidence": sorted(evidence)},
    }
    if candidates.empty:
        logger.info("gotop: no GO term enriched among %d principal genes", principal.size)
    else:
        top = candidates.iloc[0]
        result["top_term"] = top["term"]
        result["top_term_name"] = top["name"]
        result["top_term_genes"] = [g for g, terms in gene_terms.items() if top["term"] in terms]
        logger.info("gotop: top term %s (%s), p=%.3g", top["term"], top["name"], top["pval"])
    ensure_actual(adata)
    adata.uns[key_added] = result


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
    explained variance ratio in ``adata.uns['nsc_pccovt'][name]``.
    """
    require(adata, "layers", layer, "nsc.pp.normvar")
    require(adata, "obsm", covariates_key, "nsc.pp.normvar")
    genes = list(genes)
    if len(genes) < 2:
        msg = f"pccovt needs at least 2 genes, got {len(genes)}."
        raise ValueError(msg)
    index = gene_positions(adata, genes)
    covariates = covariate_frame(adata, covariates_key)
    name = name or f"pc_covariate_{len(adata.uns.get('nsc_pccovt', {})) + 1}"
    if name in covariates.columns:
        msg = f"covariate {name!r} already exists in adata.obsm[{covariates_key!r}]; pass another `name=`."
        raise ValueError(msg)
    matrix = get_matrix(adata, layer)
    expression = np.vstack([dense_block(matrix[rows])[:, index]
                            for rows in row_slices(adata.n_obs, chunk_cells(None))])
    scores, explained = top_principal_component(
        expression, covariates.to_numpy(dtype=np.float64) if condition_on_covariates else None
    )
    ensure_actual(adata)
    adata.obsm[covariates_key] = covariates.assign(**{name: scores})
    adata.uns.setdefault("nsc_pccovt", {})[name] = {
        "genes": genes, "condition_on_covariates": condition_on_covariates,
        "explained_variance_ratio": explained, "layer": layer,
    }
    logger.info("pccovt: added covariate %r from %d genes (%.1f%% variance)",
                name, len(genes), 100 * explained)


def coex_peel(
    adata: AnnData,
    go_obo: PathLike,
    annotations: PathLike,
    *,
    rounds: int = 3,
    qcut: float = 0.05,
    n_principal: int = 100,
    min_genes: int = 5,
    evidence: Collection[str] = DEFAULT_EVIDENCE,
    gene_id: str | Mapping[str, str] = "symbol",
    genes: Collection[str] | None = None,
    key: str = "nsc_coex",
    layer: str = "normalisr",
    covariates_key: str = "nsc_covariates_norm",
) -> None:
    """Peel housekeeping programmes off a co-expression network, one per round.

    Each round runs :func:`coex`, :func:`binnet` and :func:`gotop`, keeps the round's
    network, and adds the top principal component of the top term's genes as a
    covariate with :func:`pccovt`. It stops early when no term qualifies. The
    co-expression is finally recomputed with every peeled covariate removed.

    Parameters
    ----------
    adata
        Normalised AnnData (:func:`normalisr_sc.pp.normalize`).
    go_obo, annotations, n_principal, min_genes, evidence, gene_id
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

    Returns
    -------
    Nothing; sets the final co-expression results under ``key`` (with
    ``adata.varp[key + '_net']``), each round's network as
    ``adata.varp[key + '_net_round<r>']`` (round 1 is the network before any peeling),
    the new covariates ``go_round<r>`` in ``adata.obsm['nsc_covariates_norm']``, and
    ``adata.uns['nsc_coex_peel']`` with a table of the peeled terms (round, term, name,
    pval, odds_ratio, n_genes, n_edges of the round's network).

    Examples
    --------
    >>> nsc.tl.coex_peel(adata, "go-basic.obo", "goa_human.gaf.gz", rounds=2)
    >>> adata.uns["nsc_coex_peel"]["terms"]
    """
    from . import binnet, coex

    if int(rounds) != rounds or rounds < 1:
        msg = f"rounds must be a positive integer, got {rounds!r}."
        raise ValueError(msg)
    # Parse the files first so that bad paths fail before any work.
    read_godag(go_obo)
    read_annotations(annotations, evidence=evidence)
    require(adata, "layers", layer, "nsc.pp.normvar")
    require(adata, "obsm", covariates_key, "nsc.pp.normvar")
    # The rounds run on an AnnData sharing only the (read-only) expression with ``adata``,
    # so that a failure in any round leaves ``adata`` as it was.
    work = AnnData(
        obs=pd.DataFrame(index=adata.obs_names), var=adata.var.copy(),
        layers={layer: adata.layers[layer]},
        obsm={covariates_key: covariate_frame(adata, covariates_key).copy()},
        uns=copy.deepcopy(dict(adata.uns)),
    )
    peeled = []
    for round_number in range(1, int(rounds) + 1):
        coex(work, layer=layer, genes=genes, covariates_key=covariates_key, key_added=key)
        binnet(work, qcut=qcut, key=key)
        work.varp[f"{key}_net_round{round_number}"] = work.varp[f"{key}_net"].copy()
        gotop(work, go_obo, annotations, n_principal=n_principal, min_genes=min_genes,
              evidence=evidence, gene_id=gene_id, key=key)
        found = work.uns["nsc_gotop"]
        if "top_term" not in found:
            break
        top = found["enrichment"].set_index("term").loc[found["top_term"]]
        peeled.append({
            "round": round_number, "term": found["top_term"], "name": top["name"],
            "pval": top["pval"], "odds_ratio": top["odds_ratio"],
            "n_genes": len(found["top_term_genes"]),
            "n_edges": int(work.varp[f"{key}_net"].nnz),
        })
        pccovt(work, found["top_term_genes"], name=f"go_round{round_number}",
               layer=layer, covariates_key=covariates_key)
    else:
        coex(work, layer=layer, genes=genes, covariates_key=covariates_key, key_added=key)
        binnet(work, qcut=qcut, key=key)
    work.uns["nsc_coex_peel"] = {
        "terms": pd.DataFrame(peeled, columns=["round", "term", "name", "pval", "odds_ratio",
                                               "n_genes", "n_edges"]),
        "params": {"rounds": int(rounds), "qcut": qcut, "n_principal": n_principal,
                   "min_genes": min_genes, "key": key},
    }
    ensure_actual(adata)
    adata.obsm[covariates_key] = work.obsm[covariates_key]
    for column in work.var.columns:
        adata.var[column] = work.var[column]
    for name, value in work.varp.items():
        adata.varp[name] = value
    adata.uns.update(work.uns)
