"""Test-time compute analysis: estimators vs brute force, power-law fits, the frontier, testtime.json,
and the evaluation of a GPT on held-out task problems."""
import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.special import betaln

from model import GPT, GPTConfig
from model.flops import forward_flops
from sweeps.testtime import estimators as est
from sweeps.testtime import frontier as fr
from sweeps.testtime import powerlaw
from train.testtime import evaluate, stop_ids
from sweeps.testtime.record import FORMAT, build_testtime, read_testtime, write_testtime
from train.data import tasks
from train.data.tokenizer import ByteTokenizer


# ------------------------------------------------------------------------------ pass@k


def brute_pass_at_k(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_enumeration_over_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            curve = est.pass_at_k_curve([n], [c])[0]
            for k in range(1, n + 1):
                assert curve[k - 1] == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
                assert est.pass_at_k(n, c, k)[0] == pytest.approx(curve[k - 1], abs=1e-15)


def test_pass_at_k_is_unbiased_for_one_minus_q_to_the_k():
    """E over c ~ Binomial(n, p) of the estimate is exactly 1 - (1 - p)^k for every k <= n."""
    n = 12
    for p in (0.03, 0.2, 0.5, 0.9):
        weights = np.array([math.comb(n, c) * p ** c * (1 - p) ** (n - c) for c in range(n + 1)])
        curves = est.pass_at_k_curve([n] * (n + 1), list(range(n + 1)))
        expected = weights @ curves
        assert expected == pytest.approx([1 - (1 - p) ** k for k in range(1, n + 1)], abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    n, c = 1000, 3
    curve = est.pass_at_k_curve([n], [c])[0]
    for k in (1, 10, 500, 997, 998, 1000):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert curve[k - 1] == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_k_curve_marks_k_beyond_n():
    curve = est.pass_at_k_curve([3, 5], [1, 0], kmax=5)
    assert np.isnan(curve[0, 3:]).all() and not np.isnan(curve[0, :3]).any()
    assert (curve[1] == 0).all()
    with pytest.raises(ValueError, match="k must be in 1..3"):
        est.pass_at_k([3, 5], [1, 0], 4)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        est.pass_at_k_curve([3], [4])


# ------------------------------------------------------------------------------ majority@k


def brute_majority_at_k(c, wrong, none, k):
    labels = ["ok"] * c + [None] * none
    for g, m in enumerate(wrong):
        labels += [f"w{g}"] * m
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(labels)), k))
    for s in subsets:
        votes = [labels[i] for i in s if labels[i] is not None]
        if not votes:
            continue
        counts = {a: votes.count(a) for a in set(votes)}
        top = max(counts.values())
        winners = [a for a, m in counts.items() if m == top]
        if "ok" in winners:
            total += Fraction(1, len(winners))
    return float(total / len(subsets))


@pytest.mark.parametrize("c, wrong, none", [
    (0, [3], 1), (1, [], 0), (2, [2], 0), (3, [1, 1, 1], 2), (2, [3, 1], 1), (4, [4], 0),
    (1, [1, 1, 1, 1], 3), (3, [2, 2, 1], 1), (5, [], 4),
])
def test_majority_at_k_equals_enumeration_with_ties(c, wrong, none):
    n = c + sum(wrong) + none
    curve = est.majority_at_k_curve(c, wrong, none)
    assert len(curve) == n
    for k in range(1, n + 1):
        assert curve[k - 1] == pytest.approx(brute_majority_at_k(c, wrong, none, k), abs=1e-12), k
    assert curve[0] == pytest.approx(c / n)  # one sample wins exactly when it is correct


def test_majority_at_k_random_vote_patterns():
    rng = np.random.default_rng(0)
    for _ in range(15):
        c = int(rng.integers(0, 5))
        wrong = [int(m) for m in rng.integers(1, 4, size=rng.integers(0, 3))]
        none = int(rng.integers(0, 3))
        if c + sum(wrong) + none == 0:
            continue
        curve = est.majority_at_k_curve(c, wrong, none)
        for k in range(1, len(curve) + 1):
            assert curve[k - 1] == pytest.approx(brute_majority_at_k(c, wrong, none, k), abs=1e-12)


def test_majority_with_many_samples_approaches_the_plurality():
    # the correct answer is the plurality (30 of 64 votes vs 20): majority@k rises towards 1 with k
    curve = est.majority_at_k_curve(30, [20, 10, 4], 0)
    assert curve[-1] == 1.0 and curve[0] == pytest.approx(30 / 64)
    assert np.all(np.diff(curve[::2]) > -1e-12)
    # ... and falls to 0 when a wrong answer is the plurality
    assert est.majority_at_k_curve(20, [30, 10, 4], 0)[-1] == 0.0
    with pytest.raises(ValueError, match="up to 1000 samples"):
        est.majority_at_k_curve(600, [401], 0)


# ------------------------------------------------------------------------------ buckets, bootstrap


def test_difficulty_buckets_split_levels_contiguously():
    b = est.difficulty_buckets(range(2, 17))
    assert b[2] == b[6] == "2-6" and b[7] == b[11] == "7-11" and b[12] == b[16] == "12-16"
    assert est.difficulty_buckets([3, 3, 5]) == {3: "3", 5: "5"}
    assert est.bucket_indices(["a", "b", "a"]) == {"a": [0, 2], "b": [1]}


def test_mean_with_ci_covers_the_population_mean():
    rng = np.random.default_rng(1)
    hits = 0
    for rep in range(40):
        x = rng.beta(2, 5, size=(150, 1))
        lo, hi = est.mean_with_ci(x, n_boot=300, seed=rep)["ci"][0]
        hits += lo <= 2 / 7 <= hi
    assert hits >= 33  # nominal 95% of 40 = 38


# ------------------------------------------------------------------------------ power law


def test_fit_recovers_an_exact_power_law():
    ks = powerlaw.fit_grid(200)
    f = powerlaw.fit_power_law(ks, powerlaw.predict(1.7, 0.45, ks))
    assert f["a"] == pytest.approx(1.7, rel=1e-9) and f["b"] == pytest.approx(0.45, rel=1e-9)
    assert f["r2"] == pytest.approx(1.0) and f["max_rel_err"] < 1e-9


def test_fit_grid_is_dense_then_log_spaced():
    g = powerlaw.fit_grid(1000)
    assert list(g[:10]) == list(range(1, 11)) and g[-1] == 1000
    assert 25 <= len(g) <= 35 and list(powerlaw.fit_grid(7)) == list(range(1, 8))


def test_fit_refuses_unidentifiable_curves():
    assert powerlaw.fit_power_law([1, 2, 3], [1.0, 1.0, 1.0]) is None  # all solved
    assert powerlaw.fit_power_law([1, 2], [0.2, 0.3]) is None  # too few points
    assert powerlaw.fit_with_intervals(np.ones((5, 8))) is None


def population_fit(alpha, beta, n):
    """The power law that fits the exact population curve 1 - B(alpha, beta + k) / B(alpha, beta)."""
    ks = powerlaw.fit_grid(n)
    return powerlaw.fit_power_law(ks, 1 - np.exp(betaln(alpha, beta + ks) - betaln(alpha, beta)))


def test_power_law_from_beta_distributed_success_rates():
    """Schaeffer et al.'s mechanism: p_i ~ Beta(alpha, beta) gives -log pass@k ~ a k^-b with b near
    alpha. Simulated problems (p_i, then c_i ~ Binomial(n, p_i)) must give intervals that cover the
    population law in most replicates."""
    alpha, beta, n, problems = 0.4, 3.0, 128, 300
    truth = population_fit(alpha, beta, n)
    assert truth["r2"] > 0.99 and truth["b"] == pytest.approx(alpha, rel=0.25)
    rng = np.random.default_rng(0)
    cover_a = cover_b = 0
    reps = 20
    for rep in range(reps):
        c = rng.binomial(n, rng.beta(alpha, beta, size=problems))
        f = powerlaw.fit_with_intervals(est.pass_at_k_curve([n] * problems, c), n_boot=200, seed=rep)
        assert f["r2"] > 0.97
        cover_a += f["ci"]["a"][0] <= truth["a"] <= f["ci"]["a"][1]
        cover_b += f["ci"]["b"][0] <= truth["b"] <= f["ci"]["b"][1]
    assert cover_a >= 16 and cover_b >= 16, (cover_a, cover_b)


def test_a_lighter_tail_gives_a_steeper_law():
    assert population_fit(0.8, 3.0, 128)["b"] > population_fit(0.3, 3.0, 128)["b"] + 0.3


# ------------------------------------------------------------------------------ frontier


MODELS = [  # hand-made: a small and a big model, accuracy at k = 1..4
    {"run": "small", "params_total": 1e4, "train_flops": 1e12, "infer_flops_per_sample": 1e6},
    {"run": "big", "params_total": 1e5, "train_flops": 1e13, "infer_flops_per_sample": 1e7},
]
CURVES = {"small": [0.2, 0.35, 0.45, 0.52], "big": [0.5, 0.7, 0.8, 0.85]}


def test_frontier_on_a_hand_made_example():
    rows = fr.frontier_rows(MODELS, CURVES, targets=[0.5, 0.8, 0.9], queries=1e5)
    r50, r80, r90 = rows
    # target 0.5: small needs k=4: 1e12 + 1e5*4*1e6 = 1.4e12; big k=1: 1e13 + 1e5*1e7 = 1.1e13
    assert [(o["run"], o["k"]) for o in r50["options"]] == [("small", 4), ("big", 1)]
    assert r50["options"][0]["compute"] == pytest.approx(1.4e12)
    assert r50["options"][1]["compute"] == pytest.approx(1.1e13)
    assert r50["best"]["run"] == "small" and r50["winner"] == "sample_more"
    assert r50["largest"]["run"] == "big" and r50["largest"]["k"] == 1
    # break-even: 1e12 + Q*4e6 = 1e13 + Q*1e7  ->  never (the small option's inference is cheaper too)
    assert r50["break_even_queries"] is None and r50["cheaper_at_any_queries"] is True
    # target 0.8: only big (k=3) reaches it
    assert r80["best"]["run"] == "big" and r80["best"]["k"] == 3 and r80["winner"] == "largest"
    assert r80["break_even_queries"] is None and r80["cheaper_at_any_queries"] is None
    assert r90["best"] is None and r90["options"] == [] and r90["winner"] is None


def test_frontier_winner_kinds():
    curves = {"small": [0.6, 0.7], "big": [0.5, 0.7]}  # the big model is worse at k = 1
    r = fr.frontier_rows(MODELS, curves, targets=[0.55, 0.65], queries=1e5)
    assert r[0]["best"]["run"] == "small" and r[0]["largest"]["k"] == 2 and r[0]["winner"] == "smaller_anyway"
    assert r[1]["winner"] == "smaller_anyway"  # both need k = 2
    only_small = fr.frontier_rows(MODELS, {"small": [0.6], "big": [0.1]}, targets=[0.5], queries=1e5)[0]
    assert only_small["largest"] is None and only_small["winner"] == "sample_more"


def test_break_even_queries():
    models = [dict(MODELS[0]), dict(MODELS[1])]
    curves = {"small": [0.1] * 39 + [0.6], "big": [0.6]}  # small needs k = 40: 4e7 per query vs 1e7
    row = fr.frontier_rows(models, curves, targets=[0.6], queries=100)[0]
    assert row["best"]["run"] == "small"
    # 1e12 + Q*40*1e6 = 1e13 + Q*1e7  ->  Q = 9e12 / 3e7 = 3e5
    assert row["break_even_queries"] == pytest.approx(3e5) and row["cheaper_at_any_queries"] is False
    assert fr.frontier_rows(models, curves, targets=[0.6], queries=4e5)[0]["best"]["run"] == "big"


def test_default_queries_make_inference_equal_training_for_the_largest_model():
    q = fr.default_queries(MODELS)
    assert q == 1e6  # 1e13 / 1e7
    assert fr.total_compute(1e13, 1e7, 1, q) == pytest.approx(2e13)


def test_pareto_front_is_monotone_and_undominated():
    front = fr.pareto(MODELS, CURVES, queries=1e5)
    comp = [p["compute"] for p in front]
    acc = [p["accuracy"] for p in front]
    assert comp == sorted(comp) and acc == sorted(acc)
    assert (front[0]["run"], front[0]["k"]) == ("small", 1) and front[-1]["accuracy"] == 0.85
    every = [(fr.total_compute(m["train_flops"], m["infer_flops_per_sample"], k, 1e5), a)
             for m in MODELS for k, a in enumerate(CURVES[m["run"]], 1)]
    for p in front:
        assert not any(c <= p["compute"] and a > p["accuracy"] for c, a in every)


# ------------------------------------------------------------------------------ testtime.json


def synthetic_model(run, params, alpha, rng, problems=90, n=16):
    out = []
    for i in range(problems):
        level = 2 + i % 9
        c = int(rng.binomial(n, rng.beta(alpha * 3 / level, 2.0)))
        rest = n - c
        wrong = [w for w in (rest // 2, rest - rest // 2 - rest // 4) if w > 0]
        out.append({"id": f"L{level:02d}-{i:03d}", "difficulty": level, "n": n, "c": c,
                    "wrong": wrong, "none": rest - sum(wrong)})
    return {"run": run, "params_total": params, "train_flops": params * 6e6,
            "infer_flops_per_sample": params * 40.0, "problems": out}


def test_build_testtime_has_the_issue_structure(tmp_path):
    rng = np.random.default_rng(0)
    models = [synthetic_model("a", 1e4, 0.5, rng), synthetic_model("b", 1e5, 1.5, rng)]
    data = build_testtime(models, n_boot=50)
    assert data["format"] == FORMAT and data["queries"] == fr.default_queries(models)
    m = data["models"][0]
    for key in ("run", "params_total", "train_flops", "infer_flops_per_sample", "n_samples", "problems",
                "pass_at_k", "majority_at_k", "fit"):
        assert key in m
    assert set(m["problems"][0]) >= {"id", "difficulty", "n", "c"}
    assert list(m["pass_at_k"]) == [str(k) for k in range(1, 17)]
    assert set(m["fit"]) >= {"a", "b", "ci", "r2"} and set(m["fit"]["ci"]) == {"a", "b"}
    # the numbers are recomputable from the stored counts
    n = [p["n"] for p in m["problems"]]
    c = [p["c"] for p in m["problems"]]
    assert m["pass_at_k"]["4"] == pytest.approx(est.pass_at_k(n, c, 4).mean())
    lo, hi = m["pass_at_k_ci"]["4"]
    assert lo < m["pass_at_k"]["4"] < hi
    assert list(m["by_bucket"]) == ["2-4", "5-7", "8-10"]
    assert sum(b["problems"] for b in m["by_bucket"].values()) == 90
    buckets = {(r["metric"], r["bucket"]) for r in data["frontier"]}
    assert ("pass_at_k", "all") in buckets and ("majority_at_k", "8-10") in buckets
    path = write_testtime(tmp_path / "testtime.json", data)
    back = read_testtime(path)
    assert back["models"][1]["pass_at_k"] == pytest.approx(data["models"][1]["pass_at_k"])
    json.loads(path.read_text())  # strict JSON: no NaN


def test_build_testtime_without_votes_skips_majority():
    rng = np.random.default_rng(0)
    m = synthetic_model("a", 1e4, 0.5, rng)
    for p in m["problems"]:
        del p["wrong"], p["none"]
    data = build_testtime([m], n_boot=20, queries=10)
    assert "majority_at_k" not in data["models"][0] and data["queries_rule"] == "given"
    assert {r["metric"] for r in data["frontier"]} == {"pass_at_k"}


# ------------------------------------------------------------------------------ evaluation


SPEC = tasks.TaskSpec(min_terms=2, max_terms=5, heldout_per_level=3)


class Oracle(torch.nn.Module):
    """A stand-in for a GPT that answers every task prompt with `answer(problem value)`: it keeps the
    tokens it has seen (rows repeated like the sampler's cache) and emits the answer byte by byte.
    With coin=True its first answer byte is a fair coin between the right one and "x" (no answer)."""

    def __init__(self, answer, coin=False):
        super().__init__()
        self.config = GPTConfig(vocab_size=256, seq_len=64, width=32, depth=1, heads=2)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.answer, self.coin = answer, coin

    def forward(self, idx, targets=None, return_logits=False, cache=None):
        if cache.pos == 0:
            self.seen = idx
        else:
            if self.seen.shape[0] != idx.shape[0]:
                self.seen = self.seen.repeat_interleave(idx.shape[0] // self.seen.shape[0], dim=0)
            self.seen = torch.cat([self.seen, idx], dim=1)
        cache.advance(idx.shape[1])
        logits = torch.full((idx.shape[0], idx.shape[1], 256), -1e9)
        for r, row in enumerate(self.seen.tolist()):
            text = bytes(row).decode()
            question, _, so_far = text.rpartition("\n")[2].partition("=")
            if not question:  # this row has answered: keep it quiet
                logits[r, -1, 10] = 0.0
                continue
            target = self.answer(eval(question)) + "\n"  # noqa: S307 (digits and signs)
            nxt = target[len(so_far)] if target.startswith(so_far) else "\n"
            logits[r, -1, ord(nxt)] = 0.0
            if self.coin and not so_far:
                logits[r, -1, ord("x")] = 0.0
        return None, logits


@pytest.mark.parametrize("answer, expect", [
    (lambda v: str(v), "all"), (lambda v: str(v + 1), "wrong"), (lambda v: "x", "none"),
])
def test_evaluate_counts_through_the_checker(answer, expect):
    problems = tasks.heldout_problems(SPEC)
    res = evaluate(Oracle(answer), ByteTokenizer(), problems, n_samples=3, seed=0)
    assert [r["id"] for r in res["problems"]] == [p.id for p in problems]
    for r, p in zip(res["problems"], problems):
        assert r["n"] == 3 and r["difficulty"] == p.difficulty
        if expect == "all":
            assert r["c"] == 3 and r["wrong"] == [] and r["majority"] == p.answer and r["majority_correct"]
        elif expect == "wrong":
            assert r["c"] == 0 and r["wrong"] == [3] and r["majority"] == p.answer + 1
        else:
            assert r["c"] == 0 and r["none"] == 3 and r["majority"] is None


def test_evaluate_counts_follow_the_samples_and_the_seed():
    problems = tasks.heldout_problems(SPEC)
    runs = [evaluate(Oracle(str, coin=True), ByteTokenizer(), problems, n_samples=40, seed=s) for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0]["problems"] != runs[2]["problems"]
    c = np.array([r["c"] for r in runs[0]["problems"]])
    assert all(r["c"] + r["none"] == 40 and r["wrong"] == [] for r in runs[0]["problems"])
    assert abs(c.mean() - 20) < 4 and c.min() > 5 and c.max() < 35  # Binomial(40, 1/2) per problem


def test_evaluate_a_tiny_random_gpt_is_in_range_and_deterministic():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, seq_len=48, width=32, depth=2, heads=2, kernels="torch")
    model = GPT(cfg)
    problems = tasks.heldout_problems(SPEC)
    tok = ByteTokenizer()
    a = evaluate(model, tok, problems, n_samples=5, seed=1)
    b = evaluate(model, tok, problems, n_samples=5, seed=1)
    assert a == b
    for r in a["problems"]:
        assert 0 <= r["c"] <= r["n"] == 5 and r["c"] + sum(r["wrong"]) + r["none"] == 5
        assert r["completion_tokens"] <= 5 * a["settings"]["max_new_tokens"]
    # FLOPs per sample: every sample pays its prompt and its own tokens
    expected = np.mean([forward_flops(cfg, 0, r["prompt_tokens"]) for r in a["problems"]])
    assert a["prompt_flops_per_sample"] == pytest.approx(expected)
    assert a["infer_flops_per_sample"] > a["prompt_flops_per_sample"]


def test_stop_ids_for_bytes_is_the_newline():
    assert stop_ids(ByteTokenizer()) == [10]
