"""PNG plots of a fit (matplotlib's object API on the Agg canvas: no pyplot, no global backend change).

Every ``build_*`` function takes a :class:`sweeps.results.FitResult` (plus optional training curves) and
returns a matplotlib Figure, or a string saying why the plot is left out; :func:`save_plots` writes them.
Log axes get labelled ticks at 1-2-5 steps when they span less than two decades (matplotlib labels only
powers of ten, so a short N axis had none), and :func:`tick_label_problems` checks a figure for axes without
labels and for labels that overlap (the tests run it on every plot).
"""
from __future__ import annotations

import numpy as np

from . import bootstrap as bs
from .law import FlopsRelation, frontier, laws_from_rows, predict_loss

# Epoch AI's exact replication of Chinchilla's approach 3 (refdata README): C = 6ND there.
EPOCH_LAW = {"E": 1.8172, "A": 477.83, "B": 2143.4, "alpha": 0.3473, "beta": 0.3672}
KAPLAN_A = 0.73  # N_opt ~ C^0.73, D_opt ~ C^0.27 (Kaplan et al. 2020)
SIX_ND = FlopsRelation(np.ones(1), np.ones(1))  # C = 6 N D


def new_figure(ncols=1, width=6.4, height=4.6, nrows=1):
    """(figure, its axes row by row in one list): an Agg canvas of its own, so no pyplot state is touched
    (also used by sweeps.testtime.plots)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    return fig, axes


def save_figure(fig, path):
    """Lay out and write a figure as PNG; returns the path as a string."""
    fig.tight_layout()
    fig.savefig(path, format="png")
    return str(path)


def _compact(v, _pos=None):
    """2e4 -> '2e4', 1.5e4 -> '1.5e4', 0.5 -> '0.5', 300 -> '300', 5000 -> '5000'."""
    if v <= 0:
        return ""
    if 1e-2 <= v < 1e4:
        return f"{v:.4g}"  # 4 digits: .3g wrote 5000 as '5e+03'
    m, e = f"{v:.1e}".split("e")
    return f"{m.rstrip('0').rstrip('.')}e{int(e)}"


def _log_axis(ax, which="x"):
    """A log axis whose ticks are labelled however short its range: 1-2-5 steps below two decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    lo, hi = (ax.get_xlim() if which == "x" else ax.get_ylim())
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 3
    subs = (1.0, 2.0, 5.0) if decades < 2 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(_compact))
    axis.set_minor_formatter(NullFormatter())


def tick_label_problems(fig):
    """Axes whose x or y tick labels are missing (fewer than 2 in view) or overlap; [] when readable."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    for n, ax in enumerate(fig.axes):
        colorbar = ax.get_label() == "<colorbar>"
        for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if colorbar and which == "x":  # a vertical colorbar has ticks on its long axis only
                continue
            lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
            labels = [t for t, loc in zip(axis.get_ticklabels(), axis.get_ticklocs())
                      if t.get_visible() and t.get_text().strip() and lo <= loc <= hi]
            if len(labels) < 2:
                problems.append(f"axes {n} ({ax.get_title()[:40]!r}): {len(labels)} labelled {which} ticks")
                continue
            texts = [t.get_text() for t in labels]
            if len(set(texts)) < len(texts):
                problems.append(f"axes {n} ({ax.get_title()[:40]!r}): repeated {which} tick labels {texts}")
            boxes = sorted((t.get_window_extent(renderer) for t in labels),
                           key=lambda b: b.x0 if which == "x" else b.y0)
            for b1, b2 in zip(boxes, boxes[1:]):
                if (b1.x1 > b2.x0 + 0.5) if which == "x" else (b1.y1 > b2.y0 + 0.5):
                    problems.append(f"axes {n} ({ax.get_title()[:40]!r}): overlapping {which} tick labels")
                    break
    return problems


def colors(n):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.1 + 0.8 * i / max(1, n - 1)) for i in range(n)]


def _c_range(fit):
    cs = [p["C"] for p in fit.points]
    return (min(cs) / 2, max(cs) * 2) if cs else None


def _relation(fit):
    pts = fit.points
    if not pts:
        return SIX_ND
    return FlopsRelation([p["N"] for p in pts], [p["D"] for p in pts], [p["C"] for p in pts])


def _law3(fit):
    r = fit.approach3
    return r if r.law is not None and r.status != "skipped" and r.a is not None else None


def _clusters(values, tol_decades=0.15):
    """Group positive values whose logs lie within tol_decades of their neighbour: {representative: [indices]}."""
    order = np.argsort(values)
    groups, cur = [], [order[0]] if len(order) else []
    for i, j in zip(order[:-1], order[1:]):
        if np.log10(values[j] / values[i]) > tol_decades:
            groups.append(cur)
            cur = []
        cur.append(j)
    if cur:
        groups.append(cur)
    return {float(np.exp(np.mean(np.log([values[k] for k in g])))): g for g in groups}


def _finish(fig, axes_with_legend=()):
    for ax in axes_with_legend:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------- IsoFLOP
def build_isoflop(fit, curves=None):
    r2 = fit.approach2
    if not r2.budgets:
        return f"no IsoFLOP budgets (approach 2 {r2.status}: {r2.reason})"
    fig, (ax,) = new_figure()
    for b, col in zip(r2.budgets, colors(len(r2.budgets))):
        N, L = np.array(b.N), np.array(b.loss)
        if b.excluded:
            ax.scatter(N, L, facecolors="none", edgecolors=[col], s=28, label=f"C={b.C:.2g} (excluded)")
            continue
        ax.scatter(N, L, color=col, s=28, label=f"C={b.C:.2g}")
        c2, c1, c0 = b.parabola_lnN
        x = np.linspace(np.log(b.fitted_N_range[0]), np.log(b.fitted_N_range[1]), 100)
        ax.plot(np.exp(x), c2 * x * x + c1 * x + c0, color=col, lw=1.2)
        ax.scatter([b.N_opt], [b.loss_opt], marker="*", s=140, color=col, edgecolors="k", zorder=5)
    _log_axis(ax, "x")
    ax.set_xlabel(f"N ({fit.params_convention} parameters)")
    ax.set_ylabel("validation loss")
    ax.set_title("IsoFLOP profiles: parabolas near the minimum, vertices (*)")
    return _finish(fig, [ax])


# -------------------------------------------------------------------------------------- frontier
def _band(ax, C, lo, hi, color):
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.sum() >= 2:
        ax.fill_between(C[ok], lo[ok], hi[ok], color=color, alpha=0.2, lw=0)


def build_frontier(fit, curves=None):
    r1, r2, r3 = fit.approach1, fit.approach2, _law3(fit)
    rng = _c_range(fit)
    if rng is None or not (r1.fitted or r2.fitted or r3):
        return "no fitted frontier"
    C = np.logspace(np.log10(rng[0]), np.log10(rng[1]), 60)
    rel = _relation(fit)
    fig, (axN, axD) = new_figure(2)
    for which, ax in (("N", axN), ("D", axD)):
        k = 0 if which == "N" else 1
        key = "a" if which == "N" else "b"
        if r3:
            y = frontier(r3.law, C, rel)[k]
            ax.plot(C, y, color="C0", lw=2, label=f"approach 3 ({r3.status}): ~ C^{getattr(r3, key):.3f}"
                    + (f" {_ci_text(r3.ci.get(key))}" if r3.ci.get(key) else ""))
            s = r3.samples
            if r3.ci and s.get("alpha"):
                laws = laws_from_rows(np.column_stack([np.log(s["A"]), np.log(s["B"]), np.log(s["E"]),
                                                       s["alpha"], s["beta"]]))
                ys = frontier(laws, C, rel)[k]
                lo, hi = np.nanpercentile(ys, [2.5, 97.5], axis=0)
                _band(ax, C, lo, hi, "C0")
        if r2.fitted:
            line = bs.Line.from_dict(r2.lines[which])
            ax.plot(C, np.exp(line.at(np.log(C))), color="C1", lw=1.5, ls="--",
                    label=f"approach 2 ({r2.status}): ~ C^{getattr(r2, key):.3f}"
                    + (f" {_ci_text(r2.ci.get(key))}" if r2.ci.get(key) else ""))
            if r2.ci.get(key):
                lo, hi = line.mean_ci(np.log(C))
                _band(ax, C, np.exp(lo), np.exp(hi), "C1")
            pts = [(b.C, b.N_opt if which == "N" else b.D_opt) for b in r2.budgets if b.N_opt]
            ax.scatter(*zip(*pts), color="C1", marker="*", s=120, edgecolors="k", zorder=5,
                       label="approach 2: per-budget optima")
        if r1.fitted:
            coef = r1.N_coef if which == "N" else r1.D_coef
            ax.plot(C, coef * C ** getattr(r1, key), color="C2", lw=1.2, ls="-.",
                    label=f"approach 1 (indicative): ~ C^{getattr(r1, key):.3f}")
            pts = [(p["C"], p[which]) for p in r1.envelope if p.get("used")]
            if pts:
                ax.scatter(*zip(*pts), color="C2", s=12, label="approach 1: frontier runs")
        # Reference slopes through Epoch's Chinchilla law at the middle of the compute range.
        Cm = np.sqrt(rng[0] * rng[1])
        y_m = float(frontier(EPOCH_LAW, Cm, SIX_ND)[k])
        kap = KAPLAN_A if which == "N" else 1 - KAPLAN_A
        ax.plot(C, y_m * (C / Cm) ** 0.5, color="gray", lw=1, ls=":",
                label=f"Chinchilla: ~ C^0.5 (through Epoch's law at {Cm:.1g})")
        ax.plot(C, y_m * (C / Cm) ** kap, color="k", lw=1, ls=(0, (5, 3)), label=f"Kaplan: ~ C^{kap:.2f} (same anchor)")
        _log_axis(ax, "x")
        _log_axis(ax, "y")
        ax.set_xlabel(f"C (FLOPs, {fit.flops_convention})")
        ax.set_ylabel("N_opt (parameters)" if which == "N" else "D_opt (tokens)")
        ax.legend(fontsize=6.5)
    axN.set_title("compute-optimal model size (bands: 95% intervals)")
    axD.set_title("compute-optimal tokens")
    return _finish(fig)


def _ci_text(ci):
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


# ------------------------------------------------------------------------------- loss vs compute
def build_loss_vs_compute(fit, curves=None):
    pts = fit.points
    curves = curves or []
    if not pts and not curves:
        return "no points"
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    fig, (ax,) = new_figure()
    Ns = [p["N"] for p in pts] + [c["N"] for c in curves]
    norm = LogNorm(vmin=min(Ns), vmax=max(Ns) * 1.0001)
    cmap = colormaps["viridis"]
    for c in curves:
        ax.plot(c["C"], c["loss"], color=cmap(norm(c["N"])), lw=0.8, alpha=0.7)
    if pts:
        ax.scatter([p["C"] for p in pts], [p["loss"] for p in pts], c=[cmap(norm(p["N"])) for p in pts], s=18,
                   edgecolors="k", linewidths=0.3, zorder=4, label="final loss of each run")
    r1 = fit.approach1
    env = sorted((e["C"], e["loss"]) for e in r1.envelope)
    if env:
        cs, ls = zip(*env)
        steps = [i for i in range(len(ls)) if i == 0 or ls[i] < min(ls[:i])]
        ax.step([cs[i] for i in steps], [ls[i] for i in steps], where="post", color="crimson", lw=2,
                label=f"lower envelope ({r1.points_used} points)" + ("" if r1.status == "skipped" else ": approach 1"))
    r3 = _law3(fit)
    rng = _c_range(fit)
    if r3 and rng:
        C = np.logspace(np.log10(rng[0]), np.log10(rng[1]), 60)
        N_, D_ = frontier(r3.law, C, _relation(fit))
        ax.plot(C, predict_loss(r3.law, N_, D_), color="C0", lw=1.5, ls="--",
                label=f"approach 3 ({r3.status}): loss on its frontier")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="N")
    cb.locator = LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12)
    cb.formatter = FuncFormatter(_compact)
    cb.ax.yaxis.set_minor_formatter(NullFormatter())
    cb.update_ticks()
    _log_axis(ax, "x")
    ax.set_xlabel(f"C (FLOPs, {fit.flops_convention})")
    ax.set_ylabel("validation loss")
    ax.set_title("loss vs compute" + (" (lines: training curves)" if curves else ""))
    return _finish(fig, [ax])


# ------------------------------------------------------------------------------------ residuals
def build_residuals(fit, curves=None):
    r3 = _law3(fit)
    pts = [p for p in fit.points if p.get("approach3", True)]  # approach 3 may fit a subset (its step floor)
    if not r3 or not r3.residuals_log or len(pts) != len(r3.residuals_log):
        return "approach 3 not fitted"
    res = np.array(r3.residuals_log)
    N, D, C = (np.array([p[k] for p in pts]) for k in ("N", "D", "C"))
    fig, (a1, a2) = new_figure(2, width=5.2)
    for ax, x, lab in ((a1, N, f"N ({fit.params_convention} parameters)"), (a2, D / N, "tokens per parameter D/N")):
        sc = ax.scatter(x, res, c=np.log10(C), cmap="viridis", s=16)
        ax.axhline(0, color="k", lw=0.8)
        _log_axis(ax, "x")
        ax.set_xlabel(lab)
        ax.set_ylabel("log L - log L_hat")
    fig.colorbar(sc, ax=a2, label="log10 C")
    a1.set_title(f"approach 3 residuals (rmse {r3.rmse_log:.2g} in log L)")
    return _finish(fig)


# ------------------------------------------------------------------------------ shape / tokens
def _runs(fit, sweep):
    return [r for r in fit.runs if r.get("sweep") == sweep and r.get("status") == "completed"
            and r.get("loss") is not None]


def build_shape(fit, curves=None):
    runs = [r for r in _runs(fit, "shape") if r.get("width") and r.get("depth")]
    if not runs:
        return "no runs of the shape sweep in this folder"
    ne = np.array([float(r.get("params_non_embedding") or r.get("N")) for r in runs])
    groups = _clusters(ne)  # the sweep's target N, give or take the rounding of width and depth
    fig, (ax,) = new_figure()
    for (n, idx), col in zip(sorted(groups.items()), colors(len(groups))):
        rs = sorted((runs[i] for i in idx), key=lambda r: r["width"] / r["depth"])
        ax.plot([r["width"] / r["depth"] for r in rs], [r["loss"] for r in rs], "o-", color=col,
                label=f"N_non-emb ~ {n:.2g}")
    _log_axis(ax, "x")
    ax.set_xlabel("aspect ratio width / depth")
    ax.set_ylabel("validation loss")
    ax.set_title("shape sweep: loss vs aspect ratio at fixed non-embedding N")
    return _finish(fig, [ax])


def build_tokens(fit, curves=None):
    runs = [r for r in _runs(fit, "tokens") if r.get("N") and r.get("D")]
    if not runs:
        return "no runs of the tokens sweep in this folder"
    groups = _clusters(np.array([float(r["N"]) for r in runs]), 0.01)
    fig, (ax,) = new_figure()
    for (n, idx), col in zip(sorted(groups.items()), colors(len(groups))):
        rs = sorted((runs[i] for i in idx), key=lambda r: r["D"] / r["N"])
        ax.plot([r["D"] / r["N"] for r in rs], [r["loss"] for r in rs], "o-", color=col, label=f"N = {n:.3g}")
    ax.axvline(20, color="gray", ls=":", lw=1, label="20 tokens/parameter")
    _log_axis(ax, "x")
    ax.set_xlabel("tokens per parameter D/N")
    ax.set_ylabel("validation loss")
    ax.set_title("tokens sweep: loss vs tokens per parameter")
    return _finish(fig, [ax])


BUILDERS = {
    "isoflop.png": build_isoflop,
    "frontier.png": build_frontier,
    "loss_vs_compute.png": build_loss_vs_compute,
    "residuals.png": build_residuals,
    "shape.png": build_shape,
    "tokens.png": build_tokens,
}
PLOTS = tuple(BUILDERS)


def save_plots(fit, folder, curves=None):
    """Write every plot into folder: {name: path, or why it was left out}. One broken plot never loses the
    others (its error is returned in its place)."""
    from pathlib import Path

    out = {}
    for name, build in BUILDERS.items():
        target = Path(folder) / name
        try:
            fig = build(fit, curves)
            if isinstance(fig, str):
                target.unlink(missing_ok=True)  # a plot of an earlier fit must not outlive it
                out[name] = fig
                continue
            out[name] = save_figure(fig, target)
        except Exception as e:
            out[name] = f"plot failed: {e.__class__.__name__}: {e}"
    return out
