"""Publish a fit to Weights & Biases: a summary run and, on request, a wandb Report.

Opt-in: sweeps.report logs nothing to wandb unless asked (``--wandb``, or the training side's logger=wandb for
the end-of-sweep analysis).  The summary run (job_type "analysis", in the sweep's group) carries the fit tables
(wandb.Table) and the plots (wandb.Image).  Mode: WANDB_MODE when set, else online when an API key is configured
(WANDB_API_KEY or a netrc entry for the wandb host), else offline (sync later with `wandb sync`).
The Report (``--wandb-report``) is built with the wandb-workspaces API, imported lazily; it needs
an online, logged-in user.  Nothing here ever raises: a wandb problem is printed and returned, and
the local report is already complete by the time this runs.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from train.io_utils import wandb_mode

DEFAULT_PROJECT = "scalelab"
# Keys the training loggers use (train/loggers.py mirrors metrics.jsonl rows; config is the run config).
CURVE_X, CURVE_Y = "flops", "val_loss"
BUDGET_KEY = "config.train.budget"


def _reinit(wandb):
    """Finish any run still open in this process (the sweep's last job): wandb >= 0.19 wants a string."""
    try:
        major, minor = (int(x) for x in wandb.__version__.split(".")[:2])
    except ValueError:
        return True
    return "finish_previous" if (major, minor) >= (0, 19) else True


def _group(fit, report_dir):
    groups = Counter(r.get("group") for r in fit.runs if r.get("group"))
    if groups:
        return str(groups.most_common(1)[0][0])
    return Path(fit.input or report_dir).name


def _pair(ci):
    return list(ci) if ci else [None, None]


def _tables(wandb, fit):
    """wandb.Table objects for the fit (a sweeps.results.FitResult)."""
    t = {}
    rows = []
    for key, r in fit.approaches():
        rows.append([key, r.status, r.a, *_pair(r.ci.get("a")), r.b, *_pair(r.ci.get("b")), r.reason or ""])
    t["fit/allocation"] = wandb.Table(columns=["approach", "status", "a", "a_lo", "a_hi", "b", "b_lo", "b_hi",
                                               "reason"], data=rows)
    r3 = fit.approach3
    if r3.law is not None:
        t["fit/approach3"] = wandb.Table(
            columns=["parameter", "estimate", "ci_lo", "ci_hi"],
            data=[[k, getattr(r3, k), *_pair(r3.ci.get(k))] for k in ("E", "A", "B", "alpha", "beta", "a", "b")])
        t["fit/predictions"] = wandb.Table(
            columns=["C", "N_opt", "D_opt", "tokens_per_param", "loss", "extrapolation"],
            data=[[p.C, p.N_opt, p.D_opt, p.tokens_per_param, p.loss, p.extrapolation or ""] for p in r3.predictions])
    r2 = fit.approach2
    if r2.budgets:
        t["fit/isoflop_points"] = wandb.Table(
            columns=["C", "N", "loss"], data=[[b.C, n, l] for b in r2.budgets for n, l in zip(b.N, b.loss)])
        t["fit/budgets"] = wandb.Table(
            columns=["C", "N_opt", "D_opt", "loss_opt", "excluded"],
            data=[[b.C, b.N_opt, b.D_opt, b.loss_opt, b.excluded or ""] for b in r2.budgets])
    h = fit.holdout
    if h is not None and h.points:
        t["fit/holdout"] = wandb.Table(
            columns=["name", "N", "D", "C", "loss", "predicted", "rel_error", "lo", "hi", "inside"],
            data=[[p.name, p.N, p.D, p.C, p.loss, p.predicted, p.rel_error, *_pair(p.interval), p.inside]
                  for p in h.points])
    cols = ["name", "status", "reason", "N", "D", "C", "loss", "tokens_per_s", "wall_s"]
    if fit.runs:
        t["runs"] = wandb.Table(columns=cols, data=[[r.get("name"), str(r.get("status")),
                                                     str(r.get("reason") or r.get("excluded_reason") or ""),
                                                     r.get("N"), r.get("D"), r.get("C"), r.get("loss"),
                                                     r.get("tokens_per_s"), r.get("wall_s")] for r in fit.runs])
    return t


def log_summary_run(fit, plots, report_dir, *, project=None, entity=None, group=None, mode="auto", log=print):
    """Log the fit as one wandb run; returns {"mode", "url" or "dir", "error"}. `mode` as logger.mode."""
    mode, why = wandb_mode(mode)
    out = {"mode": mode, "why": why}
    try:
        import wandb

        group = group or _group(fit, report_dir)
        run = wandb.init(project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                         entity=entity or os.environ.get("WANDB_ENTITY"), group=group, job_type="analysis",
                         name=f"analysis-{group}", dir=str(report_dir), mode=mode, reinit=_reinit(wandb),
                         config={k: getattr(fit, k) for k in ("input", "params_convention", "flops_convention",
                                                              "settings", "n_points", "n_excluded", "status")})
        payload = dict(_tables(wandb, fit))
        for name, path in plots.items():
            if str(path).endswith(".png") and Path(path).is_file():
                payload[f"plots/{Path(name).stem}"] = wandb.Image(str(path))
        run.log(payload)
        run.summary["fit/status"] = fit.status
        for key, r in fit.approaches():
            run.summary[f"{key}/status"] = r.status
            if r.fitted:
                run.summary[f"{key}/a"] = r.a
                run.summary[f"{key}/b"] = r.b
        if fit.approach3.law is not None:
            for k, v in fit.approach3.law.items():
                run.summary[f"approach3/{k}"] = v
        if fit.holdout is not None and fit.holdout.max_abs_rel_error is not None:
            run.summary["holdout/max_abs_rel_error"] = fit.holdout.max_abs_rel_error
            run.summary["holdout/coverage"] = fit.holdout.coverage
        out["url"] = getattr(run, "url", None) if mode == "online" else None
        out["entity"] = getattr(run, "entity", None)
        out["project"] = getattr(run, "project", None)
        out["group"] = group
        out["dir"] = getattr(run, "dir", None)
        run.finish()
        if mode == "offline":
            where = Path(out["dir"]).parent if out.get("dir") else Path(report_dir) / "wandb"
            log(f"wandb: summary run logged offline ({why}); upload it with `wandb sync {where}`")
        elif mode == "online":
            log(f"wandb: summary run {out['url']}")
    except Exception as e:
        out["error"] = f"{e.__class__.__name__}: {e}"
        log(f"wandb: summary run not logged ({out['error']}); the local report is complete")
    return out


def create_report(fit, *, project=None, entity=None, group=None, mode="auto", log=print):
    """A wandb Report for the sweep (online, logged-in users only). Returns {"url"} or {"skipped": why}."""
    mode, why = wandb_mode(mode)
    if mode != "online":
        msg = f"wandb Report not created: wandb is not online ({why}); run `wandb login`, then " \
              "`python -m sweeps.report DIR --wandb-report`"
        log(msg)
        return {"skipped": msg}
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        msg = ("wandb Report not created: the wandb-workspaces package is not installed "
               "(pip install 'scalelab[report]' or pip install wandb-workspaces)")
        log(msg)
        return {"skipped": msg}
    try:
        import wandb

        project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        entity = entity or os.environ.get("WANDB_ENTITY") or wandb.Api().default_entity
        group = group or _group(fit, ".")
        r3, r2 = fit.approach3, fit.approach2
        lines = [f"Conventions: N = {fit.params_convention}, C = {fit.flops_convention} "
                 f"({fit.flops_convention_description}). Fit status: {fit.status}."]
        if r3.fitted:
            lines.append(f"Approach 3 ({r3.status}): a = {r3.a:.3f}, b = {r3.b:.3f}; E = {r3.E:.4g}, A = {r3.A:.4g}, "
                         f"B = {r3.B:.4g}, alpha = {r3.alpha:.4f}, beta = {r3.beta:.4f}.")
        if r2.fitted:
            lines.append(f"Approach 2 ({r2.status}): a = {r2.a:.3f}, b = {r2.b:.3f}.")
        runset = wr.Runset(entity=entity, project=project, name=f"sweep {group}",
                           filters=f'Metric("Group") == "{group}"', groupby=[BUDGET_KEY])
        panels = [
            wr.LinePlot(title="validation loss vs compute", x=CURVE_X, y=[CURVE_Y], log_x=True, log_y=True),
            wr.ScatterPlot(title="IsoFLOP: final loss vs parameters", x="params_total", y="final_val_loss",
                           log_x=True),
        ]
        report = wr.Report(entity=entity, project=project, title=f"Scaling laws: {group}",
                           description="Compute-optimal frontier fitted by scalelab (sweeps.fit).",
                           blocks=[wr.H1(f"Scaling laws: {group}"), *[wr.P(t) for t in lines],
                                   wr.PanelGrid(runsets=[runset], panels=panels)])
        report.save()
        url = getattr(report, "url", None)
        log(f"wandb Report: {url}")
        return {"url": url}
    except Exception as e:
        msg = f"wandb Report not created: {e.__class__.__name__}: {e}"
        log(msg)
        return {"skipped": msg}


def publish(fit, plots, report_dir, *, log_run=True, build_report=False, project=None, entity=None, group=None,
            log=print):
    """Summary run (when log_run) and Report (when build_report); never raises."""
    out = {}
    try:
        group = group or _group(fit, report_dir)
        if log_run:
            out["run"] = log_summary_run(fit, plots, report_dir, project=project, entity=entity, group=group,
                                         log=log)
        if build_report:
            out["report"] = create_report(fit, project=project, entity=entity, group=group, log=log)
    except Exception as e:  # belt and braces
        out["error"] = f"{e.__class__.__name__}: {e}"
    return out
