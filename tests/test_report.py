"""Reports: plots, report.md/html, run_analysis for the end-of-sweep callback, the wandb paths (no network)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sweep_factory import make_shape_sweep, make_sweep, make_tokens_sweep, write_run
from sweeps import run_analysis
from sweeps import wandb_report
from sweeps.collect import collect
from sweeps.fit import format_summary, run_fit
from sweeps.plots import PLOTS
from sweeps.results import Approach3Result, FitResult, fmt_ci, load_fit
from train.io_utils import wandb_mode

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
FAST = ["--bootstrap", "30", "--grid", "coarse"]


def run_module(module, *args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=e)


def assert_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG and len(data) > 5000, path


def test_report_on_fabricated_sweep(tmp_path):
    make_sweep(tmp_path, noise=0.002)
    make_shape_sweep(tmp_path)
    make_tokens_sweep(tmp_path)
    r = run_module("sweeps.report", tmp_path, *FAST)
    assert r.returncode == 0, r.stderr
    for name in PLOTS:
        assert_png(tmp_path / name)
    fit, _ = load_fit(tmp_path)
    assert fit.n_points == 21  # the chinchilla runs; shape and tokens runs are plotted, not fitted
    a3, a2 = f"{fit.approach3.a:.3f}", f"{fit.approach2.a:.3f}"
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    for text in (md, page):
        assert a3 in text and a2 in text
        assert "parameter convention" in text and "FLOP convention" in text
        assert "exact" in text and "total" in text and "attention" in text
        assert "bad_failed" in text and "CUDA out of memory" in text  # runs table with reasons
        assert "no summary.json" in text  # the killed run, excluded with its reason
        assert "Status: OK" in text and "meta-regression" in text and "parametric bootstrap" in text
        assert "window sensitivity" in text and "extrapolation" in text
    for name in PLOTS:
        assert f"]({name})" in md
    assert page.count("data:image/png;base64,") == len(PLOTS)
    assert "<img" in page and "src='isoflop.png'" not in page  # self-contained
    assert not (tmp_path / "wandb").exists()  # wandb is opt-in


@pytest.mark.slow
def test_report_reads_existing_fit_and_notes_missing_plots(tmp_path):
    sweep, out = tmp_path / "sweep", tmp_path / "out"
    make_sweep(sweep, curves=False, bad_runs=False)
    r = run_module("sweeps.fit", sweep, "--out", out, *FAST)
    assert r.returncode == 0, r.stderr
    r = run_module("sweeps.report", out)
    assert r.returncode == 0, r.stderr
    assert "shape.png left out" in r.stdout
    md = (out / "report.md").read_text()
    assert "shape.png: no runs of the shape sweep" in md and "tokens.png: no runs of the tokens sweep" in md
    assert "each run's final (annealed) loss" in md  # approach 1 needs no curves
    for name in ("isoflop.png", "frontier.png", "loss_vs_compute.png", "residuals.png"):
        assert_png(out / name)
    assert not (out / "shape.png").exists()


@pytest.mark.slow
def test_report_follows_the_fit(tmp_path):
    """One source of truth: sweeps.fit rewriting fit.json rebuilds the report beside it (it used to leave the
    report and the plots showing the old fit)."""
    make_sweep(tmp_path, noise=0.002, bad_runs=False)
    r = run_module("sweeps.report", tmp_path, *FAST)
    assert r.returncode == 0, r.stderr
    assert "**total**" in (tmp_path / "report.md").read_text()
    old_plots = {name: (tmp_path / name).read_bytes() for name in ("isoflop.png", "frontier.png", "residuals.png")}
    r = run_module("sweeps.fit", tmp_path, *FAST, "--params", "non_embedding")
    assert r.returncode == 0, r.stderr
    assert "rebuilt the report" in r.stdout
    md = (tmp_path / "report.md").read_text()
    fit, _ = load_fit(tmp_path)
    assert "**non_embedding**" in md and f"{fit.approach3.a:.3f}" in md and fit.created in md
    assert fit.created in (tmp_path / "report.html").read_text()
    for name, old in old_plots.items():  # the plots follow too (N is now the non-embedding count)
        assert_png(tmp_path / name)
        assert (tmp_path / name).read_bytes() != old, name


def test_report_cli_bad_dir_and_empty_folder(tmp_path):
    r = run_module("sweeps.report", "/nonexistent/sweep")
    assert r.returncode == 2 and "not a folder" in r.stderr and "Traceback" not in r.stderr
    r = run_module("sweeps.report", tmp_path)
    assert r.returncode == 2 and "too few usable points" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "fit.json").exists() and not (tmp_path / "report.md").exists()


@pytest.mark.slow
def test_plots_are_readable_without_warnings(tmp_path):
    """Every plot of a fabricated sweep (and of one whose law is not identified): at least two labelled ticks on
    every axis, no overlapping tick labels, and no RuntimeWarning while drawing."""
    import warnings

    from sweeps.plots import BUILDERS, tick_label_problems

    good, bad = tmp_path / "good", tmp_path / "bad"
    make_sweep(good, noise=0.002)
    make_shape_sweep(good)
    make_tokens_sweep(good)
    make_sweep(bad, budgets=(1e15, 3e15, 1e16), shapes=[(32, 1), (48, 1), (64, 2), (96, 2)], bad_runs=False,
               noise=0.002)
    for folder in (good, bad):
        run_fit(folder, folder, bootstrap=50, grid="coarse", require_ok=False)
        fit, _ = load_fit(folder)
        curves = collect(folder).curves
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            for name, build in BUILDERS.items():
                fig = build(fit, curves)
                if isinstance(fig, str):
                    assert folder == bad or name not in ("isoflop.png", "frontier.png", "loss_vs_compute.png",
                                                         "residuals.png", "shape.png", "tokens.png"), (name, fig)
                    continue
                assert tick_label_problems(fig) == [], (folder.name, name)
                labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
                if fit.approach1.status == "skipped":
                    assert not any("approach 1" in t for t in labels), (name, labels)


@pytest.mark.parametrize("points", ["annealed", "curves"])
def test_plotted_envelope_never_above_a_measured_point(tmp_path, points):
    """The lower envelope drawn in loss_vs_compute.png is, at every measured point's compute, at or below that
    point's loss (a 40-point grid of C used to drop most runs' final points and draw the envelope above them)."""
    from sweeps.fit import fit_dataset
    from sweeps.plots import build_loss_vs_compute

    make_sweep(tmp_path, noise=0.002, bad_runs=False)
    ds = collect(tmp_path)
    fit = fit_dataset(ds, approaches=(1,), approach1_points=points)
    fig = build_loss_vs_compute(fit, ds.curves)
    (line,) = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label().startswith("lower envelope")]
    assert line.get_drawstyle() == "steps-post"
    xs, ys = line.get_xdata(), line.get_ydata()
    measured = list(zip(ds.C, ds.loss))
    if points == "curves":
        measured += [(c, l) for cv in ds.curves for c, l in zip(cv["C"], cv["loss"])]
    for c, loss in measured:
        drawn = [y for x, y in zip(xs, ys) if x <= c * (1 + 1e-12)]
        assert drawn and drawn[-1] <= loss + 1e-12, (c, loss, drawn[-1:])


def test_tick_label_check_catches_unlabelled_axes():
    """The check itself can fail: a log axis over half a decade with matplotlib's default ticks has no label."""
    from sweeps.plots import new_figure, tick_label_problems

    fig, (ax,) = new_figure()
    ax.plot([2e4, 6e4], [1.0, 2.0])
    ax.set_xscale("log")
    ax.set_xlim(2e4, 6e4)
    assert any("x ticks" in p for p in tick_label_problems(fig))


def test_tick_labels_are_compact():
    from sweeps.plots import _compact

    assert [_compact(v) for v in (5e3, 1.5e3, 2e4, 1.5e4, 0.5, 300, 1e10)] == \
        ["5000", "1500", "2e4", "1.5e4", "0.5", "300", "1e10"]


def test_intervals_print_readably():
    assert fmt_ci([0.0, 1325704136374537728.0]) == "[0, 1.33e+18]"
    assert fmt_ci([0.4912, 0.5051]) == "[0.491, 0.505]"
    assert fmt_ci(None) == "-"


@pytest.mark.slow
def test_run_analysis_as_the_callback_calls_it(tmp_path):
    """The end-of-sweep analysis holds out the largest budget, predicts it from the others, and says how
    well in the report."""
    make_sweep(tmp_path, noise=0.002)
    msgs = []
    st = run_analysis(tmp_path, wandb_group="test-sweep", wandb_enabled=True, bootstrap=50, grid="coarse",
                      log=msgs.append)
    assert st["ok"], st["errors"]
    assert Path(st["fit_json"]).is_file() and Path(st["report_html"]).is_file()
    assert st["wandb"]["run"]["mode"] == "disabled" and "error" not in st["wandb"]["run"]
    assert st["wandb"]["run"]["group"] == "test-sweep"
    assert any("scaling-law analysis" in m and ": ok" in m for m in msgs)
    assert any(m.startswith("holdout C>") for m in msgs)
    fit, _ = load_fit(tmp_path)
    h = fit.holdout
    assert h.status == "ok" and h.n_heldout == 7 and h.n_train == 14
    assert h.max_abs_rel_error < 0.015 and all(p.interval for p in h.points)
    md = (tmp_path / "report.md").read_text()
    assert "Fit on the smaller budgets, predicted the largest: error" in md


@pytest.mark.slow
def test_run_analysis_wandb_is_opt_in(tmp_path, monkeypatch):
    make_sweep(tmp_path, noise=0.002, bad_runs=False)

    def boom(*a, **k):
        raise AssertionError("wandb used without being asked")

    monkeypatch.setattr(wandb_report, "publish", boom)
    st = run_analysis(tmp_path, bootstrap=20, grid="coarse", holdout=None, log=lambda m: None)
    assert st["ok"] and "wandb" not in st


@pytest.mark.slow
def test_report_cli_wandb_is_opt_in(tmp_path, monkeypatch):
    """`python -m sweeps.report DIR` logs no wandb run unless --wandb is given (it used to log one by default)."""
    from sweeps import report

    make_sweep(tmp_path, curves=False, bad_runs=False)
    calls = []
    monkeypatch.setattr(wandb_report, "publish", lambda *a, **k: calls.append(k) or {"run": {"mode": "disabled"}})
    assert report.main([str(tmp_path), *FAST]) == 0
    assert (tmp_path / "report.md").is_file() and calls == []
    assert report.main([str(tmp_path), "--wandb"]) == 0
    assert len(calls) == 1 and calls[0]["log_run"] and not calls[0]["build_report"]


def test_run_analysis_never_raises(tmp_path):
    st = run_analysis(tmp_path / "missing", log=lambda m: None)
    assert not st["ok"] and "no such file" in st["errors"][0]
    for i in range(3):
        write_run(tmp_path, f"r{i}", {"status": "diverged", "reason": "loss NaN", "name": f"r{i}"})
    st = run_analysis(tmp_path, bogus_option=1, log=lambda m: None)
    assert not st["ok"] and st["status"] == "failed"
    assert any("bogus_option" in e for e in st["errors"])
    fit, _ = load_fit(tmp_path)
    assert fit.status == "failed" and "no approach could be fitted" in fit.problem
    md = (tmp_path / "report.md").read_text()
    assert "Status: FAILED" in md and "loss NaN" in md


@pytest.mark.slow
def test_unidentified_fit_is_said_so_everywhere(tmp_path):
    make_sweep(tmp_path, budgets=(1e15, 3e15, 1e16), shapes=[(32, 1), (48, 1), (64, 2), (96, 2)], bad_runs=False,
               noise=0.002)
    msgs = []
    st = run_analysis(tmp_path, bootstrap=30, grid="coarse", log=msgs.append)
    assert not st["ok"] and st["status"] != "ok"
    assert not any(": ok" in m for m in msgs)
    fit, _ = load_fit(tmp_path)  # fit.json
    assert fit.status == "not_identified" and fit.problem and "not identified" in fit.problem
    assert fit.approach3.status == "not_identified" and fit.approach3.reason
    table = format_summary(fit)  # the CLI's table
    assert "status: OK" not in table and "NOT IDENTIFIED" in table and fit.approach3.reason in table
    for name in ("report.md", "report.html"):
        text = (tmp_path / name).read_text()
        assert "Status: OK" not in text and "NOT IDENTIFIED" in text and fit.approach3.reason in text


@pytest.mark.slow
def test_wandb_summary_run_disabled_mode(tmp_path):
    """tests/conftest.py sets WANDB_MODE=disabled: the summary-run code runs end to end without network."""
    make_sweep(tmp_path, curves=False, bad_runs=False)
    r = run_module("sweeps.fit", tmp_path, *FAST)
    assert r.returncode == 0, r.stderr
    fit, _ = load_fit(tmp_path)
    msgs = []
    out = wandb_report.publish(fit, {"isoflop.png": "not made"}, tmp_path, log_run=True, log=msgs.append)
    assert out["run"]["mode"] == "disabled" and "error" not in out["run"], out


@pytest.mark.slow
def test_wandb_report_offline_says_why_and_exits_0(tmp_path):
    make_sweep(tmp_path, curves=False, bad_runs=False)
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "", "NETRC": str(tmp_path / "no-netrc")}
    r = run_module("sweeps.report", tmp_path, *FAST, "--wandb-report", env=env)
    assert r.returncode == 0, r.stderr
    assert "wandb Report not created" in r.stdout and "no API key configured" in r.stdout
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.html").is_file()
    assert_png(tmp_path / "frontier.png")
    r = run_module("sweeps.report", tmp_path, "--wandb-report", env={"WANDB_MODE": "offline"})
    assert r.returncode == 0 and "WANDB_MODE=offline" in r.stdout


def test_wandb_report_without_package(monkeypatch):
    monkeypatch.setattr(wandb_report, "wandb_mode", lambda mode="auto": ("online", "pretend"))
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports", None)
    monkeypatch.setitem(sys.modules, "wandb_workspaces.reports.v2", None)
    msgs = []
    out = wandb_report.create_report(FitResult(), group="g", log=msgs.append)
    assert "wandb-workspaces package is not installed" in out["skipped"] and msgs


@pytest.mark.parametrize("has_key", [True, False])
def test_wandb_mode(monkeypatch, tmp_path, has_key):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / "netrc"
    if has_key:
        netrc.write_text("machine api.wandb.ai\n  login user\n  password x\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode()[0] == ("online" if has_key else "offline")


def test_wandb_report_structure_with_a_fake_api(monkeypatch):
    """The Report is built from the wandb-workspaces classes (faked here: no network): runs of the sweep's
    group, grouped by budget, a loss-vs-compute line plot and an IsoFLOP scatter; then saved."""
    import types

    made = []

    class Rec:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs
            made.append(self)

        def save(self):
            self.saved = True
            self.url = "https://example.invalid/report"

    names = ["Report", "Runset", "PanelGrid", "LinePlot", "ScatterPlot", "H1", "P"]
    v2 = types.ModuleType("wandb_workspaces.reports.v2")
    for n in names:
        setattr(v2, n, type(n, (Rec,), {}))
    pkg, reports = types.ModuleType("wandb_workspaces"), types.ModuleType("wandb_workspaces.reports")
    pkg.reports, reports.v2 = reports, v2
    for name, mod in (("wandb_workspaces", pkg), ("wandb_workspaces.reports", reports),
                      ("wandb_workspaces.reports.v2", v2)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(wandb_report, "wandb_mode", lambda mode="auto": ("online", "pretend"))
    fit = FitResult(params_convention="total", flops_convention="exact", flops_convention_description="x",
                    approach3=Approach3Result(status="ok", a=0.5, b=0.5, E=1.8, A=400.0, B=2000.0, alpha=0.34,
                                              beta=0.37), runs=[{"group": "chinchilla-cpu"}])
    out = wandb_report.create_report(fit, project="p", entity="e", log=lambda m: None)
    assert out == {"url": "https://example.invalid/report"}
    by = {type(m).__name__: m for m in made}
    assert by["Runset"].kwargs["groupby"] == [wandb_report.BUDGET_KEY]
    assert "chinchilla-cpu" in by["Runset"].kwargs["filters"]
    assert by["LinePlot"].kwargs["x"] == "flops" and by["LinePlot"].kwargs["y"] == ["val_loss"]
    assert by["ScatterPlot"].kwargs["y"] == "final_val_loss"
    assert getattr(by["Report"], "saved", False) and by["Report"].kwargs["project"] == "p"


def test_bench_sweep_reads_the_fit_through_the_loaders(tmp_path):
    """bench/sweep.py's outcome: run statuses through train.record's loader, exponents through sweeps.results'."""
    from bench.sweep import sweep_outcome

    make_sweep(tmp_path, noise=0.002)
    run_fit(tmp_path, tmp_path, bootstrap=30, grid="coarse")
    fit, _ = load_fit(tmp_path)
    out = sweep_outcome(tmp_path)
    assert out["statuses"] == {"completed": 21, "failed": 1, "diverged": 1, "skipped": 1, "unreadable": 2}
    assert out["a_approach2"] == fit.approach2.a and out["a_approach3_ci"] == fit.approach3.ci["a"]
    assert out["fit_status"] == "ok" and out["flops_convention"] == "exact"
