"""The per-model power law of repeated sampling: -log pass@k = a * k^(-b).

Schaeffer et al. 2025: when per-problem success rates p_i have a heavy left tail (density ~ p^(b-1)
near 0, e.g. Beta(b, .)), the mean pass@k = 1 - E[(1 - p)^k] approaches 1 like k^(-b), so -log pass@k
is close to a power law in k, although each problem's own pass_i@k = 1 - (1 - p_i)^k is exponential.

Fit: ordinary least squares of log(-log pass@k) on log k over a log-spaced grid of k in 1..n
(`fit_grid`: every k up to 10, then about 10 points per decade), so each decade of k weighs about
the same instead of the many large k dominating. Points with pass@k = 1 (-log = 0) or 0 are
dropped; fewer than 3 usable points, or a curve with no spread in k, gives no fit (None).
Quality: R^2 of that regression, and the largest relative error of the fitted -log pass@k.
Intervals: percentile bootstrap over problems (each replicate refits the mean curve of the
resampled problems), method and replicate counts stated in the result.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from sweeps import bootstrap


def fit_grid(n: int, per_decade: int = 10) -> np.ndarray:
    """The k used by the fit: 1..min(n, 10), then a log-spaced grid (about `per_decade` per decade) to n."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dense = np.arange(1, min(n, 10) + 1)
    if n <= 10:
        return dense
    tail = np.geomspace(10, n, max(2, int(np.ceil(per_decade * np.log10(n / 10))) + 1))
    return np.unique(np.concatenate([dense, np.round(tail).astype(int)]))


def fit_power_law(ks: Sequence[int], pass_at_k: Sequence[float]) -> Optional[Dict[str, float]]:
    """{"a", "b", "r2", "max_rel_err", "points"} for -log pass@k = a k^-b, or None (see module docstring)."""
    ks = np.asarray(ks, dtype=float)
    p = np.asarray(pass_at_k, dtype=float)
    keep = np.isfinite(p) & (p > 0) & (p < 1)
    if keep.sum() < 3:
        return None
    x, y = np.log(ks[keep]), np.log(-np.log(p[keep]))
    if np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return {"a": float(np.exp(intercept)), "b": float(-slope), "r2": r2,
            "max_rel_err": float(np.max(np.abs(np.expm1(-resid)))), "points": int(keep.sum())}


def fit_with_intervals(curves: np.ndarray, n_boot: int = 1000, seed: int = bootstrap.DEFAULT_SEED,
                       level: float = 0.95) -> Optional[dict]:
    """Fit the mean of per-problem pass@k curves (problems, kmax; column j is k = j + 1) on the
    fit grid, with percentile bootstrap intervals over problems for a and b. None when the mean
    curve cannot be fitted."""
    curves = np.asarray(curves, dtype=float)
    kmax = curves.shape[1]
    ks = fit_grid(kmax)
    cols = curves[:, ks - 1]
    point = fit_power_law(ks, np.nanmean(cols, axis=0))
    if point is None:
        return None
    gen = bootstrap.rng(seed)
    a_s, b_s = [], []
    for _ in range(n_boot):
        f = fit_power_law(ks, np.nanmean(cols[bootstrap.resample(gen, len(cols))], axis=0))
        a_s.append(np.nan if f is None else f["a"])
        b_s.append(np.nan if f is None else f["b"])
    point["ci"] = {"a": bootstrap.percentile_ci(a_s, level), "b": bootstrap.percentile_ci(b_s, level)}
    point["ks"] = ks.tolist()
    point["interval"] = (f"{level:.0%} percentile bootstrap over problems, {n_boot} replicates "
                         f"({int(np.isfinite(b_s).sum())} fitted)")
    return point


def predict(a: float, b: float, k) -> np.ndarray:
    """pass@k implied by the fitted law: exp(-a k^-b)."""
    return np.exp(-a * np.asarray(k, dtype=float) ** (-b))
