"""Approach 3: the parametric law L(N, D) = E + A / N^alpha + B / D^beta, fitted as Epoch AI did.

Point estimate (sweeps.law): Huber (delta 1e-3) of log-space residuals summed over the points, L-BFGS-B from a
grid of starts (Epoch's 4,500 by default), the lowest objective kept.

Interval: a parametric bootstrap with a two-level noise model.  The fit's log residuals are split into noise
within a budget and an offset shared by a budget's runs (one-way analysis of variance; since the fitted law
absorbs part of each, most of all the offsets, the mean squares' expectations are measured by simulating the
fit and the moment equations solved: :func:`noise_model`); each replicate adds fresh noise of both kinds to the
fitted log losses and refits (sweeps.law.refit_batch); intervals are percentiles of the replicates.  Resampling points instead
(the classic bootstrap) cannot see an offset shared by a budget's runs and under-covered in simulation
(bench/results/coverage-cpu.json).  With no residual degrees of freedom (5 points, 5 parameters), or when most
replicates fail, the interval is withheld.

Frontier: N_opt(C) minimises L along the data's own FLOPs per token (sweeps.law.FlopsRelation); ``a`` and ``b``
are the slopes of ln N_opt and ln D_opt over the fitted compute range, the same quantity approach 2 measures.
``a_closed_form`` = beta/(alpha+beta) is the slope under C = k N D with one k (equal to ``a`` for 6ND data).

Identification: a law the data cannot pin down is reported as "not_identified" with the reasons (one budget
or N and D moving together, parameters at their bounds, a flat objective, intervals spanning orders of
magnitude, a frontier far outside the sampled model sizes), never as a result.
"""
from __future__ import annotations

import time

import numpy as np

from train.log import get_logger

from . import bootstrap as bs
from ._blas import single_threaded_blas
from .law import (HUBER_DELTA, FlopsRelation, HuberLogObjective, closed_form_a, fit_grid, frontier, frontier_slopes,
                  grid_starts, law_from_x, laws_from_rows, minimize_from, predict_loss, refit_batch)
from .results import Approach3Result, Interval, Prediction

log = get_logger("fit")

MIN_POINTS = 5  # five parameters
INTERVAL_METHODS = ("two-level", "points")
KEYS = ("E", "A", "B", "alpha", "beta")
# Scale of each parameter (a, b, e, alpha, beta) used to tell two local optima apart.
_DISTINCT_SCALE = np.array([1.0, 1.0, 0.2, 0.05, 0.05])
# Starts within this share of the best objective count as "as good" when checking for a flat objective.
FLAT_TOLERANCE = 1e-3
FLAT_A_SPREAD = 0.1
CALIBRATION_REPS = 200  # refits per kind of noise when sizing the noise model
POLISH = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000}
METHOD = ("Epoch AI: log-space logsumexp law, Huber(delta) on log residuals summed over points, L-BFGS-B "
          "(analytic gradient) from a grid of starts, best objective kept")
INTERVAL_DESCRIPTIONS = {
    "two-level": "parametric bootstrap: the fitted log losses plus fresh two-level noise (within budgets and "
                 "an offset shared by each budget's runs, sized from the residuals), refitted; percentile "
                 "intervals",
    "points": "nonparametric bootstrap: points resampled with replacement, refitted; percentile intervals "
              "(cannot see an offset shared by a budget's runs)",
}


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


def _collinearity(lN, lD, groups):
    """A reason why N's and D's terms cannot be told apart, or None."""
    if len(np.unique(np.round(lN, 9))) < 2 or len(np.unique(np.round(lD, 9))) < 2:
        return "every point has the same N or the same D: the law's N and D terms cannot be told apart"
    if len(np.unique(groups)) < 2:
        return ("all points share one compute budget: along it N and D move together, so E, A/N^alpha and "
                "B/D^beta cannot be told apart")
    r = np.corrcoef(lN, lD)[0, 1]
    if abs(r) > 0.98:
        return (f"ln N and ln D move together (correlation {r:+.2f}): the points cannot separate the law's N and D "
                "terms")
    return None


def _at_bounds(law, loss):
    out = []
    for k in ("alpha", "beta"):
        if not 0.02 <= law[k] <= 2.5:
            out.append(f"{k} = {law[k]:.3g} is at a bound of its plausible range (0.02-2.5)")
    if law["E"] < 0.01 * float(np.min(loss)):
        out.append(f"E = {law['E']:.3g}: the irreducible loss went to zero")
    return out


def _flat(fun, xs):
    """A reason when starts reaching (nearly) the best objective disagree on a, or None."""
    best = np.min(fun)
    near = fun <= best + max(1e-12, FLAT_TOLERANCE * abs(best))
    with np.errstate(divide="ignore", invalid="ignore"):
        a = xs[near, 4] / (xs[near, 3] + xs[near, 4])
    a = a[np.isfinite(a)]
    if len(a) >= 2 and a.max() - a.min() > FLAT_A_SPREAD:
        return (f"flat objective: {int(near.sum())} starts reach within {FLAT_TOLERANCE:.1%} of the best objective "
                f"with a from {a.min():.3f} to {a.max():.3f}")
    return None


def _wide(ci):
    out = []
    for k in ("E", "A", "B"):
        c = ci.get(k)
        if c and c[0] > 0 and c[1] / c[0] > 1e3:
            out.append(f"the interval of {k} spans {c[1] / c[0]:.1e}x ({c[0]:.3g} to {c[1]:.3g})")
    for k, var in (("alpha", "N"), ("beta", "D")):
        c = ci.get(k)
        if c and c[0] < 0.01:
            out.append(f"the interval of {k} reaches {c[0]:.3g} (the loss need not fall with {var})")
    c = ci.get("a")
    if c and c[1] - c[0] > 0.5:
        out.append(f"the interval of a spans {c[0]:.2f}-{c[1]:.2f}")
    return out


def fit_law(N, D, loss, *, delta=HUBER_DELTA, grid=None, law_form="free", label="approach 3"):
    """The grid fit. Returns (x_best, objective values, solutions, starts, seconds)."""
    t0 = time.perf_counter()
    obj = HuberLogObjective(np.log(N), np.log(D), np.log(loss), delta, law_form)
    starts = grid_starts(grid, law_form)

    def progress(done, total):
        log.info(f"{label}: grid start {done}/{total} ({time.perf_counter() - t0:.0f} s)")

    fun, xs = fit_grid(obj, starts, progress)
    best = int(np.argmin(fun))  # first of equals, as a strict "<" scan in start order
    # scipy's default tolerances are absolute below an objective of 1 (here ~1e-4-1e-3): the best start is
    # taken on to convergence, else the estimate carries the optimiser's stopping point as extra noise
    # (in simulation it widened the estimate's spread by 6% beyond what the bootstrap reproduces).
    f, x, _ = minimize_from(obj, xs[best], POLISH)
    if f < fun[best]:
        fun[best], xs[best] = f, x
    return xs[best], fun, xs, starts, time.perf_counter() - t0


def noise_model(x_best, lN, lD, lL, groups, *, delta=HUBER_DELTA, law_form="free", gen=None,
                reps=CALIBRATION_REPS):
    """The two-level noise of the log losses: sd within a budget and sd of an offset shared by a budget's runs.

    The residuals' mean squares within and between budgets understate both (the fitted law absorbs part of
    the noise, most of all the budgets' offsets), so their expectations per unit of each variance are measured
    by simulating the fit itself (noise of one kind at a time, refitted) and the two moment equations are
    solved.  The same simulations give each estimate's effective degrees of freedom (2 mean^2 / variance),
    which the prediction intervals use to widen their tails.
    """
    gen = gen if gen is not None else bs.rng()
    obj = HuberLogObjective(lN, lD, lL, delta, law_form)
    fitted = obj.predict_log(x_best)
    resid = lL - fitted
    labels = np.unique(np.asarray(groups), return_inverse=True)[1]
    n, G = len(lL), int(labels.max()) + 1
    two_level = G >= 3 and n - G >= 2
    if not two_level:
        labels = np.arange(n)  # one level: every point its own group
    s0 = float(np.sqrt(np.mean(resid ** 2))) or 1e-6

    def simulate(within, between):
        noise = bs.draw_noise(gen, labels, within, between, reps)
        Y = fitted + noise
        X, _ = refit_batch(np.tile(x_best, (reps, 1)), lN, lD, Y, delta, law_form)
        r = Y - _predict_rows(X, lN, lD)
        if two_level:
            return bs.mean_squares(r, labels)
        m = np.mean(r * r, axis=-1)
        return m, m

    out = {"groups": G, "points": n, "levels": 2 if two_level else 1, "calibration_replicates": reps}
    if two_level:
        msw, msb = bs.mean_squares(resid, labels)
        we, be = simulate(s0, 0.0)
        wu, bu = simulate(0.0, s0)
        coef = (np.mean(we) / s0 ** 2, np.mean(wu) / s0 ** 2, np.mean(be) / s0 ** 2, np.mean(bu) / s0 ** 2)
        ve, vu = bs.solve_components(msw, msb, coef)
        se_sim = bs.solve_components(we, be, coef)[0]
        su_sim = bs.solve_components(wu, bu, coef)[1]
        out.update(within_sd=float(np.sqrt(ve)), between_sd=float(np.sqrt(vu)),
                   df_within=_df(se_sim), df_between=_df(su_sim),
                   raw_within_sd=float(np.sqrt(msw)), expectation_coefficients=[float(c) for c in coef])
    else:
        m, _ = simulate(s0, 0.0)
        c = float(np.mean(m)) / s0 ** 2
        out.update(within_sd=float(np.sqrt(np.mean(resid ** 2) / c)), between_sd=0.0, df_within=_df(m / c),
                   df_between=None, raw_within_sd=float(np.sqrt(np.mean(resid ** 2))),
                   note="fewer than 3 budgets or too few runs per budget: one level of noise")
    return out


def _df(estimates):
    """Effective degrees of freedom of a variance estimate from its simulated replicates."""
    v = np.asarray(estimates, dtype=float)
    m, s2 = float(np.mean(v)), float(np.var(v))
    return float(min(1000.0, 2 * m * m / s2)) if s2 > 0 else 1000.0


def _predict_rows(X, lN, lD):
    from .law import _terms

    return _terms(X, lN, lD)[0]


def law_replicates(x_best, alternatives, N, D, loss, groups, *, reps, seed, method="two-level",
                   delta=HUBER_DELTA, law_form="free", label="approach 3", chunk=250):
    """Bootstrap refits of the law: (rows of x (reps, 5), valid mask, noise model, seconds)."""
    t0 = time.perf_counter()
    lN, lD, lL = np.log(N), np.log(D), np.log(loss)
    gen = bs.rng(seed)
    noise = noise_model(x_best, lN, lD, lL, groups, delta=delta, law_form=law_form, gen=gen)
    fitted = HuberLogObjective(lN, lD, lL, delta, law_form).predict_log(x_best)
    labels = np.arange(len(lL)) if noise["levels"] == 1 else np.asarray(groups)
    starts = [x_best] + list(alternatives)
    out = np.full((reps, 5), np.nan)
    best = np.full(reps, np.inf)
    done = 0
    while done < reps:
        m = min(chunk, reps - done)
        if method == "points":
            idx = np.stack([bs.resample(gen, len(lL)) for _ in range(m)])
            dN, dD, Y = lN[idx], lD[idx], lL[idx]
        else:
            Y = fitted + bs.draw_noise(gen, labels, noise["within_sd"], noise["between_sd"], m)
            dN, dD = lN, lD
        for s in starts:
            X, f = refit_batch(np.tile(s, (m, 1)), dN, dD, Y, delta, law_form)
            sl = slice(done, done + m)
            take = np.isfinite(f) & (f < best[sl])
            out[sl][take] = X[take]
            best[sl][take] = f[take]
        done += m
        if done < reps:
            log.info(f"{label}: bootstrap {done}/{reps} replicates ({time.perf_counter() - t0:.0f} s)")
    valid = np.isfinite(best) & (out[:, 3] > 0) & (out[:, 4] > 0)
    return out, valid, noise, time.perf_counter() - t0


def approach3(*args, **kw):
    """Fit L(N, D) by Epoch's procedure, with intervals and frontier predictions: an :class:`Approach3Result`.

    Arguments: N, D, loss, C=None; keywords: groups (budget label per point: the two-level noise model's
    groups; default one group per C), bootstrap, seed, delta, grid, predict, level, law_form ("free" |
    "tied"), interval ("two-level" | "points"), extrapolation(C) -> sentence or None for predictions beyond
    the fitted compute.
    """
    with single_threaded_blas():  # see sweeps/_blas.py
        return _approach3(*args, **kw)


def _approach3(N, D, loss, C=None, *, groups=None, bootstrap=1000, seed=bs.DEFAULT_SEED, delta=HUBER_DELTA,
              grid=None, predict=(), level=bs.DEFAULT_LEVEL, law_form="free", interval="two-level",
              n_alt_starts=1, extrapolation=None, label="approach 3", **_ignored):
    N, D, loss = (np.asarray(v, dtype=float) for v in (N, D, loss))
    n = len(N)
    if n < MIN_POINTS:
        return Approach3Result.skipped(f"too few points ({n} < {MIN_POINTS}: the law has 5 parameters)")
    if interval not in INTERVAL_METHODS:
        raise ValueError(f"interval method {interval!r} (choose from {', '.join(INTERVAL_METHODS)})")
    groups = np.asarray(groups) if groups is not None else np.asarray(C if C is not None else N * D)
    Cs = np.asarray(C, dtype=float) if C is not None else 6 * N * D
    rel = FlopsRelation(N, D, C)
    C_lo, C_hi = float(Cs.min()), float(Cs.max())
    if C_hi / C_lo < 1.5:  # one budget: slopes over a range that is not there are not defined
        C_lo, C_hi = C_lo / 1.5, C_hi * 1.5
    lN, lD = np.log(N), np.log(D)

    x_best, fun, xs, starts, t_grid = fit_law(N, D, loss, delta=delta, grid=grid, law_form=law_form, label=label)
    law = law_from_x(x_best)
    obj = HuberLogObjective(lN, lD, np.log(loss), delta, law_form)
    pred_log = obj.predict_log(x_best)
    resid = np.log(loss) - pred_log
    best_i = int(np.argmin(fun))
    res = Approach3Result(
        status="ok", method=METHOD, law_form=law_form, n_points=n, **law,
        objective=float(fun[best_i]), huber_delta=delta,
        grid=grid if isinstance(grid, str) else ("epoch" if grid is None else "custom"), grid_starts=len(starts),
        best_start={k: float(v) for k, v in zip(("a", "b", "e", "alpha", "beta"), starts[best_i])},
        flops_relation=rel.to_dict(), residuals_log=[float(v) for v in resid],
        rmse_log=float(np.sqrt(np.mean(resid ** 2))), fitted_C_range=[float(Cs.min()), float(Cs.max())])
    res.a_closed_form = float(closed_form_a(law))
    if law["alpha"] > 0 and law["beta"] > 0:
        a, b = frontier_slopes(law, rel, C_lo, C_hi)
        res.a, res.b = float(a), float(b)
    if law_form == "tied":
        res.warnings.append("tied law (alpha = beta): a = 1/2 by construction; use it for loss, not allocation")

    problems = [p for p in (_collinearity(lN, lD, groups), _flat(fun, xs)) if p] + _at_bounds(law, loss)
    if res.a is not None:
        N_lo, N_hi = frontier(law, np.array([Cs.min(), Cs.max()]), rel)[0]
        if N_lo < N.min() / 10 or N_hi > N.max() * 10:
            problems.append(f"the frontier at the fitted budgets lies at N = {N_lo:.3g}-{N_hi:.3g}, more than a "
                            f"decade outside the sampled sizes ({N.min():.3g}-{N.max():.3g})")
    else:
        problems.append("alpha or beta <= 0: the law has no compute-optimal frontier")

    # Intervals.
    res.interval = Interval(method=INTERVAL_DESCRIPTIONS[interval], level=level, replicates=int(bootstrap), seed=seed)
    n_params = 4 if law_form == "tied" else 5
    samples = None
    if n <= n_params:
        res.interval.withheld = (f"{n} points for {n_params} parameters: no residual degrees of freedom to size "
                                 "the noise")
    elif bootstrap > 0:
        alts = [x for x in distinct_optima(fun, xs, n_alt_starts + 1)
                if np.max(np.abs(x - x_best) / _DISTINCT_SCALE) > 1.0][:n_alt_starts]
        X, valid, noise, secs = law_replicates(x_best, alts, N, D, loss, groups, reps=int(bootstrap), seed=seed,
                                               method=interval, delta=delta, law_form=law_form, label=label)
        res.noise = noise
        res.interval.valid, res.interval.seconds = int(valid.sum()), round(secs, 2)
        Xv = X[valid]
        laws = laws_from_rows(Xv)
        samples = {k: laws[k][:, 0] for k in KEYS}
        sa, sb = frontier_slopes(laws, rel, C_lo, C_hi)
        samples["a"], samples["b"] = sa, sb
        samples["a_closed_form"] = closed_form_a(laws)[:, 0]
        res.se = {k: bs.standard_error(v) for k, v in samples.items()}
        res.samples = {k: [float(f"{v:.6g}") for v in samples[k]] for k in KEYS}
        if res.interval.valid_fraction < bs.MIN_VALID_FRACTION:
            res.interval.withheld = (f"only {res.interval.valid} of {bootstrap} replicates could be refitted "
                                     f"({res.interval.valid_fraction:.0%})")
        else:
            res.ci = {k: bs.percentile_ci(v, level) for k, v in samples.items()}
            problems += _wide(res.ci)
    else:
        res.interval.withheld = "no bootstrap replicates requested"

    if problems:
        res.status = "not_identified"
        res.reason = "; ".join(problems)
    elif res.interval.withheld:
        res.status = "indicative"
        res.reason = res.interval.withheld
    res.predictions = predictions(law, predict, rel, samples if res.ci else None, level, extrapolation)
    res.timing_s = {"grid": round(t_grid, 2), "bootstrap": res.interval.seconds or 0.0}
    return res


def predictions(law, budgets, rel, samples=None, level=bs.DEFAULT_LEVEL, extrapolation=None):
    """Frontier rows at each budget: N_opt, D_opt, tokens/parameter, loss (+ percentile intervals)."""
    rows = []
    boot = {k: np.asarray(samples[k])[:, None] for k in KEYS} if samples is not None else None
    for C in budgets:
        N_opt, D_opt = (float(v) for v in frontier(law, C, rel))
        p = Prediction(C=float(C), N_opt=N_opt, D_opt=D_opt, tokens_per_param=D_opt / N_opt,
                       loss=float(predict_loss(law, N_opt, D_opt)),
                       extrapolation=extrapolation(C) if extrapolation else None)
        if boot is not None:
            Nb, Db = (v[:, 0] for v in frontier(boot, np.array([C]), rel))
            Lb = predict_loss({k: v[:, 0] for k, v in boot.items()}, Nb, Db)
            p.ci = {"N_opt": bs.percentile_ci(Nb, level), "D_opt": bs.percentile_ci(Db, level),
                    "tokens_per_param": bs.percentile_ci(Db / Nb, level), "loss": bs.percentile_ci(Lb, level)}
        rows.append(p)
    return rows
