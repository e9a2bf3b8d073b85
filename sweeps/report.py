"""Reports: ``python -m sweeps.report DIR`` writes PNG plots, report.md and report.html into DIR.

DIR holds a fit.json (written by ``python -m sweeps.fit``); when it has none, DIR is taken as a sweep
folder and fitted first.  Training curves for the loss-vs-compute plot are re-read from the fit's
input folder when it still exists.  A summary run is logged to wandb (offline unless an API key is
configured; ``--no-wandb`` to skip), and ``--wandb-report`` also builds a wandb Report when logged in.

:func:`run_analysis` is the entry point for the end-of-sweep callback: collect -> fit -> report,
returning a status dict and never raising.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import sys
import traceback
from pathlib import Path

from train.io_utils import atomic_write_text

from .collect import FitInputError, collect
from .fit import DEFAULT_BOOTSTRAP, run_fit
from .plots import PLOTS

CAPTIONS = {
    "isoflop.png": "IsoFLOP profiles: loss vs N per compute budget, the parabola fitted near each minimum, "
    "and its vertex (star). Hollow markers: budgets excluded (reason in the table).",
    "frontier.png": "Compute-optimal N and D vs C for each approach, with 95% bootstrap bands; dotted: "
    "Chinchilla's a = b = 0.5, dashed black: Kaplan's a = 0.73, both drawn through the N_opt and D_opt "
    "of Epoch AI's refit of Chinchilla's law at the middle of this sweep's compute range.",
    "loss_vs_compute.png": "Validation loss vs compute: training curves (colour = N), final losses, the lower "
    "envelope used by approach 1 and the loss approach 3 predicts on its frontier.",
    "residuals.png": "Approach-3 residuals in log loss against N and against tokens per parameter.",
    "shape.png": "Shape sweep (Kaplan's check): loss vs width/depth at fixed non-embedding N.",
    "tokens.png": "Tokens sweep: loss vs tokens per parameter for each model size.",
}


def _f(v, spec=".4g"):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _ci(ci, spec=".3f"):
    return "-" if not ci else f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def _title(fit):
    names = {r.get("sweep") for r in fit.get("runs", []) if r.get("sweep")}
    groups = {r.get("group") for r in fit.get("runs", []) if r.get("group")}
    base = Path(fit.get("input", "?")).name
    label = ", ".join(sorted(names)) if names else fit.get("input_kind", "")
    g = f" (group {', '.join(sorted(map(str, groups)))})" if groups else ""
    return f"Scaling-law fit: {base} — {label}{g}"


# ------------------------------------------------------------------------------- the document
def build_document(fit, plots):
    """The report as a list of blocks: ("h1"|"h2"|"p"|"ul"|"table"|"img", ...)."""
    B = []
    B.append(("h1", _title(fit)))
    B.append(("ul", [
        f"input: `{fit.get('input')}` ({fit.get('input_kind')}), fitted {fit.get('created')}",
        f"points used: {fit.get('n_points')}, excluded: {fit.get('n_excluded')}",
        f"parameter convention: **{fit.get('params_convention')}** — {fit.get('params_convention_description')}",
        f"FLOP convention: **{fit.get('flops_convention')}** — {fit.get('flops_convention_description')}",
    ] + [f"note: {n}" for n in fit.get("notes", [])]))
    if not fit.get("ok", True):
        B.append(("p", f"**No law could be fitted.** {fit.get('problem', '')}"))

    B.append(("h2", "Compute-optimal allocation: N_opt ∝ C^a, D_opt ∝ C^b"))
    rows = []
    for key, name in (("approach1", "1: envelope of training curves"), ("approach2", "2: IsoFLOP parabolas"),
                      ("approach3", "3: parametric L(N, D)")):
        r = fit.get(key) or {}
        if "a" not in r:
            rows.append([name, "-", "-", "-", "-", f"skipped: {r.get('skipped', 'not run')}"])
            continue
        if key == "approach3":
            ci = r.get("ci") or {}
            rows.append([name, _f(r["a"], ".3f"), _ci(ci.get("a")), _f(r["b"], ".3f"), _ci(ci.get("b")),
                         f"{r['n_points']} points, {r['bootstrap']['replicates']} bootstrap replicates"])
        elif key == "approach2":
            rows.append([name, _f(r["a"], ".3f"), _ci(r.get("a_ci")), _f(r["b"], ".3f"), _ci(r.get("b_ci")),
                         f"{r['n_budgets_used']} of {r['n_budgets']} budgets"])
        else:
            rows.append([name, _f(r["a"], ".3f"), _ci(r.get("a_ci")), _f(r["b"], ".3f"), _ci(r.get("b_ci")),
                         f"{r['n_curves']} curves, {r['n_grid_used']} grid points"])
    B.append(("table", ["approach", "a", "95% CI", "b", "95% CI", "notes"], rows))
    B.append(("p", "Reading: Chinchilla (Hoffmann et al. 2022) found a ≈ b ≈ 0.5 (grow N and D equally); "
                   "Kaplan et al. (2020) found a ≈ 0.73. At small scale the parameter and FLOP conventions "
                   "alone move a between these (Porian et al. 2024; Pearce & Song 2024): compare fits "
                   "with `--params non_embedding` and `--flops 6n`."))

    r3 = fit.get("approach3") or {}
    if "alpha" in r3:
        B.append(("h2", "Approach 3: L(N, D) = E + A / N^alpha + B / D^beta"))
        ci = r3.get("ci") or {}
        B.append(("table", ["parameter", "estimate", "95% CI"],
                  [[k, _f(r3[k], ".4g"), _ci(ci.get(k), ".4g")] for k in ("E", "A", "B", "alpha", "beta", "a", "b", "G")]))
        B.append(("p", f"Method: {r3['method']}; Huber delta {r3['huber_delta']}, "
                       f"{r3['grid_starts']} starts ({r3.get('grid')} grid), objective {r3['objective']:.6g}, "
                       f"rmse {r3['rmse_log']:.3g} in log loss. Bootstrap: {r3['bootstrap']['method']}. "
                       f"Frontier: {r3['frontier_formula']}, using {r3['flops_relation']['description']}."))

    preds3 = r3.get("predictions") or []
    preds2 = {p["C"]: p for p in (fit.get("approach2") or {}).get("predictions") or []}
    if preds3 or preds2:
        B.append(("h2", "Frontier predictions"))
        rows = []
        for p in preds3 or list(preds2.values()):
            q = preds2.get(p["C"], {})
            if preds3:
                rows.append([_f(p["C"], ".3g"), _f(p["N_opt"], ".3g"), _ci(p.get("N_opt_ci"), ".3g"),
                             _f(p["D_opt"], ".3g"), _f(p["tokens_per_param"], ".1f"),
                             _ci(p.get("tokens_per_param_ci"), ".1f"), _f(p["loss"], ".4f"),
                             _f(q.get("N_opt"), ".3g"), _f(q.get("D_opt"), ".3g")])
            else:
                rows.append([_f(p["C"], ".3g"), "-", "-", "-", "-", "-", "-", _f(p["N_opt"], ".3g"),
                             _f(p["D_opt"], ".3g")])
        B.append(("table", ["C (FLOPs)", "N_opt (3)", "95% CI", "D_opt (3)", "D/N (3)", "95% CI", "loss (3)",
                            "N_opt (2)", "D_opt (2)"], rows))
        B.append(("p", "Extrapolations far beyond the sweep's compute range: read them as what this sweep's "
                       "law implies, with the CIs as a lower bound on the uncertainty."))

    r2 = fit.get("approach2") or {}
    if r2.get("budgets"):
        B.append(("h2", "Approach 2: per-budget optima"))
        rows = [[_f(b["C"], ".3g"), _f(b.get("budget"), ".3g"), str(b["n_points"]), _f(b.get("N_opt"), ".3g"),
                 _f(b.get("D_opt"), ".3g"), _f(b.get("tokens_per_param"), ".1f"), _f(b.get("loss_opt"), ".4f"),
                 b.get("excluded", "")] for b in r2["budgets"]]
        B.append(("table", ["C", "requested budget", "runs", "N_opt", "D_opt", "D/N", "loss at vertex",
                            "excluded"], rows))
        B.append(("p", f"Method: {r2['method']}. Grouping: {r2['grouping']}."))

    B.append(("h2", "Plots"))
    for name, val in plots.items():
        if val and str(val).endswith(".png") and Path(val).is_file():
            B.append(("img", name, CAPTIONS.get(name, name)))
    omitted = [f"{name}: {val}" for name, val in plots.items() if not (val and str(val).endswith(".png"))]
    if omitted:
        B.append(("p", "Plots left out:"))
        B.append(("ul", omitted))

    if fit.get("excluded"):
        B.append(("h2", f"Excluded ({len(fit['excluded'])})"))
        B.append(("table", ["run / point", "reason"], [[e["name"], e["reason"]] for e in fit["excluded"]]))

    if fit.get("runs"):
        B.append(("h2", f"Runs ({len(fit['runs'])})"))
        rows = [[r["name"], str(r.get("status")), r.get("reason") or r.get("excluded_reason") or "",
                 _f(r.get("N"), ".3g"), _f(r.get("D"), ".3g"), _f(r.get("C"), ".3g"), _f(r.get("loss"), ".4f"),
                 _f(r.get("tokens_per_s"), ".3g"), _f(r.get("wall_s"), ".1f")] for r in fit["runs"]]
        B.append(("table", ["name", "status", "reason", "N", "D", "C", "loss", "tokens/s", "wall (s)"], rows))
    return B


def render_markdown(blocks):
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(f"{b[1]}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in b[1]) + "\n")
        elif kind == "table":
            head, rows = b[1], b[2]
            esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            out.append(f"![{Path(b[1]).stem}]({b[1]})\n\n*{b[2]}*\n")
    return "\n".join(out)


def _inline_md(text):
    """Escape, then render the two inline forms used above: **bold** and `code`."""
    import re

    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def render_html(blocks, img_dir):
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.85em}"
           "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}th{background:#f3f3f3}"
           "img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555;margin-bottom:1.5em}"
           "code{background:#f5f5f5;padding:0 .2em}")
    title = next((b[1] for b in blocks if b[0] == "h1"), "report")
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{css}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline_md(b[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_md(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((Path(img_dir) / b[1]).read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(b[1])}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _write_text(path, text):
    return str(atomic_write_text(path, text))


# ----------------------------------------------------------------------------------- the report
def _curves_for(fit):
    """Training curves from the fit's input folder (same conventions), or []."""
    if fit.get("input_kind") != "sweep" or not Path(fit.get("input", "")).is_dir():
        return []
    opts = fit.get("collect_options") or {}
    try:
        return collect(fit["input"], params=opts.get("params", "total"), flops=opts.get("flops", "exact"),
                       loss_key=opts.get("loss_key", "final_val_loss"), sweep=opts.get("sweep", "auto")).curves
    except Exception:
        return []


def make_report(report_dir, *, fit=None, wandb=True, wandb_report=False, fit_kwargs=None, wandb_options=None,
                log=print):
    """Plots + report.md + report.html in report_dir (fitting first when it has no fit.json).

    Returns {"fit_json", "report_md", "report_html", "plots": {name: path or reason}, "wandb": {...}}.
    Raises FitInputError only when there is no fit.json and report_dir cannot be fitted.
    """
    report_dir = Path(report_dir)
    fit_path = report_dir / "fit.json"
    if fit is None:
        if fit_path.is_file():
            try:
                fit = json.loads(fit_path.read_text())
            except ValueError as e:
                raise FitInputError(f"{fit_path}: malformed JSON ({e}); delete it to refit") from None
        else:
            log(f"{fit_path} not found: fitting {report_dir} first")
            fit, _ = run_fit(report_dir, report_dir, require_ok=False, **(fit_kwargs or {}))
    report_dir.mkdir(parents=True, exist_ok=True)
    curves = _curves_for(fit)
    plots = {}
    for name, fn in PLOTS.items():
        target = report_dir / name
        try:
            plots[name] = fn(fit, target, curves) if name == "loss_vs_compute.png" else fn(fit, target)
        except Exception as e:  # one broken plot never loses the report
            plots[name] = f"plot failed: {e.__class__.__name__}: {e}"
    blocks = build_document(fit, plots)
    md = _write_text(report_dir / "report.md", render_markdown(blocks))
    ht = _write_text(report_dir / "report.html", render_html(blocks, report_dir))
    out = {"fit_json": str(fit_path) if fit_path.is_file() else None, "report_md": md, "report_html": ht,
           "plots": plots}
    if wandb or wandb_report:
        from . import wandb_report as wr

        out["wandb"] = wr.publish(fit, plots, report_dir, log_run=wandb, build_report=wandb_report, log=log,
                                  **{k: v for k, v in (wandb_options or {}).items() if v})
    return out


_FIT_KWARGS = {"params", "flops", "loss_key", "sweep", "bootstrap", "seed", "predict", "approaches", "grid",
               "huber_delta", "c_tol", "window", "drop_highest", "n_col", "d_col", "loss_col", "c_col", "budget_col"}


def run_analysis(sweep_dir, out_dir=None, *, wandb=True, wandb_enabled=None, wandb_report=False, wandb_group=None,
                 wandb_project=None, wandb_entity=None, log=print, **fit_kwargs):
    """collect -> fit -> report, for the end-of-sweep callback. Never raises.

    wandb / wandb_enabled: log the summary run (mode chosen as in sweeps.wandb_report);
    wandb_group/project/entity: where it goes (default: the runs' group, $WANDB_PROJECT or "scalelab").
    fit_kwargs go to sweeps.fit.run_fit (params, flops, bootstrap, grid, predict, ...); unknown
    keywords are reported and ignored.  Returns {"ok": bool, "fit_json", "report_md", "report_html",
    "plots", "wandb", "errors": [...]}; "ok" is False when no law could be fitted (the report still
    lists every run and why it was excluded).
    """
    status = {"ok": False, "fit_json": None, "report_md": None, "report_html": None, "plots": {}, "errors": []}
    unknown = sorted(set(fit_kwargs) - _FIT_KWARGS)
    if unknown:
        status["errors"].append(f"ignored unknown options: {', '.join(unknown)}")
        fit_kwargs = {k: v for k, v in fit_kwargs.items() if k in _FIT_KWARGS}
    if wandb_enabled is not None:
        wandb = bool(wandb_enabled)
    out = Path(out_dir or sweep_dir)
    fit = None
    try:
        fit, path = run_fit(sweep_dir, out, require_ok=False, **fit_kwargs)
        status["fit_json"] = str(path)
        status["ok"] = bool(fit.get("ok"))
        if not fit.get("ok"):
            status["errors"].append(fit.get("problem", "no approach could be fitted"))
    except Exception as e:
        status["errors"].append(f"fit: {e.__class__.__name__}: {e}")
        status["traceback"] = traceback.format_exc()
    if fit is not None:
        try:
            status.update(make_report(out, fit=fit, wandb=wandb, wandb_report=wandb_report, log=log,
                                      wandb_options={"group": wandb_group, "project": wandb_project,
                                                     "entity": wandb_entity}))
        except Exception as e:
            status["errors"].append(f"report: {e.__class__.__name__}: {e}")
            status["traceback"] = traceback.format_exc()
    try:
        log(f"scaling-law analysis of {sweep_dir}: " + ("ok" if status["ok"] else "; ".join(status["errors"]))
            + (f" -> {status['report_md']}" if status.get("report_md") else ""))
    except Exception:
        pass
    return status


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sweeps.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="folder with fit.json (or a sweep folder, fitted first)")
    p.add_argument("--refit", action="store_true", help="fit again even when fit.json exists")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="bootstrap replicates when fitting")
    p.add_argument("--grid", choices=["epoch", "coarse"], default="epoch", help="approach-3 grid when fitting")
    p.add_argument("--params", choices=["total", "non_embedding"], default="total")
    p.add_argument("--flops", choices=["exact", "6n", "no_attention"], default="exact")
    p.add_argument("--no-wandb", action="store_true", help="do not log the summary run to wandb")
    p.add_argument("--wandb-report", action="store_true",
                   help="also build a wandb Report (needs a logged-in user and the wandb-workspaces package)")
    args = p.parse_args(argv)
    d = Path(args.dir)
    if not d.is_dir():
        print(f"sweeps.report: error: {d}: not a folder", file=sys.stderr)
        return 2
    fit_kwargs = {"bootstrap": args.bootstrap, "grid": args.grid, "params": args.params, "flops": args.flops}
    try:
        fit = None
        if args.refit or not (d / "fit.json").is_file():
            fit, _ = run_fit(d, d, require_ok=False, **fit_kwargs)
        out = make_report(d, fit=fit, wandb=not args.no_wandb, wandb_report=args.wandb_report,
                          fit_kwargs=fit_kwargs)
    except FitInputError as e:
        print(f"sweeps.report: error: {e}", file=sys.stderr)
        return 2
    made = [Path(v).name for v in out["plots"].values() if str(v).endswith(".png")]
    print(f"wrote {out['report_md']}, {out['report_html']} and {len(made)} plots ({', '.join(made)})")
    for name, why in out["plots"].items():
        if not str(why).endswith(".png"):
            print(f"  {name} left out: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
