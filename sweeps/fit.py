"""Fit the compute-optimal frontier: ``python -m sweeps.fit INPUT [--out DIR] [--holdout RULE]``.

INPUT is a sweep folder (run records, see sweeps.collect) or a CSV with columns N, D, loss (and C;
C = 6ND when absent).  Writes DIR/fit.json (atomically; see sweeps.results for its schema) with

  approach1  lower envelope of loss vs compute        -> N_opt ~ C^a, D_opt ~ C^b (indicative, no interval)
  approach2  IsoFLOP parabolas per budget              -> a, b with t intervals across budgets, per-budget optima
  approach3  L = E + A/N^alpha + B/D^beta (Epoch AI)   -> parameters with parametric-bootstrap intervals, frontier
  holdout    (--holdout RULE) fit on the rest, predict the held-out runs' losses with 95% prediction intervals

prints a short table, and rebuilds DIR's report when it has one (the report is made from fit.json only).
Exit status 2 (and no fit.json) when the input cannot be fitted at all.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from train.io_utils import dumps, versions
from train.log import get_logger, setup

from . import bootstrap as bs
from .approach1 import POINTS, approach1
from .approach2 import C_TOL_DECADES, WINDOW_DECADES, approach2, group_budgets
from .approach3 import INTERVAL_METHODS, approach3
from .collect import FitInputError, collect, load_csv
from .holdout import LAW_CHOICES, RULE_HELP, Rule, holdout, largest_budget_rule
from .law import GRIDS, HUBER_DELTA
from .results import FIT_JSON, FitResult, Holdout, fmt, fmt_ci

log = get_logger("fit")

# 1000 replicates put ~25 in each tail of a 95% interval: its ends move by ~4% of its half-width from one
# seed to the next (300, the old default, gave ~7 per tail and ~8%).
DEFAULT_BOOTSTRAP = 1000
MIN_POINTS = 3
EXTRAPOLATION_DECADES = 1.0
# Approach 3 fits only runs with at least this many optimizer steps. L(N, D) describes runs limited by
# parameters and data; a run of a few dozen steps is limited by its optimizer (Adam's second-moment average
# alone needs ~2 / (1 - beta2) = 200 steps at beta2 0.99, the warmup rule's floor). On the cpu preset such
# runs are the big shapes at the small budgets, and they pulled approach 3's a down (docs/cpu-sweep/).
# Approaches 1 and 2 keep them: each budget's parabola needs its right-hand side, and its fit is local.
A3_MIN_STEPS = 200


def approach3_points(ds, min_steps):
    """(a mask of the points approach 3 and the holdout fit, a note saying what was left out or None).
    Points whose steps are unknown (CSV input) are kept."""
    if not min_steps or ds.steps is None:
        return np.ones(len(ds), dtype=bool), None
    few = np.nan_to_num(ds.steps, nan=np.inf) < min_steps
    if not few.any():
        return ~few, None
    note = (f"approach 3 and the holdout fit the {int((~few).sum())} of {len(ds)} points with at least {min_steps} "
            f"optimizer steps; {int(few.sum())} shorter runs (optimization-limited, not parameter- or data-limited) "
            "are left out of them (--a3-min-steps 0 keeps every point)")
    return ~few, note


def load_input(path, *, params="total", flops="exact", loss_key="final_val_loss", sweep="auto",
               n_col="N", d_col="D", loss_col="loss", c_col="C", budget_col=None, where=()):
    """A Dataset from a sweep folder or a CSV file (raises FitInputError on unusable input)."""
    p = Path(path)
    if not p.exists():
        raise FitInputError(f"{p}: no such file or directory")
    if p.is_dir():
        return collect(p, params=params, flops=flops, loss_key=loss_key, sweep=sweep)
    return load_csv(p, n_col=n_col, d_col=d_col, loss_col=loss_col, c_col=c_col, budget_col=budget_col, where=where)


def drop_highest_loss(ds, k):
    """Exclude the k highest-loss points (Epoch AI drops 5 from the Chinchilla data)."""
    if k <= 0 or len(ds) == 0:
        return ds
    order = np.argsort(-ds.loss, kind="stable")[:k]
    keep = np.ones(len(ds), bool)
    keep[order] = False
    why = f"one of the {k} highest losses (--drop-highest-loss)"
    dropped = {ds.names[i] for i in order}
    for name in sorted(dropped, key=ds.names.index):
        ds.excluded.append({"name": name, "reason": why})
    for r in ds.runs:
        if r.get("used") and r["name"] in dropped:
            r["used"], r["excluded_reason"] = False, why
    return ds.subset(keep)


def default_predict(C_lo, C_hi):
    """Budgets for the frontier table: each decade of the fitted range and two beyond it."""
    lo, hi = math.floor(math.log10(C_lo)), math.ceil(math.log10(C_hi))
    return [10.0 ** k for k in range(lo, hi + 3)]


def extrapolation_marker(C_lo, C_hi, decades=EXTRAPOLATION_DECADES):
    """f(C) -> a sentence when C lies more than ``decades`` outside [C_lo, C_hi], else None."""
    def mark(C):
        beyond = max(math.log10(C / C_hi), math.log10(C_lo / C))
        if beyond > decades:
            return (f"extrapolation: {beyond:.1f} decades {'beyond' if C > C_hi else 'below'} the fitted compute "
                    f"({C_lo:.2g}-{C_hi:.2g})")
        return None
    return mark


def overall_status(fit):
    s = {getattr(fit, k).status for k in ("approach2", "approach3")}
    if "ok" in s:
        return "ok"
    if "indicative" in s or fit.approach1.status == "indicative":
        return "indicative"
    if "not_identified" in s:
        return "not_identified"
    return "failed"


def fit_dataset(ds, *, bootstrap=DEFAULT_BOOTSTRAP, seed=bs.DEFAULT_SEED, predict=None, approaches=(1, 2, 3),
                huber_delta=HUBER_DELTA, c_tol=C_TOL_DECADES, window=WINDOW_DECADES, grid="epoch",
                approach1_points="annealed", interval="two-level", holdout_rule=None, holdout_law="auto",
                holdout_grid="coarse", level=bs.DEFAULT_LEVEL, a3_min_steps=A3_MIN_STEPS):
    """Run the approaches (and the held-out prediction) on a Dataset; a :class:`FitResult` (never raises on
    bad runs)."""
    t0 = time.perf_counter()
    n = len(ds)
    in3, a3_note = approach3_points(ds, a3_min_steps)
    ds3 = ds.subset(in3)
    C_range = [float(ds.C.min()), float(ds.C.max())] if n else None
    predict = [float(c) for c in (predict if predict is not None else default_predict(*C_range) if n else [])]
    mark = extrapolation_marker(*C_range) if n else None
    res = FitResult(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), input=ds.source, input_kind=ds.kind,
        params_convention=ds.params_convention, params_convention_description=ds.params_description,
        flops_convention=ds.flops_convention, flops_convention_description=ds.flops_description,
        notes=list(ds.notes) + ([a3_note] if a3_note else []), n_points=n, n_excluded=len(ds.excluded), fitted_C_range=C_range,
        settings={"bootstrap": int(bootstrap), "seed": seed, "huber_delta": huber_delta, "predict": predict,
                  "ci_level": level, "c_tol_decades": c_tol, "window_decades": window,
                  "grid": grid if isinstance(grid, str) else "custom", "approach1_points": approach1_points,
                  "interval": interval, "holdout": None if holdout_rule is None else str(holdout_rule),
                  "holdout_law": holdout_law, "holdout_grid": holdout_grid, "a3_min_steps": a3_min_steps,
                  "a3_points": len(ds3)})
    common = dict(predict=predict, extrapolation=mark, c_tol=c_tol, level=level)
    res.approach1.reason = res.approach2.reason = res.approach3.reason = "not requested"
    if n and 1 in approaches:
        log.info(f"approach 1: envelope of {len(ds)} runs")
        res.approach1 = approach1(ds.N, ds.D, ds.C, ds.loss, ds.names, curves=ds.curves, points_used=approach1_points,
                                  **common)
    if n and 2 in approaches:
        log.info("approach 2: IsoFLOP parabolas")
        res.approach2 = approach2(ds.N, ds.D, ds.C, ds.loss, budget=ds.budget, fpt=ds.fpt, names=ds.names,
                                  window=window, **common)
    if n and 3 in approaches:
        log.info(f"approach 3: fitting L(N, D) to {len(ds3)} points ({grid if isinstance(grid, str) else 'custom'} "
                 f"grid, {bootstrap} bootstrap replicates)")
        groups = group_budgets(ds3.C, ds3.budget, c_tol) if len(ds3) else None
        res.approach3 = approach3(ds3.N, ds3.D, ds3.loss, ds3.C, groups=groups, bootstrap=bootstrap, seed=seed,
                                  delta=huber_delta, grid=grid, interval=interval, **common)
    if n and holdout_rule is not None:
        # the holdout checks approach 3's law, on the points that law is fitted to
        rule = largest_budget_rule(ds3, c_tol) if str(holdout_rule) == "largest" else holdout_rule
        if rule is None:
            res.holdout = Holdout(rule="largest", status="skipped",
                                  reason="fewer than 3 budgets: holding out the largest would leave one to fit")
        else:
            res.holdout = holdout(ds3, rule, law=holdout_law, grid=holdout_grid, bootstrap=bootstrap, seed=seed,
                                  delta=huber_delta, level=level, c_tol=c_tol, window=window)
    res.status = overall_status(res)
    if res.status != "ok":
        details = "; ".join(f"{k}: {r.status.replace('_', ' ')}: {r.reason}" for k, r in res.approaches() if r.reason)
        res.problem = ("no approach could be fitted: " if res.status == "failed" else "") + details
    res.points = [{**row, "approach3": bool(used)} for row, used in zip(ds.points(), in3)]
    res.excluded = list(ds.excluded)
    res.runs = list(ds.runs)
    res.versions = versions(("numpy", "scipy"))
    res.wall_s = round(time.perf_counter() - t0, 2)
    return res


def default_out_dir(input_path):
    p = Path(input_path)
    return p if p.is_dir() else p.resolve().parent


LOAD_KEYS = ("params", "flops", "loss_key", "sweep", "n_col", "d_col", "loss_col", "c_col", "budget_col", "where")


def run_fit(input_path, out_dir=None, *, drop_highest=0, write=True, require_ok=True, **kw):
    """Load, fit and write DIR/fit.json. Returns (FitResult, path or None).

    Raises FitInputError when the input is unusable or its holdout rule is malformed, or (with require_ok)
    when nothing could be fitted; then nothing is written.
    """
    load_kw = {k: kw.pop(k) for k in list(kw) if k in LOAD_KEYS}
    rule = kw.get("holdout_rule")
    if rule is not None and str(rule) != "largest":
        kw["holdout_rule"] = Rule.parse(rule)
    ds = drop_highest_loss(load_input(input_path, **load_kw), drop_highest)
    if require_ok and len(ds) < MIN_POINTS:
        reasons = {}
        for e in ds.excluded:
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
        why = "; ".join(f"{v} x {k}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
        raise FitInputError(f"{input_path}: too few usable points ({len(ds)}; need at least {MIN_POINTS})"
                            + (f"; excluded: {why}" if why else ""))
    res = fit_dataset(ds, **kw)
    if ds.kind == "sweep":
        res.collect_options = {"params": load_kw.get("params", "total"), "flops": load_kw.get("flops", "exact"),
                               "loss_key": load_kw.get("loss_key", "final_val_loss"),
                               "sweep": load_kw.get("sweep", "auto")}
    if require_ok and res.status == "failed":
        raise FitInputError(f"{input_path}: {res.problem}")
    path = res.write(out_dir or default_out_dir(input_path)) if write else None
    return res, path


# ------------------------------------------------------------------------------------- the table
def _approach_row(label, r):
    if not r.fitted:
        return [f"{label:<4}{r.status:<16}{r.reason or ''}"]
    a = fmt(r.a, ".3f") + ("" if not r.ci.get("a") else " " + fmt_ci(r.ci["a"]))
    b = fmt(r.b, ".3f") + ("" if not r.ci.get("b") else " " + fmt_ci(r.ci["b"]))
    if label == "1":
        note = f"{r.points_used} points of {r.n_runs} runs"
    elif label == "2":
        note = f"{r.n_budgets_used}/{r.n_budgets} budgets"
    else:
        note = (f"E={r.E:.4g} A={r.A:.4g} B={r.B:.4g} alpha={r.alpha:.4f} beta={r.beta:.4f}"
                + (f"; a_closed_form={r.a_closed_form:.3f}" if r.flops_relation.get("kind") == "per-size" else ""))
    lines = [f"{label:<4}{r.status:<16}{a:<26}{b:<26}{note}"]
    iv = r.interval
    if iv is not None:
        if iv.withheld:
            lines.append(f"{'':<20}no interval: {iv.withheld}")
        elif iv.replicates:
            lines.append(f"{'':<20}interval: {iv.replicates} replicates, {iv.valid} valid ({iv.valid_fraction:.0%}), "
                         f"{fmt(iv.seconds, '.1f')} s")
        elif label == "2":
            lines.append(f"{'':<20}interval: meta-regression across budgets ({r.lines['N']['df']} degrees of freedom)")
    if r.status in ("indicative", "not_identified") and r.reason and not (iv and iv.withheld == r.reason):
        lines.append(f"{'':<20}{r.status.replace('_', ' ')}: {r.reason}")
    for w in r.warnings:
        lines.append(f"{'':<20}warning: {w}")
    return lines


def format_summary(fit):
    """A short plain-text table of a :class:`FitResult`."""
    lines = [f"fit of {fit.input}: {fit.n_points} points used, {fit.n_excluded} excluded -- "
             f"status: {fit.status.replace('_', ' ').upper()}",
             f"  N: {fit.params_convention_description}",
             f"  C: {fit.flops_convention_description}"]
    if fit.excluded:
        counts = {}
        for e in fit.excluded:
            counts[e["reason"]] = counts.get(e["reason"], 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])
        lines.append("  excluded: " + "; ".join(f"{n} x {why}" for why, n in top[:4])
                     + (f"; ... ({len(top) - 4} more reasons, see fit.json)" if len(top) > 4 else ""))
    lines += [f"  note: {n}" for n in fit.notes]
    lines.append(f"{'':<4}{'status':<16}{'a (N_opt ~ C^a)':<26}{'b (D_opt ~ C^b)':<26}notes")
    for label, (k, r) in zip("123", fit.approaches()):
        lines += _approach_row(label, r)
    r2 = fit.approach2
    if r2.window_sensitivity and r2.fitted:
        lines.append("  approach 2 window sensitivity: " + ", ".join(
            f"+-{w['window']:g} dec: a = {fmt(w['a'], '.3f')}" for w in r2.window_sensitivity))
    r3 = fit.approach3
    if r3.predictions and r3.fitted:
        lines.append(f"frontier (approach 3, {r3.status.replace('_', ' ')}; {r3.flops_relation.get('description')}):")
        lines.append(f"  {'C':>9} {'N_opt':>10} {'95% interval':>24} {'D_opt':>10} {'D/N':>7} {'loss':>7}")
        for p in r3.predictions:
            lines.append(f"  {p.C:9.3g} {p.N_opt:10.3g} {fmt_ci(p.ci.get('N_opt'), '.3g'):>24} {p.D_opt:10.3g} "
                         f"{p.tokens_per_param:7.1f} {p.loss:7.4f}"
                         + ("  * " + p.extrapolation if p.extrapolation else ""))
    h = fit.holdout
    if h is not None:
        lines.append(holdout_line(h))
    return "\n".join(lines)


def holdout_line(h):
    if h.status != "ok":
        return f"holdout {h.rule}: skipped: {h.reason}"
    inside = sum(1 for p in h.points if p.inside)
    with_iv = sum(1 for p in h.points if p.inside is not None)
    text = (f"holdout {h.rule} ({h.approach}): fitted on {h.n_train} points, predicted {h.n_heldout}: "
            f"max |error| {h.max_abs_rel_error:.2%}, mean {h.mean_abs_rel_error:.2%}"
            + (f"; {inside}/{with_iv} inside their 95% prediction intervals" if with_iv else "; no intervals"))
    if h.extrapolation:
        text += f"; {h.extrapolation}"
    if h.reason:
        text += f"; note: {h.reason}"
    return text


# -------------------------------------------------------------------------------------------- CLI
def build_parser():
    p = argparse.ArgumentParser(prog="python -m sweeps.fit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a sweep folder (run records) or a CSV file")
    p.add_argument("--out", help="folder for fit.json (default: the sweep folder, or the CSV's folder)")
    g = p.add_argument_group("sweep folders")
    g.add_argument("--params", choices=["total", "non_embedding"], default="total",
                   help="parameter count used as N (default total)")
    g.add_argument("--flops", choices=["exact", "6n", "no_attention"], default="exact",
                   help="FLOPs per token used for C = D x FLOPs/token (default exact)")
    g.add_argument("--loss-key", default="final_val_loss", help="summary.json loss field (default final_val_loss)")
    g.add_argument("--sweep", default="auto",
                   help="which runs to fit: auto (the chinchilla runs if any, else all), all, or a sweep name")
    g = p.add_argument_group("CSV files")
    g.add_argument("--n-col", default="N")
    g.add_argument("--d-col", default="D")
    g.add_argument("--loss-col", default="loss")
    g.add_argument("--c-col", default="C")
    g.add_argument("--budget-col", default=None, help="column naming each point's IsoFLOP budget (optional)")
    g.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                   help="keep only the rows where COLUMN equals VALUE (repeatable)")
    g = p.add_argument_group("fitting")
    g.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                   help=f"bootstrap replicates of approach 3 and the holdout (default {DEFAULT_BOOTSTRAP})")
    g.add_argument("--seed", type=int, default=bs.DEFAULT_SEED)
    g.add_argument("--predict", default=None, metavar="C1,C2,...",
                   help="budgets (FLOPs) for frontier predictions (default: each decade of the fitted range and "
                   "two beyond; beyond one decade they are marked as extrapolation)")
    g.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                   help="exclude the K highest-loss points (Epoch AI used 5 on the Chinchilla data)")
    g.add_argument("--approaches", default="1,2,3", help="which approaches to run (default 1,2,3)")
    g.add_argument("--approach1-points", choices=POINTS, default="annealed",
                   help="approach 1: each run's final (annealed) loss (default) or every full evaluation of the "
                   "training curves (intermediate points of cosine runs are not annealed)")
    g.add_argument("--c-tol", type=float, default=C_TOL_DECADES,
                   help="decades of C within which points without a budget form one budget (default %(default)s)")
    g.add_argument("--window", type=float, default=WINDOW_DECADES,
                   help="approach 2: fit each parabola within this many decades of N of the lowest loss "
                   "(default %(default)s; the fit also reports a under 2/3 and 3/2 of it)")
    g.add_argument("--grid", choices=sorted(GRIDS), default="epoch",
                   help="approach 3 starting grid: epoch (4,500 starts, default) or coarse (432, ~10x faster)")
    g.add_argument("--interval", choices=INTERVAL_METHODS, default="two-level",
                   help="approach 3 bootstrap: two-level parametric (default; see bench/results/coverage-cpu.json) "
                   "or points (the classic resampling of points)")
    g.add_argument("--a3-min-steps", type=int, default=A3_MIN_STEPS, metavar="K",
                   help="approach 3 and the holdout: fit only runs with at least K optimizer steps (sweep folders; "
                   "default %(default)s, 0 keeps all): shorter runs are limited by the optimizer, not by N or D")
    g = p.add_argument_group("held-out prediction")
    g.add_argument("--holdout", default=None, metavar="RULE", help=f"hold out the points matching RULE ({RULE_HELP}), "
                   "fit on the rest and predict them")
    g.add_argument("--holdout-law", choices=LAW_CHOICES, default="auto",
                   help="law form for the held-out prediction: auto (chosen by a rollout on the training points, "
                   "default), free or tied (alpha = beta, as Gadre et al. 2024)")
    g.add_argument("--holdout-grid", choices=sorted(GRIDS), default="coarse",
                   help="approach 3 starting grid for the held-out fits (default coarse)")
    p.add_argument("--json", action="store_true", help="print fit.json to stdout instead of the table")
    return p


def _floats(text, flag):
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FitInputError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not all(v > 0 and math.isfinite(v) for v in vals):
        raise FitInputError(f"{flag}: expected positive numbers, got {text!r}")
    return vals


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup(console=True)
    try:
        predict = _floats(args.predict, "--predict") if args.predict else None
        approaches = tuple(int(v) for v in _floats(args.approaches, "--approaches"))
        if not set(approaches) <= {1, 2, 3}:
            raise FitInputError(f"--approaches {args.approaches!r}: choose from 1, 2, 3")
        if args.bootstrap < 0:
            raise FitInputError(f"--bootstrap {args.bootstrap}: must be >= 0")
        if args.a3_min_steps < 0:
            raise FitInputError(f"--a3-min-steps {args.a3_min_steps}: must be >= 0 (0 keeps every point)")
        res, path = run_fit(args.input, args.out, drop_highest=args.drop_highest_loss, params=args.params,
                            flops=args.flops, loss_key=args.loss_key, sweep=args.sweep, n_col=args.n_col,
                            d_col=args.d_col, loss_col=args.loss_col, c_col=args.c_col,
                            budget_col=args.budget_col, where=args.where, bootstrap=args.bootstrap, seed=args.seed,
                            predict=predict, approaches=approaches, c_tol=args.c_tol, window=args.window,
                            grid=args.grid, approach1_points=args.approach1_points, interval=args.interval,
                            holdout_rule=args.holdout, holdout_law=args.holdout_law, holdout_grid=args.holdout_grid,
                            a3_min_steps=args.a3_min_steps)
    except (FitInputError, OSError) as e:  # OSError: e.g. the output folder is not writable
        print(f"sweeps.fit: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(dumps(res.to_dict(), indent=1))
    else:
        print(format_summary(res))
        print(f"wrote {path}")
    folder = Path(path).parent
    if (folder / "report.md").is_file():  # one source of truth: a report beside fit.json follows it
        from .report import make_report

        out = make_report(folder)
        print(f"rebuilt the report from {FIT_JSON}: {out['report_md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
