"""Estimators over n samples per problem: pass@k, majority vote at k, difficulty buckets, bootstrap.

pass@k (Chen et al. 2021): with n samples of a problem of which c are correct, the chance that a
random k-subset (without replacement) holds at least one correct sample is
    1 - C(n - c, k) / C(n, k) = 1 - prod_{i=0}^{k-1} (n - c - i) / (n - i),
an unbiased estimate of 1 - (1 - p)^k for the problem's success rate p. The product form has
factors in [0, 1], so it neither overflows nor cancels; its running products give every k at once.

Majority vote at k: the chance that a random k-subset of the n samples has the correct answer as
its plurality answer. Samples without a parseable answer do not vote; a tie between t answers
counts 1/t (a uniformly random tie-break); a subset with no votes fails. Computed exactly over all
C(n, k) subsets (so, like pass@k, an unbiased estimate of the k-sample majority accuracy) from the
problem's vote counts: c correct, `wrong` = the sizes of the groups of identical wrong answers,
`none` = samples with no answer.

Averages over problems carry percentile bootstrap intervals over problems (sweeps.bootstrap).
"""
from __future__ import annotations

from math import comb
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from sweeps import bootstrap

MAX_MAJORITY_SAMPLES = 1000


def _counts(n, c):
    n, c = np.atleast_1d(np.asarray(n, dtype=np.int64)), np.atleast_1d(np.asarray(c, dtype=np.int64))
    if n.shape != c.shape or (n < 1).any() or (c < 0).any() or (c > n).any():
        raise ValueError(f"need matching counts with n >= 1 and 0 <= c <= n, got n={n.tolist()}, c={c.tolist()}")
    return n, c


def pass_at_k_curve(n, c, kmax: Optional[int] = None) -> np.ndarray:
    """(problems, kmax) unbiased pass@k for k = 1..kmax; NaN where k > a problem's n."""
    n, c = _counts(n, c)
    kmax = int(n.max()) if kmax is None else int(kmax)
    if kmax < 1:
        raise ValueError(f"kmax must be >= 1, got {kmax}")
    i = np.arange(kmax)
    with np.errstate(divide="ignore", invalid="ignore"):
        factors = np.clip((n[:, None] - c[:, None] - i) / (n[:, None] - i), 0.0, 1.0)
    out = 1.0 - np.cumprod(factors, axis=1)
    out[i[None, :] >= n[:, None]] = np.nan
    return out


def pass_at_k(n, c, k: int) -> np.ndarray:
    """Per-problem unbiased pass@k (needs k <= n for every problem)."""
    n_arr, _ = _counts(n, c)
    if not 1 <= k <= n_arr.min():
        raise ValueError(f"k must be in 1..{int(n_arr.min())} (the fewest samples of any problem), got {k}")
    return pass_at_k_curve(n, c, k)[:, k - 1]


def _binomials(m: int, upto: int) -> np.ndarray:
    return np.array([float(comb(m, y)) for y in range(min(m, upto) + 1)])


def majority_at_k_curve(c: int, wrong: Sequence[int] = (), none: int = 0, kmax: Optional[int] = None) -> np.ndarray:
    """Majority-vote accuracy at k = 1..kmax (default n) for one problem, exact over all k-subsets.

    For x correct votes in the subset, count the ways to fill the other places: wrong groups of
    fewer than x samples and non-votes can never reach x, so they are picked freely (one binomial
    factor); each larger group takes fewer than x places, or exactly x (a tie). ways[j, t] counts
    fillings of j places with t tied groups; a t-way tie with the correct answer earns 1/(t + 1)."""
    wrong = [int(m) for m in wrong if int(m) > 0]
    c, none = int(c), int(none)
    n = c + sum(wrong) + none
    if c < 0 or none < 0 or n < 1:
        raise ValueError(f"need c >= 0, none >= 0 and at least one sample, got c={c}, wrong={wrong}, none={none}")
    if n > MAX_MAJORITY_SAMPLES:  # the subset counts would overflow float64
        raise ValueError(f"majority@k is exact for up to {MAX_MAJORITY_SAMPLES} samples per problem, got {n}")
    kmax = n if kmax is None else int(kmax)
    if not 1 <= kmax <= n:
        raise ValueError(f"kmax must be in 1..{n}, got {kmax}")
    favourable = np.zeros(n + 1)
    for x in range(1, c + 1):
        big = [m for m in wrong if m >= x]
        free = none + sum(m for m in wrong if m < x)
        ways = np.zeros((n + 1, len(big) + 1))
        ways[:free + 1, 0] = _binomials(free, free)
        for m in big:
            below, at_x = _binomials(m, x - 1), float(comb(m, x))
            new = np.stack([np.convolve(ways[:, t], below)[:n + 1] for t in range(ways.shape[1])], axis=1)
            new[x:, 1:] += at_x * ways[:n + 1 - x, :-1]
            ways = new
        credit = ways @ (1.0 / (1.0 + np.arange(len(big) + 1)))
        favourable[x:] += comb(c, x) * credit[:n + 1 - x]
    ks = np.arange(1, kmax + 1)
    return favourable[ks] / np.array([float(comb(n, k)) for k in ks])


def mean_with_ci(values: np.ndarray, n_boot: int = 1000, seed: int = bootstrap.DEFAULT_SEED,
                 level: float = 0.95) -> Dict[str, list]:
    """Column means of a (problems, K) array with percentile bootstrap intervals over problems
    (problems resampled with replacement; NaN entries ignored). {"mean": [...], "ci": [[lo, hi], ...]}."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    mean = np.nanmean(values, axis=0)
    gen = bootstrap.rng(seed)
    reps = np.array([np.nanmean(values[bootstrap.resample(gen, len(values))], axis=0) for _ in range(n_boot)])
    ci = [bootstrap.percentile_ci(reps[:, j], level) for j in range(values.shape[1])]
    return {"mean": mean.tolist(), "ci": ci}


def difficulty_buckets(difficulties: Iterable[int], n_buckets: int = 3) -> Dict[int, str]:
    """Split the distinct difficulty levels, in order, into `n_buckets` contiguous groups of near-equal
    size; returns level -> label ("2-4", "5-8", ...). A held-out set stratified by level then has
    near-equal problem counts per bucket."""
    levels = sorted(set(int(d) for d in difficulties))
    if not levels:
        return {}
    groups = [g for g in np.array_split(np.array(levels), min(n_buckets, len(levels))) if len(g)]
    out = {}
    for g in groups:
        label = f"{g[0]}" if g[0] == g[-1] else f"{g[0]}-{g[-1]}"
        out.update({int(level): label for level in g})
    return out


def bucket_indices(labels: Sequence[str]) -> Dict[str, List[int]]:
    """label -> indices of the problems in it, labels in first-seen order."""
    out: Dict[str, List[int]] = {}
    for i, label in enumerate(labels):
        out.setdefault(label, []).append(i)
    return out
