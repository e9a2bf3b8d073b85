"""Short training runs over a grid of shapes x lr x batch x seeds x schedules: the evidence behind the
size rules in train/rules.py and the seed-noise diagnosis (docs/size-rules.md).

    python bench/lr_sweep.py --shapes 32x2x2,64x3x2 --budget 6e11 --lr 0.003,0.01 --batch 4096 \
        --seeds 0,1,2 --schedule wsd --out bench/results/rules-lr-cpu.json

Each grid point is one `python -m train` child process (OMP_NUM_THREADS=1, --jobs at a time) in its own
folder under --root, so an interrupted sweep relaunched redoes only what is unfinished (train's own
relaunch rule). `null` for --lr/--batch/--warmup/--beta2 leaves the value to the rule. Prints a table
per (shape, lr, batch, schedule, ...) with the mean and relative sd of the final val loss over seeds, and
writes every run's final loss and validation curve as JSON (device, versions, date, command).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.timing import command_line, device_info, format_table, write_results  # noqa: E402

# the schedules compared (the sweep's WSD with a 20% 1-sqrt cooldown to 0, and cosine to 10%)
SCHEDULES = {
    "wsd": ["optim.schedule=wsd", "optim.wsd_decay=0.2", "optim.decay_shape=sqrt", "optim.min_lr_ratio=0"],
    "cosine": ["optim.schedule=cosine", "optim.min_lr_ratio=0.1"],
}
GRID = ("shape", "lr", "batch", "warmup", "beta2", "schedule", "seed", "data_seed")


def _values(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def run_name(point: dict) -> str:
    return "_".join(f"{k}{point[k]}" for k in GRID if point[k] not in (None, "null")).replace("/", "-")


def overrides(point: dict, args) -> list[str]:
    o = [f"model.shape={point['shape']}", f"model.seq_len={args.seq_len}", f"data.val_tokens={args.val_tokens}",
         f"train.budget={args.budget}", "train.tokens=null", f"optim.lr={point['lr']}",
         f"train.batch_tokens={point['batch']}", f"optim.warmup={point['warmup']}", f"optim.beta2={point['beta2']}",
         f"optim.lr_rule={args.lr_rule}", f"train.batch_rule={args.batch_rule}",
         f"train.eval_points={args.eval_points}", "train.min_steps=10", "train.ckpt_every=0",
         f"train.seed={point['seed']}", "logger.kind=jsonl"]
    if point["data_seed"] is not None:
        o.append(f"train.data_seed={point['data_seed']}")
    return o + SCHEDULES[point["schedule"]] + list(args.extra)


def run_one(point: dict, args) -> dict:
    folder = Path(args.root) / run_name(point)
    cmd = [sys.executable, "-m", "train", *overrides(point, args), f"hydra.run.dir={folder}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / (folder.name + ".log"), "w") as out:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return collect(point, folder)


def collect(point: dict, folder: Path) -> dict:
    row = dict(point)
    try:
        s = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return {**row, "status": "missing"}
    row.update(status=s.get("status"), reason=s.get("reason"), params_total=s.get("params_total"),
               params_non_embedding=s.get("params_non_embedding"), lr_used=s.get("lr"),
               batch_used=s.get("batch_tokens"), steps=s.get("steps"), warmup_steps=s.get("warmup_steps"),
               beta2_used=s.get("beta2"), tokens=s.get("tokens"), final_val_loss=s.get("final_val_loss"))
    curve, train = [], []
    try:
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            if "val_loss" in m:
                curve.append([m["step"], round(m["val_loss"], 5)])
            elif "train_loss" in m:
                train.append([m["step"], round(m["train_loss"], 4)])
    except (OSError, ValueError):
        pass
    row["val_curve"], row["train_curve"] = curve, train
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """One line per grid point without the seeds: mean and relative sd (sample sd / mean) of the final loss."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in GRID if k not in ("seed", "data_seed")), []).append(r)
    out = []
    for key, rs in groups.items():
        losses = [r["final_val_loss"] for r in rs if r.get("status") == "completed" and r.get("final_val_loss")]
        mean = statistics.fmean(losses) if losses else None
        sd = statistics.stdev(losses) if len(losses) > 1 else None
        first = rs[0]
        out.append({**dict(zip([k for k in GRID if k not in ("seed", "data_seed")], key)),
                    "params_total": first.get("params_total"), "lr_used": first.get("lr_used"),
                    "batch_used": first.get("batch_used"), "steps": first.get("steps"),
                    "runs": len(rs), "done": len(losses), "losses": [round(x, 4) for x in losses],
                    "mean": mean, "rel_sd": sd / mean if sd is not None else None})
    return out


def best_lr(table: list[dict]) -> dict:
    """Per (shape, batch, schedule, ...): the lr at the vertex of the parabola in ln(lr) through the grid point
    with the lowest mean loss and its two neighbours (None when the lowest is at the grid's edge)."""
    groups: dict[tuple, list[dict]] = {}
    for r in table:
        if r["mean"] is not None and r["lr_used"]:
            groups.setdefault((r["shape"], r["batch"], r["warmup"], r["beta2"], r["schedule"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["lr_used"])
        i = min(range(len(rs)), key=lambda j: rs[j]["mean"])
        vertex = None
        if 0 < i < len(rs) - 1:
            (x0, y0), (x1, y1), (x2, y2) = [(math.log(r["lr_used"]), r["mean"]) for r in rs[i - 1:i + 2]]
            # vertex of the parabola through three points
            num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
            den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
            vertex = math.exp(x1 - 0.5 * num / den) if den else None
        out["/".join(map(str, key))] = {"grid_best_lr": rs[i]["lr_used"], "grid_best_loss": rs[i]["mean"],
                                        "parabola_lr": vertex, "params_total": rs[i]["params_total"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/lr_sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", required=True, help="comma-separated WIDTHxDEPTHxHEADS")
    p.add_argument("--budget", type=float, required=True, help="training FLOPs per run")
    p.add_argument("--lr", default="null", help="comma-separated peak lrs (null: optim.lr_rule)")
    p.add_argument("--batch", default="null", help="comma-separated batch sizes in tokens (null: train.batch_rule)")
    p.add_argument("--warmup", default="null", help="comma-separated optim.warmup values (null: the rule)")
    p.add_argument("--beta2", default="null", help="comma-separated optim.beta2 values (null: the rule)")
    p.add_argument("--schedule", default="wsd", help=f"comma-separated, of {tuple(SCHEDULES)}")
    p.add_argument("--seeds", default="0", help="comma-separated train.seed values")
    p.add_argument("--data-seeds", default="", help="comma-separated train.data_seed values (empty: = seed)")
    p.add_argument("--lr-rule", default="size")
    p.add_argument("--batch-rule", default="size")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--val-tokens", type=int, default=65536)
    p.add_argument("--eval-points", type=int, default=10)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--root", default="/tmp/lr_sweep", help="folder of the run folders")
    p.add_argument("--out", default=None, help="JSON result file")
    p.add_argument("extra", nargs="*", help="more overrides passed to every run (key=value)")
    args = p.parse_args(argv)
    for s in _values(args.schedule):
        if s not in SCHEDULES:
            p.error(f"--schedule {s!r} is not one of {tuple(SCHEDULES)}")

    data_seeds = _values(args.data_seeds) or [None]
    points = [dict(zip(GRID, v)) for v in itertools.product(
        _values(args.shapes), _values(args.lr), _values(args.batch), _values(args.warmup), _values(args.beta2),
        _values(args.schedule), _values(args.seeds), data_seeds)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda pt: run_one(pt, args), points))

    table = summarise(rows)
    print(format_table(table, [("shape", "shape", ""), ("params_total", "N total", "d"), ("schedule", "sched", ""),
                               ("lr_used", "lr", ".4g"), ("batch_used", "batch", "d"), ("steps", "steps", "d"),
                               ("warmup", "warmup", ""), ("beta2", "beta2", ""), ("done", "runs", "d"),
                               ("mean", "val loss", ".4f"), ("rel_sd", "rel sd", ".2%")]))
    best = best_lr(table)
    for key, b in best.items():
        if b["parabola_lr"] or len([r for r in table if r["mean"] is not None]) > 1:
            lr = f"{b['parabola_lr']:.4g}" if b["parabola_lr"] else "at the grid's edge"
            print(f"best lr {key}: grid {b['grid_best_lr']:.4g} (loss {b['grid_best_loss']:.4f}), parabola {lr}")
    for r in rows:
        if r.get("status") != "completed":
            print(f"  {run_name(r)}: {r.get('status')} {r.get('reason') or ''}")
    if args.out:
        write_results(args.out, {**device_info("cpu"), "command": command_line(), "budget": args.budget,
                                 "seq_len": args.seq_len, "val_tokens": args.val_tokens, "summary": table, "best_lr": best,
                                 "runs": rows})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
