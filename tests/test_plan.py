"""The sweep planner without training: budget-centred ladders from one shape family, cooldown forks,
refusals that name the job and the fix, the JSON plan, and every sweep x preset composing and planning."""
import json
import math
from pathlib import Path

import pytest

from sweeps import plan as P
from tests.conftest import REPO, run_cli
from train.optim import decay_start

SWEEPS = {
    "chinchilla": ["smoke", "cpu", "gpu", "gpu-offline"],
    "shape": ["smoke", "cpu", "gpu"],
    "tokens": ["smoke", "cpu", "gpu"],
    "testtime": ["smoke", "cpu", "gpu"],
}
VOCAB = {"bytes": 256, "bpe": 4096, "gpt2": 50257}
CORPUS = 10**12  # tokens: enough for every preset, so only the design is checked here


def plan_of(sweep, preset, *overrides, unique=CORPUS, tmp="/tmp/scalelab-plan-test"):
    run, key, _, _ = P.job_config(sweep, preset, list(overrides))
    return P.plan_sweep(run, sweep, key, tmp, VOCAB[run.data.tokenizer], unique), run


@pytest.mark.parametrize("sweep, preset", [(s, p) for s, ps in SWEEPS.items() for p in ps])
def test_every_preset_of_every_sweep_composes_and_plans_cleanly(sweep, preset):
    plan, run = plan_of(sweep, preset)
    assert plan.jobs and not plan.problems, plan.problems
    assert all(c["ok"] for c in plan.checks if "evaluation" in c["check"]), plan.checks
    names = [j.name for j in plan.jobs]
    assert len(names) == len(set(names))
    for j in plan.jobs:  # every job's settings are ones a run accepts
        assert any(o == f"model.shape={j.shape.name}" for o in j.overrides)
        assert j.steps >= j.min_steps


def test_shipped_sweeps_are_the_ones_tested():
    shipped = {f.stem for f in (REPO / "conf" / "sweep").glob("*.yaml")} - {"base"}
    assert shipped == set(SWEEPS)


@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu", "gpu-offline"])
def test_ladders_are_centred_on_the_prior_and_bracket_it(preset):
    plan, run = plan_of("chinchilla", preset)
    p = run.sweep.presets[preset]
    assert len(p.budgets) >= 4 and max(p.budgets) / min(p.budgets) >= 100 or preset in ("smoke", "gpu-offline")
    for budget in p.budgets:
        ns = sorted(j.shape.params_total for j in plan.jobs if j.budget == budget)
        assert ns == sorted(set(ns))  # distinct, monotone
        base = run.gpt_config(plan.data["vocab_size"])
        # all the points asked for, or, where the width grid is too coarse for that, every family shape
        # within the ladder's span (none skipped)
        in_span = {P.family_shape(min(ns) * 10 ** (k / 100), p.family, base).params_total
                   for k in range(int(100 * math.log10(max(ns) / min(ns))) + 1)}
        assert len(ns) >= p.points - 2 or set(ns) == in_span, (budget, ns, sorted(in_span))
        ref = math.sqrt(budget / 120)
        assert min(ns) <= ref / 2 and max(ns) >= ref * 2, (budget, ns, ref)
        # centred: the geometric middle of the ladder within two grid steps of the 20-tokens/param prior
        prior = P.n_opt_prior(budget, p.tokens_per_param, p.family, base)
        middle = math.sqrt(min(ns) * max(ns))
        assert abs(math.log10(middle / prior)) <= 2 * p.step_decades + 0.05, (budget, middle, prior)


def test_family_shapes_grow_with_n_and_keep_the_aspect_ratio():
    from model.config import GPTConfig
    from train.config import ShapeFamily

    fam = ShapeFamily(aspect=64, head_dim=64, width_step=64)
    base = GPTConfig(vocab_size=50257, seq_len=1024)
    targets = [10 ** e for e in (7.5, 8, 8.5, 9)]
    shapes = [P.family_shape(n, fam, base) for n in targets]
    for n, s in zip(targets, shapes):  # hits the target as closely as the width grid allows
        assert abs(math.log10(s.params_total / n)) < 0.1, (n, s)
    assert [s.params_total for s in shapes] == sorted(s.params_total for s in shapes)
    assert [s.depth for s in shapes] == sorted(s.depth for s in shapes) and shapes[-1].depth > shapes[0].depth
    for s in shapes:
        assert s.width % 64 == 0 and s.width // s.heads == 64
        assert 0.5 < s.width / s.depth / 64 < 2  # near the family's aspect ratio


def test_min_depth_keeps_every_shape_at_or_above_it_and_is_checked():
    plan, _ = plan_of("chinchilla", "cpu", "sweep.presets.cpu.family.min_depth=2")
    depths = {j.shape.depth for j in plan.jobs}
    assert min(depths) == 2, depths
    assert min(j.shape.depth for j in plan_of("chinchilla", "cpu")[0].jobs) == 1  # the default allows depth 1
    with pytest.raises(P.PlanError, match="min_depth=0"):
        plan_of("chinchilla", "cpu", "sweep.presets.cpu.family.min_depth=0")


def test_forks_share_their_trunk_and_branch_at_the_decay_start():
    plan, run = plan_of("chinchilla", "cpu")
    preset = run.sweep.presets["cpu"]
    trunks = {j.name: j for j in plan.jobs if j.role == "trunk"}
    forks = [j for j in plan.jobs if j.role == "fork"]
    assert trunks and forks and len(forks) > len(trunks)  # shapes are shared across budgets
    for f in forks:
        t = trunks[f.trunk]
        assert t.shape == f.shape
        assert (f.lr, f.batch_tokens, f.warmup_steps, f.beta2) == (t.lr, t.batch_tokens, t.warmup_steps, t.beta2)
        assert f.branch_step == decay_start(f.steps, preset.cooldown) and f.branch_step in t.keep_steps
        assert f.tokens == f.steps * f.batch_tokens
        assert abs(f.tokens * f.shape.flops_per_token - f.budget) <= f.batch_tokens * f.shape.flops_per_token
        assert f"train.init_step={f.branch_step}" in f.overrides
        assert any(o.startswith("train.init_from=") and o.endswith(f.trunk) for o in f.overrides)
        assert f.flops_new < f.flops_train  # a fork spends only its cooldown
    for t in trunks.values():
        mine = [f for f in forks if f.trunk == t.name]
        assert t.steps == max(f.branch_step for f in mine)
        assert t.keep_steps == sorted({f.branch_step for f in mine})
        assert "optim.schedule=constant" in t.overrides
    # trunks run first, the longest first: they decide the wall time
    roles = [j.role for j in plan.jobs]
    assert roles == sorted(roles, key=lambda r: r != "trunk")
    spend = [t.flops_new for t in trunks.values()]
    assert [j.flops_new for j in plan.jobs if j.role == "trunk"] == sorted(spend, reverse=True)


def test_cosine_mode_trains_every_point_on_its_own():
    plan, run = plan_of("chinchilla", "cpu", "sweep.schedule=cosine")
    assert {j.role for j in plan.jobs} == {"run"}
    assert all("optim.schedule=cosine" in j.overrides for j in plan.jobs)
    forks, _ = plan_of("chinchilla", "cpu")
    assert len(plan.jobs) == sum(j.role == "fork" for j in forks.jobs)  # the same IsoFLOP points
    assert sum(j.flops_new for j in plan.jobs) > sum(j.flops_new for j in forks.jobs)  # and they cost more


def test_refuses_too_few_steps_naming_the_job_and_the_fix():
    plan, _ = plan_of("chinchilla", "smoke", "sweep.presets.smoke.min_steps=100000")
    assert plan.problems and all("min_steps" in p and p.startswith("job ") for p in plan.problems)


def test_refuses_data_the_corpus_does_not_hold():
    plan, _ = plan_of("chinchilla", "smoke", unique=200_000)
    bad = [p for p in plan.problems if "corpus holds" in p]
    assert bad and "data.site_packages=true" in bad[0]


def test_refuses_extreme_tokens_per_parameter():
    plan, _ = plan_of("chinchilla", "smoke", "sweep.presets.smoke.max_tokens_per_param=2")
    assert any("tokens per parameter" in p for p in plan.problems)


def test_bad_preset_values_are_named():
    with pytest.raises(P.PlanError, match="points=2"):
        plan_of("chinchilla", "smoke", "sweep.presets.smoke.points=2")
    with pytest.raises(P.PlanError, match="sweep.preset='tpu'"):
        plan_of("chinchilla", "tpu")


def test_prior_from_an_earlier_fit(tmp_path):
    fit = tmp_path / "fit.json"
    from sweeps.results import SCHEMA

    law = {"status": "ok", "N_coef": 0.05, "a": 0.5}  # N_opt = 0.05 sqrt(C)
    fit.write_text(json.dumps({"schema": SCHEMA, "approach2": law}))
    plan, run = plan_of("chinchilla", "cpu", f"sweep.presets.cpu.prior={fit}")
    for budget in run.sweep.presets["cpu"].budgets:
        ns = [j.shape.params_total for j in plan.jobs if j.budget == budget]
        assert abs(math.log10(math.sqrt(min(ns) * max(ns)) / (0.05 * budget ** 0.5))) < 0.3
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(P.PlanError, match="bad.json"):
        plan_of("chinchilla", "cpu", f"sweep.presets.cpu.prior={tmp_path / 'bad.json'}")
    # a law the fit itself did not trust is no prior
    (tmp_path / "weak.json").write_text(json.dumps({"schema": SCHEMA, "approach2": {**law, "status": "indicative"}}))
    with pytest.raises(P.PlanError, match="'indicative'"):
        plan_of("chinchilla", "cpu", f"sweep.presets.cpu.prior={tmp_path / 'weak.json'}")


def test_shape_sweep_holds_n_and_varies_depth():
    plan, run = plan_of("shape", "cpu")
    n = [j.shape.params_total for j in plan.jobs]
    assert [j.shape.depth for j in plan.jobs] == list(run.sweep.presets["cpu"].depths)
    assert max(n) / min(n) < 1.3, n


@pytest.mark.slow
def test_plan_cli_json_and_errors(tmp_path):
    p = run_cli(["-m", "sweeps.plan", "chinchilla", "--preset", "smoke", "--json"], cache_dir=tmp_path / "c",
                timeout=300)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert {"sweep", "preset", "jobs", "checks"} <= set(d) and d["sweep"] == "chinchilla" and d["preset"] == "smoke"
    keys = {"budget", "shape", "params_total", "params_non_embedding", "tokens", "tokens_per_param", "steps",
            "min_steps", "lr", "batch_tokens", "flops_train", "flops_eval", "trunk"}
    assert all(keys <= set(j) for j in d["jobs"])
    p = run_cli(["-m", "sweeps.plan", "nosuch"], timeout=120)
    assert p.returncode == 2 and "no sweep named 'nosuch'" in p.stderr and "Traceback" not in p.stderr
    p = run_cli(["-m", "sweeps.plan", "chinchilla", "--preset", "tpu"], timeout=120)
    assert p.returncode == 2 and "sweep.preset='tpu'" in p.stderr and "Traceback" not in p.stderr


def test_fmt_budget_names_are_stable():
    assert [P.fmt_budget(x) for x in (1e13, 3e13, 2.5e12, 6e11, 9.9999999e12)] == ["1e13", "3e13", "2.5e12",
                                                                                   "6e11", "1e13"]


def test_testtime_sweep_trains_a_size_ladder_at_fixed_tokens_per_param_and_samples_after():
    plan, run = plan_of("testtime", "cpu")
    preset = run.sweep.presets["cpu"]
    assert run.data.source == "tasks" and run.sweep.schedule == "cosine"
    jobs = sorted(plan.jobs, key=lambda j: j.shape.params_total)
    assert len(jobs) == len(preset.sizes) and {j.role for j in jobs} == {"run"}
    assert plan.jobs[0] is jobs[-1]  # the largest first: it decides the wall time
    for j, size in zip(jobs, sorted(preset.sizes)):
        assert "testtime.enabled=true" in j.overrides
        assert abs(math.log(j.shape.params_total / size)) < 0.4, (j.name, size)
        assert abs(j.tokens / j.shape.params_total - preset.tokens_per_param) <= j.batch_tokens / j.shape.params_total
    # training compute grows faster than N (D grows with N): bigger models cost more to train, not only to sample
    for small, big in zip(jobs, jobs[1:]):
        assert big.flops_train / small.flops_train > (big.shape.params_total / small.shape.params_total) ** 1.5
    assert not any("budget" in c["check"] for c in plan.checks)  # no IsoFLOP bracket check


def test_testtime_sizes_must_give_distinct_shapes():
    with pytest.raises(P.PlanError, match="same shape"):
        plan_of("testtime", "smoke", "sweep.presets.smoke.sizes=[10000,10001]")
    with pytest.raises(P.PlanError, match="needs a ladder of model sizes"):
        plan_of("testtime", "smoke", "sweep.presets.smoke.sizes=[]")
