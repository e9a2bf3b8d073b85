"""Seed-to-seed noise of the IsoFLOP points, through exactly the sweep's code path.

    python bench/seed_noise.py [--preset cpu] [--seeds 6] [--first-seed 0] [--vary both|init|data] [--out FILE]

Runs `python -m train +sweep=chinchilla` with the preset's rules, schedule (forks or cosine) and shape
family, restricted to its middle budget and the 3 shapes nearest the predicted optimum, once per seed
(`train.seed=0,...,5`; --vary init keeps the data order fixed, --vary data the initial weights), and writes JSON {"preset", "budget", "schedule", "rows": [{"shape", "params_total",
"final_val_loss": [...], "rel_sd"}], ...} with the date, versions and command. rel_sd is the sample
standard deviation over the seeds divided by the mean. Target: 1% or less for every shape (goal 0.5%):
neighbouring shapes of an IsoFLOP ladder differ by about that much.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from bench.timing import command_line, device_info, write_results
    from sweeps.plan import job_config
    from train.record import load_summary

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", help="a preset of the chinchilla sweep (default cpu)")
    p.add_argument("--seeds", type=int, default=6, help="seeds per shape (default 6: with 3, a sample sd is itself "
                                                         "uncertain by about +-50%%; with 6, about +-30%%)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1 (default 0)")
    p.add_argument("--vary", choices=("both", "init", "data"), default="both",
                   help="what the seed changes: both the initial weights and the data order (train.seed, the "
                        "default), the weights alone (train.data_seed=0), or the data order alone (train.seed=0)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/seed-noise/<preset>.json)")
    p.add_argument("overrides", nargs="*", help="extra overrides for every job (e.g. sweep.schedule=cosine)")
    args = p.parse_intermixed_args(argv)
    if args.seeds < 2:
        p.error(f"--seeds must be >= 2 for a standard deviation, got {args.seeds}")
    if args.first_seed < 0:
        p.error(f"--first-seed must be >= 0, got {args.first_seed}")
    seeds = ",".join(str(s) for s in range(args.first_seed, args.first_seed + args.seeds))
    seed_args = {"both": [f"train.seed={seeds}"], "init": [f"train.seed={seeds}", "train.data_seed=0"],
                 "data": ["train.seed=0", f"train.data_seed={seeds}"]}[args.vary]
    run, key, _, _ = job_config("chinchilla", args.preset, args.overrides)
    budgets = sorted(run.sweep.presets[key].budgets)
    budget = budgets[len(budgets) // 2]
    out = args.out or REPO / "bench" / "results" / "seed-noise" / f"{key}.json"
    sweep_dir = Path(tempfile.mkdtemp(prefix="scalelab-seed-noise-"))
    cmd = [sys.executable, "-m", "train", "+sweep=chinchilla", f"sweep.preset={key}",
           f"sweep.presets.{key}.budgets=[{budget!r}]", f"sweep.presets.{key}.points=3", "sweep.fit=false",
           *seed_args, f"hydra.sweep.dir={sweep_dir}",
           *args.overrides]
    print(f"seed noise: preset {key}, budget {budget:g}, seeds {seeds} ({args.vary}), in {sweep_dir}", file=sys.stderr)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0:
        print(f"the sweep failed (exit {proc.returncode}); see {sweep_dir}", file=sys.stderr)
        return 1
    by_shape: dict = {}
    for d in sorted(sweep_dir.iterdir()):
        s, _ = load_summary(d)
        if s is None or s.role == "trunk" or s.budget != budget:
            continue
        if s.status != "completed":
            print(f"{d.name}: {s.status} ({s.reason})", file=sys.stderr)
            continue
        varied = (s.identity or {}).get("data_seed", s.seed) if args.vary == "data" else s.seed
        by_shape.setdefault((s.params_total, s.shape), []).append((varied, s.final_val_loss))
    rows = []
    for (n, shape), losses in sorted(by_shape.items()):
        values = [loss for _, loss in sorted(losses)]
        rows.append({"shape": shape, "params_total": n, "seeds": [seed for seed, _ in sorted(losses)],
                     "final_val_loss": values,
                     "rel_sd": statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else None})
    payload = {**device_info(), "command": command_line("bench/seed_noise.py", argv), "preset": key,
               "budget": budget, "schedule": run.sweep.schedule, "seeds": args.seeds, "vary": args.vary, "rows": rows,
               "wall_s": round(time.time() - t0, 1), "sweep_dir": str(sweep_dir)}
    write_results(out, payload)
    for r in rows:
        sd = "-" if r["rel_sd"] is None else f"{100 * r['rel_sd']:.2f}%"
        print(f"{r['shape']:>10} {r['params_total']:>9,}  " + " ".join(f"{v:.4f}" for v in r["final_val_loss"])
              + f"  rel sd {sd}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
