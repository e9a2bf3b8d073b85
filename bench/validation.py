"""The fitter against published results (../shared/refdata): Epoch AI's Chinchilla replication, Porian et al.'s
exponents in their 15 settings, and Gadre et al.'s held-out large runs.

    python bench/validation.py                        # writes bench/results/validation.json
    python bench/validation.py --refdata DIR --out /tmp/v.json --bootstrap 300 --grid coarse

Runs the product's own functions (sweeps.fit.run_fit, sweeps.approach2, sweeps.holdout) and prints a table.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

PORIAN_KEY = ("dataset", "hparams", "warmup", "decay", "param_count", "loss_split")
GADRE_SETS = {"rpj": "RedPajama", "rw_original": "RefinedWeb", "c4_original": "C4"}


def epoch(refdata, bootstrap, grid, tmp):
    from sweeps.fit import run_fit

    res, _ = run_fit(refdata / "chinchilla_epoch.csv", tmp, n_col="N_params", d_col="D_tokens", c_col="C_flops",
                     loss_col="loss", drop_highest=5, approaches=(2, 3), bootstrap=bootstrap, grid=grid, write=False)
    r3, r2 = res.approach3, res.approach2
    return {"points": res.n_points, "approach3": {k: getattr(r3, k) for k in ("A", "B", "E", "alpha", "beta", "a",
                                                                              "objective", "status")},
            "approach3_ci": r3.ci, "approach3_interval": r3.interval.to_dict(), "noise": r3.noise,
            "approach2": {"a": r2.a, "ci": r2.ci.get("a"), "status": r2.status, "budgets_used": r2.n_budgets_used,
                          "budgets": r2.n_budgets}}


def porian(refdata):
    from sweeps.approach2 import approach2

    theirs = {tuple(r[k] for k in PORIAN_KEY): r for r in csv.DictReader(open(refdata / "porian2024_fits.csv"))
              if r["fit"] == "bs_median_weighted"}
    points = list(csv.DictReader(open(refdata / "porian2024_isoflop_points.csv")))
    rows = []
    for key, t in theirs.items():
        sel = [r for r in points if tuple(r[k] for k in PORIAN_KEY) == key]
        N, D, C, L = (np.array([float(r[c]) for r in sel]) for c in ("N_params", "D_tokens", "C_flops", "loss"))
        r = approach2(N, D, C, L)
        a_t, lo_t, hi_t = (float(t[c]) for c in ("n_exponent", "n_exp_boot_weighted_2.5", "n_exp_boot_weighted_97.5"))
        ci = r.ci.get("a")
        rows.append({"setting": "/".join(key), "a": r.a, "ci": ci, "status": r.status,
                     "budgets_used": r.n_budgets_used, "budgets": r.n_budgets, "theirs": a_t, "theirs_ci": [lo_t, hi_t],
                     "diff": r.a - a_t, "theirs_inside_ours": bool(ci and ci[0] <= a_t <= ci[1]),
                     "window_a": [w["a"] for w in r.window_sensitivity],
                     "window_flag": any("window sensitivity" in w for w in r.warnings)})
    return rows


def gadre(refdata, bootstrap):
    from sweeps.collect import Dataset
    from sweeps.holdout import holdout

    rows = list(csv.DictReader(open(refdata / "gadre2024_overtraining_models.csv")))
    out = {}
    for name, label in GADRE_SETS.items():
        sel = [r for r in rows if r["train_dataset"] == name]
        N, D, C, L = (np.array([float(r[c]) for r in sel]) for c in ("N_params", "D_tokens", "C_flops_6ND",
                                                                     "loss_c4_val"))
        ds = Dataset.from_arrays(N, D, C, L, names=[r["name"] for r in sel])
        h = holdout(ds, "N>1e9", bootstrap=bootstrap)
        out[label] = {"law": h.law_form, "law_choice": h.law_choice, "max_abs_rel_error": h.max_abs_rel_error,
                      "coverage": h.coverage, "n_train": h.n_train,
                      "points": [{"name": p.name, "N": p.N, "D": p.D, "loss": p.loss, "predicted": p.predicted,
                                  "rel_error": p.rel_error, "interval": p.interval, "inside": p.inside}
                                 for p in h.points]}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python bench/validation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--refdata", default=str(REPO.parent / "shared" / "refdata"))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--grid", default="epoch", choices=["epoch", "coarse"], help="approach 3 grid for Epoch's data")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "validation.json"))
    args = p.parse_args(argv)
    refdata = Path(args.refdata)
    if not (refdata / "chinchilla_epoch.csv").is_file():
        p.error(f"--refdata {refdata}: no chinchilla_epoch.csv there (the folder is ../shared/refdata)")

    import tempfile

    from bench.timing import command_line, device_info, write_results
    from train.io_utils import versions

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ep = epoch(refdata, args.bootstrap, args.grid, tmp)
    po = porian(refdata)
    ga = gadre(refdata, args.bootstrap)
    info = device_info("cpu")
    info["versions"].update(versions(("numpy", "scipy")))
    payload = {**info, "command": command_line(), "refdata": str(refdata), "bootstrap": args.bootstrap,
               "epoch": ep, "porian": po, "gadre_holdout_N>1e9": ga, "wall_s": round(time.perf_counter() - t0, 1)}
    path = write_results(args.out, payload)

    a3 = ep["approach3"]
    print(f"Epoch (240 points): A {a3['A']:.2f} B {a3['B']:.2f} E {a3['E']:.4f} alpha {a3['alpha']:.4f} "
          f"beta {a3['beta']:.4f} a {a3['a']:.3f}; 95%: " + ", ".join(
              f"{k} [{v[0]:.3f}, {v[1]:.3f}]" for k, v in ep["approach3_ci"].items() if k in ("E", "alpha", "beta", "a")))
    a2 = ep["approach2"]
    print(f"  approach 2: a {a2['a']} {a2['ci']} ({a2['status']}, {a2['budgets_used']}/{a2['budgets']} budgets)")
    print(f"Porian et al. (approach 2 vs their bootstrap median): max |diff| {max(abs(r['diff']) for r in po):.3f}, "
          f"{sum(abs(r['diff']) < 0.02 for r in po)}/{len(po)} within 0.02, theirs inside our interval in "
          f"{sum(r['theirs_inside_ours'] for r in po)}/{len(po)}")
    for r in po:
        print(f"  {r['setting']:<40} {r['a']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]  theirs {r['theirs']:.3f} "
              f"[{r['theirs_ci'][0]:.3f}, {r['theirs_ci'][1]:.3f}]" + ("  window!" if r["window_flag"] else ""))
    for label, g in ga.items():
        print(f"Gadre et al. {label}, N>1e9 held out ({g['law']} law): max |error| {g['max_abs_rel_error']:.2%}, "
              f"inside {g['coverage']:.0%}: " + ", ".join(f"{q['rel_error']:+.2%}" for q in g["points"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
