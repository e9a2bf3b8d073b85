"""Approach 3: the parametric law L(N, D) = E + A / N^alpha + B / D^beta, fitted as Epoch AI did.

Epoch AI's replication of Chinchilla (Besiroglu et al. 2024) fits in log space,

    log L_hat = logsumexp(a - alpha log N,  b - beta log D,  e),   A = e^a, B = e^b, E = e^e,

minimising the Huber loss (delta = 1e-3) of log L - log L_hat SUMMED over the points (averaging
makes L-BFGS-B stop early) with scipy's L-BFGS-B from a grid of 4,500 starting points, keeping
the lowest objective.  Here the gradient is analytic, so the full grid takes ~25 s on one core.

Uncertainty: a nonparametric bootstrap over points.  Each replicate is refitted from the point
estimate and a few other distinct local optima found by the grid (not the full grid: that would
cost 25 s per replicate), with tighter tolerances so that a replicate does not stop at its start.

Frontier: minimising L at fixed C = k N D gives N_opt = G (C/k)^a, D_opt = G^-1 (C/k)^b with
a = beta/(alpha+beta), b = alpha/(alpha+beta), G = (alpha A / (beta B))^(1/(alpha+beta)).
k = 6 for data where C = 6ND (Chinchilla); for a sweep counted with exact FLOPs k is the median of
C/(N D) over the fitted points (the relation used is recorded in fit.json).
"""
from __future__ import annotations

import itertools
import time

import numpy as np
from scipy.optimize import minimize

from . import bootstrap as bs
from ._blas import single_threaded_blas

# Epoch AI's grid of starting points (their "replicate exactly" cell): 5*5*5*6*6 = 4500 starts.
EPOCH_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
# A 432-start grid for quick looks and tests (~10x faster); the default is Epoch's.
COARSE_GRID = {
    "alpha": (0.25, 0.5, 1.0),
    "beta": (0.25, 0.5, 1.0),
    "e": (-1.0, 0.0, 1.0),
    "a": (0.0, 5.0, 10.0, 20.0),
    "b": (0.0, 5.0, 10.0, 20.0),
}
GRIDS = {"epoch": EPOCH_GRID, "coarse": COARSE_GRID}
HUBER_DELTA = 1e-3
MIN_POINTS = 6  # five parameters
# Scale of each parameter (a, b, e, alpha, beta) used to tell two local optima apart.
_DISTINCT_SCALE = np.array([1.0, 1.0, 0.2, 0.05, 0.05])
# Bootstrap refits: tighter than scipy's defaults (ftol 2.2e-9 is large next to an objective of ~1e-3).
_BOOT_OPTIONS = {"ftol": 1e-13, "gtol": 1e-10, "maxiter": 2000}


def grid_starts(grid=None):
    """Starting points as rows (a, b, e, alpha, beta), iterated in Epoch's order (alpha, beta, e, a, b).

    grid: None or "epoch" (Epoch's 4,500 starts), "coarse", or a dict of values per parameter.
    """
    g = GRIDS[grid or "epoch"] if grid is None or isinstance(grid, str) else grid
    rows = [(a, b, e, al, be) for al, be, e, a, b in
            itertools.product(g["alpha"], g["beta"], g["e"], g["a"], g["b"])]
    return np.array(rows, dtype=float)


class HuberLogObjective:
    """Summed Huber loss of log-space residuals and its analytic gradient, for x = (a, b, e, alpha, beta)."""

    def __init__(self, logN, logD, logL, delta=HUBER_DELTA):
        self.lN = np.ascontiguousarray(logN, dtype=float)
        self.lD = np.ascontiguousarray(logD, dtype=float)
        self.lL = np.ascontiguousarray(logL, dtype=float)
        self.delta = float(delta)

    def predict_log(self, x):
        a, b, e, al, be = x
        t0 = a - al * self.lN
        t1 = b - be * self.lD
        m = np.maximum(np.maximum(t0, t1), e)
        return m + np.log(np.exp(t0 - m) + np.exp(t1 - m) + np.exp(e - m))

    def __call__(self, x):
        a, b, e, al, be = x
        d = self.delta
        t0 = a - al * self.lN
        t1 = b - be * self.lD
        m = np.maximum(np.maximum(t0, t1), e)
        x0, x1, x2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
        s = x0 + x1 + x2
        r = m + np.log(s) - self.lL
        ar = np.abs(r)
        f = np.where(ar <= d, 0.5 * r * r, d * (ar - 0.5 * d)).sum()
        w = np.clip(r, -d, d) / s  # dHuber/dr times the softmax normaliser
        g0, g1 = w * x0, w * x1
        grad = np.array([g0.sum(), g1.sum(), (w * x2).sum(), -(g0 * self.lN).sum(), -(g1 * self.lD).sum()])
        return f, grad


def _minimize(obj, x0, options=None):
    r = minimize(obj, x0, jac=True, method="L-BFGS-B", options=options or {})
    return float(r.fun), np.asarray(r.x, dtype=float), bool(r.success)


def fit_grid(obj, starts, options=None):
    """L-BFGS-B from every start. Returns (objective values, solutions) in start order."""
    fun = np.empty(len(starts))
    xs = np.empty_like(starts)
    for i, s in enumerate(starts):
        f, x, _ = _minimize(obj, s, options)
        fun[i] = f if np.isfinite(f) else np.inf
        xs[i] = x
    return fun, xs


def distinct_optima(fun, xs, k=4):
    """Up to k solutions with the lowest objectives that differ clearly from each other."""
    picked = []
    for i in np.argsort(fun, kind="stable"):
        if not np.isfinite(fun[i]):
            break
        if all(np.max(np.abs(xs[i] - xs[j]) / _DISTINCT_SCALE) > 1.0 for j in picked):
            picked.append(i)
        if len(picked) >= k:
            break
    return [xs[i] for i in picked]


def law_from_x(x):
    """The law's parameters (plain floats) from the log-parametrised vector (a, b, e, alpha, beta)."""
    a, b, e, al, be = (float(v) for v in x)
    out = {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": al, "beta": be}
    s = al + be
    if s > 0 and al > 0 and be > 0:
        out["a"] = be / s
        out["b"] = al / s
        # G = (alpha A / (beta B))^(1/(alpha+beta)), computed in logs.
        out["G"] = float(np.exp((np.log(al) + a - np.log(be) - b) / s))
    else:
        out["a"] = out["b"] = out["G"] = float("nan")
    return out


def predict_loss(law, N, D):
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    return law["E"] + law["A"] / N ** law["alpha"] + law["B"] / D ** law["beta"]


def frontier(law, C, k=6.0):
    """Compute-optimal (N_opt, D_opt) at compute C under the relation C = k N D."""
    C = np.asarray(C, dtype=float)
    return law["G"] * (C / k) ** law["a"], (C / k) ** law["b"] / law["G"]


def flops_relation(N, D, C):
    """k in C = k N D: the median of C/(ND) over the points, with its range."""
    ratio = np.asarray(C, dtype=float) / (np.asarray(N, dtype=float) * np.asarray(D, dtype=float))
    return float(np.median(ratio)), float(np.min(ratio)), float(np.max(ratio))


def approach3(N, D, loss, C=None, **kw):
    """Fit L(N, D) by Epoch's procedure; bootstrap CIs; frontier predictions at the budgets ``predict``.

    Keywords: bootstrap (replicates, default 300), seed, delta (Huber, 1e-3), grid (dict of start
    values, default Epoch's), predict (budgets), n_alt_starts, level (0.95).
    Returns a JSON-ready dict (see module docstring); ``{"skipped": reason}`` with too few points.
    """
    with single_threaded_blas():
        return _approach3(N, D, loss, C, **kw)


def _approach3(N, D, loss, C=None, *, bootstrap=300, seed=bs.DEFAULT_SEED, delta=HUBER_DELTA, grid=None,
               predict=(), n_alt_starts=4, level=0.95):
    N, D, loss = (np.asarray(v, dtype=float) for v in (N, D, loss))
    n = len(N)
    if n < MIN_POINTS:
        return {"skipped": f"too few points for approach 3 ({n} < {MIN_POINTS})"}
    if C is None:
        k, kmin, kmax = 6.0, 6.0, 6.0
        rel = "C = 6 N D (no compute given)"
    else:
        k, kmin, kmax = flops_relation(N, D, C)
        rel = (f"C = k N D with k = {k:.4g} (median of C/(N D) over the fitted points; "
               f"range {kmin:.4g}-{kmax:.4g})")
    t0 = time.perf_counter()
    lN, lD, lL = np.log(N), np.log(D), np.log(loss)
    obj = HuberLogObjective(lN, lD, lL, delta)
    starts = grid_starts(grid)
    fun, xs = fit_grid(obj, starts)
    best_i = int(np.argmin(fun))  # first of equals, as a strict "<" scan in start order
    x_best = xs[best_i]
    law = law_from_x(x_best)
    t_grid = time.perf_counter() - t0

    out = {
        "method": "Epoch AI: log-space logsumexp law, Huber(delta) on log residuals summed over points, "
        "L-BFGS-B (analytic gradient) from a grid of starts, best objective kept",
        "n_points": n,
        **{key: law[key] for key in ("E", "A", "B", "alpha", "beta", "a", "b", "G")},
        "objective": float(fun[best_i]),
        "huber_delta": delta,
        "grid": grid if isinstance(grid, str) else ("epoch" if grid is None else "custom"),
        "grid_starts": len(starts),
        "best_start": {name: float(v) for name, v in zip(("a", "b", "e", "alpha", "beta"), starts[best_i])},
        "flops_relation": {"k": k, "k_min": kmin, "k_max": kmax, "description": rel},
        "frontier_formula": "N_opt = G (C/k)^a, D_opt = G^-1 (C/k)^b, G = (alpha A / (beta B))^(1/(alpha+beta))",
    }
    if not np.isfinite(law["a"]):
        out["warning"] = ("alpha or beta <= 0: the fitted law has no finite compute-optimal frontier "
                          "(too little range in N or D?)")
    pred_log = obj.predict_log(x_best)
    out["residuals_log"] = [float(v) for v in (lL - pred_log)]
    out["rmse_log"] = float(np.sqrt(np.mean((lL - pred_log) ** 2)))

    # Bootstrap over points.
    t1 = time.perf_counter()
    keys = ("E", "A", "B", "alpha", "beta", "a", "b", "G")
    samples = {key: [] for key in keys}
    boot_starts = [x_best] + [x for x in distinct_optima(fun, xs, n_alt_starts + 1)
                              if np.max(np.abs(x - x_best) / _DISTINCT_SCALE) > 1.0][:n_alt_starts]
    gen = bs.rng(seed)
    failed = 0
    for _ in range(int(bootstrap)):
        idx = bs.resample(gen, n)
        o = HuberLogObjective(lN[idx], lD[idx], lL[idx], delta)
        best_f, best_x = np.inf, None
        for s in boot_starts:
            f, x, _ = _minimize(o, s, _BOOT_OPTIONS)
            if np.isfinite(f) and f < best_f:
                best_f, best_x = f, x
        if best_x is None:
            failed += 1
            continue
        lw = law_from_x(best_x)
        for key in keys:
            samples[key].append(lw[key])
    out["ci_level"] = level
    out["ci"] = {key: bs.percentile_ci(samples[key], level) for key in keys}
    out["se"] = {key: bs.summarize(samples[key], level)["se"] for key in keys}
    out["bootstrap"] = {
        "replicates": int(bootstrap), "failed": failed, "seed": seed,
        "method": "resample points with replacement; refit from the point estimate and "
        f"{len(boot_starts) - 1} other distinct grid optima (L-BFGS-B, ftol 1e-13, gtol 1e-10); "
        "95% percentile intervals",
        "samples": {key: [float(f"{v:.6g}") for v in samples[key]] for key in ("E", "A", "B", "alpha", "beta")},
    }
    out["predictions"] = predictions(law, predict, k, samples, level)
    out["timing_s"] = {"grid": round(t_grid, 2), "bootstrap": round(time.perf_counter() - t1, 2)}
    return out


def predictions(law, budgets, k, samples=None, level=0.95):
    """Frontier rows at each budget: N_opt, D_opt, tokens/parameter, loss (+ bootstrap CIs)."""
    rows = []
    boot = None
    if samples and len(samples.get("alpha", [])) >= 10:
        boot = [law_from_x(np.log([s_a, s_b, s_e]).tolist() + [al, be]) for s_a, s_b, s_e, al, be in
                zip(samples["A"], samples["B"], samples["E"], samples["alpha"], samples["beta"])]
    for C in budgets:
        N_opt, D_opt = frontier(law, C, k)
        row = {"C": float(C), "N_opt": float(N_opt), "D_opt": float(D_opt),
               "tokens_per_param": float(D_opt / N_opt), "loss": float(predict_loss(law, N_opt, D_opt))}
        if boot:
            nd = np.array([frontier(b, C, k) for b in boot])
            ls = [float(predict_loss(b, n_, d_)) for b, (n_, d_) in zip(boot, nd)]
            row["N_opt_ci"] = bs.percentile_ci(nd[:, 0], level)
            row["D_opt_ci"] = bs.percentile_ci(nd[:, 1], level)
            row["tokens_per_param_ci"] = bs.percentile_ci(nd[:, 1] / nd[:, 0], level)
            row["loss_ci"] = bs.percentile_ci(ls, level)
        rows.append(row)
    return rows
