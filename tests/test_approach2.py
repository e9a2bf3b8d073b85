"""Approach 2's pieces and the result it hands the report and plots, on data whose answer is known by
construction: exact parabolas in ln N around N_opt(C) = 0.1 sqrt(C) with C = 6ND (so a = b = 0.5,
N_coef = 0.1, D_coef = 1 / 0.6), and hand-made cases for budget grouping, the fitting window, the
vertex, the slice check and the per-budget variances. (Mutation testing found these untested.)"""
import math

import numpy as np
import pytest

from sweeps.approach2 import _lines, _optima, approach2, group_budgets, parabola_vertex, select_window


def exact_design(budgets=(1e16, 1e17, 1e18), sizes=5, spacing=0.2, k=0.3, noise=0.0, seed=0, spread=None):
    """(N, D, C, loss): per budget, `sizes` models `spacing` decades apart centred on N_opt = 0.1 sqrt(C);
    loss = 2 + 10 / log10(C) + k (ln N - ln N_opt)^2 (times 1 + noise * standard normal). `spread`: the
    runs' compute as factors of the budget (an IsoFLOP slice only when they are all 1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for B in budgets:
        n_opt = 0.1 * math.sqrt(B)
        for j in range(sizes):
            N = n_opt * 10 ** (spacing * (j - (sizes - 1) / 2))
            C = B * (spread[j] if spread else 1.0)
            L = (2 + 10 / math.log10(B) + k * math.log(N / n_opt) ** 2) * (1 + noise * rng.standard_normal())
            rows.append((N, C / (6 * N), C, L))
    return [np.array(v) for v in zip(*rows)]


# ------------------------------------------------------------------------------------------ grouping


def test_budgets_group_by_request_and_runs_without_one_cluster_by_compute():
    C = np.array([1e12, 1.02e12, 1.05e12, 1.06e12, 1e11, 1.01e11, 1e14])
    budget = np.array([1e12, 1e12, 1.05e12, 1.05e12, np.nan, np.nan, np.nan])
    # two requested budgets only 0.02 decades apart stay two; the unbudgeted runs form 1e11 and 1e14, and
    # every label follows compute
    assert group_budgets(C, budget).tolist() == [1, 1, 2, 2, 0, 0, 3]
    assert group_budgets(C[:4]).tolist() == [0, 0, 0, 0]  # by compute alone they are one budget
    assert group_budgets(np.array([1e10, 1e12, 1.05e12])).tolist() == [0, 1, 1]
    assert group_budgets(np.array([1e12, 1.3e12])).tolist() == [0, 1]  # 0.11 decades apart
    assert group_budgets(np.array([1e12, 1.3e12]), c_tol=0.2).tolist() == [0, 0]
    # one requested budget between two clusters of unbudgeted runs (labels must not collide), and c_tol
    # applies to the unbudgeted runs too
    nan = np.nan
    assert group_budgets(np.array([1e12, 1e12, 1e10, 1e14]), np.array([1e12, 1e12, nan, nan])).tolist() == [1, 1, 0, 2]
    assert group_budgets(np.array([1e12, 1e12, 1e13, 1.3e13]), np.array([1e12, 1e12, nan, nan]),
                         c_tol=0.2).tolist() == [0, 0, 1, 1]


def test_approach2_groups_by_the_requested_budget_and_by_c_tol():
    N, D, C, L = exact_design(budgets=(1e16, 1.05e16, 1e18))
    assert approach2(N, D, C, L, budget=C).n_budgets == 3
    assert approach2(N, D, C, L).n_budgets == 2
    N, D, C, L = exact_design(budgets=(1e16, 1.3e16, 1e18))
    assert approach2(N, D, C, L).n_budgets == 3
    assert approach2(N, D, C, L, c_tol=0.2).n_budgets == 2


# ------------------------------------------------------------------------------ window and vertex


def test_the_window_widens_to_the_nearest_size_on_a_side_it_leaves_empty():
    def window(decades, i_min, w=0.6):
        logN = np.log(1e6 * 10 ** np.asarray(decades))
        loss = np.ones(len(decades))
        loss[i_min] = 0.0
        return select_window(logN, loss, w).tolist()

    # within 0.6 decades: 0, 0.3, 0.59 (0.61 is not); nothing on the left, so the nearest there (-1.0) joins
    assert window([-1.5, -1.0, 0.0, 0.3, 0.59, 0.61, 2.0], 2) == [1, 2, 3, 4]
    assert window([-0.3, 0.0, 1.0, 1.2], 1) == [0, 1, 2]  # the same on the right
    assert window([0.0, 0.3, 0.5], 0) == [0, 1, 2]  # no model on one side: nothing to widen to
    assert window([-0.6, -0.3, 0.0, 0.3, 0.6], 2) == [0, 1, 2, 3, 4]  # exactly 0.6 decades away is inside


def test_parabola_vertex_of_an_exact_parabola_and_its_reasons():
    logN = np.log([1e6, 2e6, 4e6, 8e6])
    loss = 2.0 + 0.5 * (logN - math.log(3e6)) ** 2
    (c2, c1, c0), (x_v, loss_v), idx = parabola_vertex(logN, loss)
    assert c2 == pytest.approx(0.5) and x_v == pytest.approx(math.log(3e6)) and loss_v == pytest.approx(2.0)
    assert idx.tolist() == [1, 2, 3]  # the lowest is 4e6; 1e6 is log10(4) = 0.602 decades from it, past 0.6
    assert "at the smallest model" in parabola_vertex(logN, np.array([1.0, 2.0, 3.0, 4.0]))[1]
    assert "at the largest model" in parabola_vertex(logN, np.array([4.0, 3.0, 2.0, 1.0]))[1]
    x = np.log(1e6 * 10 ** (0.1 * np.arange(5)))
    # lowest point inside, but the points around it bend down (an M with a dip): no minimum
    assert parabola_vertex(x, np.array([0.5, 1.0, 0.4, 1.0, 0.5]), window=10)[1] == \
        "parabola opens downwards (no minimum)"
    # lowest point inside, but the losses climb steadily after it: the parabola's vertex lies below the smallest model
    assert parabola_vertex(x, np.array([0.5, 0.499, 0.6, 0.7, 0.8]), window=10)[1] == \
        "parabola vertex outside the fitted range of N"


# ---------------------------------------------------------------------------------- the result


def test_approach2_result_on_exact_parabolas():
    N, D, C, L = exact_design()
    names = [f"run{i}" for i in range(len(N))]
    r = approach2(N, D, C, L, budget=C, fpt=6 * N, names=names, predict=[1e20])
    assert r.status == "ok" and (r.n_points, r.n_budgets, r.n_budgets_used) == (15, 3, 3)
    assert r.a == pytest.approx(0.5) and r.b == pytest.approx(0.5)
    assert r.N_coef == pytest.approx(0.1) and r.D_coef == pytest.approx(1 / 0.6)
    assert set(r.ci) == {"a", "b"} and set(r.lines) == {"N", "D"}
    assert r.window_decades == 0.6 and "within 0.6 decades" in r.method and r.grouping == "by requested budget"
    assert r.interval.method.startswith("random-effects meta-regression") and r.interval.level == 0.95
    assert not any("excluded" in w for w in r.warnings)
    for i, (b, B) in enumerate(zip(r.budgets, (1e16, 1e17, 1e18))):
        n_opt = 0.1 * math.sqrt(B)
        assert b.C == pytest.approx(B) and b.budget == B and b.compute_spread == pytest.approx([1.0, 1.0])
        assert b.n_points == 5 and b.points == names[5 * i:5 * i + 5] and b.fitted == b.points
        assert b.N == pytest.approx(list(N[5 * i:5 * i + 5])) and b.loss == pytest.approx(list(L[5 * i:5 * i + 5]))
        assert b.excluded is None and b.N_opt == pytest.approx(n_opt) and b.D_opt == pytest.approx(B / (6 * n_opt))
        assert b.loss_opt == pytest.approx(2 + 10 / math.log10(B))
        assert b.tokens_per_param == pytest.approx(B / (6 * n_opt ** 2))
        assert b.parabola_lnN[0] == pytest.approx(0.3)
        assert b.fitted_N_range == pytest.approx([n_opt * 10 ** -0.4, n_opt * 10 ** 0.4])
    assert [w["window"] for w in r.window_sensitivity] == [0.4, 0.6, 0.9]
    for w in r.window_sensitivity:
        assert w["budgets_used"] == 3 and w["a"] == pytest.approx(0.5) and w["b"] == pytest.approx(0.5)
    (p,) = r.predictions
    assert (p.C, p.extrapolation) == (1e20, None)
    assert p.N_opt == pytest.approx(1e9) and p.D_opt == pytest.approx(1e10 / 0.6)
    assert p.tokens_per_param == pytest.approx(1e10 / 0.6 / 1e9)
    assert p.ci["N_opt"] == pytest.approx([1e9, 1e9], rel=1e-4) and p.ci["D_opt"] == pytest.approx([1e10 / 0.6] * 2, rel=1e-4)
    # without a requested budget the rows say none, and the grouping says how the budgets were found
    plain = approach2(N, D, C, L)
    assert all(b.budget is None for b in plain.budgets) and plain.grouping.startswith("by clusters of log10 C")
    assert plain.budgets[0].points == ["0", "1", "2", "3", "4"]


def test_three_points_per_budget_leave_no_noise_to_size_the_optima():
    N, D, C, L = exact_design(sizes=3)
    r = approach2(N, D, C, L, budget=C)
    assert r.status == "ok" and all(b.N_opt_sd_log is None for b in r.budgets)
    assert any(w.startswith("the parabolas pass exactly through their points") and "plain t interval" in w
               for w in r.warnings), r.warnings


def test_noisy_three_point_parabolas_have_no_zero_width_claim():
    N, D, C, L = exact_design(sizes=3, budgets=(1e15, 1e16, 1e17, 1e18), noise=0.01, seed=2)
    r = approach2(N, D, C, L, budget=C)
    (w,) = [w for w in r.warnings if w.startswith("the parabolas pass exactly through their points")]
    assert w.endswith("so the interval is the plain t interval of the line"), w


def test_a_window_that_loses_a_budget_reports_no_a_for_it():
    N, D, C, L = exact_design(budgets=(1e16,))
    n_opt = 0.1 * math.sqrt(1e18)
    N2 = n_opt * 10 ** np.array([-0.85, -0.5, 0.0, 0.5, 0.85])
    # an M with a dip: a parabola through the +-0.5 decades around the minimum, none through all five
    L2 = np.array([1.05, 1.2, 1.0, 1.2, 1.05])
    r = approach2(np.r_[N, N2], np.r_[D, 1e18 / (6 * N2)], np.r_[C, [1e18] * 5], np.r_[L, L2])
    assert r.n_budgets_used == 2
    assert r.window_sensitivity[2] == {"window": 0.9, "budgets_used": 1, "a": None, "b": None}
    assert all(w["a"] is not None and w["b"] is not None for w in r.window_sensitivity[:2])


def test_two_budgets_are_indicative_and_one_is_skipped_with_the_reason():
    N, D, C, L = exact_design(budgets=(1e16, 1e18))
    r = approach2(N, D, C, L, budget=C, predict=[1e20])
    assert r.status == "indicative" and not r.ci and r.reason.startswith("only 2 budgets with an interior minimum")
    assert all(w["a"] == pytest.approx(0.5) for w in r.window_sensitivity)
    assert r.predictions[0].N_opt == pytest.approx(1e9) and not r.predictions[0].ci
    N, D, C, L = exact_design(budgets=(1e16,))
    one = approach2(N, D, C, L)
    assert one.status == "skipped" and one.reason == "need at least 2 budgets with an interior minimum, have 1"
    three = approach2(N[1:4], D[1:4], C[1:4], L[1:4])
    assert three.reason == "need at least 2 budgets with an interior minimum, have 1"
    two = approach2(N[:2], D[:2], C[:2], L[:2])
    assert two.status == "skipped" and two.reason.startswith("too few points (2; need 3 per budget")
    assert "and at least 2 budgets" in two.reason


def test_a_budget_whose_runs_used_other_compute_is_no_isoflop_slice():
    spread = [0.95, 0.975, 1.0, 1.025, 1.05]
    N, D, C, L = exact_design(budgets=(1e16, 1e18), spread=spread)
    B = np.repeat([1e16, 1e18], 5)
    r = approach2(N, D, C, L, budget=B)
    assert r.status == "skipped" and r.reason == ("need at least 2 budgets with an interior minimum, have 0 (2 of 2 "
                                                  "budgets are not IsoFLOP slices under this FLOP count)")
    for b in r.budgets:
        assert b.excluded.startswith("not an IsoFLOP slice under this FLOP count: its runs' compute spans 0.95-1.05x")
    # clusters of compute are equal-compute by construction: the same runs without budgets are fitted
    assert approach2(N, D, C, L).n_budgets_used == 2


def test_an_excluded_budget_is_named_in_the_warnings():
    N, D, C, L = exact_design(budgets=(1e15, 1e16, 1e17, 1e18))
    L[15:20] = [3.0, 2.9, 2.8, 2.7, 2.6]  # the largest budget: lowest loss at its largest model
    r = approach2(N, D, C, L, budget=C)
    assert r.n_budgets_used == 3 and "1 of 4 budgets excluded (reasons in the table)" in r.warnings
    # a budget with a single run (the others failed) is listed with its requested budget, and excluded
    keep = np.r_[np.arange(15), 17]
    one = approach2(N[keep], D[keep], C[keep], L[keep], budget=C[keep])
    assert one.budgets[-1].budget == 1e18 and one.budgets[-1].n_points == 1
    assert one.budgets[-1].excluded == "fewer than 3 distinct model sizes"


def test_the_interval_level_is_passed_on():
    N, D, C, L = exact_design(budgets=(1e15, 1e16, 1e17, 1e18), noise=0.002, seed=1)
    wide = approach2(N, D, C, L, budget=C, predict=[1e20])
    narrow = approach2(N, D, C, L, budget=C, predict=[1e20], level=0.5)
    assert narrow.interval.level == 0.5
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(narrow.ci["a"]) < width(wide.ci["a"])
    for key in ("N_opt", "D_opt"):
        assert width(narrow.predictions[0].ci[key]) < width(wide.predictions[0].ci[key])
    # C = 6ND: D_opt = C / 6 N_opt, so the D line is the N line reflected, with the same weights: a + b = 1
    assert wide.a + wide.b == pytest.approx(1.0, abs=1e-9)


# ------------------------------------------------------------------------ per-budget variances


def test_flops_per_token_slope_per_budget():
    # FLOPs per token = 7 N^0.8 exactly: d ln fpt / d ln N = 0.8 whatever the budget
    N, D, C, L = exact_design(budgets=(1e16,))
    fpt = 7 * N ** 0.8
    (o,) = _optima(np.log(N), L, fpt, np.array([1e16]), [np.arange(5)], 0.6, [True])
    assert o["dlnfpt"] == pytest.approx(0.8)


def test_optima_variances_pool_the_parabolas_noise():
    """sd of ln N_opt = sqrt(quad) x s x mean loss, s^2 = sum of the relative residuals^2 over sum(n - 3);
    the D optima's variances are the N optima's times (d ln fpt / d ln N)^2."""
    def optimum(n, quad=1.0, mean_loss=2.0, dlnfpt=1.0, x=0.0):
        r = np.full(n, 0.01 if n > 3 else 0.0) * (-1) ** np.arange(n)  # 3 points: a parabola passes through them
        return {"rel_resid": r, "quad": quad, "mean_loss": mean_loss, "dlnfpt": dlnfpt,
                "N_opt": math.exp(0.5 * x), "D_opt": math.exp(0.5 * x + 1)}

    C_g = np.exp([0.0, 1.0, 2.0])
    opt = [optimum(4, x=x, dlnfpt=s) for x, s in zip(range(3), (1.0, 2.0, 0.5))]
    # 3 x 4 residuals of 0.01 over 3 x (4 - 3) = 3 degrees of freedom: s = 0.02; sd = 1 x 0.02 x 2
    lN, lD, sd = _lines(C_g, opt, [0, 1, 2])
    assert sd == pytest.approx([0.04] * 3)
    # the D line: weights 1 / (0.04^2 x (1, 4, 0.25)), exact points (no scatter beyond them)
    w = 1 / (0.04 ** 2 * np.array([1.0, 4.0, 0.25]))
    x = np.array([0.0, 1.0, 2.0])
    slope_var = w.sum() / (w.sum() * (w * x * x).sum() - (w * x).sum() ** 2)
    assert lD.tau2 == pytest.approx(0.0, abs=1e-12) and lD.cov[1][1] == pytest.approx(slope_var)
    # 4 + 3 + 3 points: 1 degree of freedom, 4 residuals of 0.01: s^2 = 4e-4 / 1, s = 0.02 again
    _, _, sd = _lines(C_g, [optimum(4, x=0), optimum(3, x=1), optimum(3, x=2)], [0, 1, 2])
    assert sd == pytest.approx([0.04] * 3)
    # 3 points each: the parabolas pass through them, no noise estimate, no variances
    assert _lines(C_g, [optimum(3, x=x) for x in range(3)], [0, 1, 2])[2] is None
