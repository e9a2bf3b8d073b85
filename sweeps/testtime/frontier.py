"""Train-vs-inference compute: which (model N, samples k) reaches a target accuracy at least compute.

Serving `queries` queries with model N drawing k samples each costs, in total,
    C(N, k) = train_flops(N) + queries * k * infer_flops_per_sample(N)
(each sample counted as an independent query: prompt plus its own completion, model.flops).
For a target accuracy A (pass@k or majority@k, overall or in one difficulty bucket), each model's
option is the least measured k <= n with accuracy >= A; the best option is the one of least C.
Nothing is extrapolated beyond the measured k.

`queries` is explicit. Its default (None) follows Snell et al. 2024's ratio R of inference to
training compute: the count at which the largest model's single-sample inference costs as much as
its training (R = 1 at k = 1); the value used is recorded. Because the answer depends on it, every
row also gives the break-even count against the largest model when that model reaches the target
too: below it the best option is cheaper, above it the largest model is (`cheaper_at_any_queries`
is true when the best option also costs less per query, so no query count reverses the order).

Each row's `winner` says what kind of option won, honestly:
    "largest"          the largest model of the comparison (training bigger wins)
    "sample_more"      a smaller model drawing more samples than the largest model needs
                       (or the largest model cannot reach the target at all)
    "smaller_anyway"   a smaller model with no more samples than the largest: the larger model is
                       simply worse here (e.g. under-trained), not a test-time compute effect
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

DEFAULT_TARGETS = (0.3, 0.5, 0.7, 0.9)


def total_compute(train_flops: float, infer_flops_per_sample: float, k: int, queries: float) -> float:
    return float(train_flops) + float(queries) * int(k) * float(infer_flops_per_sample)


def default_queries(models: Sequence[Mapping]) -> int:
    """Queries at which the largest model's k = 1 inference equals its training compute (R = 1)."""
    if not models:
        raise ValueError("no models to take the default query count from")
    big = max(models, key=lambda m: m["params_total"])
    return max(1, int(round(big["train_flops"] / big["infer_flops_per_sample"])))


def min_k(curve: Sequence[float], target: float) -> Optional[int]:
    """Least k (curve[k - 1] is accuracy at k) with accuracy >= target; None if none reaches it."""
    for k, acc in enumerate(curve, start=1):
        if acc is not None and not math.isnan(acc) and acc >= target:
            return k
    return None


def _break_even(best: Mapping, big: Mapping) -> Optional[float]:
    """Queries at which `big` becomes as cheap as `best` (None: the same option; inf: never)."""
    if best["run"] == big["run"]:
        return None
    extra_inference = best["k"] * best["infer_flops_per_sample"] - big["k"] * big["infer_flops_per_sample"]
    if extra_inference <= 0:
        return math.inf
    return (big["train_flops"] - best["train_flops"]) / extra_inference


def _winner(best: Mapping, largest: Optional[Mapping], largest_run: str) -> str:
    if best["run"] == largest_run:
        return "largest"
    if largest is None or best["k"] > largest["k"]:
        return "sample_more"
    return "smaller_anyway"


def frontier_rows(models: Sequence[Mapping], curves: Mapping[str, Sequence[float]],
                  targets: Sequence[float] = DEFAULT_TARGETS, queries: Optional[float] = None) -> List[Dict]:
    """One row per target: every model's option (least k reaching it), the best option, the largest
    model's option (None if it cannot reach the target), the winner kind and the break-even query
    count. models: dicts with run, params_total, train_flops, infer_flops_per_sample;
    curves: run -> accuracy at k = 1..n."""
    queries = default_queries(models) if queries is None else queries
    largest_run = max(models, key=lambda m: m["params_total"])["run"]
    rows = []
    for target in targets:
        options = []
        for m in sorted(models, key=lambda m: m["params_total"]):
            k = min_k(curves[m["run"]], target)
            if k is not None:
                options.append({"run": m["run"], "params_total": m["params_total"], "k": k,
                                "train_flops": m["train_flops"], "infer_flops_per_sample": m["infer_flops_per_sample"],
                                "compute": total_compute(m["train_flops"], m["infer_flops_per_sample"], k, queries)})
        largest = next((o for o in options if o["run"] == largest_run), None)
        row = {"target": target, "queries": queries, "options": options, "best": None, "largest": largest,
               "winner": None, "break_even_queries": None, "cheaper_at_any_queries": None}
        if options:
            best = min(options, key=lambda o: (o["compute"], o["params_total"]))
            be = None if largest is None else _break_even(best, largest)
            row.update(best=best, winner=_winner(best, largest, largest_run),
                       break_even_queries=None if be is None or math.isinf(be) else be,
                       cheaper_at_any_queries=None if be is None else math.isinf(be))
        rows.append(row)
    return rows


def pareto(models: Sequence[Mapping], curves: Mapping[str, Sequence[float]], queries: float) -> List[Dict]:
    """The (compute, accuracy) points over every model and k that no other point beats on both
    (less or equal compute with higher accuracy), by increasing compute: the frontier to plot."""
    points = []
    for m in models:
        for k, acc in enumerate(curves[m["run"]], start=1):
            if acc is not None and not math.isnan(acc):
                points.append({"run": m["run"], "params_total": m["params_total"], "k": k, "accuracy": float(acc),
                               "compute": total_compute(m["train_flops"], m["infer_flops_per_sample"], k, queries)})
    points.sort(key=lambda p: (p["compute"], -p["accuracy"]))
    front, best = [], -math.inf
    for p in points:
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front
