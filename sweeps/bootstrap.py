"""Interval helpers shared by the approaches and the held-out prediction (numpy/scipy only).

- resampling: :func:`rng`, :func:`resample`, :func:`resample_within`;
- percentile intervals of replicates (:func:`percentile_ci`) and the minimum share of valid replicates below
  which an interval is withheld (:data:`MIN_VALID_FRACTION`);
- a straight line with its interval (:class:`Line`): least squares with a t interval, or a random-effects
  meta-regression of points with known variances (approach 2's slope across budgets);
- the two-level noise model of a fit's log residuals (:func:`mean_squares`, :func:`solve_components`,
  :func:`draw_noise`): scatter within a budget and an offset shared by a budget's runs, which the parametric
  bootstrap of approach 3 and the prediction intervals draw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_SEED = 42
DEFAULT_LEVEL = 0.95
# An interval from fewer valid replicates than this share is withheld: the replicates that failed are not
# a random subset (they are the data sets where the method breaks), so the rest would be too narrow.
MIN_VALID_FRACTION = 0.8
MIN_VALID = 10


def rng(seed=DEFAULT_SEED):
    return np.random.default_rng(seed)


def resample(gen, n):
    """Indices of a nonparametric bootstrap resample of n items (with replacement)."""
    return gen.integers(0, n, size=n)


def resample_within(gen, groups):
    """Resample indices with replacement inside each group (groups: list of index arrays)."""
    return [np.asarray(g)[gen.integers(0, len(g), size=len(g))] for g in groups]


def percentile_ci(samples, level=DEFAULT_LEVEL):
    """[low, high] percentile interval of the finite samples, or None when there are fewer than 10."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if len(s) < MIN_VALID:
        return None
    lo = 100 * (1 - level) / 2
    return [float(np.percentile(s, lo)), float(np.percentile(s, 100 - lo))]


def standard_error(samples):
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if len(s) < 2:
        return None
    with np.errstate(over="ignore"):  # a degenerate fit's replicates can reach 1e200: the SE is then inf
        return float(np.std(s, ddof=1))


def t_quantile(level, df):
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass
class Line:
    """A straight line y = slope x + intercept through points with known or unknown error variances.

    Without variances: least squares, and the t interval (k - 2 degrees of freedom) of the line and its
    slope.  With each point's error variance (approach 2's optima): a random-effects meta-regression:
    weights 1 / (variance + tau^2), tau^2 the extra scatter between points by DerSimonian and Laird's method of
    moments, and the wider of the Knapp-Hartung interval (t with k - 2 degrees of freedom, scaled by the weighted
    residual scatter) and the z interval of the known variances, as Jackson et al. (2017) recommend: the first
    sees scatter the variances do not explain, the second keeps a line from looking precise because a few points
    happened to fall close to it.
    """

    slope: float
    intercept: float
    k: int
    cov: list  # 2x2 covariance of (intercept, slope) at unit scale
    scale: float  # Knapp-Hartung's weighted residual scatter q (NaN with fewer than 3 points)
    tau2: float = 0.0
    weighted: bool = False

    @classmethod
    def fit(cls, x, y, var=None):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        k = len(x)
        X = np.column_stack([np.ones(k), x])
        tau2 = 0.0
        if var is None:
            w = np.ones(k)
        else:
            v = np.asarray(var, dtype=float)
            w0 = 1 / v
            A0 = np.linalg.inv(X.T @ (w0[:, None] * X))
            r0 = y - X @ (A0 @ X.T @ (w0 * y))
            if k > 2:
                Q = float((w0 * r0 ** 2).sum())
                c = float(w0.sum() - np.trace(A0 @ X.T @ ((w0 ** 2)[:, None] * X)))
                tau2 = max(0.0, (Q - (k - 2)) / c) if c > 0 else 0.0
            w = 1 / (v + tau2)
        A = np.linalg.inv(X.T @ (w[:, None] * X))
        b = A @ X.T @ (w * y)
        r = y - X @ b
        q = float((w * r * r).sum() / (k - 2)) if k > 2 else float("nan")
        return cls(float(b[1]), float(b[0]), k, A.tolist(), q, float(tau2), var is not None)

    @property
    def df(self):
        return self.k - 2

    @property
    def resid_sd(self):
        """Unweighted fits: the residual standard deviation; weighted ones: sqrt of Knapp-Hartung's q."""
        return float(np.sqrt(self.scale)) if np.isfinite(self.scale) else float("nan")

    def at(self, x):
        return self.intercept + self.slope * np.asarray(x, dtype=float)

    def _half_width(self, se_unit, level):
        hk = t_quantile(level, self.df) * np.sqrt(self.scale) * se_unit
        if not self.weighted:
            return hk
        from scipy.stats import norm

        return np.maximum(hk, norm.ppf(0.5 + level / 2) * se_unit)

    def slope_ci(self, level=DEFAULT_LEVEL):
        if self.df < 1:
            return None
        h = float(self._half_width(np.sqrt(self.cov[1][1]), level))
        return [self.slope - h, self.slope + h]

    def mean_ci(self, x, level=DEFAULT_LEVEL):
        """Interval of the fitted line's value at x (where the line itself may lie)."""
        if self.df < 1:
            return None
        x = np.asarray(x, dtype=float)
        A = np.asarray(self.cov)
        se = np.sqrt(A[0, 0] + 2 * A[0, 1] * x + A[1, 1] * x * x)
        h = self._half_width(se, level)
        return self.at(x) - h, self.at(x) + h

    def to_dict(self):
        return {"slope": self.slope, "intercept": self.intercept, "points": self.k, "df": self.df, "cov": self.cov,
                "scale": None if not np.isfinite(self.scale) else self.scale, "tau2": self.tau2,
                "weighted": self.weighted}

    @classmethod
    def from_dict(cls, d):
        sc = d.get("scale")
        return cls(d["slope"], d["intercept"], d["points"], d["cov"], float("nan") if sc is None else sc,
                   d.get("tau2", 0.0), d.get("weighted", False))


def mean_squares(resid, groups):
    """One-way analysis of variance of residuals by group: (mean square within, mean square between) over
    the last axis (resid may be (R, n) for R data sets).  The between one is NaN with fewer than 2 groups."""
    r = np.asarray(resid, dtype=float)
    labels = np.asarray(groups)
    uniq, inv = np.unique(labels, return_inverse=True)
    n, G = labels.size, len(uniq)
    sizes = np.bincount(inv)
    sums = np.stack([r[..., inv == g].sum(axis=-1) for g in range(G)], axis=-1)
    means = sums / sizes
    ssw = (r * r).sum(axis=-1) - (sums * means).sum(axis=-1)
    grand = r.sum(axis=-1, keepdims=True) / n
    ssb = (sizes * (means - grand) ** 2).sum(axis=-1)
    msw = ssw / (n - G) if n > G else np.full(np.shape(ssw), np.nan)
    msb = ssb / (G - 1) if G > 1 else np.full(np.shape(ssb), np.nan)
    return msw, msb


def solve_components(msw, msb, coef):
    """Within and between variances from observed mean squares and their expectations per unit variance:
    E[MSW] = cw_e s_e^2 + cw_u s_u^2, E[MSB] = cb_e s_e^2 + cb_u s_u^2 (coef = (cw_e, cw_u, cb_e, cb_u), measured by
    simulating the fit).  The between variance is clipped at 0 (then the within one is MSW / cw_e)."""
    cw_e, cw_u, cb_e, cb_u = coef
    det = cw_e * cb_u - cw_u * cb_e
    msw, msb = np.asarray(msw, dtype=float), np.asarray(msb, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        su = (cw_e * msb - cb_e * msw) / det
        se = (msw - cw_u * su) / cw_e
    clip = ~(su > 0)
    su = np.where(clip, 0.0, su)
    se = np.where(clip, msw / cw_e, se)
    return np.maximum(se, 0.0), su


def draw_noise(gen, groups, within_sd, between_sd, reps):
    """(reps, n) draws of the two-level noise for points labelled by ``groups``."""
    labels = np.asarray(groups)
    uniq, inv = np.unique(labels, return_inverse=True)
    e = gen.standard_normal((reps, len(labels))) * within_sd
    u = gen.standard_normal((reps, len(uniq))) * between_sd
    return e + u[:, inv]


def prediction_interval(center, replicate_pred, noise, level=DEFAULT_LEVEL):
    """Bootstrap prediction interval of a new observation (Davison and Hinkley 1997, alg. 6.4).

    center: the estimate at the point; replicate_pred: (R,) the refitted estimates at the point;
    noise: (R,) draws of the new observation's own noise.  The prediction error delta = replicate - (center +
    noise) mimics estimate - observation; the interval is center minus its upper and lower quantiles.
    """
    delta = np.asarray(replicate_pred, dtype=float) - (center + np.asarray(noise, dtype=float))
    delta = delta[np.isfinite(delta)]
    if len(delta) < MIN_VALID:
        return None
    lo_q, hi_q = np.percentile(delta, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [float(center - hi_q), float(center - lo_q)]
