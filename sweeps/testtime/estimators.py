"""Estimators over n samples per problem, across problems: bootstrap means, difficulty buckets.

The per-problem estimators, pass@k (unbiased, Chen et al. 2021) and majority vote at k (exact over
k-subsets), live with the evaluation that produces the counts (train/testtime.py, which a run uses
for its record) and are re-exported here. Averages over problems carry percentile bootstrap intervals
over problems (sweeps.bootstrap).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import numpy as np

from sweeps import bootstrap
from train.testtime import MAX_MAJORITY_SAMPLES, majority_at_k_curve, pass_at_k, pass_at_k_curve

__all__ = ["MAX_MAJORITY_SAMPLES", "majority_at_k_curve", "pass_at_k", "pass_at_k_curve", "mean_with_ci",
           "difficulty_buckets", "bucket_indices"]


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
