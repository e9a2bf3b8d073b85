"""The parametric law L(N, D) = E + A / N^alpha + B / D^beta: Epoch AI's objective, two solvers, the frontier.

Log parametrisation (Epoch AI's replication of Chinchilla, Besiroglu et al. 2024): x = (a, b, e, alpha, beta)
with A = e^a, B = e^b, E = e^e and

    log L_hat = logsumexp(a - alpha log N,  b - beta log D,  e).

The objective is the Huber loss (delta 1e-3) of log L - log L_hat SUMMED over the points (averaging makes
L-BFGS-B stop early).  Two solvers minimise it:

- :func:`fit_grid`: scipy's L-BFGS-B (analytic gradient) from every start of a grid; the point estimate, as
  Epoch did it.
- :func:`refit_batch`: damped Gauss-Newton on the Huber weights (iteratively reweighted least squares) for
  many data sets at once, from nearby starts: bootstrap replicates and refits.  One numpy pass serves every
  replicate, so a thousand replicates cost about what ten L-BFGS-B refits do; it reaches the same optimum
  (tests/test_law.py).

Law forms: ``free`` (five parameters) and ``tied`` (alpha = beta, the form Gadre et al. 2024 fit: four
parameters, so a = 1/2 by construction; used for loss prediction, not for the allocation exponent).

Frontier: N_opt(C) minimises L(N, C / fpt(N)) where fpt(N) is the FLOPs per token at size N under the fit's
FLOP convention (:class:`FlopsRelation`).  Under C = k N D with one k this is Chinchilla's closed form
N_opt = G (C/k)^a with a = beta/(alpha+beta); with the exact count (fpt/N varies from shape to shape at small
scale) it is solved numerically along the sampled shapes' FLOPs per token.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3
LAW_FORMS = ("free", "tied")
PARAMS = ("a", "b", "e", "alpha", "beta")

# Epoch AI's grid of starting points (their "replicate exactly" cell): 5*5*5*6*6 = 4500 starts.
EPOCH_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
# A 432-start grid for quick looks, held-out fits and tests (~10x faster); the default is Epoch's.
COARSE_GRID = {
    "alpha": (0.25, 0.5, 1.0),
    "beta": (0.25, 0.5, 1.0),
    "e": (-1.0, 0.0, 1.0),
    "a": (0.0, 5.0, 10.0, 20.0),
    "b": (0.0, 5.0, 10.0, 20.0),
}
GRIDS = {"epoch": EPOCH_GRID, "coarse": COARSE_GRID}


def grid_starts(grid=None, law_form="free"):
    """Starting points as rows (a, b, e, alpha, beta), iterated in Epoch's order (alpha, beta, e, a, b).

    grid: None or "epoch" (Epoch's 4,500 starts), "coarse", or a dict of values per parameter.
    For the tied form beta takes alpha's value (duplicate rows removed, order kept).
    """
    g = GRIDS[grid or "epoch"] if grid is None or isinstance(grid, str) else grid
    rows = [(a, b, e, al, al if law_form == "tied" else be) for al, be, e, a, b in
            itertools.product(g["alpha"], g["beta"], g["e"], g["a"], g["b"])]
    if law_form == "tied":
        rows = list(dict.fromkeys(rows))
    return np.array(rows, dtype=float)


# ------------------------------------------------------------------------------------ the objective
def _terms(x, lN, lD):
    """log L_hat and the softmax weights of its three terms, for x of shape (5,) or (R, 5)."""
    x = np.asarray(x, dtype=float)
    a, b, e, al, be = (x[..., i, None] for i in range(5))
    t0 = a - al * lN
    t1 = b - be * lD
    t2 = np.broadcast_to(e, t0.shape)
    m = np.maximum(np.maximum(t0, t1), t2)
    x0, x1, x2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(t2 - m)
    s = x0 + x1 + x2
    return m + np.log(s), x0 / s, x1 / s, x2 / s


def huber(r, delta=HUBER_DELTA):
    """Summed Huber loss over the last axis."""
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum(axis=-1)


class HuberLogObjective:
    """Summed Huber loss of log-space residuals and its analytic gradient, for x = (a, b, e, alpha, beta)
    (or, tied, x = (a, b, e, alpha))."""

    def __init__(self, logN, logD, logL, delta=HUBER_DELTA, law_form="free"):
        self.lN = np.ascontiguousarray(logN, dtype=float)
        self.lD = np.ascontiguousarray(logD, dtype=float)
        self.lL = np.ascontiguousarray(logL, dtype=float)
        self.delta = float(delta)
        self.tied = law_form == "tied"

    def full(self, x):
        """The five-parameter vector of x."""
        x = np.asarray(x, dtype=float)
        return np.append(x, x[3]) if self.tied and len(x) == 4 else x

    def predict_log(self, x):
        return _terms(self.full(x), self.lN, self.lD)[0]

    def __call__(self, x):
        f, p0, p1, p2 = _terms(self.full(x), self.lN, self.lD)
        r = f - self.lL
        d = self.delta
        w = np.clip(r, -d, d)  # dHuber/dr
        g0, g1 = w * p0, w * p1
        grad = np.array([g0.sum(), g1.sum(), (w * p2).sum(), -(g0 * self.lN).sum(), -(g1 * self.lD).sum()])
        if self.tied:
            grad = np.append(grad[:3], grad[3] + grad[4])
        return float(huber(r, d)), grad


def minimize_from(obj, x0, options=None):
    x0 = np.asarray(x0, dtype=float)
    if obj.tied:
        x0 = x0[:4]
    r = minimize(obj, x0, jac=True, method="L-BFGS-B", options=options or {})
    return float(r.fun), obj.full(r.x), bool(r.success)


def fit_grid(obj, starts, progress=None):
    """L-BFGS-B from every start (rows of 5). Returns (objective values, solutions as rows of 5) in start order.

    progress(done, total) is called now and then (the caller decides what to print)."""
    fun = np.empty(len(starts))
    xs = np.empty((len(starts), 5))
    step = max(1, len(starts) // 4)
    for i, s in enumerate(starts):
        f, x, _ = minimize_from(obj, s)
        fun[i] = f if np.isfinite(f) else np.inf
        xs[i] = x
        if progress and (i + 1) % step == 0 and i + 1 < len(starts):
            progress(i + 1, len(starts))
    return fun, xs


def refit_batch(starts, lN, lD, Y, delta=HUBER_DELTA, law_form="free", max_iter=400, tol=1e-11):
    """Minimise the summed Huber objective for many data sets at once.

    starts: (R, 5) starting points; lN, lD: (n,) shared design; Y: (R, n) log losses (one data set per row)
    or, for resampled designs, lN/lD may also be (R, n).  Damped Gauss-Newton on the Huber IRLS weights
    (Levenberg-Marquardt, a step kept only when it lowers the objective).  Returns (X (R, 5), objective (R,)).
    """
    X = np.array(starts, dtype=float)
    Y = np.asarray(Y, dtype=float)
    R = len(X)
    lN = np.broadcast_to(np.asarray(lN, dtype=float), Y.shape)
    lD = np.broadcast_to(np.asarray(lD, dtype=float), Y.shape)
    tied = law_form == "tied"
    if tied:
        X[:, 4] = X[:, 3]
    k = 4 if tied else 5
    eye = np.eye(k)
    f, p0, p1, p2 = _terms(X, lN, lD)
    r = f - Y
    obj = huber(r, delta)
    lam = np.full(R, 1e-3)
    stall = np.zeros(R, dtype=int)
    active = np.isfinite(obj)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        ri = r[idx]
        cols = [p0[idx], p1[idx], p2[idx], -p0[idx] * lN[idx]]
        cols.append(-p0[idx] * lN[idx] - p1[idx] * lD[idx] if tied else -p1[idx] * lD[idx])
        if tied:
            cols.pop(3)
        J = np.stack(cols, axis=-1)
        w = np.where(np.abs(ri) <= delta, 1.0, delta / np.maximum(np.abs(ri), 1e-300))
        JW = J * w[..., None]
        H = np.einsum("rni,rnj->rij", JW, J)
        g = np.einsum("rni,rn->ri", JW, ri)
        dg = np.diagonal(H, axis1=1, axis2=2)
        Hd = H + lam[idx, None, None] * eye * dg[:, :, None] + (1e-12 * (1 + dg.max(axis=1)))[:, None, None] * eye
        try:
            step = np.linalg.solve(Hd, -g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.einsum("rij,rj->ri", np.linalg.pinv(Hd), -g)
        if tied:
            step = np.concatenate([step, step[:, 3:4]], axis=1)
        Xn = X[idx] + step
        with np.errstate(over="ignore", invalid="ignore"):
            fn, q0, q1, q2 = _terms(Xn, lN[idx], lD[idx])
            rn = fn - Y[idx]
            on = huber(rn, delta)
        better = np.isfinite(on) & (on < obj[idx])
        rel = (obj[idx] - on) / np.maximum(obj[idx], 1e-300)
        b = idx[better]
        X[b], r[b], obj[b] = Xn[better], rn[better], on[better]
        p0[b], p1[b], p2[b] = q0[better], q1[better], q2[better]
        lam[idx] = np.where(better, np.maximum(lam[idx] / 5, 1e-12), lam[idx] * 10)
        stall[idx] = np.where(better & (rel < tol), stall[idx] + 1, np.where(better, 0, stall[idx]))
        active[idx] = (stall[idx] < 3) & (lam[idx] < 1e12)
    return X, obj


# ------------------------------------------------------------------------------------------ the law
def law_from_x(x):
    """The law's parameters (plain floats) from the log-parametrised vector (a, b, e, alpha, beta)."""
    a, b, e, al, be = (float(v) for v in x)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": al, "beta": be}


def x_from_law(law):
    return np.array([np.log(law["A"]), np.log(law["B"]), np.log(law["E"]), law["alpha"], law["beta"]])


def laws_from_rows(X):
    """Parameter arrays (shape (R, 1), ready to broadcast against C or N) from rows of x."""
    X = np.asarray(X, dtype=float)
    return {"A": np.exp(X[:, 0:1]), "B": np.exp(X[:, 1:2]), "E": np.exp(X[:, 2:3]),
            "alpha": X[:, 3:4], "beta": X[:, 4:5]}


def predict_loss(law, N, D):
    N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
    # a bootstrap replicate of an unidentified law can have an exponent near 100: N**alpha overflows to inf and
    # its term is 0, the right limit, so the overflow is not worth a RuntimeWarning on the user's console
    with np.errstate(over="ignore"):
        return law["E"] + law["A"] / N ** law["alpha"] + law["B"] / D ** law["beta"]


def closed_form_a(law):
    """beta / (alpha + beta): N_opt's exponent under C = k N D with one k (NaN when not positive)."""
    al, be = law["alpha"], law["beta"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((al > 0) & (be > 0), be / (al + be), np.nan)


class FlopsRelation:
    """FLOPs per token as a function of N under the fit's FLOP convention, read off the fitted points.

    When C / (N D) is the same for every point (C = 6ND data, or the 6n convention) the relation is one
    constant k.  Otherwise (the exact count: embeddings, the output head and attention make k = fpt / N vary
    from shape to shape at small scale) ln k is fitted as a straight line in ln N over the sampled shapes (one
    shape family: a smooth trend, so the frontier has no kinks) and held at its end values beyond them.
    """

    def __init__(self, N, D, C=None):
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        ratio = np.full(len(N), 6.0) if C is None else np.asarray(C, dtype=float) / (N * D)
        self.k_min, self.k_max = float(np.min(ratio)), float(np.max(ratio))
        self.k = float(np.median(ratio))
        self.constant = self.k_max / self.k_min < 1.001
        lN, lk = np.log(N), np.log(ratio)
        self._range = (float(lN.min()), float(lN.max()))
        if not self.constant and lN.max() > lN.min():
            self._line = np.polyfit(lN, lk, 1)
        else:
            self._line = np.array([0.0, float(np.log(self.k))])
        if C is None:
            self.description = "C = 6 N D (no compute given)"
        elif self.constant:
            self.description = f"C = k N D with k = {self.k:.4g} for every point"
        else:
            self.description = (f"C = FLOPs/token(N) x D: FLOPs/token per parameter ({self.k_min:.3g}-{self.k_max:.3g} "
                                f"over the points) fitted as k = {np.exp(self._line[1]):.3g} N^{self._line[0]:.3f} "
                                "across the sampled shapes, held at its end values beyond them")

    def k_of(self, lN):
        if self.constant:
            return np.full(np.shape(lN), self.k)
        return np.exp(np.polyval(self._line, np.clip(lN, *self._range)))

    def to_dict(self):
        return {"kind": "constant" if self.constant else "per-size", "k": self.k, "k_min": self.k_min,
                "k_max": self.k_max, "k_vs_N": None if self.constant else [float(v) for v in self._line],
                "description": self.description}


def frontier(law, C, rel):
    """(N_opt, D_opt) at compute C for one law or arrays of laws (values shaped (R, 1)), under ``rel``."""
    C = np.asarray(C, dtype=float)
    al, be = np.asarray(law["alpha"], float), np.asarray(law["beta"], float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = al + be
        lG = (np.log(al) + np.log(law["A"]) - np.log(be) - np.log(law["B"])) / s
        a = be / s
        if rel.constant:
            lNo = lG + a * np.log(C / rel.k)
            return np.exp(lNo), C / (rel.k * np.exp(lNo))
        # Numerically: the loss along fpt(N) D = C is unimodal in log N; golden-section search around the
        # closed form at the median k.
        u0 = lG + a * np.log(C / rel.k)
        lo, hi = u0 - 4.0, u0 + 4.0
        gr = (np.sqrt(5) - 1) / 2

        def loss(u):
            return law["A"] * np.exp(-al * u) + law["B"] * (C / (np.exp(u) * rel.k_of(u))) ** (-be)

        c, d = hi - gr * (hi - lo), lo + gr * (hi - lo)
        fc, fd = loss(c), loss(d)
        for _ in range(60):
            left = fc < fd  # the minimum lies in [lo, d]
            hi = np.where(left, d, hi)
            lo = np.where(left, lo, c)
            c_new = np.where(left, hi - gr * (hi - lo), d)
            d_new = np.where(left, c, lo + gr * (hi - lo))
            fc, fd = np.where(left, loss(c_new), fd), np.where(left, fc, loss(d_new))
            c, d = c_new, d_new
        u = (lo + hi) / 2
        return np.exp(u), C / (np.exp(u) * rel.k_of(u))


def frontier_slopes(law, rel, C_lo, C_hi, points=17):
    """(a, b): least-squares slopes of ln N_opt and ln D_opt against ln C over [C_lo, C_hi] (arrays of laws ok)."""
    C = np.exp(np.linspace(np.log(C_lo), np.log(C_hi), points))
    N, D = frontier(law, C, rel)
    x = np.log(C) - np.log(C).mean()
    den = (x * x).sum()
    with np.errstate(invalid="ignore"):
        a = (np.log(N) * x).sum(axis=-1) / den
        b = (np.log(D) * x).sum(axis=-1) / den
    return a, b
