"""Approach 1: the lower envelope of loss against compute.

The envelope at compute C is the lowest loss any run reached with at most C FLOPs: a step function through
the measured points (never above any of them).  A run is on the compute-optimal frontier when no run reached
a lower loss with at most ``c_tol`` decades more compute (so the runs of one budget, whose compute differs by
rounding, compete with each other); the N and D of those runs give ln N_opt = a ln C + c and ln D_opt = b ln C
+ c by least squares, leaving out runs that are the smallest or largest model at their compute (the optimum
may lie beyond the sampled sizes there).

Which points: by default each run's final loss, the only annealed point of a cosine run (and every fork of a
cooldown trunk is annealed).  ``points_used="curves"`` adds every full-validation evaluation of the training
curves, as Chinchilla did; intermediate points of cosine runs are not annealed (the learning rate has not
decayed there), so their loss is higher than a run planned to end there would reach, which biases the
envelope towards larger models.

Always reported as indicative, without an interval: the envelope is a minimum over runs, and N_opt moves in
steps of the ladder's spacing; a bootstrap of a minimum is not a valid interval.  Approaches 2 and 3 carry
the intervals.
"""
from __future__ import annotations

import numpy as np

from . import bootstrap as bs
from .approach2 import C_TOL_DECADES
from .results import Approach1Result, Prediction

POINTS = ("annealed", "curves")
INDICATIVE = ("the envelope is a minimum over runs (no resampling interval is valid for a minimum) "
              "and its N_opt moves in steps of the ladder's spacing; approaches 2 and 3 carry the intervals")
CURVES_NOTE = ("intermediate points of cosine runs are not annealed: their loss is higher than a run planned to "
               "end there would reach, which favours larger models")


def _frontier_points(C, loss, c_tol):
    """Indices of the points no other point beats with at most c_tol decades more compute."""
    order = np.argsort(loss, kind="stable")
    winners = []
    for rank, i in enumerate(order):
        better = order[:rank]
        if not np.any(C[better] <= C[i] * 10 ** c_tol):
            winners.append(i)
    return np.array(sorted(winners, key=lambda i: C[i]), dtype=int)


def envelope_steps(C, loss):
    """Indices where the running minimum of loss over increasing compute drops: the envelope's steps."""
    order = np.argsort(C, kind="stable")
    steps, best = [], np.inf
    for i in order:
        if loss[i] < best:
            steps.append(i)
            best = loss[i]
    return np.array(steps, dtype=int)


def approach1(N, D, C, loss, names, *, curves=None, points_used="annealed", c_tol=C_TOL_DECADES, predict=(),
              extrapolation=None, **_ignored):
    """Envelope fit; an :class:`Approach1Result` (status "indicative" or "skipped")."""
    if points_used not in POINTS:
        raise ValueError(f"points_used {points_used!r} (choose from {', '.join(POINTS)})")
    N, D, C, loss = (np.asarray(v, dtype=float) for v in (N, D, C, loss))
    names = list(names)
    n_runs = len(N)
    if points_used == "curves":
        curves = [c for c in (curves or []) if len(c["C"]) >= 1]
        if not curves:
            return Approach1Result.skipped("no training curves (metrics.jsonl with full validation evaluations)",
                                           points_used=points_used)
        n_runs = len(curves)
        N = np.concatenate([np.full(len(c["C"]), float(c["N"])) for c in curves] + [N])
        D = np.concatenate([np.asarray(c["C"]) / c["fpt"] for c in curves] + [D])
        names = [c["name"] for c in curves for _ in c["C"]] + names
        C = np.concatenate([np.asarray(c["C"], dtype=float) for c in curves] + [C])
        loss = np.concatenate([np.asarray(c["loss"], dtype=float) for c in curves] + [loss])
    if len(np.unique(N)) < 3:
        return Approach1Result.skipped("points of fewer than 3 model sizes", points_used=points_used)

    win = _frontier_points(C, loss, c_tol)
    used = []
    for i in win:
        near = np.abs(np.log10(C / C[i])) <= c_tol
        used.append(N[near].min() < N[i] < N[near].max())
    used = np.array(used, dtype=bool)
    steps = envelope_steps(C, loss)
    on_frontier = {int(i): bool(u) for i, u in zip(win, used)}
    res = Approach1Result(
        status="indicative", reason=INDICATIVE + ("; " + CURVES_NOTE if points_used == "curves" else ""),
        method="lower envelope of loss vs compute over " + (
            "each run's final (annealed) loss" if points_used == "annealed" else "every full evaluation of the "
            "training curves") + f"; frontier runs: no lower loss within {c_tol} decades more compute; ln N_opt, "
        "ln D_opt linear in ln C (runs that are the smallest or largest model at their compute left out)",
        points_used=points_used, n_runs=n_runs, n_points=len(N),
        envelope=[{"C": float(C[i]), "loss": float(loss[i]), "run": names[i], "N": float(N[i]), "D": float(D[i]),
                   "frontier": int(i) in on_frontier, "used": on_frontier.get(int(i), False)}
                  for i in sorted(set(steps.tolist()) | set(win.tolist()), key=lambda j: C[j])])
    if points_used == "curves":
        res.warnings.append(CURVES_NOTE)
    fit = win[used]
    if len(fit) < 3 or len(np.unique(N[fit])) < 2:
        res.status = "skipped"
        res.reason = (f"{len(fit)} frontier runs of {len(np.unique(N[fit]))} interior model sizes: need 3 runs of at "
                      "least 2 sizes (is the optimum outside the sampled sizes?)")
        return res
    lN = bs.Line.fit(np.log(C[fit]), np.log(N[fit]))
    lD = bs.Line.fit(np.log(C[fit]), np.log(D[fit]))
    res.a, res.b = lN.slope, lD.slope
    res.N_coef, res.D_coef = float(np.exp(lN.intercept)), float(np.exp(lD.intercept))
    for Cp in predict:
        Nn, Dd = float(np.exp(lN.at(np.log(Cp)))), float(np.exp(lD.at(np.log(Cp))))
        res.predictions.append(Prediction(C=float(Cp), N_opt=Nn, D_opt=Dd, tokens_per_param=Dd / Nn,
                                          extrapolation=extrapolation(Cp) if extrapolation else None))
    return res
