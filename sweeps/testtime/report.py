"""The end of a testtime sweep: every run's counts -> testtime.json -> plots, testtime.md/html (-> wandb).

    python -m sweeps.testtime.report SWEEP_DIR [--bootstrap N] [--queries Q] [--no-wandb]

The sweep's callback (sweeps/callbacks.py) calls `run_analysis` once every job has ended; the command
redoes it standalone. Each completed run with a test-time block in its summary.json contributes its
per-problem counts (<run>/testtime_counts.json, train/testtime.py), its total parameters and its
training compute (summary.json `compute`, exact convention); runs that failed, were skipped, have no
counts or were evaluated on another held-out set are listed with the reason and left out.
sweeps.testtime.record builds testtime.json (pass@k, majority@k with bootstrap intervals, power-law
fits, the frontier); the report states what it shows, including whether sampling more beat training
bigger at this scale, per difficulty bucket, with a perfect verifier (pass@k) and without (majority vote).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from sweeps.report import render_html, render_markdown
from sweeps.testtime.plots import METRIC_NAMES, make_plots
from sweeps.testtime.record import build_testtime, write_testtime
from train.data import tasks
from train.io_utils import atomic_write_text, wandb_mode
from train.record import load_summary
from train.testtime import COUNTS_FORMAT

TESTTIME_JSON, REPORT_MD, REPORT_HTML = "testtime.json", "testtime.md", "testtime.html"
DEFAULT_BOOTSTRAP = 1000


# ------------------------------------------------------------------------------------ collect


def _job_names(sweep_dir: Path) -> List[str]:
    """The jobs the sweep launched (sweep.json, written by the sweeper), else every folder with a summary.json."""
    try:
        return sorted(json.loads((sweep_dir / "sweep.json").read_text())["jobs"])
    except (OSError, ValueError, KeyError, TypeError):
        return sorted(p.name for p in sweep_dir.iterdir() if (p / "summary.json").is_file())


def _evaluation(run_dir: Path) -> Tuple[Optional[dict], Optional[str]]:
    """(the model's entry for build_testtime, None) or (None, why the run is left out)."""
    s, why = load_summary(run_dir)
    if s is None:
        return None, why
    if s.status != "completed":
        return None, f"{s.status}" + (f": {s.reason}" if s.reason else "")
    if not s.testtime:
        return None, "no test-time evaluation in its record (testtime.enabled was off)"
    path = run_dir / s.testtime.get("counts", "")
    try:
        counts = json.loads(path.read_text())
        if counts.get("format") != COUNTS_FORMAT:
            raise ValueError(f"format {counts.get('format')!r}, expected {COUNTS_FORMAT}")
        problems = [{k: p[k] for k in ("id", "difficulty", "n", "c", "wrong", "none")} for p in counts["problems"]]
        infer = float(counts["infer_flops_per_sample"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"its counts {path} are unreadable ({type(e).__name__}: {e})"
    if not problems or not s.params_total or not s.compute:
        return None, "no problems, parameter count or training compute in its record"
    settings = {k: counts.get("settings", {}).get(k) for k in ("temperature", "top_k", "seed")}
    return {"run": run_dir.name, "params_total": s.params_total, "train_flops": s.compute,
            "infer_flops_per_sample": infer, "problems": problems,
            "evaluated_on": {"tasks": counts.get("tasks"), "spec": counts.get("spec"),
                             "n_samples": counts.get("n_samples"), **settings}}, None


def collect_models(sweep_dir) -> Tuple[List[dict], List[dict]]:
    """(models, left out [{"run", "reason"}]): the runs evaluated alike (the same held-out problems and
    sampler settings as most runs), by increasing size."""
    sweep_dir = Path(sweep_dir)
    models, left_out = [], []
    for name in _job_names(sweep_dir):
        entry, why = _evaluation(sweep_dir / name)
        if entry is None:
            left_out.append({"run": name, "reason": why})
        else:
            models.append(entry)
    if models:
        key = lambda m: json.dumps(m["evaluated_on"], sort_keys=True)  # noqa: E731
        common = Counter(key(m) for m in models).most_common(1)[0][0]
        for m in [m for m in models if key(m) != common]:
            models.remove(m)
            left_out.append({"run": m["run"], "reason": f"evaluated differently ({key(m)}) from the others ({common})"})
    return sorted(models, key=lambda m: m["params_total"]), left_out


def guessing_baseline(data) -> Optional[dict]:
    """pass@k of a blind sampler that draws each answer from the exact answer distribution of the problem's
    length (tasks.answer_distribution) and sees nothing else: 1 - (1 - P_L(answer))^k per problem, averaged
    overall and per difficulty bucket. pass@k above it is what a model learned; None without the task spec."""
    m = data["models"][0]
    spec = (m.get("evaluated_on") or {}).get("spec")
    if not spec:
        return None
    answers = {p.id: p.answer for p in tasks.heldout_problems(tasks.TaskSpec(**spec))}
    dists = {}
    ks = np.arange(1, m["n_samples"] + 1)
    rows = {}
    for p in m["problems"]:
        L = int(p["difficulty"])
        dists.setdefault(L, tasks.answer_distribution(L))
        chance = dists[L].get(answers[p["id"]], 0.0)
        rows.setdefault(data["buckets"][str(L)], []).append(1.0 - (1.0 - chance) ** ks)
    every = np.concatenate([np.array(r) for r in rows.values()])
    as_dict = lambda curve: {str(k): float(v) for k, v in zip(ks, curve)}  # noqa: E731
    return {"pass_at_k": as_dict(every.mean(axis=0)),
            "by_bucket": {label: {"pass_at_k": as_dict(np.mean(r, axis=0))} for label, r in rows.items()}}


# ------------------------------------------------------------------------------------ the report


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return "" if not ci else f" [{_pct(ci[0])}, {_pct(ci[1])}]"


def _num(x, fmt="{:.3g}") -> str:
    return "-" if x is None else fmt.format(x)


def _at(block, metric, k) -> str:
    if not block or metric not in block:
        return "-"
    return _pct(block[metric].get(str(k))) + _ci((block.get(metric + "_ci") or {}).get(str(k)))


def _cases(rows) -> str:
    return ", ".join(f"{r['bucket']} >= {r['target']:.0%}" for r in rows)


def _guessable(data, row) -> bool:
    """Whether a blind guesser drawing as many samples as the row's best option reaches its target too."""
    g = data.get("guessing")
    if not g or row["metric"] != "pass_at_k" or not row["best"]:
        return False
    block = g if row["bucket"] == "all" else g["by_bucket"].get(row["bucket"])
    value = ((block or {}).get("pass_at_k") or {}).get(str(row["best"]["k"]))
    return value is not None and value >= row["target"]


def verdict(data) -> List[str]:
    """Plain sentences on who wins the frontier, per metric, from testtime.json's frontier rows (and its
    blind-guessing baseline: a pass@k win that guessing matches is no learned test-time gain)."""
    out, wins = [], {}
    for metric, name in METRIC_NAMES.items():
        rows = [r for r in data["frontier"] if r["metric"] == metric]
        if not rows:
            continue
        kinds = {kind: [r for r in rows if r["best"] and r["winner"] == kind]
                 for kind in ("sample_more", "largest", "smaller_anyway")}
        lucky = [r for r in kinds["sample_more"] if _guessable(data, r)]
        wins[metric] = ([r for r in kinds["sample_more"] if r not in lucky], lucky)
        clauses = []
        if kinds["sample_more"]:
            limits = [f"{r['bucket']} >= {r['target']:.0%} beyond {r['break_even_queries']:,.0f} queries"
                      for r in kinds["sample_more"] if r.get("break_even_queries")]
            clauses.append(f"a smaller model drawing more samples reached the target at less total compute than the "
                           f"largest model in {len(kinds['sample_more'])} ({_cases(kinds['sample_more'])})"
                           + (f" (the largest model becomes cheaper at {'; '.join(limits)})" if limits else ""))
        if lucky:
            clauses.append(f"but in {len(lucky)} of these ({_cases(lucky)}) blind guessing with as many samples "
                           "reaches the target too, so they show no learned test-time gain")
        if kinds["largest"]:
            clauses.append(f"training bigger (the largest model) was cheapest in {len(kinds['largest'])} "
                           f"({_cases(kinds['largest'])})")
        if kinds["smaller_anyway"]:
            clauses.append(f"a smaller model won with no more samples than the largest in "
                           f"{len(kinds['smaller_anyway'])} ({_cases(kinds['smaller_anyway'])}): the larger model is "
                           "simply worse there at this scale, which is not a test-time compute effect")
        missed = [r for r in rows if not r["best"]]
        if missed:
            clauses.append(f"no model reached {_cases(missed)}")
        out.append(f"{name}, {len(rows)} (difficulty bucket, target accuracy) cases at {data['queries']:,.0f} "
                   f"queries: " + "; ".join(clauses) + ".")
    (sm, lucky), (mv, _) = wins.get("pass_at_k", ([], [])), wins.get("majority_at_k", ([], []))
    if mv:
        out.append("So at this scale sampling more beats training bigger even without a verifier (majority vote) "
                   f"for {_cases(mv)}" + (f", and with a perfect verifier for {_cases(sm)}." if sm else "."))
    elif sm:
        out.append("So at this scale sampling more beats training bigger only with a perfect verifier (pass@k: any "
                   f"correct sample counts) for {_cases(sm)}; with majority vote it does not.")
    elif lucky:
        out.append("So at this scale sampling more beats training bigger only on pass@k and only where blind "
                   f"guessing with as many samples does as well ({_cases(lucky)}): no learned test-time gain; with "
                   "majority vote it does not either.")
    else:
        out.append("So at this scale sampling more does not beat training bigger for any target and difficulty "
                   "measured here.")
    g = data.get("guessing")
    if g:
        n = str(max(int(k) for k in g["pass_at_k"]))
        out.append(f"For scale: a blind sampler that knows only each problem's number of terms and draws answers "
                   f"from their exact distribution has pass@1 {_pct(g['pass_at_k']['1'])} and pass@{n} "
                   f"{_pct(g['pass_at_k'][n])} (" + ", ".join(f"terms {lb}: pass@{n} {_pct(v['pass_at_k'][n])}"
                                                            for lb, v in g["by_bucket"].items())
                   + "); the answers are small integers, so pass@k at large k is partly lucky guessing, which "
                     "majority vote cannot use. pass@k above the blind sampler's is learned.")
    return out


def _break_even(r) -> str:
    if r["cheaper_at_any_queries"]:
        return "never"
    return "-" if r["break_even_queries"] is None else f"{r['break_even_queries']:,.0f}"


def _numci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.3g}, {ci[1]:.3g}]"


def build_document(data, plots, left_out) -> list:
    """The report as blocks: ("h1"|"h2"|"p", text), ("ul", [items]), ("table", header, rows), ("img", file, caption)."""
    models = data["models"]
    n = models[0]["n_samples"] if models else 0
    ev = models[0].get("evaluated_on", {}) if models else {}
    levels = sorted(int(d) for d in data["buckets"])
    labels = list(dict.fromkeys(data["buckets"][str(d)] for d in levels))
    b = [("h1", f"Test-time compute: {data.get('sweep', 'sweep')}")]
    b.append(("p", f"{len(models)} models, each sampled {n} times on each of {len(models[0]['problems']) if models else 0} "
                   f"held-out problems (signed digit sums of {levels[0] if levels else '?'}-{levels[-1] if levels else '?'} "
                   f"terms; difficulty buckets {', '.join(labels)}), temperature {ev.get('temperature')}, top_k "
                   f"{ev.get('top_k')}. Total compute = training FLOPs + queries x k x inference FLOPs per sample, with "
                   f"queries = {data['queries']:,.0f} ({data['queries_rule']}); FLOPs under the exact convention "
                   "(every matmul incl. the output head, plus causal attention; training = 3 x forward per token; a "
                   "sample = the forward FLOPs of its prompt and completion, each sample an independent query)."))
    b.append(("h2", "Verdict"))
    b += [("p", s) for s in verdict(data)]

    b.append(("h2", "pass@k per model, with power laws"))
    if str(plots.get("testtime_passk.png", "")).endswith(".png"):
        b.append(("img", "testtime_passk.png", "pass@k (unbiased estimator) with 95% bootstrap bands over problems; "
                                               "dashed: the fitted -log pass@k = a k^-b."))
    rows = []
    for m in models:
        f = m.get("fit")
        rows.append([m["run"], f"{m['params_total']:,}", _num(m["train_flops"]), _num(m["infer_flops_per_sample"]),
                     _at(m, "pass_at_k", 1), _at(m, "pass_at_k", n), _at(m, "majority_at_k", n),
                     "no fit" if not f else f"{f['a']:.3g}" + _numci(f["ci"]["a"]),
                     "-" if not f else f"{f['b']:.3g}" + _numci(f["ci"]["b"]),
                     "-" if not f else f"{f['r2']:.3f}", "-" if not f else f"{f['max_rel_err']:.1%}"])
    b.append(("table", ["run", "N total", "train FLOPs", "FLOPs/sample", "pass@1", f"pass@{n}", f"majority@{n}",
                        "a", "b", "R²", "max rel err"], rows))
    fitted = [m for m in models if m.get("fit")]
    quality = ", ".join(f"{m['run']} R² {m['fit']['r2']:.3f} (max relative error {m['fit']['max_rel_err']:.1%})"
                        for m in fitted)
    b.append(("p", "Fit: least squares of log(-log pass@k) on log k over a log-spaced grid of k (every k to 10, then "
                   "about 10 per decade), points with pass@k of 0 or 1 dropped; intervals: "
                   + (fitted[0]["fit"].get("interval", "bootstrap") if fitted else "none")
                   + ". Fit quality: " + (quality or "no model could be fitted") + "."
                   + ("" if len(fitted) == len(models) else " No fit: "
                      + ", ".join(m["run"] for m in models if not m.get("fit"))
                      + " (fewer than 3 values of k with 0 < pass@k < 1).")))

    b.append(("h2", "By difficulty"))
    rows = [[m["run"]] + [f"{_at(m['by_bucket'].get(lb), 'pass_at_k', 1)} / {_at(m['by_bucket'].get(lb), 'pass_at_k', n)}"
                          f" / {_at(m['by_bucket'].get(lb), 'majority_at_k', n)}" for lb in labels] for m in models]
    g = data.get("guessing")
    if g:
        rows.append(["blind guessing"] + [f"{_at(g['by_bucket'].get(lb), 'pass_at_k', 1)} / "
                                          f"{_at(g['by_bucket'].get(lb), 'pass_at_k', n)} / -" for lb in labels])
    b.append(("table", ["run"] + [f"terms {lb}: pass@1 / pass@{n} / maj@{n}" for lb in labels], rows))

    b.append(("h2", "Majority vote vs pass@k"))
    if str(plots.get("testtime_majority.png", "")).endswith(".png"):
        b.append(("img", "testtime_majority.png", "pass@k needs a verifier that recognises a correct sample; majority "
                                                  "vote needs none. The gap is what the verifier is worth."))
    b.append(("p", "; ".join(f"{m['run']}: pass@{n} {_at(m, 'pass_at_k', n)} vs majority@{n} "
                             f"{_at(m, 'majority_at_k', n)}" for m in models) + "."))

    b.append(("h2", "Train-vs-inference frontier"))
    if str(plots.get("testtime_frontier.png", "")).endswith(".png"):
        b.append(("img", "testtime_frontier.png", "Accuracy against total compute; each line is one model over k = 1..n "
                                                  "(dot: k = 1); black: the frontier (least compute per accuracy)."))
    for metric, name in METRIC_NAMES.items():
        frows = [r for r in data["frontier"] if r["metric"] == metric]
        if not frows:
            continue
        b.append(("p", f"Least-compute option per target, {name}:"))
        guess = data.get("guessing") if metric == "pass_at_k" else None
        table = []
        for r in frows:
            best, big = r["best"], r["largest"]
            row = [r["bucket"], f"{r['target']:.0%}", "none reaches it" if not best else f"{best['run']}, k={best['k']}",
                   "-" if not best else _num(best["compute"]),
                   "cannot reach it" if not big else f"k={big['k']}, {_num(big['compute'])}",
                   r["winner"] or "-", _break_even(r)]
            if guess:
                block = guess if r["bucket"] == "all" else guess["by_bucket"].get(r["bucket"])
                row.append("-" if not best else _at(block, "pass_at_k", best["k"]))
            table.append(row)
        b.append(("table", ["problems (terms)", "target", "best (model, k)", "its FLOPs", "largest model",
                            "winner", "largest cheaper beyond queries"]
                  + (["blind guessing at that k"] if guess else []), table))
    if left_out:
        b.append(("h2", "Runs left out"))
        b.append(("ul", [f"{x['run']}: {x['reason']}" for x in left_out]))
    b.append(("h2", "Method"))
    b.append(("ul", [
        "pass@k: the unbiased estimator 1 - C(n-c, k)/C(n, k) per problem (Chen et al. 2021), averaged over problems; "
        "per problem it estimates 1 - (1 - p)^k (Brown et al. 2024, repeated sampling).",
        "majority@k: the chance that a random k-subset of the n samples has the correct answer as its plurality "
        "(ties split, samples without an answer do not vote), exact over all subsets.",
        "Power law: -log pass@k = a k^-b across problems, expected when per-problem success rates are heavy-tailed "
        "(Schaeffer et al. 2025).",
        "Frontier: per target, each model's least k that reaches it, and the (model, k) of least total compute "
        "(Snell et al. 2024 compare test-time and pretraining compute at matched FLOPs); the winner says whether a "
        "smaller model sampling more won (sample_more), the largest model (largest), or a smaller model with no more "
        "samples (smaller_anyway: not a test-time effect). Nothing is extrapolated beyond the measured k.",
        "Intervals: percentile bootstrap over problems (the held-out set is the sample); every number is recomputable "
        "from testtime.json's per-problem counts (id, difficulty, n, c).",
    ]))
    return b


# ------------------------------------------------------------------------------------ wandb


def log_wandb(data, plots, out_dir: Path, group: Optional[str], log=print) -> dict:
    """One analysis run (job_type "analysis") with the tables, plots and headline numbers. Never raises."""
    from sweeps.wandb_report import DEFAULT_PROJECT, _reinit

    mode, why = wandb_mode("auto")
    out = {"mode": mode, "why": why}
    try:
        import wandb

        group = group or data.get("sweep")
        run = wandb.init(project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                         entity=os.environ.get("WANDB_ENTITY"), group=group, job_type="analysis",
                         name=f"testtime-{group}", dir=str(out_dir), mode=mode, reinit=_reinit(wandb),
                         config={k: data.get(k) for k in ("queries", "queries_rule", "targets", "buckets")})
        n = data["models"][0]["n_samples"]
        models = wandb.Table(columns=["run", "N", "train_flops", "infer_flops_per_sample", "pass@1", f"pass@{n}",
                                      f"majority@{n}", "a", "b", "r2"],
                             data=[[m["run"], m["params_total"], m["train_flops"], m["infer_flops_per_sample"],
                                    m["pass_at_k"]["1"], m["pass_at_k"][str(n)],
                                    (m.get("majority_at_k") or {}).get(str(n)),
                                    *[(m.get("fit") or {}).get(k) for k in ("a", "b", "r2")]] for m in data["models"]])
        frontier = wandb.Table(columns=["metric", "bucket", "target", "best_run", "best_k", "best_compute",
                                        "largest_k", "largest_compute", "winner", "break_even_queries"],
                               data=[[r["metric"], r["bucket"], r["target"], (r["best"] or {}).get("run"),
                                      (r["best"] or {}).get("k"), (r["best"] or {}).get("compute"),
                                      (r["largest"] or {}).get("k"), (r["largest"] or {}).get("compute"),
                                      r["winner"], r["break_even_queries"]] for r in data["frontier"]])
        payload = {"testtime/models": models, "testtime/frontier": frontier}
        for name, path in plots.items():
            if str(path).endswith(".png") and Path(path).is_file():
                payload[f"plots/{Path(name).stem}"] = wandb.Image(str(path))
        run.log(payload)
        for m in data["models"]:
            for metric, short in (("pass_at_k", "pass"), ("majority_at_k", "maj")):
                for k, v in (m.get(metric) or {}).items():
                    run.summary[f"testtime/{m['run']}/{short}@{k}"] = v
        out["dir"] = getattr(run, "dir", None)
        run.finish()
        log(f"wandb: test-time analysis logged ({mode}: {why})")
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
        log(f"wandb: test-time analysis not logged ({out['error']}); the local report is complete")
    return out


# ------------------------------------------------------------------------------------ entry points


def run_analysis(sweep_dir, out_dir=None, *, bootstrap: Optional[int] = None, queries: Optional[float] = None,
                 wandb_enabled: bool = False, wandb_group: Optional[str] = None, log=print) -> Dict:
    """collect -> testtime.json -> plots -> testtime.md/html (-> wandb). {"ok", "testtime_json", "report_md",
    "report_html", "plots", "left_out", "errors"}; ok is False when no run could be analysed."""
    sweep_dir = Path(sweep_dir)
    out = Path(out_dir or sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    models, left_out = collect_models(sweep_dir)
    status = {"ok": False, "testtime_json": None, "report_md": None, "report_html": None, "plots": {},
              "left_out": left_out, "errors": []}
    if not models:
        status["errors"].append("no completed run with test-time counts: "
                                + "; ".join(f"{x['run']}: {x['reason']}" for x in left_out))
        log(f"test-time analysis of {sweep_dir}: {status['errors'][0]}")
        return status
    data = build_testtime(models, n_boot=bootstrap or DEFAULT_BOOTSTRAP, queries=queries)
    data = {"sweep": sweep_dir.name, **data, "left_out": left_out}
    data["guessing"] = guessing_baseline(data)
    status["testtime_json"] = str(write_testtime(out / TESTTIME_JSON, data))
    status["plots"] = make_plots(data, out)
    blocks = build_document(data, status["plots"], left_out)
    status["report_md"] = str(atomic_write_text(out / REPORT_MD, render_markdown(blocks)))
    status["report_html"] = str(atomic_write_text(out / REPORT_HTML, render_html(blocks, out)))
    if wandb_enabled:
        status["wandb"] = log_wandb(data, status["plots"], out, wandb_group, log)
    status["ok"] = True
    conclusion = next(s for s in verdict(data) if s.startswith("So "))
    log(f"test-time analysis of {sweep_dir}: {len(models)} models -> {status['report_md']}. {conclusion}")
    return status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sweeps.testtime.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="a testtime sweep folder (its runs' summary.json and testtime_counts.json)")
    p.add_argument("--out", default=None, help="where testtime.json and the report go (default: the sweep folder)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="bootstrap replicates over problems")
    p.add_argument("--queries", type=float, default=None,
                   help="queries served (default: where the largest model's k = 1 inference equals its training)")
    p.add_argument("--wandb", action="store_true", help="also log the analysis to wandb (mode as logger.mode=auto)")
    args = p.parse_args(argv)
    d = Path(args.dir)
    if not d.is_dir():
        print(f"sweeps.testtime.report: error: {d}: not a folder", file=sys.stderr)
        return 2
    if args.bootstrap < 10 or (args.queries is not None and not args.queries > 0):
        print("sweeps.testtime.report: error: --bootstrap must be >= 10 and --queries > 0", file=sys.stderr)
        return 2
    status = run_analysis(d, args.out, bootstrap=args.bootstrap, queries=args.queries, wandb_enabled=args.wandb,
                          log=lambda m: print(m, file=sys.stderr))
    return 0 if status["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
