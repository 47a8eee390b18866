"""Guide assignment by a two-component mixture on each guide's UMI counts.

Model
-----
For one guide, the UMI count ``y`` of a cell is drawn from one of two components:

- *background* (the guide is not in the cell; its counts come from ambient guide
  transcripts and barcode swaps): a negative binomial of mean ``lam`` (per guide) and
  size ``r`` (one for all guides), the same in every cell;
- *present* (the cell carries the guide): a log-normal count, ``y = round(exp(x))`` with
  ``x ~ Normal(mu, sd**2)``, so that ``P(y = k) = Phi((log(k + 1/2) - mu) / sd) -
  Phi((log(k - 1/2) - mu) / sd)`` for ``k >= 1`` and ``P(y = 0) = Phi((log(1/2) - mu)
  / sd)``;

with a fraction ``pi`` of the cells in the present component. This is the
Poisson-Gaussian mixture that crispat and pertpy fit (a count background and a
Gaussian on the log counts of the cells carrying the guide: the counts of a present
guide spread over orders of magnitude between cells, much more than any count
distribution with one rate would allow), with two changes. The Gaussian on the log
scale is rounded to integers, so that the mixture is one proper distribution of
counts instead of probabilities of one component compared with a density of the
other; this keeps the likelihood bounded (a component sitting on a single count value
gets probability at most 1, not an unbounded density), so that the likelihood ratio
against the background alone (below) means what it says. And the background is
negative binomial rather than Poisson: ambient counts vary between cells, and on the
Papalexi screen the cells with 2 and 3 background UMIs of a guide are several times
more frequent than a Poisson with the observed rate allows; with a Poisson background
the present component stretches down to cover that tail (on Papalexi, 10,500 cells
assigned two or more guides, against 2,000 with the negative binomial). The Poisson is
the limit of large ``r``. The size is shared: it is what a cell factor common to all
guides does (counts Poisson with rate ``lam`` times a gamma cell factor of mean 1 and
variance ``1/r`` are exactly this negative binomial), and the background cells of all
guides together fix the shape of the tail, which one weakly captured guide could
otherwise bend to swallow its carriers (with one size per guide, 13 of 300 guides with
a median of 10 UMIs lost all their carriers in a generated screen of 5,000 cells).
SCEPTRE's alternative (Poisson regressions with the cell's
total guide UMIs as covariate) needs the covariate of every cell in every iteration,
which breaks the sparse sufficient statistics used here.

Fit
---
Expectation-maximisation, for all guides at once. The present component is treated
as an interval-censored normal on the log scale (the count ``k`` says
``log(k - 1/2) < x < log(k + 1/2)``), whose M-step is closed-form through the moments
of the truncated normal; the background mean is the weighted mean count, and the
shared size takes one Newton step on log ``r`` per iteration, kept only if it raises the
likelihood (halved otherwise), so that the likelihood never decreases (a generalised
EM). While the size moves, all guides iterate; once an iteration changes log ``r`` by
less than 1e-4, it is fixed. Everything depends on a cell only through its count, so the data are
reduced once to the distinct (guide, count) pairs with their number of cells: cells
with count 0 are one pair per guide whose number of cells is known without visiting
them, and the cost of an iteration is proportional to the number of distinct nonzero
(guide, count) pairs, not to cells x guides. Initialisation is deterministic: the
cells with at least ``max(2, sqrt(largest count))`` UMIs of the guide start in the
present component, all others in the background. Each guide stops when the relative
change of its log-likelihood falls below ``tol`` (or after ``max_iter`` iterations;
``converged`` says which).

Assignment and degenerate guides
--------------------------------
A cell is assigned a guide when the posterior probability of the present component
exceeds ``threshold``. A guide gets no cell at all (``status`` says why) when

- ``'empty'``: no cell has a count of it;
- ``'not_separable'``: the mixture does not beat the background alone (the guide's
  mean count and the shared size) by the BIC (twice the log-likelihood gain at most 3 log(n_cells), for the
  three extra parameters), or its present component does not lie above the background
  (median ``exp(mu)`` not above ``lam``). Guides whose counts are all one value fall here
  when that value is a plausible background count (a guide seen once in a few cells);
  a single high value shared by several cells is a present guide and is assigned.

Cells with count 0 are never assigned. Their posterior is the same for all of them,
``pi P(y=0 | present) / P(y=0)``, reported per guide as ``posterior_at_zero`` (of the
order of ``pi Phi((log(1/2) - mu) / sd)``, far below any useful threshold when the
present component lies at several UMIs); the posterior matrix stores the nonzero
counts only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from scipy.special import digamma, gammaln, log_ndtr, ndtr, polygamma

from ._blocks import row_block, row_slices

if TYPE_CHECKING:
    from .._types import RowSliceable

_LOG_HALF = float(np.log(0.5))
_LOG_SQRT_2PI = 0.5 * float(np.log(2 * np.pi))
#: parameters the mixture adds to the background alone (pi, mu, sd): the BIC penalty
_EXTRA_PARAMETERS = 3
#: smallest background rate, so that the Poisson log-probabilities stay finite
_MIN_RATE = 1e-12
#: bounds and start of the background's negative-binomial size (large: near Poisson)
_MIN_SIZE, _MAX_SIZE, _START_SIZE = 1e-2, 1e6, 10.0
_MAX_LOG_STEP, _HALVINGS = 2.0, 4
#: the shared size is fixed once an iteration changes its log by less than this
_SIZE_TOL = 1e-4
#: background weight (cells) below which a pair is left out of the size's Newton step
_NEGLIGIBLE = 1e-12
#: the EM drops converged guides from its arrays once fewer than this fraction is active
_COMPACT = 0.75
DEFAULT_BLOCK = 50_000


@dataclass
class GuideMixture:
    """Result of :func:`assign_mixture`.

    Attributes
    ----------
    assigned
        Cells x guides CSR boolean: the cells assigned each guide.
    posterior
        Cells x guides CSR float64 posterior probability of the present component at
        the nonzero counts (exact zeros dropped), or None if not asked for.
    params
        Per-guide arrays (length n_guides): ``pi`` (fraction of cells carrying the
        guide), ``background_mean`` and ``background_size`` (negative binomial of the
        background), ``log_mean`` and ``log_sd`` (mean
        and sd of the natural log count of the present component), ``loglik`` and
        ``loglik_background`` (log-likelihood of the mixture and of the background
        alone), ``posterior_at_zero``, ``n_iter``, ``converged``, ``n_nonzero`` (cells
        with a count), ``n_assigned`` (cells assigned), ``min_assigned_count`` (the
        smallest count assigned: the guide's effective UMI threshold; 0 if none) and
        ``status`` (``'fitted'``, ``'not_separable'`` or ``'empty'``).
    """

    assigned: sparse.csr_matrix
    posterior: sparse.csr_matrix | None
    params: dict[str, np.ndarray]


def _interval(alpha: np.ndarray, beta: np.ndarray):
    """Log probability and first two moment terms of a standard normal on (alpha, beta).

    Returns ``log P``, ``(phi(alpha) - phi(beta)) / P`` and ``(alpha phi(alpha) - beta
    phi(beta)) / P`` with ``P = Phi(beta) - Phi(alpha)``; ``alpha`` may be ``-inf``.
    Computed in the tail where both bounds lie (mirrored to the left tail), so that
    intervals far from the mean keep their relative precision.
    """
    right = alpha > 0  # both bounds in the right tail: mirror
    lo = np.where(right, -beta, alpha)
    hi = np.where(right, -alpha, beta)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
        straddle = (lo < 0) & (hi > 0)
        log_p = np.where(
            straddle,
            np.log(np.maximum(ndtr(hi) - ndtr(lo), 1e-300)),
            log_hi + np.log(-np.expm1(np.minimum(log_lo - log_hi, 0.0))),
        )
        log_phi_a = -0.5 * alpha * alpha - _LOG_SQRT_2PI
        log_phi_b = -0.5 * beta * beta - _LOG_SQRT_2PI
        ra = np.exp(log_phi_a - log_p)
        rb = np.exp(log_phi_b - log_p)
        m1 = ra - rb
        m2 = np.where(np.isfinite(alpha), alpha * ra, 0.0) - np.where(
            np.isfinite(beta), beta * rb, 0.0
        )
    return log_p, m1, m2


def _collect(counts: RowSliceable, block_size: int):
    """Distinct (guide, count) pairs over all cells, read ``block_size`` cells at a time.

    Returns the pairs' guide, count and number of cells, the CSR structure (indptr,
    indices) of the nonzero counts and, per nonzero, the index of its pair.
    """
    n_cells = counts.shape[0]
    indptr_parts = [np.zeros(1, dtype=np.int64)]
    index_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    offset = 0
    for rows in row_slices(n_cells, block_size):
        block = row_block(counts, rows)
        if not sparse.issparse(block):
            block = sparse.csr_matrix(block)
        data = np.asarray(block.data, dtype=np.float64)
        if data.size and (
            not np.isfinite(data).all() or data.min() < 0 or (data != np.round(data)).any()
        ):
            msg = "guide counts must be non-negative integers (UMI counts)."
            raise ValueError(msg)
        kept = data != 0  # explicit zeros of the sparse input are not counts
        row_of = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        per_row = np.bincount(row_of[kept], minlength=block.shape[0])
        indptr_parts.append(np.cumsum(per_row, dtype=np.int64) + offset)
        offset += int(kept.sum())
        index_parts.append(np.asarray(block.indices, dtype=np.int64)[kept])
        value_parts.append(data[kept].astype(np.int64))
    indptr = np.concatenate(indptr_parts)
    indices = np.concatenate(index_parts) if index_parts else np.zeros(0, dtype=np.int64)
    values = np.concatenate(value_parts) if value_parts else np.zeros(0, dtype=np.int64)
    top = int(values.max()) + 1 if values.size else 1
    codes = indices * top + values
    unique, inverse, weight = np.unique(codes, return_inverse=True, return_counts=True)
    return (
        unique // top,
        unique % top,
        weight.astype(np.float64),
        indptr,
        indices,
        inverse.ravel(),
    )


def _nb_logpmf(k, gammaln_k, mean, size):
    """Negative-binomial log-probabilities (mean ``mean``, size ``size``) of counts ``k``."""
    log_rm = np.log(size + mean)
    return (
        gammaln(k + size)
        - gammaln(size)
        - gammaln_k
        + size * (np.log(size) - log_rm)
        + k * (np.log(mean) - log_rm)
    )


def _present_terms(k, mu, sd):
    """Log-probability of counts ``k`` under the rounded log-normal and interval moments."""
    lower = np.log(np.maximum(k - 0.5, 0.5))
    alpha = np.where(k > 0, (lower - mu) / sd, -np.inf)
    beta = (np.log(k + 0.5) - mu) / sd
    return _interval(alpha, beta)


def _size_step(g, w0, kk, mean, size):
    """One safeguarded Newton step on log(size), the size shared by all guides.

    ``size`` is a scalar: the step maximises the background likelihood summed over the
    pairs given (weights ``w0``: their background responsibilities times cells).
    """
    # pairs with (almost) no background weight, the counts of present guides, add
    # nothing to the sums below: left out, they no longer cost a digamma each
    keep = w0 > _NEGLIGIBLE
    g, w0, kk = g[keep], w0[keep], kk[keep]
    m = mean[g]
    score = (
        digamma(kk + size)
        - digamma(size)
        + np.log(size)
        - np.log(size + m)
        + 1
        - (kk + size) / (size + m)
    )
    curv = (
        polygamma(1, kk + size)
        - polygamma(1, size)
        + 1 / size
        - 1 / (size + m)
        - (m - kk) / (size + m) ** 2
    )
    d1 = float(np.dot(w0, score)) * size
    d2 = float(np.dot(w0, curv)) * size * size + d1
    step = -d1 / d2 if d2 < 0 else float(np.sign(d1))
    step = float(np.clip(step, -_MAX_LOG_STEP, _MAX_LOG_STEP))
    gk = gammaln(kk + 1.0)
    before = float(np.dot(w0, _nb_logpmf(kk, gk, m, size)))
    for _ in range(_HALVINGS):
        trial = float(np.clip(size * np.exp(step), _MIN_SIZE, _MAX_SIZE))
        if trial == size:
            break
        if float(np.dot(w0, _nb_logpmf(kk, gk, m, trial))) >= before:
            return trial
        step /= 2
    return size


def _fit(guide, k, weight, n_cells, n_guides, *, tol, max_iter, min_sd):
    """EM over all guides at once on the (guide, count, weight) pairs (k = 0 included).

    Two phases: while the shared background size moves, every guide iterates; once its
    relative change is below ``_SIZE_TOL``, it is fixed and each guide stops on its own
    convergence (converged guides leave the arrays).
    """
    gammaln_k = gammaln(k + 1.0)
    top = np.zeros(n_guides)
    np.maximum.at(top, guide, k)
    # deterministic start: large counts of each guide present, the rest background
    start = np.maximum(2.0, np.sqrt(top))
    r1 = (k >= start[guide]).astype(np.float64)
    log_k = np.log(np.maximum(k, 1.0))

    def m_step(g, w, kk, r1, mean_x, sq_x, size, move_size):
        w1 = w * r1
        w0 = w - w1
        n1 = np.bincount(g, w1, n_guides)
        n0 = np.bincount(g, w0, n_guides)
        lam = np.maximum(np.bincount(g, w0 * kk, n_guides) / np.maximum(n0, 1e-300), _MIN_RATE)
        if move_size:
            size = _size_step(g, w0, kk, lam, size)
        pi = n1 / n_cells
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = np.bincount(g, w1 * mean_x, n_guides) / n1
            var = np.bincount(g, w1 * sq_x, n_guides) / n1 - mu * mu
        empty = n1 <= 0
        mu = np.where(empty, np.log(np.maximum(top, 1.0)), mu)
        sd = np.where(empty, 1.0, np.sqrt(np.maximum(var, min_sd * min_sd)))
        return pi, lam, size, mu, sd

    pi, lam, size, mu, sd = m_step(guide, weight, k, r1, log_k, log_k * log_k, _START_SIZE, True)

    def e_step(g, kk, gk):
        with np.errstate(divide="ignore"):
            log_pi, log_1mpi = np.log(pi), np.log1p(-pi)
        log0 = log_1mpi[g] + _nb_logpmf(kk, gk, lam[g], size)
        log_p1, m1, m2 = _present_terms(kk, mu[g], sd[g])
        log1 = log_pi[g] + log_p1
        total = np.logaddexp(log0, log1)
        with np.errstate(invalid="ignore"):
            post = np.where(np.isfinite(log1), np.exp(log1 - total), 0.0)
        return total, post, m1, m2

    loglik = np.full(n_guides, -np.inf)
    n_iter = np.zeros(n_guides, dtype=np.int64)
    converged = np.zeros(n_guides, dtype=bool)
    active = np.ones(n_guides, dtype=bool)
    sel = np.arange(guide.size)
    size_moving = True
    for _ in range(max_iter):
        g, kk, w = guide[sel], k[sel], weight[sel]
        total, post, m1, m2 = e_step(g, kk, gammaln_k[sel])
        new_ll = np.bincount(g, w * total, n_guides)
        # E[x | interval] and E[x^2 | interval] under the present component
        mg, s = mu[g], sd[g]
        ex = np.where(post > 0, mg + s * m1, 0.0)
        ex2 = np.where(post > 0, mg * mg + 2 * mg * s * m1 + s * s * (1 + m2), 0.0)
        new_pi, new_lam, new_size, new_mu, new_sd = m_step(
            g, w, kk, post, ex, ex2, size, size_moving
        )
        done = active & (np.abs(new_ll - loglik) <= tol * np.abs(new_ll)) & (not size_moving)
        pi, lam, mu, sd = (
            np.where(active, a, b)
            for a, b in zip((new_pi, new_lam, new_mu, new_sd), (pi, lam, mu, sd), strict=True)
        )
        if size_moving:
            size_moving = bool(abs(np.log(new_size / size)) > _SIZE_TOL)
            size = new_size
        loglik = np.where(active, new_ll, loglik)
        n_iter += active
        converged |= done
        active &= ~done
        if not active.any():
            break
        if active[g].mean() < _COMPACT:
            sel = sel[active[g]]
    # final posteriors and log-likelihood at the returned parameters
    total, post, _, _ = e_step(guide, k, gammaln_k)
    loglik = np.bincount(guide, weight * total, n_guides)
    return post, {
        "pi": pi,
        "background_mean": lam,
        "background_size": np.full(n_guides, size),
        "log_mean": mu,
        "log_sd": sd,
        "loglik": loglik,
        "n_iter": n_iter,
        "converged": converged,
    }


def assign_mixture(
    counts: RowSliceable,
    *,
    threshold: float = 0.5,
    posterior: bool = False,
    tol: float = 1e-8,
    max_iter: int = 500,
    min_sd: float = 0.1,
    block_size: int = DEFAULT_BLOCK,
) -> GuideMixture:
    """Assign guides to cells by a background/present mixture fitted to each guide.

    See the module docstring for the model, the fit and the degenerate guides.

    Parameters
    ----------
    counts
        Cells x guides UMI counts (non-negative integers): CSR, dense, or anything
        row-sliceable (h5py dataset, dask array); read ``block_size`` cells at a time.
    threshold
        A cell is assigned a guide when its posterior probability of carrying it is
        above this, in (0, 1).
    posterior
        Also return the posterior probabilities at the nonzero counts.
    tol
        A guide's EM stops when the change of its log-likelihood is at most ``tol``
        times its absolute value.
    max_iter
        Largest number of EM iterations of a guide.
    min_sd
        Smallest standard deviation of the log count of the present component.
    block_size
        Cells read at a time.

    Returns
    -------
    A :class:`GuideMixture` with the assignment, the optional posteriors and the
    per-guide parameters.
    """
    if not 0 < threshold < 1:
        msg = f"threshold must be a probability in (0, 1), got {threshold!r}."
        raise ValueError(msg)
    if not (tol > 0 and max_iter >= 1 and min_sd > 0):
        msg = (
            f"tol and min_sd must be positive and max_iter at least 1, got tol={tol!r}, "
            f"max_iter={max_iter!r}, min_sd={min_sd!r}."
        )
        raise ValueError(msg)
    n_cells, n_guides = counts.shape
    guide, k, weight, indptr, indices, inverse = _collect(counts, block_size)
    n_nonzero = np.bincount(guide, weight, n_guides)
    zeros = n_cells - n_nonzero
    # one pair of count 0 per guide, weighted by its number of cells
    all_guide = np.concatenate([guide, np.arange(n_guides)])
    all_k = np.concatenate([k, np.zeros(n_guides)]).astype(np.float64)
    all_w = np.concatenate([weight, zeros])
    order = np.argsort(all_guide, kind="stable")
    post, params = _fit(
        all_guide[order],
        all_k[order],
        all_w[order],
        n_cells,
        n_guides,
        tol=tol,
        max_iter=max_iter,
        min_sd=min_sd,
    )
    unsorted = np.empty_like(post)
    unsorted[order] = post
    post_nonzero, post_zero = unsorted[: guide.size], unsorted[guide.size :]

    # separation: BIC of the mixture against the background alone (its mean count, the
    # shared size), and the present component above the background
    size = params["background_size"][0] if n_guides else _START_SIZE
    lam0 = np.maximum(np.bincount(guide, weight * k, n_guides) / n_cells, _MIN_RATE)
    null = np.bincount(
        guide, weight * _nb_logpmf(k, gammaln(k + 1.0), lam0[guide], size), n_guides
    ) + zeros * _nb_logpmf(0.0, 0.0, lam0, size)
    gain = 2 * (params["loglik"] - null)
    separable = (gain > _EXTRA_PARAMETERS * np.log(n_cells)) & (
        np.exp(params["log_mean"]) > params["background_mean"]
    )
    status = np.where(n_nonzero == 0, "empty", np.where(separable, "fitted", "not_separable"))
    keep = separable[guide]
    post_nonzero = np.where(keep, post_nonzero, 0.0)
    post_zero = np.where(separable, post_zero, 0.0)

    values = post_nonzero[inverse]
    shape = (n_cells, n_guides)
    chosen = values > threshold
    assigned = sparse.csr_matrix((chosen, indices, indptr), shape=shape)
    assigned.eliminate_zeros()
    assigned = assigned.astype(bool)
    pair_assigned = post_nonzero > threshold
    n_assigned = np.bincount(guide, weight * pair_assigned, n_guides).astype(np.int64)
    smallest = np.full(n_guides, np.inf)
    np.minimum.at(smallest, guide[pair_assigned], k[pair_assigned])
    smallest = np.where(np.isfinite(smallest), smallest, 0).astype(np.int64)
    post_matrix = None
    if posterior:
        post_matrix = sparse.csr_matrix((values, indices.copy(), indptr.copy()), shape=shape)
        post_matrix.eliminate_zeros()
    params.update(
        loglik_background=null,
        posterior_at_zero=post_zero,
        n_nonzero=n_nonzero.astype(np.int64),
        n_assigned=n_assigned,
        min_assigned_count=smallest,
        status=status,
    )
    return GuideMixture(assigned=assigned, posterior=post_matrix, params=params)


def simulate_guide_counts(
    n_cells: int,
    n_guides: int,
    *,
    background: float = 3.0,
    background_dispersion: float = 0.0,
    present_median: float = 40.0,
    present_sd: float = 0.8,
    guide_spread: float = 0.5,
    fraction_two: float = 0.3,
    fraction_none: float = 0.05,
    seed: int = 0,
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Generate guide UMI counts with known guide carriers (for tests and benchmarks).

    Each cell carries no guide (``fraction_none``), two distinct guides
    (``fraction_two``) or one, chosen uniformly. A carried guide has a log-normal count:
    ``round(exp(Normal(log(median_g), present_sd)))`` with a per-guide median
    ``present_median * exp(Normal(0, guide_spread))``. On top, every cell has background
    counts: ``Poisson(background * a_i)`` events spread over the guides with per-guide
    weights ``exp(Normal(0, 1))`` (so most cells have a few background counts on a few
    guides), ``a_i`` a gamma cell factor of mean 1 and variance
    ``background_dispersion`` (0: every cell alike, Poisson background).

    Returns
    -------
    counts
        Cells x guides CSR int64 UMI counts.
    truth
        Cells x guides CSR boolean: the guides each cell carries.
    """
    rng = np.random.default_rng(seed)
    kind = rng.choice(
        3, size=n_cells, p=[fraction_none, 1 - fraction_none - fraction_two, fraction_two]
    )
    first = rng.integers(0, n_guides, n_cells)
    second = (first + 1 + rng.integers(0, max(n_guides - 1, 1), n_cells)) % n_guides
    rows = np.concatenate([np.flatnonzero(kind >= 1), np.flatnonzero(kind == 2)])
    cols = np.concatenate([first[kind >= 1], second[kind == 2]])
    truth = sparse.csr_matrix(
        (np.ones(rows.size, dtype=bool), (rows, cols)), shape=(n_cells, n_guides)
    )
    log_median = np.log(present_median) + guide_spread * rng.standard_normal(n_guides)
    present = np.round(np.exp(log_median[cols] + present_sd * rng.standard_normal(cols.size)))
    if background_dispersion > 0:
        shape = 1 / background_dispersion
        factor = rng.gamma(shape, 1 / shape, n_cells)
    else:
        factor = np.ones(n_cells)
    events = rng.poisson(background * factor)
    weights = np.exp(rng.standard_normal(n_guides))
    bg_cols = rng.choice(n_guides, size=int(events.sum()), p=weights / weights.sum())
    bg_rows = np.repeat(np.arange(n_cells), events)
    counts = sparse.csr_matrix(
        (
            np.concatenate([present, np.ones(bg_rows.size)]),
            (np.concatenate([rows, bg_rows]), np.concatenate([cols, bg_cols])),
        ),
        shape=(n_cells, n_guides),
    )
    counts.sum_duplicates()
    counts.eliminate_zeros()
    return counts.astype(np.int64), truth
