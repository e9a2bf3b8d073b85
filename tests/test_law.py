"""The law's solvers and frontier, and the interval helpers (sweeps.law, sweeps.bootstrap)."""
import numpy as np
import pytest

from tests.sweep_factory import LAW, law_loss
from sweeps import bootstrap as bs
from sweeps.law import (FlopsRelation, HuberLogObjective, closed_form_a, fit_grid, frontier, frontier_slopes,
                        grid_starts, law_from_x, minimize_from, predict_loss, refit_batch, x_from_law)


def _design(noise=0.005, seed=0):
    rng = np.random.default_rng(seed)
    C = np.repeat(np.logspace(17, 20, 5), 9)
    N = np.sqrt(C / 120) * 10 ** np.tile(0.12 * (np.arange(9) - 4), 5)
    D = C / (6 * N)
    return N, D, C, law_loss(N, D) * np.exp(noise * rng.standard_normal(len(N)))


@pytest.mark.parametrize("law_form", ["free", "tied"])
def test_refit_batch_reaches_the_lbfgs_optimum(law_form):
    """The batched Gauss-Newton refits land where L-BFGS-B (tight tolerances) lands, data set by data set."""
    N, D, C, L = _design()
    lN, lD = np.log(N), np.log(D)
    rng = np.random.default_rng(1)
    Y = np.log(L)[None, :] + 0.005 * rng.standard_normal((12, len(N)))
    start = x_from_law(LAW)
    if law_form == "tied":
        start[4] = start[3]
    X, f = refit_batch(np.tile(start, (len(Y), 1)), lN, lD, Y, law_form=law_form)
    for i in range(len(Y)):
        obj = HuberLogObjective(lN, lD, Y[i], law_form=law_form)
        fl, xl, _ = minimize_from(obj, start, {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
        assert f[i] <= fl * (1 + 1e-6) + 1e-15
        assert np.allclose(X[i], xl, atol=5e-3)
        if law_form == "tied":
            assert X[i, 3] == X[i, 4]


def test_grid_fit_recovers_the_law_and_tied_form_has_alpha_equal_beta():
    N, D, C, L = _design(noise=0.0)
    obj = HuberLogObjective(np.log(N), np.log(D), np.log(L))
    fun, xs = fit_grid(obj, grid_starts("coarse"))
    law = law_from_x(xs[np.argmin(fun)])
    for k in ("alpha", "beta", "E"):
        assert law[k] == pytest.approx(LAW[k], rel=2e-3)
    tied = grid_starts("coarse", "tied")
    assert np.all(tied[:, 3] == tied[:, 4]) and len(tied) < len(grid_starts("coarse"))


def test_frontier_constant_k_is_chinchillas_closed_form():
    rel = FlopsRelation([1e8, 1e9], [1e10, 1e11], [6e18, 6e20])
    assert rel.constant and rel.k == pytest.approx(6.0)
    a, b = frontier_slopes(LAW, rel, 1e18, 1e22)
    assert a == pytest.approx(float(closed_form_a(LAW)), abs=1e-9) and a + b == pytest.approx(1.0)
    N, D = frontier(LAW, 1e21, rel)
    assert 6 * N * D == pytest.approx(1e21)


def test_frontier_along_a_varying_flops_per_token_minimises_the_loss():
    """With FLOPs/token per parameter falling with N, the numerical frontier is the brute-force minimum of the
    loss along C = fpt(N) D."""
    N = np.logspace(6, 8, 9)
    k = 7.5 * (N / 1e6) ** -0.04
    rel = FlopsRelation(N, np.ones_like(N), k * N)
    assert not rel.constant
    C = 3e17
    n_opt, d_opt = frontier(LAW, C, rel)
    u = np.linspace(np.log(1e6), np.log(1e8), 200001)
    loss = law_loss(np.exp(u), C / (np.exp(u) * rel.k_of(u)))
    assert n_opt == pytest.approx(np.exp(u[np.argmin(loss)]), rel=1e-3)
    assert n_opt * d_opt * rel.k_of(np.log(n_opt)) == pytest.approx(C)


def test_line_t_interval_covers_at_its_level():
    """Least squares with normal noise: the slope's t interval holds the true slope ~95% of the time."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 5, 6)
    hits = [bs.Line.fit(x, 0.5 * x + rng.standard_normal(6) * 0.1).slope_ci() for _ in range(2000)]
    cover = np.mean([lo <= 0.5 <= hi for lo, hi in hits])
    assert 0.93 < cover < 0.97


def test_meta_regression_sees_scatter_beyond_the_known_variances():
    """Points with known variances plus extra scatter between them: the interval (wider of Knapp-Hartung and
    z) still covers; with the extra scatter ignored (z alone on the known variances) it would not."""
    rng = np.random.default_rng(1)
    x = np.linspace(0, 5, 6)
    v = np.full(6, 0.05 ** 2)
    hits, z_hits = [], []
    for _ in range(2000):
        y = 0.5 * x + rng.standard_normal(6) * np.sqrt(v + 0.15 ** 2)
        line = bs.Line.fit(x, y, v)
        lo, hi = line.slope_ci()
        hits.append(lo <= 0.5 <= hi)
        se = np.sqrt(1 / np.sum((x - x.mean()) ** 2 / v))
        z_hits.append(abs(bs.Line.fit(x, y).slope - 0.5) <= 1.96 * se)
    assert 0.93 < np.mean(hits) < 0.99
    assert np.mean(z_hits) < 0.8


def test_noise_components_recover_both_levels():
    """Mean squares within and between groups, solved with their expectations, give back the two sds."""
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(40), 9)
    r = bs.draw_noise(rng, groups, 0.01, 0.02, 1)[0]
    msw, msb = bs.mean_squares(r, groups)
    n0 = 9.0
    se2, su2 = bs.solve_components(msw, msb, (1.0, 0.0, 1.0, n0))
    assert np.sqrt(se2) == pytest.approx(0.01, rel=0.1)
    assert np.sqrt(su2) == pytest.approx(0.02, rel=0.3)


def test_prediction_interval_covers_a_new_observation():
    """No parameter uncertainty, normal noise: the interval is the noise's central 95%."""
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(20000) * 0.1
    lo, hi = bs.prediction_interval(1.0, np.full(20000, 1.0), noise)
    assert lo == pytest.approx(1 - 0.196, abs=0.01) and hi == pytest.approx(1 + 0.196, abs=0.01)


def test_predict_loss_with_an_extreme_exponent_is_quiet():
    """The smoke sweep's held-out fit printed "RuntimeWarning: overflow encountered in power": bootstrap replicates
    of a law the data cannot identify reach alpha ~ 100, where N**alpha overflows; the term's limit is 0."""
    import warnings

    law = {"E": np.array([[1.8], [1.8]]), "A": np.array([[6e141], [400.0]]), "B": np.array([[2000.0], [2000.0]]),
           "alpha": np.array([[120.0], [0.34]]), "beta": np.array([[0.37], [0.37]])}
    N, D = np.array([[1.5e4, 6e4]]), np.array([[1.4e6, 3e5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        L = predict_loss(law, N, D)
    assert np.allclose(L[0], 1.8 + 2000.0 / D[0] ** 0.37)
    assert np.allclose(L[1], 1.8 + 400.0 / N[0] ** 0.34 + 2000.0 / D[0] ** 0.37)
