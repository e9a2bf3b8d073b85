"""testtime.json: per-model pass@k, majority@k, power-law fits and the compute frontier, built from
per-model, per-problem counts (so anyone can recompute every number from the file).

Input, one dict per model (what train.testtime.evaluate returns plus the run's accounting):
    {"run", "params_total", "train_flops", "infer_flops_per_sample",
     "problems": [{"id", "difficulty", "n", "c", "wrong": [sizes of groups of equal wrong answers], "none"}]}
("wrong"/"none" are needed for majority@k only.) Output (format scalelab-testtime-v1):
    {"format", "queries", "queries_rule", "targets", "buckets": {difficulty: label},
     "models": [{..input.., "n_samples", "pass_at_k": {"1": ...}, "pass_at_k_ci": {"1": [lo, hi]},
                 "majority_at_k", "majority_at_k_ci", "fit": {"a", "b", "ci": {"a", "b"}, "r2", ...},
                 "by_bucket": {label: {"problems", "pass_at_k", ..., "fit"}}}],
     "frontier": [{"metric", "bucket", "target", "queries", "options", "best", "largest", "winner",
                   "break_even_queries", "cheaper_at_any_queries"}],
     "pareto": [{"metric", "bucket", "points": [...]}]}
Accuracies are means over problems with percentile bootstrap intervals over problems; k runs from
1 to the fewest samples any problem got. Bucket "all" is every problem.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from sweeps import bootstrap
from sweeps.testtime.estimators import (bucket_indices, difficulty_buckets, majority_at_k_curve, mean_with_ci,
                                        pass_at_k_curve)
from sweeps.testtime.frontier import DEFAULT_TARGETS, default_queries, frontier_rows, pareto
from sweeps.testtime.powerlaw import fit_with_intervals
from train.io_utils import write_json

FORMAT = "scalelab-testtime-v1"
METRICS = ("pass_at_k", "majority_at_k")


def _by_k(values: Sequence) -> Dict[str, object]:
    return {str(k): v for k, v in enumerate(values, start=1)}


def _curves(problems: Sequence[Mapping], kmax: int) -> Dict[str, np.ndarray]:
    n = [p["n"] for p in problems]
    out = {"pass_at_k": pass_at_k_curve(n, [p["c"] for p in problems], kmax)}
    if all("wrong" in p for p in problems):
        out["majority_at_k"] = np.array([majority_at_k_curve(p["c"], p["wrong"], p.get("none", 0), kmax)
                                         for p in problems])
    return out


def _summary(curves: Dict[str, np.ndarray], idx, n_boot: int, seed: int) -> dict:
    out: dict = {"problems": len(idx)}
    for metric, values in curves.items():
        s = mean_with_ci(values[idx], n_boot=n_boot, seed=seed)
        out[metric] = _by_k(s["mean"])
        out[metric + "_ci"] = _by_k(s["ci"])
    out["fit"] = fit_with_intervals(curves["pass_at_k"][idx], n_boot=n_boot, seed=seed)
    return out


def summarize_model(entry: Mapping, buckets: Mapping[int, str], n_boot: int = 1000,
                    seed: int = bootstrap.DEFAULT_SEED) -> dict:
    problems = entry["problems"]
    if not problems:
        raise ValueError(f"run {entry.get('run')!r} has no problems")
    kmax = min(p["n"] for p in problems)
    curves = _curves(problems, kmax)
    overall = _summary(curves, np.arange(len(problems)), n_boot, seed)
    labels = [buckets[int(p["difficulty"])] for p in problems]
    by_bucket = {label: _summary(curves, np.array(idx), n_boot, seed)
                 for label, idx in sorted(bucket_indices(labels).items(), key=lambda kv: min(kv[1]))}
    out = dict(entry)
    out["n_samples"] = kmax
    out.update({k: v for k, v in overall.items() if k != "problems"})
    out["by_bucket"] = by_bucket
    return out


def build_testtime(models: Sequence[Mapping], *, targets: Sequence[float] = DEFAULT_TARGETS,
                   queries: Optional[float] = None, n_buckets: int = 3, n_boot: int = 1000,
                   seed: int = bootstrap.DEFAULT_SEED) -> dict:
    """The testtime.json structure (see the module docstring) from per-model per-problem counts."""
    if not models:
        raise ValueError("build_testtime needs at least one model")
    buckets = difficulty_buckets(p["difficulty"] for m in models for p in m["problems"])
    summaries = [summarize_model(m, buckets, n_boot=n_boot, seed=seed) for m in models]
    rule = "given"
    if queries is None:
        queries, rule = default_queries(models), "R = 1: the largest model's k = 1 inference equals its training compute"
    frontier, fronts = [], []
    for metric in METRICS:
        for bucket in ["all"] + list(dict.fromkeys(buckets[d] for d in sorted(buckets))):
            src = [s if bucket == "all" else s["by_bucket"].get(bucket) for s in summaries]
            if any(b is None or metric not in b for b in src):
                continue
            curves = {s["run"]: list(b[metric].values()) for s, b in zip(summaries, src)}
            for row in frontier_rows(summaries, curves, targets, queries):
                frontier.append({"metric": metric, "bucket": bucket, **row})
            fronts.append({"metric": metric, "bucket": bucket, "points": pareto(summaries, curves, queries)})
    return {"format": FORMAT, "queries": queries, "queries_rule": rule, "targets": list(targets),
            "buckets": {str(d): b for d, b in sorted(buckets.items())},
            "models": summaries, "frontier": frontier, "pareto": fronts}


def write_testtime(path, data: Mapping) -> Path:
    """Atomically, as strict JSON (NaN and inf become null)."""
    return write_json(path, data, indent=1)


def read_testtime(path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format {data.get('format')!r})")
    return data
