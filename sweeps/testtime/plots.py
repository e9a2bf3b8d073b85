"""PNG plots of a testtime.json (matplotlib's object API on the Agg canvas: no pyplot, no global state).

Each function takes the testtime.json dict and a path and returns the path written, or a string
saying why the plot was left out (a broken plot never loses the report).
"""
from __future__ import annotations

import numpy as np

from sweeps.plots import colors, new_figure, save_figure
from sweeps.testtime.frontier import total_compute
from sweeps.testtime.powerlaw import predict

METRIC_NAMES = {"pass_at_k": "pass@k (perfect verifier)", "majority_at_k": "majority vote@k (no verifier)"}


def _series(block, metric):
    """(k, mean, lo, hi) arrays of one accuracy curve ({"1": ...} dicts; null entries dropped)."""
    values, cis = block.get(metric) or {}, block.get(metric + "_ci") or {}
    ks = np.array([int(k) for k in values], dtype=float)
    mean = np.array([np.nan if v is None else v for v in values.values()], dtype=float)
    lo = np.array([(cis.get(k) or [np.nan, np.nan])[0] for k in values], dtype=float)
    hi = np.array([(cis.get(k) or [np.nan, np.nan])[1] for k in values], dtype=float)
    return ks, mean, lo, hi


def label(m) -> str:
    return f"{m['run']} (N={m['params_total']:,})"


def passk_curves(data, path):
    """pass@k against k per model with its bootstrap band and fitted power law; and -log pass@k on log-log
    axes, where the law -log pass@k = a k^-b is a straight line."""
    models = data["models"]
    if not models:
        return "no models"
    fig, (left, right) = new_figure(ncols=2, width=5.6, height=4.2)
    for m, color in zip(models, colors(len(models))):
        ks, mean, lo, hi = _series(m, "pass_at_k")
        left.plot(ks, mean, "o-", ms=3, color=color, label=label(m))
        left.fill_between(ks, lo, hi, color=color, alpha=0.15, lw=0)
        ok = (mean > 0) & (mean < 1)
        right.plot(ks[ok], -np.log(mean[ok]), "o", ms=3, color=color)
        fit = m.get("fit")
        if fit:
            grid = np.geomspace(1, ks.max(), 100)
            left.plot(grid, predict(fit["a"], fit["b"], grid), "--", color=color, lw=1)
            right.plot(grid, fit["a"] * grid ** -fit["b"], "--", color=color, lw=1,
                       label=f"a={fit['a']:.3g}, b={fit['b']:.3g}, R²={fit['r2']:.3f}")
    guess = data.get("guessing")
    if guess:
        ks, mean, _, _ = _series(guess, "pass_at_k")
        left.plot(ks, mean, ":", color="grey", label="blind guessing")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("samples k")
        ax.grid(alpha=0.3)
    left.set_ylabel("pass@k (mean over problems)")
    left.set_title("coverage: pass@k, fitted law dashed")
    left.legend(fontsize=7)
    right.set_yscale("log")
    right.set_ylabel("-log pass@k")
    right.set_title("-log pass@k = a k^-b (dashed)")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7)
    return save_figure(fig, path)


def majority_vs_passk(data, path):
    """pass@k (solid) and majority@k (dashed) per model: what a verifier is worth."""
    models = [m for m in data["models"] if "majority_at_k" in m]
    if not models:
        return "no majority-vote counts"
    fig, (ax,) = new_figure()
    for m, color in zip(models, colors(len(models))):
        ks, p, _, _ = _series(m, "pass_at_k")
        ax.plot(ks, p, "-", color=color, label=f"{label(m)} pass@k")
        ks, v, lo, hi = _series(m, "majority_at_k")
        ax.plot(ks, v, "--", color=color, label="majority@k")
        ax.fill_between(ks, lo, hi, color=color, alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("samples k")
    ax.set_ylabel("accuracy (mean over problems)")
    ax.set_title("pass@k (solid) vs majority vote (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def frontier(data, path):
    """Accuracy against total compute (training + queries x k x inference per sample): one line per model
    through its k = 1..n, the Pareto front in black; columns: all problems, then each difficulty bucket;
    rows: pass@k, majority@k."""
    models = data["models"]
    if not models:
        return "no models"
    fronts = {(f["metric"], f["bucket"]): f["points"] for f in data.get("pareto", [])}
    metrics = [mt for mt in METRIC_NAMES if any(key[0] == mt for key in fronts)]
    buckets = list(dict.fromkeys(b for _, b in fronts))
    if not metrics or not buckets:
        return "no frontier in testtime.json"
    q = data["queries"]
    fig, axes = new_figure(ncols=len(buckets), nrows=len(metrics), width=4.4, height=3.8)
    palette = colors(len(models))
    for r, metric in enumerate(metrics):
        for c, bucket in enumerate(buckets):
            ax = axes[r * len(buckets) + c]
            for m, color in zip(models, palette):
                block = m if bucket == "all" else (m.get("by_bucket") or {}).get(bucket)
                if not block or metric not in block:
                    continue
                ks, acc, _, _ = _series(block, metric)
                cost = [total_compute(m["train_flops"], m["infer_flops_per_sample"], k, q) for k in ks]
                ax.plot(cost, acc, "-", color=color, lw=1.2, label=label(m) if (r, c) == (0, 0) else None)
                ax.plot(cost[0], acc[0], "o", color=color, ms=4)  # k = 1
            pts = fronts.get((metric, bucket)) or []
            if pts:
                ax.step([p["compute"] for p in pts], [p["accuracy"] for p in pts], where="post", color="black",
                        lw=1, alpha=0.7, label="frontier" if (r, c) == (0, 0) else None)
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.set_title(f"{METRIC_NAMES[metric].split(' ')[0]}, problems: {bucket}", fontsize=9)
            if r == len(metrics) - 1:
                ax.set_xlabel(f"total FLOPs (train + {q:,.0f} queries x k x inference)", fontsize=8)
            if c == 0:
                ax.set_ylabel("accuracy")
    axes[0].legend(fontsize=6)
    return save_figure(fig, path)


PLOTS = {"testtime_passk.png": passk_curves, "testtime_majority.png": majority_vs_passk,
         "testtime_frontier.png": frontier}


def make_plots(data, out_dir) -> dict:
    """{file name: path written, or why not} for every plot."""
    out = {}
    for name, fn in PLOTS.items():
        try:
            out[name] = fn(data, f"{out_dir}/{name}")
        except Exception as e:  # one broken plot never loses the report
            out[name] = f"plot failed: {type(e).__name__}: {e}"
    return out
