"""Held-out prediction: ``python -m sweeps.fit INPUT --holdout RULE``.

RULE (``N>1e9``, ``C>=5e19``, ``D<1e10``; ``largest`` = the largest budget) splits the points: the law is fitted
(approach 3) on the rest and predicts each held-out run's loss with a 95% prediction interval: the parametric
bootstrap's replicates of the law (parameter uncertainty) plus a fresh draw of the two-level noise (a new
budget brings its own offset).  Where the held-out runs form IsoFLOP budgets, their optimum (N_opt and the
loss there) is compared with the frontier predicted by approach 3 and approach 2 fitted on the rest.

The law's form is chosen on the training points alone ("auto", a rollout in the rule's direction): the
training points at the far end of the rule's variable are held out once more, the free and the tied law
(alpha = beta, the form Gadre et al. 2024 fit) are fitted on the others, and the form that predicts them
better is used.  Nothing about the held-out runs enters the choice.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from train.log import get_logger

from . import bootstrap as bs
from .approach2 import C_TOL_DECADES, WINDOW_DECADES, approach2, group_budgets, parabola_vertex
from .approach3 import MIN_POINTS, approach3
from .collect import FitInputError
from .law import FlopsRelation, frontier, laws_from_rows, predict_loss
from .results import Holdout, HoldoutPoint, Interval

log = get_logger("fit")

LAW_CHOICES = ("auto", "free", "tied")
_RULE = re.compile(r"^\s*(N|D|C)\s*(>=|<=|>|<)\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*$")
RULE_HELP = "VAR OP NUMBER with VAR one of N, D, C and OP one of >, >=, <, <= (e.g. 'N>1e9', 'C>=5e19'), or 'largest'"
_OPS = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}


@dataclass
class Rule:
    var: str
    op: str
    value: float

    @classmethod
    def parse(cls, text):
        m = _RULE.match(str(text))
        if not m:
            raise FitInputError(f"--holdout {text!r}: expected {RULE_HELP}")
        return cls(m.group(1), m.group(2), float(m.group(3)))

    @property
    def text(self):
        return f"{self.var}{self.op}{self.value:.4g}"

    @property
    def upward(self):
        return self.op.startswith(">")

    def select(self, ds):
        return _OPS[self.op](getattr(ds, self.var), self.value)


def largest_budget_rule(ds, c_tol=C_TOL_DECADES):
    """The rule that holds out the largest budget (a C threshold halfway, in log, to the next one), or None
    when there are fewer than 3 budgets (2 must remain to fit)."""
    labels = group_budgets(ds.C, ds.budget, c_tol)
    if labels.max() < 2:
        return None
    top, nxt = ds.C[labels == labels.max()], ds.C[labels == labels.max() - 1]
    return Rule("C", ">", float(np.sqrt(nxt.max() * top.min())))


def _extreme_group(values, upward, rel_tol=0.01):
    """Mask of the points at the far end of ``values`` (within rel_tol of the extreme value)."""
    v = np.asarray(values, dtype=float)
    ext = v.max() if upward else v.min()
    return np.abs(np.log(v / ext)) <= np.log1p(rel_tol)


def choose_law(train, rule, groups, *, grid, delta, c_tol):
    """Rollout on the training points: (chosen form, record)."""
    if rule.var == "C":
        labels = group_budgets(train.C, train.budget, c_tol)
        far = labels == (labels.max() if rule.upward else 0)
    else:
        far = _extreme_group(getattr(train, rule.var), rule.upward)
    record = {"method": f"rollout: the training points at the far end of {rule.var} ({int(far.sum())}) predicted "
                        "by each law form fitted on the others; the smaller mean |relative error| wins"}
    if far.all() or (~far).sum() < MIN_POINTS + 1:
        record["skipped"] = "too few training points for a rollout: the free law is used"
        return "free", record
    inner = train.subset(~far)
    errs = {}
    for form in ("free", "tied"):
        r = approach3(inner.N, inner.D, inner.loss, inner.C, groups=np.asarray(groups)[~far], bootstrap=0,
                      grid=grid, delta=delta, law_form=form, label=f"holdout rollout ({form} law)")
        if r.law is None:
            continue
        pred = predict_loss(r.law, train.N[far], train.D[far])
        errs[form] = float(np.mean(np.abs(pred / train.loss[far] - 1)))
    record["mean_abs_rel_error"] = errs
    chosen = min(errs, key=lambda k: (errs[k], k != "free")) if errs else "free"
    return chosen, record


def holdout(ds, rule, *, law="auto", grid="coarse", bootstrap=1000, seed=bs.DEFAULT_SEED, delta=1e-3,
            level=bs.DEFAULT_LEVEL, c_tol=C_TOL_DECADES, window=WINDOW_DECADES):
    """Fit on the points ``rule`` leaves, predict the ones it holds out: a :class:`Holdout`."""
    rule = Rule.parse(rule) if isinstance(rule, str) else rule
    if law not in LAW_CHOICES:
        raise FitInputError(f"--holdout-law {law!r}: choose from {', '.join(LAW_CHOICES)}")
    out = Holdout(rule=rule.text)
    held = rule.select(ds)
    out.n_heldout, out.n_train = int(held.sum()), int((~held).sum())
    if out.n_heldout == 0:
        out.status, out.reason = "skipped", f"the rule {rule.text} holds out no point"
        return out
    if out.n_train < MIN_POINTS + 1:
        out.status = "skipped"
        out.reason = f"the rule {rule.text} leaves {out.n_train} points to fit (need {MIN_POINTS + 1})"
        return out
    train, test = ds.subset(~held), ds.subset(held)
    groups = group_budgets(train.C, train.budget, c_tol)
    log.info(f"holdout {rule.text}: fitting on {out.n_train} points, predicting {out.n_heldout}")
    form, out.law_choice = choose_law(train, rule, groups, grid=grid, delta=delta, c_tol=c_tol) if law == "auto" \
        else (law, {"method": "given (--holdout-law)"})
    out.law_form = form
    fit = approach3(train.N, train.D, train.loss, train.C, groups=groups, bootstrap=bootstrap, seed=seed,
                    grid=grid, delta=delta, level=level, law_form=form, label=f"holdout fit ({form} law)")
    out.fit = fit
    out.approach = f"approach 3, {form} law"
    if fit.law is None:
        out.status, out.reason = "skipped", f"the law could not be fitted on the training points: {fit.reason}"
        return out
    if fit.status == "not_identified":
        out.reason = f"the law fitted on the training points is not identified: {fit.reason}"
    c_hi, c_lo = float(train.C.max()), float(train.C.min())
    beyond = max(np.log10(test.C.max() / c_hi), np.log10(c_lo / test.C.min()), 0.0)
    if beyond > 0:
        out.extrapolation = (f"held-out compute reaches {beyond:.2f} decades beyond the fitted range "
                             f"({c_lo:.3g}-{c_hi:.3g})")

    # Prediction intervals: replicate laws plus a fresh draw of both noise levels.
    center = np.log(predict_loss(fit.law, test.N, test.D))
    intervals = [None] * len(test)
    laws = _sample_laws(fit)
    if laws is not None and fit.noise and not fit.interval.withheld:
        reps = np.log(predict_loss(laws, test.N[None, :], test.D[None, :]))  # (R, m)
        noise = new_noise(bs.rng(seed + 1), fit.noise, reps.shape)
        intervals = [bs.prediction_interval(center[j], reps[:, j], noise[:, j], level) for j in range(len(test))]
        out.interval = Interval(method="bootstrap prediction interval: the law's parametric-bootstrap replicates plus "
                                "a new draw of the noise within and between budgets, each variance drawn from its "
                                "estimate's scaled inverse chi-square (its effective degrees of freedom), "
                                "Davison & Hinkley 1997, alg. 6.4", level=level, replicates=len(reps),
                                valid=len(reps), seed=seed)
    else:
        out.interval = Interval(method="none", level=level, withheld=fit.interval.withheld if fit.interval else
                                "the training fit has no interval")
    for j in range(len(test)):
        pred = float(np.exp(center[j]))
        iv = intervals[j]
        p = HoldoutPoint(name=test.names[j], N=float(test.N[j]), D=float(test.D[j]), C=float(test.C[j]),
                         loss=float(test.loss[j]), predicted=pred, rel_error=pred / float(test.loss[j]) - 1)
        if iv is not None:
            p.interval = [float(np.exp(iv[0])), float(np.exp(iv[1]))]
            p.inside = bool(p.interval[0] <= p.loss <= p.interval[1])
        out.points.append(p)
    errs = np.abs([p.rel_error for p in out.points])
    out.max_abs_rel_error, out.mean_abs_rel_error = float(errs.max()), float(errs.mean())
    inside = [p.inside for p in out.points if p.inside is not None]
    out.coverage = float(np.mean(inside)) if inside else None
    out.budgets = _heldout_budgets(train, test, fit, c_tol=c_tol, window=window, level=level)
    return out


def new_noise(gen, noise, shape):
    """(R, m) draws of a new run's log-loss noise: its own and its budget's offset.  Each replicate draws the
    two variances from their estimates' uncertainty (scaled inverse chi-square with the noise model's effective
    degrees of freedom), so that a noise level sized from a handful of budgets widens the tails as it should."""
    R = shape[0]
    var = np.zeros(R)
    for sd, df in ((noise["within_sd"], noise.get("df_within")), (noise["between_sd"], noise.get("df_between"))):
        if sd:
            df = df or 1000.0
            var += sd * sd * df / gen.chisquare(df, size=R)
    return gen.standard_normal(shape) * np.sqrt(var)[:, None]


def _sample_laws(fit):
    """The bootstrap replicates of a fitted law as broadcastable parameter arrays (or None)."""
    if not fit.samples:
        return None
    s = fit.samples
    return laws_from_rows(np.column_stack([np.log(s["A"]), np.log(s["B"]), np.log(s["E"]), s["alpha"], s["beta"]]))


def _heldout_budgets(train, test, fit, *, c_tol, window, level):
    """Held-out IsoFLOP budgets: the observed optimum against approaches 3 and 2 fitted on the training points."""
    labels = group_budgets(test.C, test.budget, c_tol)
    groups = [np.flatnonzero(labels == g) for g in range(labels.max() + 1)]
    groups = [idx for idx in groups if len(idx) >= 3]
    if not groups:
        return []
    Cs = [float(np.exp(np.mean(np.log(test.C[idx])))) for idx in groups]
    rel = FlopsRelation(train.N, train.D, train.C)
    laws = _sample_laws(fit)
    a2 = approach2(train.N, train.D, train.C, train.loss, budget=train.budget, fpt=train.fpt, c_tol=c_tol,
                   window=window, level=level, predict=Cs)
    rows = []
    for idx, C, p2 in zip(groups, Cs, a2.predictions or [None] * len(Cs)):
        row = {"C": C, "n_points": int(len(idx)), "loss_min_observed": float(test.loss[idx].min())}
        coeffs, v, _ = parabola_vertex(np.log(test.N[idx]), test.loss[idx], window)
        if coeffs is None:
            row["observed"] = v
        else:
            row.update(N_opt_observed=float(np.exp(v[0])), loss_opt_observed=float(v[1]))
        N3, D3 = (float(x) for x in frontier(fit.law, C, rel))
        row.update(N_opt_approach3=N3, loss_opt_approach3=float(predict_loss(fit.law, N3, D3)))
        if laws is not None:
            Nb, Db = (x[:, 0] for x in frontier(laws, np.array([C]), rel))
            row["N_opt_approach3_ci"] = bs.percentile_ci(Nb, level)
            row["loss_opt_approach3_ci"] = bs.percentile_ci(
                predict_loss({k: v[:, 0] for k, v in laws.items()}, Nb, Db), level)
        if p2 is not None:
            row["N_opt_approach2"] = p2.N_opt
            row["N_opt_approach2_ci"] = p2.ci.get("N_opt")
        rows.append(row)
    return rows
