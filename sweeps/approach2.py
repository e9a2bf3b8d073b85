"""Approach 2: IsoFLOP profiles.

For each compute budget, fit a parabola of loss against ln N "around the minimum": through the runs
within +-``window`` decades of N of the lowest-loss run (at least one size on each side).  The
lowest loss must not be at the smallest or largest model, and the vertex must be a minimum inside
the fitted range, else the budget is excluded with the reason.  The vertex is N_opt(C); D_opt = C / FLOPs-per-token(N_opt), with FLOPs per token interpolated (log-log) between the
budget's runs (for C = 6ND data this is simply C / 6N_opt).  Then least squares in log-log space:
ln N_opt = a ln C + c_N and ln D_opt = b ln C + c_D.  95% CIs for a and b come from a bootstrap that
resamples the points within each budget and redoes every step.

Budgets: runs are grouped by their requested ``budget`` when they have one; otherwise by clusters of
log10 C (neighbours closer than ``c_tol`` decades share a cluster).  The budget's C is the geometric
mean of its runs' C under the chosen FLOP convention.
"""
from __future__ import annotations

import numpy as np

from . import bootstrap as bs

MIN_POINTS_PER_BUDGET = 3
C_TOL_DECADES = 0.05
# Fit each parabola to the runs within this many decades of N of the lowest loss: the loss is not
# symmetric in ln N, and a parabola through a wide range biases the vertex (a fixed 3-decade ladder
# gave a = 0.494 for a true 0.521; +-0.6 decades gives 0.521).
WINDOW_DECADES = 0.6


def group_budgets(C, budget=None, c_tol=C_TOL_DECADES):
    """Group labels (0..g-1, ordered by compute) for each point."""
    C = np.asarray(C, dtype=float)
    n = len(C)
    labels = np.full(n, -1)
    if budget is not None and np.any(np.isfinite(budget)):
        keyed = np.where(np.isfinite(budget), budget, np.nan)
        uniq = np.unique(keyed[np.isfinite(keyed)])
        for gi, u in enumerate(uniq):
            labels[keyed == u] = gi
        missing = ~np.isfinite(keyed)
        if np.any(missing):  # runs without a budget: cluster them on their own
            sub = group_budgets(C[missing], None, c_tol)
            labels[missing] = sub + len(uniq)
        return _relabel_by_compute(labels, C)
    order = np.argsort(C, kind="stable")
    lc = np.log10(C[order])
    g = 0
    for j, i in enumerate(order):
        if j > 0 and lc[j] - lc[j - 1] > c_tol:
            g += 1
        labels[i] = g
    return labels


def _relabel_by_compute(labels, C):
    groups = sorted(set(labels.tolist()), key=lambda g: np.exp(np.mean(np.log(C[labels == g]))))
    remap = {g: i for i, g in enumerate(groups)}
    return np.array([remap[g] for g in labels])


def select_window(logN, loss, window=WINDOW_DECADES):
    """Indices fitted for one budget: points within +-window decades of the lowest loss, widened so
    that at least one model size lies on each side of it."""
    logN, loss = np.asarray(logN, dtype=float), np.asarray(loss, dtype=float)
    i_min = int(np.argmin(loss))
    x0 = logN[i_min]
    keep = np.abs(logN - x0) <= window * np.log(10) + 1e-12
    for side in (logN < x0, logN > x0):
        if side.any() and not (keep & side).any():
            nearest = np.min(np.abs(logN[side] - x0))
            keep |= side & np.isclose(np.abs(logN - x0), nearest)
    return np.flatnonzero(keep)


def parabola_vertex(logN, loss, window=WINDOW_DECADES):
    """((c2, c1, c0), (ln N at vertex, loss at vertex), fitted indices) or (None, reason, None)."""
    logN, loss = np.asarray(logN, dtype=float), np.asarray(loss, dtype=float)
    if len(np.unique(logN)) < MIN_POINTS_PER_BUDGET:
        return None, f"fewer than {MIN_POINTS_PER_BUDGET} distinct model sizes", None
    lo, hi = logN.min(), logN.max()
    i_min = int(np.argmin(loss))
    if logN[i_min] <= lo or logN[i_min] >= hi:
        end = "smallest" if logN[i_min] <= lo else "largest"
        return None, f"lowest loss at the {end} model: the minimum is not interior", None
    idx = select_window(logN, loss, window)
    x, y = logN[idx], loss[idx]
    if len(np.unique(x)) < MIN_POINTS_PER_BUDGET:
        return None, f"fewer than {MIN_POINTS_PER_BUDGET} model sizes near the minimum", None
    c2, c1, c0 = np.polyfit(x, y, 2)
    if not c2 > 0:
        return None, "parabola opens downwards (no minimum)", None
    xv = -c1 / (2 * c2)
    if not x.min() < xv < x.max():
        return None, "parabola vertex outside the fitted range of N", None
    return (c2, c1, c0), (xv, c0 - c1 * c1 / (4 * c2)), idx


def _fpt_at(logN, fpt, x):
    """FLOPs per token at ln N = x, interpolated in log-log between the budget's runs."""
    order = np.argsort(logN)
    return float(np.exp(np.interp(x, logN[order], np.log(fpt[order]))))


def _optima(logN, loss, fpt, C_g, groups, window):
    """Per-budget (N_opt, D_opt, loss at vertex, coeffs, fitted indices) or a reason string."""
    res = []
    for gi, idx in enumerate(groups):
        coeffs, v, used = parabola_vertex(logN[idx], loss[idx], window)
        if coeffs is None:
            res.append(v)
            continue
        xv, lv = v
        n_opt = float(np.exp(xv))
        res.append((n_opt, C_g[gi] / _fpt_at(logN[idx], fpt[idx], xv), lv, coeffs, idx[used]))
    return res


def _power_law(C, Y):
    """Least squares ln Y = s ln C + c; returns (s, c)."""
    s, c = np.polyfit(np.log(C), np.log(Y), 1)
    return float(s), float(c)


def approach2(N, D, C, loss, *, budget=None, fpt=None, names=None, bootstrap=400, seed=bs.DEFAULT_SEED,
              predict=(), c_tol=C_TOL_DECADES, window=WINDOW_DECADES, level=0.95):
    """IsoFLOP fit; JSON-ready dict with a, b, a_ci, b_ci, per-budget optima and exclusions."""
    N, D, C, loss = (np.asarray(v, dtype=float) for v in (N, D, C, loss))
    n = len(N)
    fpt = C / D if fpt is None else np.asarray(fpt, dtype=float)
    names = names if names is not None else [str(i) for i in range(n)]
    if n < MIN_POINTS_PER_BUDGET:
        return {"skipped": f"too few points for approach 2 ({n}; need {MIN_POINTS_PER_BUDGET} per budget "
                           "and at least 2 budgets)"}
    labels = group_budgets(C, budget, c_tol)
    groups = [np.flatnonzero(labels == g) for g in range(labels.max() + 1)]
    C_g = np.array([float(np.exp(np.mean(np.log(C[idx])))) for idx in groups])
    logN = np.log(N)
    opt = _optima(logN, loss, fpt, C_g, groups, window)

    budgets, good = [], []
    for gi, idx in enumerate(groups):
        req = budget[idx] if budget is not None else np.array([np.nan])
        row = {"C": float(C_g[gi]), "budget": float(req[0]) if np.all(np.isfinite(req)) else None,
               "n_points": int(len(idx)), "points": [names[i] for i in idx],
               "N": [float(v) for v in N[idx]], "loss": [float(v) for v in loss[idx]]}
        o = opt[gi]
        if isinstance(o, str):
            row["excluded"] = o
        else:
            row.update(N_opt=o[0], D_opt=o[1], loss_opt=float(o[2]), tokens_per_param=o[1] / o[0],
                       parabola_lnN=[float(c) for c in o[3]], fitted=[names[i] for i in o[4]],
                       fitted_N_range=[float(N[o[4]].min()), float(N[o[4]].max())])
            good.append(gi)
        budgets.append(row)

    out = {"method": f"per budget: parabola of loss vs ln N through the runs within {window} decades of N "
           "of the lowest loss, vertex = N_opt (interior minimum required), D_opt = C / FLOPs-per-token(N_opt); "
           "then ln N_opt, ln D_opt linear in ln C", "window_decades": window,
           "grouping": "by requested budget" if budget is not None and np.any(np.isfinite(budget))
           else f"by clusters of log10 C (gap > {c_tol} decades starts a new budget)",
           "n_points": n, "n_budgets": len(groups), "n_budgets_used": len(good), "budgets": budgets}
    if len(good) < 2:
        out["skipped"] = f"need at least 2 budgets with an interior minimum, have {len(good)}"
        return out
    Cg = C_g[good]
    if len(set(Cg)) < 2:
        out["skipped"] = "the budgets with an interior minimum all have the same compute"
        return out
    a, cN = _power_law(Cg, [opt[g][0] for g in good])
    b, cD = _power_law(Cg, [opt[g][1] for g in good])
    out.update(a=a, b=b, N_coef=float(np.exp(cN)), D_coef=float(np.exp(cD)),
               law="N_opt = N_coef C^a, D_opt = D_coef C^b")

    # Bootstrap: resample points within every budget, redo vertices and the power laws.
    gen = bs.rng(seed)
    samples = {"a": [], "b": [], "lnN_coef": [], "lnD_coef": []}
    dropped = 0
    for _ in range(int(bootstrap)):
        rg = bs.resample_within(gen, [groups[g] for g in good])
        o = _optima(logN, loss, fpt, Cg, rg, window)
        ok = [j for j, v in enumerate(o) if not isinstance(v, str)]
        dropped += len(o) - len(ok)
        if len(ok) < 2 or len(set(Cg[ok])) < 2:
            continue
        sa, sc = _power_law(Cg[ok], [o[j][0] for j in ok])
        sb, sd = _power_law(Cg[ok], [o[j][1] for j in ok])
        samples["a"].append(sa), samples["b"].append(sb)
        samples["lnN_coef"].append(sc), samples["lnD_coef"].append(sd)
    out["ci_level"] = level
    out["a_ci"] = bs.percentile_ci(samples["a"], level)
    out["b_ci"] = bs.percentile_ci(samples["b"], level)
    out["bootstrap"] = {
        "replicates": int(bootstrap), "valid": len(samples["a"]), "seed": seed,
        "budget_fits_dropped": dropped,
        "method": "resample points with replacement within each budget; a budget whose resample has no "
        "interior minimum is left out of that replicate; 95% percentile intervals",
        "samples": {k: [float(f"{v:.6g}") for v in s] for k, s in samples.items()},
    }
    out["predictions"] = []
    for Cp in predict:
        Nn, Dd = float(np.exp(cN) * Cp ** a), float(np.exp(cD) * Cp ** b)
        row = {"C": float(Cp), "N_opt": Nn, "D_opt": Dd, "tokens_per_param": Dd / Nn, "loss": None}
        if len(samples["a"]) >= 10:
            sa, sc = np.array(samples["a"]), np.array(samples["lnN_coef"])
            sb, sd = np.array(samples["b"]), np.array(samples["lnD_coef"])
            ln_c = np.log(Cp)
            row["N_opt_ci"] = bs.percentile_ci(np.exp(sc + sa * ln_c), level)
            row["D_opt_ci"] = bs.percentile_ci(np.exp(sd + sb * ln_c), level)
        out["predictions"].append(row)
    return out
