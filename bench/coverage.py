"""Coverage of the fitter's 95% intervals, measured on synthetic sweeps of a preset's design.

    python bench/coverage.py                                  # 200 sweeps per scenario -> bench/results/coverage-cpu.json
    python bench/coverage.py --sweeps 20 --out /tmp/cov.json  # a quick look
    python bench/coverage.py --budgets 3e16,3e18 --n-budgets 5 --out bench/results/coverage-gpu.json

Design (by default the cpu preset's: 7 budgets 2e10-2e12, 9 shapes 0.125 decades apart, budget-centred as
sweeps/plan.py plans them): ``--n-budgets`` log-spaced budgets from ``--budgets LO,HI``; per budget ``--shapes`` model sizes spaced ``--spacing`` decades of N
around the planner's predicted N_opt = sqrt(C / (6 x tokens-per-param)); D = C / 6N.  Losses follow a known law
L = E + A/N^alpha + B/D^beta (``--law``) times exp(noise), the noise being, per scenario, independent per run
(a seed-to-seed relative sd), an offset shared by a budget's runs, and a shift of a budget's whole profile
along ln N (the optimum moving from budget to budget, e.g. by hyperparameter rules that suit one budget better).

Per synthetic sweep it runs what the product runs (sweeps.approach2, sweeps.approach3, sweeps.holdout with
the largest budget held out) and checks whether each 95% interval holds the true value; beside them (unless
``--skip-replaced``, which halves the cost), the intervals they replaced: approach 2's bootstrap of points
within budgets and approach 3's bootstrap of points.
Writes the coverage per method and scenario with binomial standard errors, the date, versions and command.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread per worker (see sweeps/_blas.py)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

# A law of the cpu preset's scale: losses ~1.9 at 2e11 FLOPs and ~1.5 at 2e12 with N_opt near sqrt(C/120),
# as measured on the byte-level CPU sweep (README).
CPU_LAW = {"E": 0.8, "A": 20.0, "B": 80.0, "alpha": 0.34, "beta": 0.37}
# name: (independent relative sd, budget offset sd, budget optimum shift sd in decades of N)
SCENARIOS = {
    "iid-0.5%": (0.005, 0.0, 0.0),
    "iid-1%": (0.01, 0.0, 0.0),
    "iid-0.5%+budget-0.5%": (0.005, 0.005, 0.0),
    "iid-1%+budget-0.5%": (0.01, 0.005, 0.0),
    "iid-0.5%+shift-0.03dec": (0.005, 0.0, 0.03),
}
# 32 starts around the law's region: the synthetic laws are smooth and this grid finds the same optimum as
# a 432-start grid (checked on the first sweep of each scenario: "grid_check" in the results), far cheaper.
STUDY_GRID = {"alpha": (0.3, 0.7), "beta": (0.3, 0.7), "e": (-0.5, 0.5), "a": (2.0, 8.0), "b": (2.0, 8.0)}
OLD_BOOTSTRAP = 400


def design(budgets, n_budgets, shapes, spacing, tokens_per_param):
    """(N, D, C, budget label) of one sweep."""
    Cs = np.exp(np.linspace(np.log(budgets[0]), np.log(budgets[1]), n_budgets))
    rows = []
    for g, C in enumerate(Cs):
        centre = np.sqrt(C / (6 * tokens_per_param))
        for j in range(shapes):
            N = centre * 10 ** (spacing * (j - (shapes - 1) / 2))
            rows.append((N, C / (6 * N), C, g))
    return [np.array(v) for v in zip(*rows)]


def simulate(gen, N, D, C, g, law, scenario):
    sd, offset_sd, shift_sd = scenario
    k = int(g.max()) + 1
    shift = np.exp(gen.standard_normal(k) * shift_sd * np.log(10))[g]
    Ns = N * shift  # the profile moves along ln N: the run behaves as a model of N * shift at the same D
    loss = law["E"] + law["A"] / Ns ** law["alpha"] + law["B"] / D ** law["beta"]
    return loss * np.exp(gen.standard_normal(len(N)) * sd + (gen.standard_normal(k) * offset_sd)[g])


def old_approach2_interval(N, D, C, loss, budget, gen, reps=OLD_BOOTSTRAP):
    """The replaced interval: resample points within each budget, redo the vertices and the slope."""
    from sweeps import bootstrap as bs
    from sweeps.approach2 import WINDOW_DECADES, _optima, group_budgets

    labels = group_budgets(C, budget)
    groups = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    C_g = np.array([float(np.exp(np.mean(np.log(C[idx])))) for idx in groups])
    usable = [True] * len(groups)
    slopes, valid = [], 0
    for _ in range(reps):
        rg = bs.resample_within(gen, groups)
        o = _optima(np.log(N), loss, C / D, C_g, rg, WINDOW_DECADES, usable)
        ok = [j for j, v in enumerate(o) if not isinstance(v, str)]
        if len(ok) < 2:
            continue
        valid += 1
        slopes.append(np.polyfit(np.log(C_g[ok]), np.log([o[j]["N_opt"] for j in ok]), 1)[0])
    return bs.percentile_ci(slopes, 0.95), valid / reps


def one_sweep(args):
    """Everything measured on one synthetic sweep (a dict of plain values)."""
    seed, scenario, opts = args
    from sweeps import bootstrap as bs
    from sweeps.approach2 import approach2
    from sweeps.approach3 import approach3, law_replicates
    from sweeps.collect import Dataset
    from sweeps.holdout import holdout, largest_budget_rule
    from sweeps.law import FlopsRelation, frontier_slopes, laws_from_rows, x_from_law

    law = opts["law"]
    true = {"a": law["beta"] / (law["alpha"] + law["beta"]), "alpha": law["alpha"], "beta": law["beta"], "E": law["E"]}
    gen = np.random.default_rng(seed)
    N, D, C, g = design(opts["budgets"], opts["n_budgets"], opts["shapes"], opts["spacing"], opts["tokens_per_param"])
    loss = simulate(gen, N, D, C, g, law, scenario)
    out = {"seed": seed}
    if opts.get("grid_check"):
        from sweeps.approach3 import fit_law

        fun_study = fit_law(N, D, loss, grid=opts["grid"])[1].min()
        fun_coarse = fit_law(N, D, loss, grid="coarse")[1].min()
        out["grid_check"] = {"study_grid_objective": float(fun_study), "coarse_grid_objective": float(fun_coarse)}

    def covers(ci, v):
        return None if not ci else bool(ci[0] <= v <= ci[1])

    r2 = approach2(N, D, C, loss, budget=C)
    out["a2"] = {"status": r2.status, "a": r2.a, "covers": covers(r2.ci.get("a"), true["a"]),
                 "width": (r2.ci["a"][1] - r2.ci["a"][0]) if r2.ci.get("a") else None,
                 "budgets_used": r2.n_budgets_used}
    if opts["replaced"]:
        ci, vf = old_approach2_interval(N, D, C, loss, C, gen)
        out["a2_old"] = {"covers": covers(ci, true["a"]), "width": (ci[1] - ci[0]) if ci else None,
                         "valid_fraction": vf}

    t0 = time.perf_counter()
    r3 = approach3(N, D, loss, C, groups=g, bootstrap=opts["bootstrap"], grid=opts["grid"], seed=seed)
    out["a3"] = {"status": r3.status, "a": r3.a, "seconds": time.perf_counter() - t0,
                 "valid_fraction": r3.interval.valid_fraction if r3.interval else None,
                 **{f"covers_{k}": covers(r3.ci.get(k), v) for k, v in true.items()},
                 "width_a": (r3.ci["a"][1] - r3.ci["a"][0]) if r3.ci.get("a") else None}
    if r3.law is not None and opts["replaced"]:
        X, valid, _, _ = law_replicates(x_from_law(r3.law), [], N, D, loss, g, reps=opts["bootstrap"], seed=seed,
                                        method="points")
        laws = laws_from_rows(X[valid])
        sa, _ = frontier_slopes(laws, FlopsRelation(N, D, C), C.min(), C.max())
        samples = {"a": sa, "alpha": laws["alpha"][:, 0], "beta": laws["beta"][:, 0], "E": laws["E"][:, 0]}
        out["a3_points"] = {f"covers_{k}": covers(bs.percentile_ci(samples[k]), v) for k, v in true.items()}
        out["a3_points"]["width_a"] = float(np.subtract(*bs.percentile_ci(sa)[::-1]))

    if opts["holdout"]:
        ds = Dataset.from_arrays(N, D, C, loss, budget=C)
        h = holdout(ds, largest_budget_rule(ds), law=opts["holdout_law"], grid=opts["grid"],
                    bootstrap=opts["bootstrap"], seed=seed)
        pts = h.points
        noise_free = [law["E"] + law["A"] / p.N ** law["alpha"] + law["B"] / p.D ** law["beta"] for p in pts]
        out["holdout"] = {"status": h.status, "law": h.law_form, "max_abs_rel_error": h.max_abs_rel_error,
                          "abs_rel_errors": [abs(p.rel_error) for p in pts],
                          "abs_rel_errors_to_law": [abs(p.predicted / t - 1) for p, t in zip(pts, noise_free)],
                          "inside": [p.inside for p in pts]}
    return out


def summarise(rows):
    """Coverage (with binomial standard error) of every interval over the sweeps of one scenario."""
    def rate(values):
        v = [x for x in values if x is not None]
        if not v:
            return None
        p = float(np.mean(v))
        return {"coverage": round(p, 3), "se": round(float(np.sqrt(p * (1 - p) / len(v))), 3), "n": len(v)}

    def med(values):
        v = [x for x in values if x is not None]
        return round(float(np.median(v)), 4) if v else None

    s = {
        "approach2 t interval (product)": {"a": rate(r["a2"]["covers"] for r in rows),
                                           "median_width_a": med(r["a2"]["width"] for r in rows),
                                           "withheld_or_skipped": sum(r["a2"]["covers"] is None for r in rows)},
        "approach2 bootstrap of points within budgets (replaced)": {
            "a": rate(r.get("a2_old", {}).get("covers") for r in rows),
            "median_width_a": med(r.get("a2_old", {}).get("width") for r in rows),
            "median_valid_fraction": med(r.get("a2_old", {}).get("valid_fraction") for r in rows)},
        "approach3 two-level parametric bootstrap (product)": {
            **{k: rate(r["a3"][f"covers_{k}"] for r in rows) for k in ("a", "alpha", "beta", "E")},
            "median_width_a": med(r["a3"]["width_a"] for r in rows),
            "not_identified": sum(r["a3"]["status"] == "not_identified" for r in rows),
            "median_seconds": med(r["a3"]["seconds"] for r in rows)},
        "approach3 bootstrap of points (replaced)": {
            **{k: rate(r.get("a3_points", {}).get(f"covers_{k}") for r in rows) for k in ("a", "alpha", "beta", "E")},
            "median_width_a": med(r.get("a3_points", {}).get("width_a") for r in rows)},
        "approach2 a (median, all sweeps)": med(r["a2"]["a"] for r in rows),
        "approach3 a (median, all sweeps)": med(r["a3"]["a"] for r in rows),
    }
    hs = [r["holdout"] for r in rows if r.get("holdout") and r["holdout"]["status"] == "ok"]
    if hs:
        errs = [e for h in hs for e in h["abs_rel_errors"]]
        inside = [x for h in hs for x in h["inside"] if x is not None]
        s["holdout of the largest budget"] = {
            "sweeps": len(hs), "points": len(errs),
            "median_abs_rel_error": round(float(np.median(errs)), 4),
            "p95_abs_rel_error": round(float(np.percentile(errs, 95)), 4),
            "share_within_1.5%": round(float(np.mean(np.array(errs) <= 0.015)), 3),
            "median_abs_rel_error_to_the_noise_free_law": round(float(np.median(
                [e for h in hs for e in h["abs_rel_errors_to_law"]])), 4),
            "share_within_1.5%_of_the_noise_free_law": round(float(np.mean(
                np.array([e for h in hs for e in h["abs_rel_errors_to_law"]]) <= 0.015)), 3),
            "interval_coverage": rate(inside),
            "law_chosen": {k: sum(h["law"] == k for h in hs) for k in ("free", "tied")},
        }
    return s


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/coverage.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sweeps", type=int, default=200, help="synthetic sweeps per scenario (default 200)")
    p.add_argument("--budgets", default="2e10,2e12", help="smallest and largest budget, FLOPs (default 2e10,2e12)")
    p.add_argument("--n-budgets", type=int, default=7, help="budgets, log-spaced (default 7)")
    p.add_argument("--shapes", type=int, default=9, help="model sizes per budget (default 9)")
    p.add_argument("--spacing", type=float, default=0.125, help="decades of N between sizes (default 0.125)")
    p.add_argument("--tokens-per-param", type=float, default=20.0, help="the planner's centre (default 20)")
    p.add_argument("--law", default=",".join(str(CPU_LAW[k]) for k in ("E", "A", "B", "alpha", "beta")),
                   help="E,A,B,alpha,beta of the true law (default: a cpu-preset-scale law)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    p.add_argument("--bootstrap", type=int, default=1000, help="replicates per interval (default 1000, the product's)")
    p.add_argument("--skip-replaced", action="store_true",
                   help="skip the replaced intervals (approach 2's and 3's bootstraps of points): half the cost")
    p.add_argument("--no-holdout", action="store_true", help="skip the held-out prediction of the largest budget")
    p.add_argument("--holdout-law", default="auto", choices=["auto", "free", "tied"])
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "coverage-cpu.json"))
    args = p.parse_args(argv)

    try:
        lo, hi = (float(v) for v in args.budgets.split(","))
        law = dict(zip(("E", "A", "B", "alpha", "beta"), (float(v) for v in args.law.split(","))))
        if len(law) != 5:
            raise ValueError
    except ValueError:
        p.error("--budgets takes LO,HI and --law E,A,B,alpha,beta (numbers)")
    unknown = [s for s in args.scenarios.split(",") if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r}; valid: {', '.join(SCENARIOS)}")

    from bench.timing import command_line, device_info, write_results
    from train.io_utils import versions

    opts = {"budgets": (lo, hi), "n_budgets": args.n_budgets, "shapes": args.shapes, "spacing": args.spacing,
            "tokens_per_param": args.tokens_per_param, "law": law, "bootstrap": args.bootstrap,
            "grid": STUDY_GRID, "holdout": not args.no_holdout, "holdout_law": args.holdout_law,
            "replaced": not args.skip_replaced}
    info = device_info("cpu")
    info["versions"].update(versions(("numpy", "scipy")))
    names = args.scenarios.split(",")
    results = {}
    t_all = time.perf_counter()
    for si, name in enumerate(names):
        jobs = [(args.seed + 100_000 * si + i, SCENARIOS[name], {**opts, "grid_check": i == 0})
                for i in range(args.sweeps)]
        t0 = time.perf_counter()
        if args.jobs > 1:
            from multiprocessing import Pool

            with Pool(args.jobs) as pool:
                rows = []
                for k, r in enumerate(pool.imap(one_sweep, jobs, chunksize=2), 1):
                    rows.append(r)
                    if k % 20 == 0:
                        print(f"  {name}: {k}/{args.sweeps} sweeps ({time.perf_counter() - t0:.0f} s)", flush=True)
        else:
            rows = []
            for k, j in enumerate(jobs, 1):
                rows.append(one_sweep(j))
                if k % 20 == 0:
                    print(f"  {name}: {k}/{args.sweeps} sweeps ({time.perf_counter() - t0:.0f} s)", flush=True)
        sd, off, shift = SCENARIOS[name]
        results[name] = {"noise": {"independent_sd": sd, "budget_offset_sd": off, "optimum_shift_sd_decades": shift},
                         **summarise(rows), "grid_check": rows[0].get("grid_check"),
                         "wall_s": round(time.perf_counter() - t0, 1)}
        print(f"{name}: {json_line(results[name])}", flush=True)
        # written after every scenario, so an interrupted study keeps what it finished
        path = write_results(args.out, {
            **info, "command": command_line(),
            "design": {"budgets": [lo, hi], "n_budgets": args.n_budgets, "shapes": args.shapes,
                       "spacing_decades": args.spacing, "tokens_per_param": args.tokens_per_param,
                       "C": "6 N D", "law": law, "true_a": law["beta"] / (law["alpha"] + law["beta"])},
            "sweeps_per_scenario": args.sweeps, "bootstrap": args.bootstrap, "grid": STUDY_GRID,
            "nominal": 0.95, "complete": si == len(names) - 1, "scenarios": results,
            "wall_s": round(time.perf_counter() - t_all, 1)})
    print(f"wrote {path}")
    return 0


def json_line(summary):
    keys = [("approach2 t interval (product)", "a"), ("approach2 bootstrap of points within budgets (replaced)", "a"),
            ("approach3 two-level parametric bootstrap (product)", "a"), ("approach3 bootstrap of points (replaced)", "a")]
    parts = []
    for k, q in keys:
        c = (summary.get(k) or {}).get(q)
        parts.append(f"{k.split(' (')[0]}: {c['coverage'] if c else '-'}")
    h = summary.get("holdout of the largest budget")
    if h:
        parts.append(f"holdout: coverage {h['interval_coverage']['coverage'] if h['interval_coverage'] else '-'}, "
                     f"within 1.5% {h['share_within_1.5%']}")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
