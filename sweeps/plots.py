"""PNG plots of a fit (matplotlib's object API on the Agg canvas: no pyplot, no global backend change).

Every function takes the fit.json dict (plus optional training curves) and a path, and returns the
path written, or a string saying why the plot was left out.
"""
from __future__ import annotations

import numpy as np

# Epoch AI's exact replication of Chinchilla's approach 3 (refdata README): C = 6ND there.
EPOCH_LAW = {"E": 1.8172, "A": 477.83, "B": 2143.4, "alpha": 0.3473, "beta": 0.3672}
KAPLAN_A = 0.73  # N_opt ~ C^0.73, D_opt ~ C^0.27 (Kaplan et al. 2020)


def _figure(ncols=1, width=6.4, height=4.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, format="png")
    return str(path)


def _logx(ax):
    """Log x axis without the crowded minor-tick labels matplotlib adds on short ranges."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


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


def _colors(n):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.1 + 0.8 * i / max(1, n - 1)) for i in range(n)]


def _law3(fit):
    r = fit.get("approach3") or {}
    return r if "alpha" in r else None


def _epoch_frontier(C):
    """N_opt, D_opt of Epoch's Chinchilla law at C (C = 6ND)."""
    L = EPOCH_LAW
    s = L["alpha"] + L["beta"]
    G = (L["alpha"] * L["A"] / (L["beta"] * L["B"])) ** (1 / s)
    return G * (C / 6) ** (L["beta"] / s), (C / 6) ** (L["alpha"] / s) / G


def _c_range(fit):
    cs = [p["C"] for p in fit.get("points", [])]
    if not cs:
        return None
    lo, hi = min(cs), max(cs)
    return lo / 2, hi * 2


# --------------------------------------------------------------------------------------- IsoFLOP
def isoflop(fit, path):
    r2 = fit.get("approach2") or {}
    budgets = r2.get("budgets") or []
    if not budgets:
        return "no IsoFLOP budgets (approach 2: " + str(r2.get("skipped", "not run")) + ")"
    fig, (ax,) = _figure()
    for b, col in zip(budgets, _colors(len(budgets))):
        N, L = np.array(b["N"]), np.array(b["loss"])
        label = f"C={b['C']:.2g}" + (" (excluded)" if "excluded" in b else "")
        if "excluded" in b:
            ax.scatter(N, L, facecolors="none", edgecolors=[col], s=28, label=label)
            continue
        ax.scatter(N, L, color=col, s=28, label=label)
        c2, c1, c0 = b["parabola_lnN"]
        lo, hi = b["fitted_N_range"]
        x = np.linspace(np.log(lo), np.log(hi), 100)
        ax.plot(np.exp(x), c2 * x * x + c1 * x + c0, color=col, lw=1.2)
        ax.scatter([b["N_opt"]], [b["loss_opt"]], marker="*", s=140, color=col, edgecolors="k", zorder=5)
    _logx(ax)
    ax.set_xlabel(f"N ({fit.get('params_convention')} parameters)")
    ax.set_ylabel("validation loss")
    ax.set_title("IsoFLOP profiles, parabolas near the minimum, vertices (*)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


# -------------------------------------------------------------------------------------- frontier
def _band(ax, C, samples_fn, color, level=0.95):
    vals = samples_fn(C)
    if vals is None or len(vals) < 10:
        return
    lo, hi = np.nanpercentile(vals, [50 * (1 - level), 100 - 50 * (1 - level)], axis=0)
    ax.fill_between(C, lo, hi, color=color, alpha=0.2, lw=0)


def frontier(fit, path):
    r1, r2, r3 = fit.get("approach1") or {}, fit.get("approach2") or {}, _law3(fit)
    rng = _c_range(fit)
    if rng is None or not any("a" in r for r in (r1, r2, r3 or {})):
        return "no fitted frontier"
    C = np.logspace(np.log10(rng[0]), np.log10(rng[1]), 60)
    fig, (axN, axD) = _figure(2)
    for which, ax in (("N", axN), ("D", axD)):
        if r3:
            k = r3["flops_relation"]["k"]
            G, a, b = r3["G"], r3["a"], r3["b"]
            y = G * (C / k) ** a if which == "N" else (C / k) ** b / G
            ci = (r3.get("ci") or {}).get("a" if which == "N" else "b")
            ax.plot(C, y, color="C0", lw=2, label=f"approach 3: {which}_opt ~ C^{a if which == 'N' else b:.3f}"
                    + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            smp = (r3.get("bootstrap") or {}).get("samples") or {}
            if smp.get("alpha"):
                A_, B_, al, be = (np.array(smp[key]) for key in ("A", "B", "alpha", "beta"))
                s = al + be
                Gs = (al * A_ / (be * B_)) ** (1 / s)

                def fn(Cv, Gs=Gs, s=s, al=al, be=be, which=which):
                    if which == "N":
                        return Gs[:, None] * (Cv[None, :] / k) ** (be / s)[:, None]
                    return (Cv[None, :] / k) ** (al / s)[:, None] / Gs[:, None]
                _band(ax, C, fn, "C0")
        if "a" in r2:
            coef, e = (r2["N_coef"], r2["a"]) if which == "N" else (r2["D_coef"], r2["b"])
            ci = r2.get("a_ci" if which == "N" else "b_ci")
            ax.plot(C, coef * C ** e, color="C1", lw=1.5, ls="--",
                    label=f"approach 2: ~ C^{e:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            smp = (r2.get("bootstrap") or {}).get("samples") or {}
            if smp.get("a"):
                sl = np.array(smp["a" if which == "N" else "b"])
                ic = np.array(smp["lnN_coef" if which == "N" else "lnD_coef"])
                _band(ax, C, lambda Cv: np.exp(ic[:, None] + sl[:, None] * np.log(Cv)[None, :]), "C1")
            pts = [(bb["C"], bb["N_opt" if which == "N" else "D_opt"]) for bb in r2["budgets"] if "N_opt" in bb]
            if pts:
                ax.scatter(*zip(*pts), color="C1", marker="*", s=120, edgecolors="k", zorder=5,
                           label="approach 2: per-budget optima")
        if "a" in r1:
            coef, e = (r1["N_coef"], r1["a"]) if which == "N" else (r1["D_coef"], r1["b"])
            ax.plot(C, coef * C ** e, color="C2", lw=1.2, ls="-.", label=f"approach 1: ~ C^{e:.3f}")
            pts = [(p["C"], p[which]) for p in r1.get("envelope", []) if p.get("used")]
            if pts:
                ax.scatter(*zip(*pts), color="C2", s=10, label="approach 1: envelope")
        # Reference slopes through Epoch's Chinchilla law at the middle of our compute range.
        Cm = np.sqrt(rng[0] * rng[1])
        n_m, d_m = _epoch_frontier(Cm)
        y_m = n_m if which == "N" else d_m
        chin, kap = 0.5, (KAPLAN_A if which == "N" else 1 - KAPLAN_A)
        ax.plot(C, y_m * (C / Cm) ** chin, color="gray", lw=1, ls=":",
                label=f"Chinchilla: ~ C^0.5 (through Epoch's law at {Cm:.1g})")
        ax.plot(C, y_m * (C / Cm) ** kap, color="k", lw=1, ls=(0, (5, 3)),
                label=f"Kaplan: ~ C^{kap:.2f} (same anchor)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"C (FLOPs, {fit.get('flops_convention')})")
        ax.set_ylabel("N_opt (parameters)" if which == "N" else "D_opt (tokens)")
        ax.legend(fontsize=6.5)
    axN.set_title("compute-optimal model size (bands: 95% bootstrap)")
    axD.set_title("compute-optimal tokens")
    return _save(fig, path)


# ------------------------------------------------------------------------------- loss vs compute
def loss_vs_compute(fit, path, curves=None):
    pts = fit.get("points") or []
    if not pts and not curves:
        return "no points"
    fig, (ax,) = _figure()
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    Ns = [p["N"] for p in pts] + [c["N"] for c in curves or []]
    norm = LogNorm(vmin=min(Ns), vmax=max(Ns) * 1.0001)
    cmap = colormaps["viridis"]
    for c in curves or []:
        ax.plot(c["C"], c["loss"], color=cmap(norm(c["N"])), lw=0.8, alpha=0.7)
    ax.scatter([p["C"] for p in pts], [p["loss"] for p in pts], c=[cmap(norm(p["N"])) for p in pts], s=18,
               edgecolors="k", linewidths=0.3, zorder=4, label="final loss of each run")
    r1 = fit.get("approach1") or {}
    env = [(e["C"], e["loss"]) for e in r1.get("envelope", []) if e.get("loss") is not None]
    if env:
        ax.plot(*zip(*env), color="crimson", lw=2.2, label="envelope of the training curves (approach 1)")
    r3 = _law3(fit)
    rng = _c_range(fit)
    if r3 and rng:
        C = np.logspace(np.log10(rng[0]), np.log10(rng[1]), 60)
        k = r3["flops_relation"]["k"]
        N_, D_ = r3["G"] * (C / k) ** r3["a"], (C / k) ** r3["b"] / r3["G"]
        L_ = r3["E"] + r3["A"] / N_ ** r3["alpha"] + r3["B"] / D_ ** r3["beta"]
        ax.plot(C, L_, color="C0", lw=1.5, ls="--", label="approach 3: loss on its frontier")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="N")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"C (FLOPs, {fit.get('flops_convention')})")
    ax.set_ylabel("validation loss")
    ax.set_title("loss vs compute" + (" (lines: training curves)" if curves else ""))
    ax.legend(fontsize=7)
    return _save(fig, path)


# ------------------------------------------------------------------------------------ residuals
def residuals(fit, path):
    r3 = _law3(fit)
    pts = fit.get("points") or []
    if not r3 or not r3.get("residuals_log") or len(pts) != len(r3["residuals_log"]):
        return "approach 3 not fitted"
    res = np.array(r3["residuals_log"])
    N = np.array([p["N"] for p in pts])
    D = np.array([p["D"] for p in pts])
    C = np.array([p["C"] for p in pts])
    fig, (a1, a2) = _figure(2, width=5.2)
    for ax, x, lab in ((a1, N, "N"), (a2, D / N, "tokens per parameter D/N")):
        sc = ax.scatter(x, res, c=np.log10(C), cmap="viridis", s=16)
        ax.axhline(0, color="k", lw=0.8)
        _logx(ax)
        ax.set_xlabel(lab)
        ax.set_ylabel("log L - log L_hat")
    fig.colorbar(sc, ax=a2, label="log10 C")
    a1.set_title(f"approach 3 residuals (rmse {r3['rmse_log']:.2g} in log L)")
    return _save(fig, path)


# ------------------------------------------------------------------------------ shape / tokens
def _runs(fit, sweep):
    return [r for r in fit.get("runs", []) if r.get("sweep") == sweep and r.get("status") == "completed"
            and r.get("loss") is not None]


def shape_sweep(fit, path):
    runs = [r for r in _runs(fit, "shape") if r.get("width") and r.get("depth")]
    if not runs:
        return "no runs of the shape sweep in this folder"
    ne = np.array([float(r.get("params_non_embedding") or r.get("N")) for r in runs])
    groups = _clusters(ne)  # the sweep's target N, give or take the rounding of width and depth
    fig, (ax,) = _figure()
    for (ne, idx), col in zip(sorted(groups.items()), _colors(len(groups))):
        rs = sorted((runs[i] for i in idx), key=lambda r: r["width"] / r["depth"])
        ax.plot([r["width"] / r["depth"] for r in rs], [r["loss"] for r in rs], "o-", color=col,
                label=f"N_non-emb ~ {ne:.2g}")
    _logx(ax)
    ax.set_xlabel("aspect ratio width / depth")
    ax.set_ylabel("validation loss")
    ax.set_title("shape sweep: loss vs aspect ratio at fixed non-embedding N")
    ax.legend(fontsize=7)
    return _save(fig, path)


def tokens_sweep(fit, path):
    runs = [r for r in _runs(fit, "tokens") if r.get("N") and r.get("D")]
    if not runs:
        return "no runs of the tokens sweep in this folder"
    groups = _clusters(np.array([float(r["N"]) for r in runs]), 0.01)
    fig, (ax,) = _figure()
    for (n, idx), col in zip(sorted(groups.items()), _colors(len(groups))):
        rs = sorted((runs[i] for i in idx), key=lambda r: r["D"] / r["N"])
        ax.plot([r["D"] / r["N"] for r in rs], [r["loss"] for r in rs], "o-", color=col, label=f"N = {n:.3g}")
    ax.axvline(20, color="gray", ls=":", lw=1, label="20 tokens/parameter")
    _logx(ax)
    ax.set_xlabel("tokens per parameter D/N")
    ax.set_ylabel("validation loss")
    ax.set_title("tokens sweep: loss vs tokens per parameter")
    ax.legend(fontsize=7)
    return _save(fig, path)


PLOTS = {
    "isoflop.png": isoflop,
    "frontier.png": frontier,
    "loss_vs_compute.png": loss_vs_compute,
    "residuals.png": residuals,
    "shape.png": shape_sweep,
    "tokens.png": tokens_sweep,
}
