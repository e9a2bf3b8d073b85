"""Approach 2: IsoFLOP profiles.

For each compute budget, fit a parabola of loss against ln N "around the minimum": through the runs within
+-``window`` decades of N of the lowest-loss run (at least one size on each side).  The lowest loss must not
be at the smallest or largest model, and the vertex must be a minimum inside the fitted range, else the
budget is excluded with the reason.  The vertex is N_opt(C); D_opt = C / FLOPs-per-token(N_opt), with FLOPs per
token interpolated (log-log) between the budget's runs (for C = 6ND data this is simply C / 6N_opt).  Then least
squares in log-log space: ln N_opt = a ln C + c_N and ln D_opt = b ln C + c_D.

A requested budget is an IsoFLOP slice only when its runs used the same compute (within 5%): under another
FLOP count than the one the budgets were planned with (``--flops 6n`` on a sweep planned with exact FLOPs) they
do not, and such a budget is excluded with the spread it has (re-reading each run's curve at a common compute would read
intermediate points of cosine runs, which are not annealed).

Interval: a random-effects meta-regression of the optima (sweeps.bootstrap.Line).  Each budget's ln N_opt has
a variance from its parabola (the delta method, with the noise pooled over budgets as a share of the loss;
higher budgets have flatter profiles relative to the noise, so their optima are less certain); the optima's
scatter about the line beyond those variances (anything shared by a budget's runs that moves its optimum,
the parabola's misfit) is estimated as tau^2 (DerSimonian-Laird); the interval is the wider of the
Knapp-Hartung t interval (k - 2 degrees of freedom) and the z interval (Jackson et al. 2017).  A bootstrap of
points within budgets sees only the noise within budgets, and over-covered in simulation; the plain least-
squares t interval under-covered (0.91) because it weights the noisier high budgets like the others; see
bench/results/coverage-cpu.json.  With fewer than 3 budgets the line has no residual degrees of freedom and
the interval is withheld.

Window sensitivity: ``a`` is refitted with windows of 2/3 and 3/2 of the chosen one; a warning is raised
when one of them falls outside the interval.

Budgets: runs are grouped by their requested ``budget`` when they have one; otherwise by clusters of
log10 C (neighbours closer than ``c_tol`` decades share a cluster).  The budget's C is the geometric mean of
its runs' C under the chosen FLOP convention.
"""
from __future__ import annotations

import numpy as np

from . import bootstrap as bs
from .results import Approach2Result, Budget, Interval, Prediction

MIN_POINTS_PER_BUDGET = 3
C_TOL_DECADES = 0.05
# Fit each parabola to the runs within this many decades of N of the lowest loss: the loss is not
# symmetric in ln N, and a parabola through a wide range biases the vertex (a fixed 3-decade ladder
# gave a = 0.494 for a true 0.521; +-0.6 decades gives 0.521).  The report shows a under 2/3 and 3/2 of it.
WINDOW_DECADES = 0.6
WINDOW_FACTORS = (2 / 3, 1.0, 1.5)
# Runs of one budget whose compute differs by more than this factor are not an IsoFLOP slice.
SLICE_TOLERANCE = 1.05
METHOD = ("per budget: parabola of loss vs ln N through the runs within {w} decades of N of the lowest loss, "
          "vertex = N_opt (interior minimum required), D_opt = C / FLOPs-per-token(N_opt); then least squares "
          "ln N_opt, ln D_opt on ln C")
INTERVAL_METHOD = ("random-effects meta-regression of ln N_opt on ln C: each budget's optimum weighted by its "
                   "variance (delta method on its parabola, noise pooled over budgets) plus the extra scatter "
                   "between budgets (DerSimonian-Laird); the wider of the Knapp-Hartung t interval (k - 2 degrees "
                   "of freedom) and the z interval (Jackson et al. 2017)")


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
    """FLOPs per token at ln N = x, interpolated in log-log between the budget's runs (sorted by N)."""
    return float(np.exp(np.interp(x, logN, np.log(fpt))))


def _optima(logN, loss, fpt, C_g, groups, window, usable):
    """Per budget: a dict (N_opt, D_opt, loss_opt, coeffs, idx, quad, rel_resid, mean_loss, dlnfpt) or a reason.

    quad = g' (X'X)^-1 g, the vertex's variance per unit noise variance (delta method: g is the gradient of
    -c1 / 2 c2 in the parabola's coefficients); rel_resid: the parabola's residuals over the mean loss.
    """
    res = []
    for gi, idx in enumerate(groups):
        if usable[gi] is not True:
            res.append(usable[gi])
            continue
        coeffs, v, used = parabola_vertex(logN[idx], loss[idx], window)
        if coeffs is None:
            res.append(v)
            continue
        xv, lv = v
        fit_idx = idx[used]
        x, y = logN[fit_idx], loss[fit_idx]
        X = np.column_stack([x * x, x, np.ones_like(x)])
        c2, c1, _ = coeffs
        g = np.array([c1 / (2 * c2 * c2), -1 / (2 * c2), 0.0])
        quad = float(g @ np.linalg.pinv(X.T @ X) @ g)
        order = np.argsort(logN[idx])
        dlnfpt = float(np.polyfit(logN[idx], np.log(fpt[idx]), 1)[0]) if len(np.unique(logN[idx])) > 1 else 1.0
        res.append({"N_opt": float(np.exp(xv)), "D_opt": C_g[gi] / _fpt_at(logN[idx][order], fpt[idx][order], xv),
                    "loss_opt": float(lv), "coeffs": coeffs, "idx": fit_idx, "quad": quad,
                    "rel_resid": (y - X @ np.asarray(coeffs)) / y.mean(), "mean_loss": float(y.mean()),
                    "dlnfpt": dlnfpt})
    return res


def _lines(C_g, opt, good):
    """The lines through the optima: ln N_opt and ln D_opt on ln C, each optimum weighted by its variance
    (the delta method, with the noise pooled over budgets as a share of the loss).  Returns (line N, line D,
    per-budget sd of ln N_opt or None)."""
    x = np.log(C_g[good])
    o = [opt[g] for g in good]
    df = sum(len(v["rel_resid"]) - 3 for v in o)
    s_rel = float(np.sqrt(sum((v["rel_resid"] ** 2).sum() for v in o) / df)) if df > 0 else 0.0
    var_N = var_D = None
    if s_rel > 0:
        var_N = np.array([v["quad"] * (s_rel * v["mean_loss"]) ** 2 for v in o])
        var_D = var_N * np.array([v["dlnfpt"] ** 2 for v in o])
    lN = bs.Line.fit(x, np.log([v["N_opt"] for v in o]), var_N)
    lD = bs.Line.fit(x, np.log([v["D_opt"] for v in o]), var_D)
    return lN, lD, (None if var_N is None else np.sqrt(var_N))


def approach2(N, D, C, loss, *, budget=None, fpt=None, names=None, predict=(), c_tol=C_TOL_DECADES,
              window=WINDOW_DECADES, level=bs.DEFAULT_LEVEL, extrapolation=None, **_ignored):
    """IsoFLOP fit of the points; an :class:`Approach2Result`.

    extrapolation(C) -> sentence or None marks predictions beyond the fitted compute (sweeps.fit supplies it).
    """
    N, D, C, loss = (np.asarray(v, dtype=float) for v in (N, D, C, loss))
    n = len(N)
    fpt = C / D if fpt is None else np.asarray(fpt, dtype=float)
    names = names if names is not None else [str(i) for i in range(n)]
    if n < MIN_POINTS_PER_BUDGET:
        return Approach2Result.skipped(f"too few points ({n}; need {MIN_POINTS_PER_BUDGET} per budget "
                                       "and at least 2 budgets)")
    labels = group_budgets(C, budget, c_tol)
    groups = [np.flatnonzero(labels == g) for g in range(labels.max() + 1)]
    C_g = np.array([float(np.exp(np.mean(np.log(C[idx])))) for idx in groups])
    spreads = [(float(C[idx].min() / C_g[gi]), float(C[idx].max() / C_g[gi])) for gi, idx in enumerate(groups)]
    explicit = budget is not None and np.any(np.isfinite(budget))  # clusters are equal-compute by construction
    usable = []
    for lo, hi in spreads:
        if explicit and hi / lo > SLICE_TOLERANCE:
            usable.append(f"not an IsoFLOP slice under this FLOP count: its runs' compute spans {lo:.2f}-{hi:.2f}x "
                          "of the budget's (re-reading the runs' curves at one compute would use intermediate "
                          "points of cosine runs, which are not annealed)")
        else:
            usable.append(True)
    logN = np.log(N)
    opt = _optima(logN, loss, fpt, C_g, groups, window, usable)

    budgets, good = [], []
    for gi, idx in enumerate(groups):
        req = budget[idx] if budget is not None else np.array([np.nan])
        row = Budget(C=float(C_g[gi]), n_points=int(len(idx)), points=[names[i] for i in idx],
                     N=[float(v) for v in N[idx]], loss=[float(v) for v in loss[idx]],
                     budget=float(req[0]) if np.all(np.isfinite(req)) else None, compute_spread=list(spreads[gi]))
        o = opt[gi]
        if isinstance(o, str):
            row.excluded = o
        else:
            row.N_opt, row.D_opt, row.loss_opt = o["N_opt"], o["D_opt"], o["loss_opt"]
            row.tokens_per_param = o["D_opt"] / o["N_opt"]
            row.parabola_lnN = [float(c) for c in o["coeffs"]]
            row.fitted = [names[i] for i in o["idx"]]
            row.fitted_N_range = [float(N[o["idx"]].min()), float(N[o["idx"]].max())]
            good.append(gi)
        budgets.append(row)

    res = Approach2Result(method=METHOD.format(w=window), window_decades=window,
                          grouping="by requested budget" if explicit
                          else f"by clusters of log10 C (gap > {c_tol} decades starts a new budget)",
                          n_points=n, n_budgets=len(groups), n_budgets_used=len(good), budgets=budgets)
    if len(good) < 2 or len(set(C_g[good])) < 2:
        res.status = "skipped"
        sliced = sum(1 for u in usable if u is not True)
        res.reason = f"need at least 2 budgets with an interior minimum, have {len(good)}" + (
            f" ({sliced} of {len(groups)} budgets are not IsoFLOP slices under this FLOP count)" if sliced else "")
        return res
    lN, lD, sd = _lines(C_g, opt, good)
    if sd is not None:
        for gi, v in zip(good, sd):
            budgets[gi].N_opt_sd_log = float(v)
    res.a, res.b = lN.slope, lD.slope
    res.N_coef, res.D_coef = float(np.exp(lN.intercept)), float(np.exp(lD.intercept))
    res.lines = {"N": lN.to_dict(), "D": lD.to_dict()}
    res.interval = Interval(method=INTERVAL_METHOD, level=level)
    if len(good) < 3:
        res.status = "indicative"
        res.interval.withheld = res.reason = (f"only {len(good)} budgets with an interior minimum: a line through "
                                              "two optima has no residual degrees of freedom, so no interval")
    else:
        res.status = "ok"
        res.ci = {"a": lN.slope_ci(level), "b": lD.slope_ci(level)}
        if sd is None:
            res.warnings.append("the parabolas pass exactly through their points: no noise to size the optima's "
                                "errors, so the interval is the plain t interval of the line"
                                + (" and has zero width (noise-free data?)" if lN.scale == 0 else ""))
    if len(good) < len(groups):
        res.warnings.append(f"{len(groups) - len(good)} of {len(groups)} budgets excluded (reasons in the table)")

    # Window sensitivity.
    for f in WINDOW_FACTORS:
        w = round(window * f, 3)
        o = opt if f == 1.0 else _optima(logN, loss, fpt, C_g, groups, w, usable)
        ok = [g for g in range(len(groups)) if not isinstance(o[g], str)]
        row = {"window": w, "budgets_used": len(ok), "a": None, "b": None}
        if len(ok) >= 2 and len(set(C_g[ok])) >= 2:
            wl, wd, _ = _lines(C_g, o, ok)
            row.update(a=wl.slope, b=wd.slope)
        res.window_sensitivity.append(row)
    ci = res.ci.get("a")
    moved = [r for r in res.window_sensitivity if r["a"] is not None and ci and not ci[0] <= r["a"] <= ci[1]]
    if moved:
        res.warnings.append("window sensitivity: a = " + ", ".join(f"{r['a']:.3f} with +-{r['window']:g} decades"
                                                                  for r in moved)
                            + f" falls outside the interval [{ci[0]:.3f}, {ci[1]:.3f}]: the parabolas' asymmetry "
                            "moves the optima more than the noise does")

    for Cp in predict:
        x = np.log(Cp)
        Nn, Dd = float(np.exp(lN.at(x))), float(np.exp(lD.at(x)))
        p = Prediction(C=float(Cp), N_opt=Nn, D_opt=Dd, tokens_per_param=Dd / Nn,
                       extrapolation=extrapolation(Cp) if extrapolation else None)
        if res.status == "ok":
            nlo, nhi = lN.mean_ci(x, level)
            dlo, dhi = lD.mean_ci(x, level)
            p.ci = {"N_opt": [float(np.exp(nlo)), float(np.exp(nhi))], "D_opt": [float(np.exp(dlo)), float(np.exp(dhi))]}
        res.predictions.append(p)
    return res
