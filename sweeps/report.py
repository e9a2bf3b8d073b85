"""Reports: ``python -m sweeps.report DIR`` writes PNG plots, report.md and report.html into DIR.

The report is made from DIR/fit.json alone (the one source of truth: ``python -m sweeps.fit`` rebuilds a
report it finds beside the fit.json it writes); when DIR has no fit.json it is taken as a sweep folder and
fitted first.  Training curves for the loss-vs-compute plot are re-read from the fit's input folder when it
still exists.  wandb is opt-in: ``--wandb`` logs a summary run, ``--wandb-report`` builds a wandb Report.

:func:`run_analysis` is the entry point for the end-of-sweep callback: collect -> fit (with the largest budget
held out and predicted) -> report, returning a status dict and never raising.
"""
from __future__ import annotations

import argparse
import base64
import html
import re
import sys
import traceback
from pathlib import Path

from train.io_utils import atomic_write_text
from train.log import get_logger, setup

from .collect import FitInputError, collect
from .fit import DEFAULT_BOOTSTRAP, LOAD_KEYS, holdout_line, run_fit
from .plots import save_plots
from .results import FIT_JSON, fmt, fmt_ci, load_fit

_log = get_logger("fit")

CAPTIONS = {
    "isoflop.png": "IsoFLOP profiles: loss vs N per compute budget, the parabola fitted near each minimum, "
    "and its vertex (star). Hollow markers: budgets excluded (reason in the table).",
    "frontier.png": "Compute-optimal N and D vs C for each approach, with 95% interval bands where the approach "
    "has an interval; dotted: Chinchilla's a = b = 0.5, dashed black: Kaplan's a = 0.73, both drawn through the "
    "N_opt and D_opt of Epoch AI's refit of Chinchilla's law at the middle of this sweep's compute range.",
    "loss_vs_compute.png": "Validation loss vs compute: training curves (colour = N), final losses, the lower "
    "envelope (the lowest loss reached with at most that compute) and the loss approach 3 predicts on its "
    "frontier.",
    "residuals.png": "Approach-3 residuals in log loss against N and against tokens per parameter.",
    "shape.png": "Shape sweep (Kaplan's check): loss vs width/depth at fixed non-embedding N.",
    "tokens.png": "Tokens sweep: loss vs tokens per parameter for each model size.",
}
NAMES = {"approach1": "1: envelope of loss vs compute", "approach2": "2: IsoFLOP parabolas",
         "approach3": "3: parametric L(N, D)"}
STATUS_TEXT = {"ok": "OK", "indicative": "INDICATIVE (no interval can be backed)",
               "not_identified": "NOT IDENTIFIED (the data cannot pin the law down)", "failed": "FAILED"}


def _title(fit):
    names = {r.get("sweep") for r in fit.runs if r.get("sweep")}
    groups = {r.get("group") for r in fit.runs if r.get("group")}
    base = Path(fit.input or "?").name
    label = ", ".join(sorted(names)) if names else fit.input_kind
    g = f" (group {', '.join(sorted(map(str, groups)))})" if groups else ""
    return f"Scaling-law fit: {base} — {label}{g}"


def _interval_text(r):
    iv = r.interval
    if iv is None:
        return "no interval: " + (r.reason or "not fitted")
    if iv.withheld:
        return f"withheld: {iv.withheld}"
    text = iv.method
    if iv.replicates:
        text += f"; {iv.replicates} replicates, {iv.valid} valid ({iv.valid_fraction:.0%}), {fmt(iv.seconds, '.1f')} s"
    return text


# ------------------------------------------------------------------------------- the document
def build_document(fit, plots):
    """The report as a list of blocks: ("h1"|"h2"|"p"|"ul"|"table"|"img", ...)."""
    B = [("h1", _title(fit))]
    B.append(("p", f"**Status: {STATUS_TEXT.get(fit.status, fit.status)}.**"
                   + (f" {fit.problem}" if fit.status != "ok" and fit.problem else "")))
    B.append(("ul", [
        f"input: `{fit.input}` ({fit.input_kind}), fitted {fit.created}",
        f"points used: {fit.n_points}, excluded: {fit.n_excluded}",
        f"parameter convention: **{fit.params_convention}** — {fit.params_convention_description}",
        f"FLOP convention: **{fit.flops_convention}** — {fit.flops_convention_description}",
        f"fitted compute: {fmt(fit.fitted_C_range[0], '.3g')} to {fmt(fit.fitted_C_range[1], '.3g')} FLOPs"
        if fit.fitted_C_range else "fitted compute: -",
    ] + [f"note: {n}" for n in fit.notes]))

    h = fit.holdout
    if h is not None:
        B.append(("h2", "Held-out prediction"))
        B += _holdout_blocks(h)

    B.append(("h2", "Compute-optimal allocation: N_opt ∝ C^a, D_opt ∝ C^b"))
    rows = []
    for key, r in fit.approaches():
        if not r.fitted:
            rows.append([NAMES[key], r.status, "-", "-", "-", "-", r.reason or ""])
            continue
        rows.append([NAMES[key], r.status, fmt(r.a, ".3f"), fmt_ci(r.ci.get("a")), fmt(r.b, ".3f"),
                     fmt_ci(r.ci.get("b")), _interval_text(r)])
    B.append(("table", ["approach", "status", "a", "95% interval", "b", "95% interval", "interval: how it is made"],
              rows))
    notes = [f"approach {k[-1]} {r.status.replace('_', ' ')}: {r.reason}" for k, r in fit.approaches()
             if r.status in ("indicative", "not_identified") and r.reason]
    notes += [f"approach {k[-1]}: {w}" for k, r in fit.approaches() for w in r.warnings]
    if notes:
        B.append(("ul", notes))
    B.append(("p", "Reading: Chinchilla (Hoffmann et al. 2022) found a ≈ b ≈ 0.5 (grow N and D equally); "
                   "Kaplan et al. (2020) found a ≈ 0.73. At small scale the parameter and FLOP conventions "
                   "alone move a between these (Porian et al. 2024; Pearce & Song 2024): compare fits "
                   "with `--params non_embedding` and `--flops 6n`. Status *indicative* means a number without an "
                   "interval that can be backed; *not identified* means the data cannot pin it down."))

    r2 = fit.approach2
    if r2.window_sensitivity and r2.fitted:
        B.append(("p", "Approach 2 window sensitivity (the parabola's fitting window, decades of N either side of "
                       "the lowest loss): " + ", ".join(f"±{w['window']:g}: a = {fmt(w['a'], '.3f')} "
                                                       f"({w['budgets_used']} budgets)"
                                                       for w in r2.window_sensitivity) + "."))

    r3 = fit.approach3
    if r3.law is not None:
        B.append(("h2", f"Approach 3: L(N, D) = E + A / N^alpha + B / D^beta ({r3.status.replace('_', ' ')})"))
        keys = ["E", "A", "B", "alpha", "beta", "a", "b", "a_closed_form"]
        B.append(("table", ["parameter", "estimate", "95% interval"],
                  [[k, fmt(getattr(r3, k), ".4g"), fmt_ci(r3.ci.get(k), ".4g")] for k in keys]))
        noise = (f" Noise model from the residuals: {r3.noise['within_sd']:.3g} within budgets, "
                 f"{r3.noise['between_sd']:.3g} shared by a budget's runs (sd of log loss, {r3.noise['groups']} "
                 "budgets)." if r3.noise else "")
        B.append(("p", f"Method: {r3.method}; Huber delta {r3.huber_delta}, {r3.grid_starts} starts ({r3.grid} grid), "
                       f"objective {r3.objective:.6g}, rmse {r3.rmse_log:.3g} in log loss. Interval: "
                       f"{_interval_text(r3)}.{noise} Frontier: {r3.flops_relation.get('description')}; a and b are "
                       "the slopes of ln N_opt and ln D_opt over the fitted compute, a_closed_form = "
                       "beta/(alpha+beta) the slope under C = k N D with one k."))

    preds3 = r3.predictions if r3.fitted else []
    preds2 = {p.C: p for p in (r2.predictions if r2.fitted else [])}
    if preds3 or preds2:
        B.append(("h2", "Frontier predictions"))
        rows = []
        for p in preds3 or list(preds2.values()):
            q = preds2.get(p.C)
            row = [fmt(p.C, ".3g")]
            if preds3:
                row += [fmt(p.N_opt, ".3g"), fmt_ci(p.ci.get("N_opt"), ".3g"), fmt(p.D_opt, ".3g"),
                        fmt(p.tokens_per_param, ".1f"), fmt_ci(p.ci.get("tokens_per_param"), ".1f"), fmt(p.loss, ".4f")]
            else:
                row += ["-"] * 6
            row += [fmt(q.N_opt, ".3g") if q else "-", fmt_ci(q.ci.get("N_opt"), ".3g") if q else "-",
                    p.extrapolation or ""]
            rows.append(row)
        B.append(("table", ["C (FLOPs)", "N_opt (3)", "95% interval", "D_opt (3)", "D/N (3)", "95% interval",
                            "loss (3)", "N_opt (2)", "95% interval (2)", "extrapolation"], rows))
        B.append(("p", f"Approach 3 is {r3.status.replace('_', ' ')}, approach 2 {r2.status.replace('_', ' ')}. "
                       "Rows more than one decade outside the fitted compute are extrapolations: read them as what "
                       "this sweep's law implies, with the intervals as a lower bound on the uncertainty."))

    if r2.budgets:
        B.append(("h2", "Approach 2: per-budget optima"))
        rows = [[fmt(b.C, ".3g"), fmt(b.budget, ".3g"), str(b.n_points),
                 "-" if not b.compute_spread else f"{b.compute_spread[0]:.3f}-{b.compute_spread[1]:.3f}",
                 fmt(b.N_opt, ".3g"), fmt(b.D_opt, ".3g"), fmt(b.tokens_per_param, ".1f"), fmt(b.loss_opt, ".4f"),
                 b.excluded or ""] for b in r2.budgets]
        B.append(("table", ["C", "requested budget", "runs", "compute spread", "N_opt", "D_opt", "D/N",
                            "loss at vertex", "excluded"], rows))
        B.append(("p", f"Method: {r2.method}. Grouping: {r2.grouping}."))

    r1 = fit.approach1
    if r1.status != "skipped" or r1.envelope:
        B.append(("h2", "Approach 1: lower envelope"))
        B.append(("p", f"{r1.method}. " + (r1.reason or "")))

    B.append(("h2", "Plots"))
    for name, val in plots.items():
        if val and str(val).endswith(".png") and Path(val).is_file():
            B.append(("img", name, CAPTIONS.get(name, name)))
    omitted = [f"{name}: {val}" for name, val in plots.items() if not (val and str(val).endswith(".png"))]
    if omitted:
        B.append(("p", "Plots left out:"))
        B.append(("ul", omitted))

    if fit.excluded:
        B.append(("h2", f"Excluded ({len(fit.excluded)})"))
        B.append(("table", ["run / point", "reason"], [[e["name"], e["reason"]] for e in fit.excluded]))

    if fit.runs:
        B.append(("h2", f"Runs ({len(fit.runs)})"))
        rows = [[r["name"], str(r.get("status")), r.get("reason") or r.get("excluded_reason") or "",
                 fmt(r.get("N"), ".3g"), fmt(r.get("D"), ".3g"), fmt(r.get("C"), ".3g"), fmt(r.get("loss"), ".4f"),
                 fmt(r.get("tokens_per_s"), ".3g"), fmt(r.get("wall_s"), ".1f")] for r in fit.runs]
        B.append(("table", ["name", "status", "reason", "N", "D", "C", "loss", "tokens/s", "wall (s)"], rows))
    return B


def _holdout_blocks(h):
    if h.status != "ok":
        return [("p", f"Held out `{h.rule}`: skipped ({h.reason}).")]
    largest = h.rule.startswith("C>")
    lead = ("Fit on the smaller budgets, predicted the largest" if largest else f"Fit on the points outside `{h.rule}`, "
            "predicted the ones inside")
    inside = sum(1 for p in h.points if p.inside)
    with_iv = sum(1 for p in h.points if p.inside is not None)
    blocks = [("p", f"**{lead}: error {h.max_abs_rel_error:.2%} at most, {h.mean_abs_rel_error:.2%} on average"
                    + (f"; {inside} of {with_iv} held-out losses inside their 95% prediction intervals" if with_iv
                       else "") + f".** Law: {h.approach}, fitted on {h.n_train} points; the form was chosen by "
                    f"{h.law_choice.get('method', '-')}"
                    + (f" (mean |error| {', '.join(f'{k} {v:.2%}' for k, v in h.law_choice['mean_abs_rel_error'].items())})"
                       if h.law_choice.get("mean_abs_rel_error") else "") + "."
                    + (f" {h.extrapolation}." if h.extrapolation else "") + (f" Note: {h.reason}." if h.reason else ""))]
    rows = [[p.name, fmt(p.N, ".3g"), fmt(p.D, ".3g"), fmt(p.C, ".3g"), fmt(p.loss, ".4f"), fmt(p.predicted, ".4f"),
             f"{p.rel_error:+.2%}", fmt_ci(p.interval, ".4f"), "-" if p.inside is None else ("yes" if p.inside else "NO")]
            for p in h.points]
    blocks.append(("table", ["run", "N", "D", "C", "loss", "predicted", "error", "95% prediction interval",
                             "inside"], rows))
    if h.interval is not None:
        blocks.append(("p", f"Prediction intervals: {h.interval.method}" + (f" (withheld: {h.interval.withheld})"
                                                                           if h.interval.withheld else "") + "."))
    if h.budgets:
        rows = [[fmt(b["C"], ".3g"), str(b["n_points"]), fmt(b.get("N_opt_observed"), ".3g"),
                 fmt(b.get("N_opt_approach3"), ".3g"), fmt_ci(b.get("N_opt_approach3_ci"), ".3g"),
                 fmt(b.get("N_opt_approach2"), ".3g"), fmt_ci(b.get("N_opt_approach2_ci"), ".3g"),
                 fmt(b.get("loss_min_observed"), ".4f"), fmt(b.get("loss_opt_approach3"), ".4f"),
                 fmt_ci(b.get("loss_opt_approach3_ci"), ".4f")] for b in h.budgets]
        blocks.append(("table", ["held-out budget C", "runs", "N_opt observed (vertex)", "N_opt predicted (3)",
                                 "95% interval", "N_opt predicted (2)", "95% interval (2)", "lowest loss observed",
                                 "optimal loss predicted (3)", "95% interval"], rows))
    return blocks


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


# ----------------------------------------------------------------------------------- the report
def _curves_for(fit):
    """Training curves from the fit's input folder (same conventions), or []."""
    if fit.input_kind != "sweep" or not Path(fit.input or "").is_dir():
        return []
    opts = fit.collect_options or {}
    try:
        return collect(fit.input, params=opts.get("params", "total"), flops=opts.get("flops", "exact"),
                       loss_key=opts.get("loss_key", "final_val_loss"), sweep=opts.get("sweep", "auto")).curves
    except Exception:
        return []


def make_report(report_dir, *, wandb_enabled=False, wandb_report=False, wandb_options=None, log=None):
    """Plots + report.md + report.html in report_dir, made from its fit.json.

    Returns {"fit_json", "report_md", "report_html", "plots": {name: path or reason}, "wandb": {...}}.
    Raises FitInputError when report_dir has no readable fit.json.
    """
    report_dir = Path(report_dir)
    fit, why = load_fit(report_dir)
    if fit is None:
        raise FitInputError(f"{why}; fit first with `python -m sweeps.fit {report_dir}`")
    plots = save_plots(fit, report_dir, _curves_for(fit))
    blocks = build_document(fit, plots)
    out = {"fit_json": str(report_dir / FIT_JSON),
           "report_md": str(atomic_write_text(report_dir / "report.md", render_markdown(blocks))),
           "report_html": str(atomic_write_text(report_dir / "report.html", render_html(blocks, report_dir))),
           "plots": plots}
    if wandb_enabled or wandb_report:
        from . import wandb_report as wr

        out["wandb"] = wr.publish(fit, plots, report_dir, log_run=wandb_enabled, build_report=wandb_report,
                                  log=log or _log.info, **{k: v for k, v in (wandb_options or {}).items() if v})
    return out


_FIT_KWARGS = set(LOAD_KEYS) | {"bootstrap", "seed", "predict", "approaches", "grid", "huber_delta", "c_tol",
                                "window", "drop_highest", "approach1_points", "interval", "holdout_law",
                                "holdout_grid", "a3_min_steps"}


def run_analysis(sweep_dir, out_dir=None, *, wandb_enabled=False, wandb_report=False, wandb_group=None,
                 wandb_project=None, wandb_entity=None, holdout="largest", log=None, **fit_kwargs):
    """collect -> fit -> report, for the end-of-sweep callback. Never raises.

    holdout: a rule (sweeps.holdout) or "largest" (default: fit on the smaller budgets and predict the
    largest; skipped with the reason when there are fewer than 3 budgets) or None.
    wandb_enabled: log the summary run (opt-in; the training side's logger=wandb); wandb_report: also build a
    Report; wandb_group/project/entity: where it goes.  fit_kwargs go to sweeps.fit.run_fit (params, flops,
    bootstrap, grid, predict, ...); unknown keywords are reported and ignored.  Returns {"ok", "status",
    "fit_json", "report_md", "report_html", "plots", "wandb", "errors": [...]}; "ok" is True only when the
    fit's status is "ok" (the report still lists every run and why it was excluded).
    """
    say = log or _log.info
    status = {"ok": False, "status": "failed", "fit_json": None, "report_md": None, "report_html": None,
              "plots": {}, "errors": []}
    unknown = sorted(set(fit_kwargs) - _FIT_KWARGS)
    if unknown:
        status["errors"].append(f"ignored unknown options: {', '.join(unknown)}")
        fit_kwargs = {k: v for k, v in fit_kwargs.items() if k in _FIT_KWARGS}
    out = Path(out_dir or sweep_dir)
    fit = None
    try:
        fit, path = run_fit(sweep_dir, out, require_ok=False, holdout_rule=holdout, **fit_kwargs)
        status.update(fit_json=str(path), status=fit.status, ok=fit.ok)
        if not fit.ok:
            status["errors"].append(fit.problem or "no approach could be fitted")
    except Exception as e:
        status["errors"].append(f"fit: {e.__class__.__name__}: {e}")
        status["traceback"] = traceback.format_exc()
    if fit is not None:
        try:
            status.update(make_report(out, wandb_enabled=wandb_enabled, wandb_report=wandb_report, log=say,
                                      wandb_options={"group": wandb_group, "project": wandb_project,
                                                     "entity": wandb_entity}))
        except Exception as e:
            status["errors"].append(f"report: {e.__class__.__name__}: {e}")
            status["traceback"] = traceback.format_exc()
    try:
        head = f"scaling-law analysis of {sweep_dir}: {status['status'].replace('_', ' ')}"
        if status["errors"]:
            head += " (" + "; ".join(status["errors"]) + ")"
        say(head + (f" -> {status['report_md']}" if status.get("report_md") else ""))
        if fit is not None and fit.holdout is not None:
            say(holdout_line(fit.holdout))
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
    p.add_argument("--holdout", default=None, metavar="RULE",
                   help="when fitting: hold out RULE's points and predict them (e.g. 'largest', 'N>1e9')")
    p.add_argument("--wandb", action="store_true", help="log the summary run to wandb (opt-in)")
    p.add_argument("--no-wandb", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    p.add_argument("--wandb-report", action="store_true",
                   help="also build a wandb Report (needs a logged-in user and the wandb-workspaces package)")
    args = p.parse_args(argv)
    setup(console=True)
    d = Path(args.dir)
    if not d.is_dir():
        print(f"sweeps.report: error: {d}: not a folder", file=sys.stderr)
        return 2
    try:
        if args.refit or not (d / FIT_JSON).is_file():
            run_fit(d, d, bootstrap=args.bootstrap, grid=args.grid, params=args.params, flops=args.flops,
                    holdout_rule=args.holdout)
        out = make_report(d, wandb_enabled=args.wandb and not args.no_wandb, wandb_report=args.wandb_report,
                          log=print)
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
