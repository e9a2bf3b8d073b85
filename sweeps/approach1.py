"""Approach 1: the lower envelope of the training curves.

Each run's validation loss is known at a series of cumulative compute values (metrics.jsonl eval
lines).  On a log-spaced grid of C, every run whose curve covers C gives a loss (linear
interpolation in ln C); the envelope is the lowest of them, and the run reaching it gives N_opt(C)
and D_opt(C) = C / FLOPs-per-token of that run.  Grid points won by the smallest or the largest
model of the sweep are left out of the power-law fit (the optimum may lie beyond the sampled
sizes there).  Then ln N_opt = a ln C + c, ln D_opt = b ln C + c by least squares.  CIs come from
a bootstrap over runs (resample whole curves, recompute the envelope and the fit).
"""
from __future__ import annotations

import numpy as np

from . import bootstrap as bs

GRID_POINTS = 40


def _loss_matrix(curves, grid):
    """Loss of every run at every grid C (NaN where the run's curve does not cover C)."""
    lg = np.log(grid)
    M = np.full((len(curves), len(grid)), np.nan)
    for i, c in enumerate(curves):
        lc = np.log(c["C"])
        inside = (lg >= lc[0]) & (lg <= lc[-1])
        M[i, inside] = np.interp(lg[inside], lc, c["loss"])
    return M


def _envelope(M, rows, Ns, fpts, grid):
    """(winner index per grid C or -1, envelope loss) using only the given rows of M."""
    sub = M[rows]
    covered = np.isfinite(sub).sum(axis=0)
    filled = np.where(np.isfinite(sub), sub, np.inf)
    w = np.argmin(filled, axis=0)
    env = filled[w, np.arange(len(grid))]
    winner = np.where(covered >= 2, np.asarray(rows)[w], -1)
    return winner, np.where(covered >= 1, env, np.nan)


def _fit(grid, winner, Ns, fpts, rows):
    """Power laws from the grid points whose winner is neither the smallest nor the largest model."""
    n_lo, n_hi = Ns[rows].min(), Ns[rows].max()
    ok = winner >= 0
    ok &= np.where(ok, (Ns[winner] > n_lo) & (Ns[winner] < n_hi), False)
    if ok.sum() < 3 or len(np.unique(winner[ok])) < 2:
        return None, ok
    C = grid[ok]
    Nopt = Ns[winner[ok]]
    Dopt = C / fpts[winner[ok]]
    a, cN = np.polyfit(np.log(C), np.log(Nopt), 1)
    b, cD = np.polyfit(np.log(C), np.log(Dopt), 1)
    return (float(a), float(cN), float(b), float(cD)), ok


def approach1(curves, *, grid_points=GRID_POINTS, bootstrap=200, seed=bs.DEFAULT_SEED, predict=(), level=0.95):
    """Envelope fit over training curves (list of {"name", "N", "fpt", "C", "loss"})."""
    curves = [c for c in curves if len(c["C"]) >= 2]
    if not curves:
        return {"skipped": "no training curves"}
    if len({c["N"] for c in curves}) < 3:
        return {"skipped": "training curves of fewer than 3 model sizes"}
    lo = min(c["C"][0] for c in curves)
    hi = max(c["C"][-1] for c in curves)
    grid = np.exp(np.linspace(np.log(lo), np.log(hi), grid_points))
    M = _loss_matrix(curves, grid)
    Ns = np.array([float(c["N"]) for c in curves])
    fpts = np.array([float(c["fpt"]) for c in curves])
    rows = np.arange(len(curves))
    winner, env = _envelope(M, rows, Ns, fpts, grid)
    fit, ok = _fit(grid, winner, Ns, fpts, rows)
    out = {
        "method": "lower envelope of validation loss vs cumulative compute over a log-spaced grid of C; "
        "N and D of the run on the envelope; ln N_opt, ln D_opt linear in ln C (grid points won by the "
        "smallest or largest model left out)",
        "n_curves": len(curves),
        "envelope": [{"C": float(c), "loss": None if not np.isfinite(l) else float(l),
                      "run": curves[w]["name"] if w >= 0 else None,
                      "N": float(Ns[w]) if w >= 0 else None,
                      "D": float(c / fpts[w]) if w >= 0 else None, "used": bool(u)}
                     for c, l, w, u in zip(grid, env, winner, ok)],
    }
    if fit is None:
        out["skipped"] = ("the envelope is reached by fewer than 2 interior model sizes at 3+ grid points "
                          "(curves too short or the optimum lies outside the sampled sizes)")
        return out
    a, cN, b, cD = fit
    out.update(a=a, b=b, N_coef=float(np.exp(cN)), D_coef=float(np.exp(cD)), n_grid_used=int(ok.sum()),
               law="N_opt = N_coef C^a, D_opt = D_coef C^b")
    gen = bs.rng(seed)
    sa, sb = [], []
    for _ in range(int(bootstrap)):
        r = np.unique(bs.resample(gen, len(curves)))  # duplicates do not change an envelope
        if len(np.unique(Ns[r])) < 3:
            continue
        w, _ = _envelope(M, r, Ns, fpts, grid)
        f, _ = _fit(grid, w, Ns, fpts, r)
        if f is not None:
            sa.append(f[0]), sb.append(f[2])
    out["ci_level"] = level
    out["a_ci"] = bs.percentile_ci(sa, level)
    out["b_ci"] = bs.percentile_ci(sb, level)
    out["bootstrap"] = {"replicates": int(bootstrap), "valid": len(sa), "seed": seed,
                        "method": "resample whole runs with replacement, recompute envelope and fit"}
    out["predictions"] = [{"C": float(c), "N_opt": float(np.exp(cN) * c ** a), "D_opt": float(np.exp(cD) * c ** b),
                           "tokens_per_param": float(np.exp(cD - cN) * c ** (b - a)), "loss": None}
                          for c in predict]
    return out
