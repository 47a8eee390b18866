"""A generated CRISPR screen for the benchmarks, written to an h5ad file in blocks.

Shared by the benchmarks that need a screen larger than memory (``bench_scale.py``; a
genome-wide low-MOI screen will reuse the counts, the cache and the checks). The screen
is shaped like the at-scale high-MOI screen of Gasperini et al. (2019) by default:

- counts are negative binomial (gamma-Poisson): per-gene mean UMIs at the median depth
  log-normal over three orders of magnitude, per-gene dispersion log-normal around 0.2,
  per-cell library sizes log-normal, replicates (``obs['batch']``) with their own depth
  and per-gene fold changes;
- guides: each cell carries a Poisson number of distinct groups drawn uniformly, a cells
  x groups boolean CSR in ``obsm['guides']`` (names in ``uns['guides']['names']``);
- planted knock-downs (``uns['simulation']``): a guide group lowers the mean of one
  well-expressed target gene in the cells carrying it; every other pair is null.

:func:`screen_file` writes it once to a cache folder under a name that hashes the
parameters; :func:`load_screen` reads its first cells lazily; :func:`check_planted`
scores a DE result against the planted truth.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import _harness as h

if TYPE_CHECKING:
    from collections.abc import Callable

    from anndata import AnnData
    from scipy import sparse

DEFAULT_WORKDIR = Path("~/.cache/normalisr_sc_bench").expanduser()
#: Bump when the generator changes, so that cached screens are regenerated.
GENERATOR_VERSION = 2
#: Cells generated per block (part of the random stream: a cell depends on its block).
GENERATION_BLOCK = 1000
#: obsm key of the cells x guide groups 0/1 matrix (names in ``uns[GUIDES]['names']``).
GUIDES = "guides"
COVARIATE = "batch"
#: Fewest cells carrying a group for it to be tested (``min_cells`` of ``nsc.tl.de``).
MIN_CELLS = 2
#: Read-count QC bounds of the Normalisr recipe that the screen benchmarks pass to
#: ``nsc.pp.normalize(qc=...)`` explicitly (the package default may change; bounds left
#: out are off, and the cell bounds apply as given, not scaled to the number of genes).
QC_BOUNDS = {
    "min_gene_cells": 50,
    "min_gene_cell_fraction": 0.02,
    "min_cell_counts": 500,
    "min_cell_genes": 100,
}


@dataclass(frozen=True)
class Screen:
    """Parameters of a generated high-MOI screen (defaults: the at-scale screen)."""

    n_cells: int = 200_000
    n_genes: int = 13_000
    n_groups: int = 6_000
    guides_per_cell: float = 28.0
    median_umis: float = 4_000.0
    n_batches: int = 2
    n_planted: int = 20
    seed: int = 0

    def key(self) -> dict:
        return {**asdict(self), "version": GENERATOR_VERSION, "block": GENERATION_BLOCK}

    def path(self, workdir: Path) -> Path:
        digest = hashlib.sha1(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()
        return workdir / (
            f"screen_{self.n_cells}x{self.n_genes}x{self.n_groups}_{digest[:10]}.h5ad"
        )


QUICK_SCREEN = Screen(
    n_cells=4_000, n_genes=400, n_groups=100, guides_per_cell=4.0, median_umis=3_000.0, n_planted=5
)


def _truncated_normal(
    rng: np.random.Generator, mean: float, sd: float, low: float, high: float, size: int
) -> np.ndarray:
    values = rng.normal(mean, sd, size)
    outside = (values < low) | (values > high)
    while outside.any():
        values[outside] = rng.normal(mean, sd, outside.sum())
        outside = (values < low) | (values > high)
    return values


def _gene_parameters(screen: Screen, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-gene expression share, NB dispersion and per-batch fold changes.

    Mean UMIs per gene at the median depth follow a log-normal spanning three orders of
    magnitude (about 0.05 to 100 at 4,000 UMIs per cell), truncated below so that every
    gene is detected in a few percent of cells and passes the recipe's read-count QC,
    like the 13,000 expressed genes of the real screen.
    """
    log10_mean = _truncated_normal(rng, -0.75, 0.7, -1.1, 2.5, screen.n_genes)
    share = 10.0**log10_mean
    share /= share.sum()
    dispersion = np.exp(rng.normal(np.log(0.2), 0.5, screen.n_genes))  # var = mu + phi mu^2
    batch_fold = np.exp(rng.normal(0.0, 0.15, (screen.n_batches, screen.n_genes)))
    batch_fold[0] = 1.0
    return {"share": share, "dispersion": dispersion, "batch_fold": batch_fold}


def _guide_matrix(screen: Screen, rng: np.random.Generator):
    """Cells x groups CSR of 0/1: a Poisson number of uniformly drawn distinct groups."""
    from scipy import sparse

    per_cell = rng.poisson(screen.guides_per_cell, screen.n_cells)
    cells = np.repeat(np.arange(screen.n_cells, dtype=np.int64), per_cell)
    groups = rng.integers(screen.n_groups, size=cells.size)
    # a group drawn twice for one cell counts once (rare at 28 of 6,000)
    pairs = np.unique(cells * screen.n_groups + groups)
    rows, columns = np.divmod(pairs, screen.n_groups)
    return sparse.csr_matrix(
        (np.ones(pairs.size, dtype=bool), (rows, columns)), shape=(screen.n_cells, screen.n_groups)
    )


def _count_block(
    screen: Screen,
    genes: dict,
    depth: np.ndarray,
    batch: np.ndarray,
    guides,
    planted: dict,
    rng: np.random.Generator,
):
    """NB counts of one block of cells as float32 CSR (the dense block is transient)."""
    from scipy import sparse

    mean = depth[:, None] * genes["share"] * genes["batch_fold"][batch]
    carrying = guides[:, planted["groups"]].tocsc()
    for k, (target, fraction) in enumerate(zip(planted["genes"], planted["fraction"], strict=True)):
        cells = carrying.indices[carrying.indptr[k] : carrying.indptr[k + 1]]
        mean[cells, target] *= fraction
    size = 1.0 / genes["dispersion"]
    # Gamma-Poisson: NB with mean `mean` and dispersion 1/size
    rate = rng.standard_gamma(np.broadcast_to(size, mean.shape))
    rate *= mean / size
    del mean
    counts = rng.poisson(rate)
    del rate
    return sparse.csr_matrix(counts.astype(np.float32))


def generate(screen: Screen, path: Path) -> dict:
    """Write ``screen`` to ``path`` block by block; return generation statistics.

    The obs/var/obsm/uns skeleton is written with ``AnnData.write_h5ad``; X is then added
    with ``anndata.io.write_elem`` (first block, 64-bit indptr) and
    ``anndata.io.sparse_dataset(...).append`` (the other blocks), so the dense matrix is
    never held, only one block of ``GENERATION_BLOCK`` cells at a time.
    """
    import anndata as ad
    import pandas as pd

    start = time.perf_counter()
    seeds = np.random.SeedSequence(screen.seed).spawn(3)
    rng_genes, rng_cells, rng_counts = (np.random.default_rng(s) for s in seeds)
    genes = _gene_parameters(screen, rng_genes)
    # strong knock-downs of well-expressed genes, like the TSS-targeting positive controls
    # of the real screen: 17 of 20 are found at 25k cells (about 115 carrying cells)
    expressed = np.flatnonzero(genes["share"] >= np.quantile(genes["share"], 0.95))
    planted = {
        "groups": rng_genes.choice(screen.n_groups, screen.n_planted, replace=False),
        "genes": rng_genes.choice(expressed, screen.n_planted, replace=False),
        "fraction": rng_genes.uniform(0.2, 0.5, screen.n_planted),
    }
    guides = _guide_matrix(screen, rng_cells)
    batch = rng_cells.integers(screen.n_batches, size=screen.n_cells)
    batch_depth = np.exp(rng_cells.normal(0.0, 0.1, screen.n_batches))
    depth = screen.median_umis * np.exp(rng_cells.normal(0.0, 0.45, screen.n_cells))
    depth *= batch_depth[batch]

    gene_names = np.array([f"gene{j:05d}" for j in range(screen.n_genes)])
    group_names = np.array([f"group{k:04d}" for k in range(screen.n_groups)])
    obs = pd.DataFrame(
        {
            COVARIATE: pd.Categorical.from_codes(
                batch, [f"rep{b + 1}" for b in range(screen.n_batches)]
            ),
            "n_guides": np.diff(guides.indptr).astype(np.int32),
        },
        index=[f"cell{i:06d}" for i in range(screen.n_cells)],
    )
    var = pd.DataFrame({"mean_umis": genes["share"] * screen.median_umis}, index=gene_names)
    uns = {
        GUIDES: {"names": group_names},
        "simulation": {
            "params": json.dumps(screen.key(), sort_keys=True),
            "planted_groups": group_names[planted["groups"]],
            "planted_genes": gene_names[planted["genes"]],
            "planted_fraction": planted["fraction"],
        },
    }
    return _write_in_blocks(
        path,
        ad.AnnData(obs=obs, var=var, obsm={GUIDES: guides}, uns=uns),
        lambda rows: _count_block(
            screen, genes, depth[rows], batch[rows], guides[rows], planted, rng_counts
        ),
        screen.key(),
        start,
    )


def _write_in_blocks(
    path: Path,
    skeleton: AnnData,
    count_block: Callable[[slice], sparse.csr_matrix],
    params: dict,
    start: float,
    *,
    progress: bool = False,
) -> dict:
    """Write ``skeleton`` with the counts ``count_block(rows)`` appended block by block.

    The file is written under a partial name and moved into place when complete; returns
    the generation statistics, also saved beside it as JSON.
    """
    import h5py
    from anndata.io import sparse_dataset, write_elem

    partial = path.with_suffix(".partial.h5ad")
    skeleton.write_h5ad(partial)
    n_cells, nnz = skeleton.n_obs, 0
    with h5py.File(partial, "a") as file:
        for first in range(0, n_cells, GENERATION_BLOCK):
            rows = slice(first, min(first + GENERATION_BLOCK, n_cells))
            block = count_block(rows)
            nnz += block.nnz
            if first == 0:
                write_elem(
                    file, "X", block, dataset_kwargs={"indptr_dtype": np.int64, "chunks": (2**18,)}
                )
            else:
                sparse_dataset(file["X"]).append(block)
            if progress and (rows.stop // GENERATION_BLOCK) % 50 == 0:
                print(
                    f"  generated {rows.stop} cells in {time.perf_counter() - start:.0f}s",
                    flush=True,
                )
    partial.replace(path)
    stats = {
        "seconds": time.perf_counter() - start,
        "bytes": path.stat().st_size,
        "nnz": nnz,
        "params": params,
    }
    path.with_suffix(".json").write_text(json.dumps(stats, indent=1))
    return stats


def describe_file(path: Path, stats: dict, n_cells: int) -> str:
    """One line on a generated screen file: size, nonzeros, generation time, load now."""
    return (
        f"screen {path}: {stats['bytes'] / h.GB:.2f} GB, {stats['nnz']} nonzeros "
        f"({stats['nnz'] / n_cells:.0f} per cell), generated in "
        f"{stats['seconds']:.0f}s{' (cached)' if stats['cached'] else ''}; load 1m now "
        f"{h.load_1min():.1f}"
    )


def screen_file(screen: Screen, workdir: Path) -> tuple[Path, dict]:
    """The cached h5ad of ``screen`` (generated if missing) and its generation statistics."""
    path = screen.path(workdir)
    stats_path = path.with_suffix(".json")
    if path.exists() and stats_path.exists():
        stats = json.loads(stats_path.read_text())
        if stats["params"] == screen.key():
            return path, {**stats, "cached": True}
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"generating {screen.n_cells} cells x {screen.n_genes} genes x {screen.n_groups} "
        f"groups -> {path}",
        flush=True,
    )
    return path, {**generate(screen, path), "cached": False}


def load_screen(path: str, n_cells: int, chunk_size: int):
    """The first ``n_cells`` of the screen: X lazy (dask, CSR chunks), the rest in memory."""
    import h5py
    from anndata import AnnData
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    with h5py.File(path, "r") as file:
        obs = read_elem(file["obs"]).iloc[:n_cells]
        var = read_elem(file["var"])
        guides = read_elem(file[f"obsm/{GUIDES}"])[:n_cells]
        uns = {
            GUIDES: read_elem(file[f"uns/{GUIDES}"]),
            "simulation": read_elem(file["uns/simulation"]),
        }
    # the lazy array reopens the file by name in each task (also on cluster workers)
    counts = read_elem_lazy(h5py.File(path, "r")["X"], chunks=(chunk_size, var.shape[0]))
    return AnnData(X=counts[:n_cells], obs=obs, var=var, obsm={GUIDES: guides}, uns=uns)


def groups_carried(adata, min_cells: int = MIN_CELLS) -> list[str] | None:
    """Groups carried by at least ``min_cells`` cells (None: all are), for small subsets."""
    carried = np.diff(adata.obsm[GUIDES].tocsc().indptr)
    if (carried >= min_cells).all():
        return None
    return [
        str(n) for n, c in zip(adata.uns[GUIDES]["names"], carried, strict=True) if c >= min_cells
    ]


def check_planted(adata, key: str = "nsc_de") -> dict:
    """-log10 p of the planted knock-downs, their fold changes and the null p < 0.05.

    ``logfc`` is read as a natural-log fold change and compared with the log of the
    planted fraction of the mean (``planted_fold_ratio``, 1 if recovered exactly).
    """
    truth = adata.uns["simulation"]
    log10p = adata.varm[f"{key}_log10p"]
    logfc = adata.varm[f"{key}_logfc"]
    planted = [
        (g, k, f)
        for g, k, f in zip(
            truth["planted_genes"], truth["planted_groups"], truth["planted_fraction"], strict=True
        )
        if g in log10p.index and k in log10p.columns
    ]
    found = np.array([log10p.at[g, k] for g, k, _ in planted])
    fold = np.array([logfc.at[g, k] / np.log(f) for g, k, f in planted])
    null = log10p.to_numpy(copy=True)
    for g, k, _ in planted:
        null[log10p.index.get_loc(g), log10p.columns.get_loc(k)] = np.nan
    null = null[np.isfinite(null)]
    bonferroni = -np.log10(0.05 / log10p.size)
    return {
        "planted": len(planted),
        "planted_min_log10p": float(found.min()) if found.size else float("nan"),
        "planted_found": int((found > bonferroni).sum()),
        "planted_fold_ratio": float(np.median(fold)) if fold.size else float("nan"),
        "null_p05": float((null > -np.log10(0.05)).mean()),
    }


#: A tiny screen on which a measuring process runs its method once before measuring.
WARM_UP_SCREEN = replace(QUICK_SCREEN, n_cells=300, n_genes=150, n_groups=10, n_planted=1)


# ---------------------------------------------------------------- genome-wide low MOI

#: obs column of the low-MOI screen's perturbation labels, and its baseline label.
PERTURBATION, NON_TARGETING = "perturbation", "non-targeting"


@dataclass(frozen=True)
class LowMoiScreen:
    """Parameters of a generated genome-wide low-MOI screen (Replogle et al. 2022 shape).

    Every cell carries exactly one label (``obs['perturbation']``): ``'non-targeting'``
    with probability ``nt_fraction``, else one of ``n_perturbations`` perturbations drawn
    uniformly (low MOI: about one guide per cell, cells with several guides filtered
    out, as in the published screens). Perturbation ``k`` targets a gene; the first
    ``n_genes`` perturbations target the measured genes (in a random order), the others
    genes that are not measured. ``n_planted`` of the perturbations targeting well
    expressed measured genes (top half by mean) are CRISPRi knock-downs: their cells'
    mean of the target is multiplied by a remaining fraction drawn uniformly in
    ``knockdown``. Every other (perturbation, gene) pair is null. Counts and depth are
    those of :class:`Screen` (negative binomial, log-normal depth around
    ``median_umis``, replicates in ``obs['batch']``).
    """

    n_cells: int = 1_000_000
    n_genes: int = 8_000
    n_perturbations: int = 10_000
    nt_fraction: float = 0.05
    median_umis: float = 10_000.0
    n_batches: int = 2
    n_planted: int = 500
    knockdown: tuple[float, float] = (0.1, 0.4)
    seed: int = 0

    def key(self) -> dict:
        return {
            **asdict(self),
            "design": "low_moi",
            "version": GENERATOR_VERSION,
            "block": GENERATION_BLOCK,
        }

    def path(self, workdir: Path) -> Path:
        digest = hashlib.sha1(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()
        return workdir / (
            f"lowmoi_{self.n_cells}x{self.n_genes}x{self.n_perturbations}_{digest[:10]}.h5ad"
        )

    def estimated_bytes(self, nonzero_per_cell: float) -> float:
        """Bytes of X on disk: float32 values and int32 gene indices per nonzero."""
        return self.n_cells * nonzero_per_cell * 8.0


QUICK_LOW_MOI = LowMoiScreen(
    n_cells=3_000, n_genes=300, n_perturbations=60, nt_fraction=0.2, median_umis=3_000.0,
    n_planted=6,
)  # fmt: skip


def _low_moi_labels(screen: LowMoiScreen, rng: np.random.Generator) -> np.ndarray:
    """Label code per cell: 0 is non-targeting, ``k + 1`` is perturbation ``k``."""
    labels = rng.integers(1, screen.n_perturbations + 1, size=screen.n_cells)
    labels[rng.random(screen.n_cells) < screen.nt_fraction] = 0
    return labels


def _low_moi_block(
    screen: LowMoiScreen,
    genes: dict,
    depth: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray,
    effect: dict,
    rng: np.random.Generator,
):
    """NB counts of one block of cells as float32 CSR (the dense block is transient)."""
    from scipy import sparse

    mean = depth[:, None] * genes["share"] * genes["batch_fold"][batch]
    cells = np.flatnonzero(effect["target"][labels] >= 0)
    mean[cells, effect["target"][labels[cells]]] *= effect["fraction"][labels[cells]]
    size = 1.0 / genes["dispersion"]
    rate = rng.standard_gamma(np.broadcast_to(size, mean.shape))
    rate *= mean / size
    del mean
    counts = rng.poisson(rate)
    del rate
    return sparse.csr_matrix(counts.astype(np.float32))


def generate_low_moi(screen: LowMoiScreen, path: Path, *, progress: bool = False) -> dict:
    """Write the low-MOI ``screen`` to ``path`` block by block; return generation statistics.

    As :func:`generate`: the skeleton with ``AnnData.write_h5ad``, then X appended one
    block of ``GENERATION_BLOCK`` cells at a time (the whole matrix is never held).
    """
    import anndata as ad
    import pandas as pd

    start = time.perf_counter()
    seeds = np.random.SeedSequence(screen.seed).spawn(3)
    rng_genes, rng_cells, rng_counts = (np.random.default_rng(s) for s in seeds)
    genes = _gene_parameters(screen, rng_genes)
    n_measured = min(screen.n_genes, screen.n_perturbations)
    targets = np.full(screen.n_perturbations, -1)
    targets[:n_measured] = rng_genes.permutation(screen.n_genes)[:n_measured]
    expressed = genes["share"] >= np.median(genes["share"])
    candidates = np.flatnonzero((targets >= 0) & expressed[np.maximum(targets, 0)])
    planted = np.sort(rng_genes.choice(candidates, screen.n_planted, replace=False))
    fraction = rng_genes.uniform(*screen.knockdown, screen.n_planted)
    # per label code (0: non-targeting): the knocked-down gene (-1: none) and its fraction
    effect = {"target": np.full(screen.n_perturbations + 1, -1), "fraction": np.ones(0)}
    effect["fraction"] = np.ones(screen.n_perturbations + 1)
    effect["target"][planted + 1] = targets[planted]
    effect["fraction"][planted + 1] = fraction

    labels = _low_moi_labels(screen, rng_cells)
    batch = rng_cells.integers(screen.n_batches, size=screen.n_cells)
    batch_depth = np.exp(rng_cells.normal(0.0, 0.1, screen.n_batches))
    depth = screen.median_umis * np.exp(rng_cells.normal(0.0, 0.45, screen.n_cells))
    depth *= batch_depth[batch]

    gene_names = np.array([f"gene{j:05d}" for j in range(screen.n_genes)])
    names = np.array(
        [NON_TARGETING, *(f"P{k:05d}" for k in range(screen.n_perturbations))], dtype=object
    )
    target_names = np.array(
        [gene_names[t] if t >= 0 else f"unmeasured{k:05d}" for k, t in enumerate(targets)],
        dtype=object,
    )
    obs = pd.DataFrame(
        {
            COVARIATE: pd.Categorical.from_codes(
                batch, [f"rep{b + 1}" for b in range(screen.n_batches)]
            ),
            PERTURBATION: pd.Categorical.from_codes(labels, names),
        },
        index=[f"cell{i:07d}" for i in range(screen.n_cells)],
    )
    var = pd.DataFrame({"mean_umis": genes["share"] * screen.median_umis}, index=gene_names)
    uns = {
        "simulation": {
            "params": json.dumps(screen.key(), sort_keys=True),
            "targets": target_names,
            "planted_groups": names[planted + 1].astype(str),
            "planted_genes": gene_names[targets[planted]],
            "planted_fraction": fraction,
        },
    }
    return _write_in_blocks(
        path,
        ad.AnnData(obs=obs, var=var, uns=uns),
        lambda rows: _low_moi_block(
            screen, genes, depth[rows], batch[rows], labels[rows], effect, rng_counts
        ),
        screen.key(),
        start,
        progress=progress,
    )


def low_moi_file(screen: LowMoiScreen, workdir: Path, *, progress: bool = False):
    """The cached h5ad of the low-MOI ``screen`` (generated if missing) and its statistics."""
    path = screen.path(workdir)
    stats_path = path.with_suffix(".json")
    if path.exists() and stats_path.exists():
        stats = json.loads(stats_path.read_text())
        if stats["params"] == json.loads(json.dumps(screen.key())):
            return path, {**stats, "cached": True}
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"generating a low-MOI screen of {screen.n_cells} cells x {screen.n_genes} genes x "
        f"{screen.n_perturbations} perturbations -> {path}",
        flush=True,
    )
    return path, {**generate_low_moi(screen, path, progress=progress), "cached": False}


def load_low_moi(path: str, n_cells: int, chunk_size: int):
    """The first ``n_cells`` of a low-MOI screen: X lazy from disk (dask, CSR chunks)."""
    import h5py
    from anndata import AnnData
    from anndata.experimental import read_elem_lazy
    from anndata.io import read_elem

    with h5py.File(path, "r") as file:
        obs = read_elem(file["obs"]).iloc[:n_cells].copy()
        var = read_elem(file["var"])
        uns = {"simulation": read_elem(file["uns/simulation"])}
    obs[PERTURBATION] = obs[PERTURBATION].cat.remove_unused_categories()
    counts = read_elem_lazy(h5py.File(path, "r")["X"], chunks=(chunk_size, var.shape[0]))
    return AnnData(X=counts[:n_cells], obs=obs, var=var, uns=uns)


def low_moi_groups(adata, min_cells: int = MIN_CELLS) -> list[str]:
    """Perturbations carried by at least ``min_cells`` cells (the tested groups)."""
    sizes = adata.obs[PERTURBATION].value_counts()
    return sorted(str(g) for g, n in sizes.items() if n >= min_cells and g != NON_TARGETING)


def null_calibration(adata, key: str = "nsc_de", *, sample: int = 2_000_000) -> dict:
    """Genomic inflation and fraction of p < 0.05 of the null pairs (planted ones left out).

    The inflation is the median chi-square (1 df) of the null p-values over its
    expectation (0.455), on a random sample of ``sample`` null pairs.
    """
    from scipy import stats

    truth = adata.uns["simulation"]
    pvals = adata.varm[f"{key}_pvals"]
    null = pvals.to_numpy(dtype=np.float64, copy=True)
    for g, k in zip(truth["planted_genes"], truth["planted_groups"], strict=True):
        if g in pvals.index and k in pvals.columns:
            null[pvals.index.get_loc(g), pvals.columns.get_loc(k)] = np.nan
    null = null[np.isfinite(null)]
    rng = np.random.default_rng(0)
    chosen = null if null.size <= sample else rng.choice(null, sample, replace=False)
    chi2 = stats.chi2.isf(chosen, 1)
    return {
        "null_pairs": int(null.size),
        "null_lambda": float(np.median(chi2) / stats.chi2.ppf(0.5, 1)),
        "null_p05_all": float((null < 0.05).mean()),
    }
