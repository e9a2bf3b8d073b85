"""Fit the compute-optimal frontier: ``python -m sweeps.fit INPUT [--out DIR]``.

INPUT is a sweep folder (run records, see sweeps.collect) or a CSV with columns N, D, loss (and C;
C = 6ND when absent).  Writes DIR/fit.json (atomically) with the three approaches:

  approach1  lower envelope of the training curves  -> N_opt ~ C^a, D_opt ~ C^b
  approach2  IsoFLOP parabolas per budget            -> a, b with bootstrap CIs, per-budget optima
  approach3  L = E + A/N^alpha + B/D^beta (Epoch AI)  -> parameters with bootstrap CIs, closed-form frontier

and prints a short table.  Exit status 2 (and no fit.json) when the input cannot be fitted at all.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import bootstrap as bs
from ._blas import single_threaded_blas
from .approach1 import approach1
from .approach2 import C_TOL_DECADES, WINDOW_DECADES, approach2
from .approach3 import GRIDS, HUBER_DELTA, approach3
from .collect import FitInputError, collect, load_csv
from train.io_utils import dumps, versions, write_json

SCHEMA = "scalelab.fit/1"
DEFAULT_PREDICT = tuple(10.0 ** k for k in range(18, 25))
DEFAULT_BOOTSTRAP = 300
MIN_POINTS = 3


def load_input(path, *, params="total", flops="exact", loss_key="final_val_loss", sweep="auto",
               n_col="N", d_col="D", loss_col="loss", c_col="C", budget_col=None):
    """A Dataset from a sweep folder or a CSV file (raises FitInputError on unusable input)."""
    p = Path(path)
    if not p.exists():
        raise FitInputError(f"{p}: no such file or directory")
    if p.is_dir():
        return collect(p, params=params, flops=flops, loss_key=loss_key, sweep=sweep)
    return load_csv(p, n_col=n_col, d_col=d_col, loss_col=loss_col, c_col=c_col, budget_col=budget_col)


def drop_highest_loss(ds, k):
    """Exclude the k highest-loss points (Epoch AI drops 5 from the Chinchilla data)."""
    if k <= 0 or len(ds) == 0:
        return ds
    order = np.argsort(-ds.loss, kind="stable")[:k]
    keep = np.ones(len(ds), bool)
    keep[order] = False
    for i in order:
        ds.excluded.append({"name": ds.names[i], "reason": f"one of the {k} highest losses (--drop-highest-loss)"})
    for r in ds.runs:
        if r.get("used") and r["name"] in {ds.names[i] for i in order}:
            r["used"] = False
            r["excluded_reason"] = f"one of the {k} highest losses (--drop-highest-loss)"
    for attr in ("N", "D", "C", "loss", "budget", "fpt"):
        setattr(ds, attr, getattr(ds, attr)[keep])
    ds.names = [n for n, kk in zip(ds.names, keep) if kk]
    return ds


def fit_dataset(ds, *, bootstrap=DEFAULT_BOOTSTRAP, seed=bs.DEFAULT_SEED, predict=DEFAULT_PREDICT,
                approaches=(1, 2, 3), huber_delta=HUBER_DELTA, c_tol=C_TOL_DECADES, window=WINDOW_DECADES,
                grid="epoch"):
    """Run the approaches on a Dataset; returns the fit.json dict (never raises on bad runs)."""
    t0 = time.perf_counter()
    predict = [float(c) for c in predict]
    res = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": ds.source,
        "input_kind": ds.kind,
        "params_convention": ds.params_convention,
        "params_convention_description": ds.params_description,
        "flops_convention": ds.flops_convention,
        "flops_convention_description": ds.flops_description,
        "notes": list(ds.notes),
        "n_points": len(ds),
        "n_excluded": len(ds.excluded),
        "settings": {"bootstrap": int(bootstrap), "seed": seed, "huber_delta": huber_delta,
                     "predict": predict, "ci_level": 0.95, "c_tol_decades": c_tol,
                     "window_decades": window, "grid": grid},
    }
    n = len(ds)
    with single_threaded_blas():  # see sweeps/_blas.py: ~50x faster on a busy 2-core machine
        if 1 in approaches:
            res["approach1"] = approach1(ds.curves, bootstrap=bootstrap, seed=seed, predict=predict)
        else:
            res["approach1"] = {"skipped": "not requested"}
        if 2 in approaches:
            res["approach2"] = approach2(ds.N, ds.D, ds.C, ds.loss, budget=ds.budget, fpt=ds.fpt, names=ds.names,
                                         bootstrap=bootstrap, seed=seed, predict=predict, c_tol=c_tol,
                                             window=window) \
                if n else {"skipped": "no points"}
        else:
            res["approach2"] = {"skipped": "not requested"}
        if 3 in approaches:
            res["approach3"] = approach3(ds.N, ds.D, ds.loss, ds.C, bootstrap=bootstrap, seed=seed,
                                         delta=huber_delta, predict=predict, grid=grid)
        else:
            res["approach3"] = {"skipped": "not requested"}
    fitted = [k for k in ("approach1", "approach2", "approach3")
              if isinstance(res[k].get("a"), float) and np.isfinite(res[k]["a"])]
    res["ok"] = bool(fitted)
    if not fitted:
        res["problem"] = "no approach could be fitted: " + "; ".join(
            f"{k}: {res[k].get('skipped')}" for k in ("approach1", "approach2", "approach3"))
    res["points"] = ds.points()
    res["excluded"] = list(ds.excluded)
    res["runs"] = list(ds.runs)
    res["versions"] = versions(("numpy", "scipy"))
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    return res


def default_out_dir(input_path):
    p = Path(input_path)
    return p if p.is_dir() else p.resolve().parent


def run_fit(input_path, out_dir=None, *, drop_highest=0, write=True, require_ok=True, **kw):
    """Load, fit and write DIR/fit.json. Returns (result, path or None).

    Raises FitInputError when the input is unusable, or (with require_ok) when no approach could be
    fitted; then nothing is written.
    """
    load_kw = {k: kw.pop(k) for k in list(kw) if k in (
        "params", "flops", "loss_key", "sweep", "n_col", "d_col", "loss_col", "c_col", "budget_col")}
    ds = load_input(input_path, **load_kw)
    drop_highest_loss(ds, drop_highest)
    if require_ok and len(ds) < MIN_POINTS:
        reasons = {}
        for e in ds.excluded:
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
        why = "; ".join(f"{v} x {k}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
        raise FitInputError(f"{input_path}: too few usable points ({len(ds)}; need at least {MIN_POINTS})"
                            + (f"; excluded: {why}" if why else ""))
    res = fit_dataset(ds, **kw)
    if ds.kind == "sweep":
        res["collect_options"] = {"params": load_kw.get("params", "total"), "flops": load_kw.get("flops", "exact"),
                                  "loss_key": load_kw.get("loss_key", "final_val_loss"),
                                  "sweep": load_kw.get("sweep", "auto")}
    if require_ok and not res["ok"]:
        raise FitInputError(f"{input_path}: {res['problem']}")
    path = None
    if write:
        path = write_json(Path(out_dir or default_out_dir(input_path)) / "fit.json", res, indent=1)
    return res, path


# ------------------------------------------------------------------------------------- the table
def _g(v, fmt="{:.3g}"):
    return "-" if v is None else fmt.format(v)


def _ci(ci, fmt="{:.3f}"):
    return "" if not ci else f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def format_summary(res):
    """A short plain-text table of a fit.json dict."""
    lines = [f"fit of {res['input']}: {res['n_points']} points used, {res['n_excluded']} excluded",
             f"  N: {res['params_convention_description']}",
             f"  C: {res['flops_convention_description']}"]
    if res.get("excluded"):
        counts = {}
        for e in res["excluded"]:
            counts[e["reason"]] = counts.get(e["reason"], 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])
        lines.append("  excluded: " + "; ".join(f"{n} x {why}" for why, n in top[:4])
                     + (f"; ... ({len(top) - 4} more reasons, see fit.json)" if len(top) > 4 else ""))
    lines.append(f"{'approach':<10}{'a (N_opt ~ C^a)':<26}{'b (D_opt ~ C^b)':<26}notes")
    for k, label in (("approach1", "1"), ("approach2", "2"), ("approach3", "3")):
        r = res.get(k) or {}
        if "a" not in r:
            lines.append(f"{label:<10}skipped: {r.get('skipped', '?')}")
            continue
        if k == "approach3":
            a_ci, b_ci = (r.get("ci") or {}).get("a"), (r.get("ci") or {}).get("b")
            note = (f"E={r['E']:.4g} A={r['A']:.4g} B={r['B']:.4g} alpha={r['alpha']:.4f} "
                    f"beta={r['beta']:.4f} obj={r['objective']:.5g}")
        else:
            a_ci, b_ci = r.get("a_ci"), r.get("b_ci")
            note = (f"{r['n_budgets_used']}/{r['n_budgets']} budgets" if k == "approach2"
                    else f"{r['n_curves']} curves, {r['n_grid_used']} grid points")
        a_txt = f"{r['a']:.3f}" + _ci(a_ci)
        b_txt = f"{r['b']:.3f}" + _ci(b_ci)
        lines.append(f"{label:<10}{a_txt:<26}{b_txt:<26}{note}")
    r3 = res.get("approach3") or {}
    if r3.get("predictions"):
        lines.append(f"frontier (approach 3; {r3['flops_relation']['description']}):")
        lines.append(f"  {'C':>9} {'N_opt':>10} {'D_opt':>10} {'D/N':>7} {'loss':>7}")
        for p in r3["predictions"]:
            lines.append(f"  {p['C']:9.3g} {p['N_opt']:10.3g} {p['D_opt']:10.3g} "
                         f"{p['tokens_per_param']:7.1f} {p['loss']:7.4f}")
    return "\n".join(lines)


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
    g = p.add_argument_group("fitting")
    g.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                   help=f"bootstrap replicates per approach (default {DEFAULT_BOOTSTRAP})")
    g.add_argument("--seed", type=int, default=bs.DEFAULT_SEED)
    g.add_argument("--predict", default=None, metavar="C1,C2,...",
                   help="budgets (FLOPs) for frontier predictions (default 1e18,...,1e24)")
    g.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                   help="exclude the K highest-loss points (Epoch AI used 5 on the Chinchilla data)")
    g.add_argument("--approaches", default="1,2,3", help="which approaches to run (default 1,2,3)")
    g.add_argument("--c-tol", type=float, default=C_TOL_DECADES,
                   help="decades of C within which points without a budget form one budget (default %(default)s)")
    g.add_argument("--window", type=float, default=WINDOW_DECADES,
                   help="approach 2: fit each parabola within this many decades of N of the lowest loss "
                   "(default %(default)s)")
    g.add_argument("--grid", choices=sorted(GRIDS), default="epoch",
                   help="approach 3 starting grid: epoch (4,500 starts, default) or coarse (432, ~10x faster)")
    p.add_argument("--json", action="store_true", help="print fit.json to stdout instead of the table")
    return p


def _floats(text, flag):
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FitInputError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    return vals


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        predict = _floats(args.predict, "--predict") if args.predict else DEFAULT_PREDICT
        approaches = tuple(int(v) for v in _floats(args.approaches, "--approaches"))
        if args.bootstrap < 0:
            raise FitInputError("--bootstrap must be >= 0")
        res, path = run_fit(args.input, args.out, drop_highest=args.drop_highest_loss, params=args.params,
                            flops=args.flops, loss_key=args.loss_key, sweep=args.sweep, n_col=args.n_col,
                            d_col=args.d_col, loss_col=args.loss_col, c_col=args.c_col,
                            budget_col=args.budget_col, bootstrap=args.bootstrap, seed=args.seed,
                            predict=predict, approaches=approaches, c_tol=args.c_tol, window=args.window,
                            grid=args.grid)
    except FitInputError as e:
        print(f"sweeps.fit: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the output folder is not writable
        print(f"sweeps.fit: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(dumps(res, indent=1))
    else:
        print(format_summary(res))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
