"""Small bootstrap helpers shared by the three approaches (numpy only)."""
from __future__ import annotations

import numpy as np

DEFAULT_SEED = 42


def rng(seed=DEFAULT_SEED):
    return np.random.default_rng(seed)


def resample(gen, n):
    """Indices of a nonparametric bootstrap resample of n items (with replacement)."""
    return gen.integers(0, n, size=n)


def resample_within(gen, groups):
    """Resample indices with replacement inside each group (groups: list of index arrays)."""
    return [np.asarray(g)[gen.integers(0, len(g), size=len(g))] for g in groups]


def percentile_ci(samples, level=0.95):
    """[low, high] percentile interval of the finite samples, or None when there are fewer than 10."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if len(s) < 10:
        return None
    lo = 100 * (1 - level) / 2
    return [float(np.percentile(s, lo)), float(np.percentile(s, 100 - lo))]


def summarize(samples, level=0.95):
    """{"ci": [lo, hi], "se": std} of bootstrap samples (finite ones only)."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    with np.errstate(over="ignore"):  # a degenerate fit's replicates can reach 1e200: the SE is then inf
        se = float(np.std(s, ddof=1)) if len(s) > 1 else None
    return {"ci": percentile_ci(s, level), "se": se}
