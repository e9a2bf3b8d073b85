"""lr schedules (train.optim.Schedule) and the size rules (train/rules.py), checked against values worked out
by hand here (not read back from the code), plus monotonicity and boundaries."""
import math
from types import SimpleNamespace

import pytest

from model.config import ConfigError
from train import rules
from train.optim import Schedule, decay_start


def lrs(schedule: Schedule) -> list[float]:
    return [schedule(step) for step in range(schedule.steps)]


# ------------------------------------------------------------------------------------- schedules


def test_warmup_is_linear_to_the_peak():
    s = Schedule("constant", peak=0.8, steps=10, warmup=4)
    assert lrs(s)[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8])


def test_constant_is_the_peak_after_warmup():
    s = Schedule("constant", peak=0.3, steps=50, warmup=5, min_ratio=0.1)
    assert lrs(s)[5:] == [0.3] * 45


def test_cosine_starts_at_the_peak_halves_midway_and_ends_at_the_floor():
    # 10 steps after 1 warmup step: progress = (step - 1) / 9 runs 0 .. 1 over steps 1 .. 10
    s = Schedule("cosine", peak=2.0, steps=11, warmup=1, min_ratio=0.1)
    v = lrs(s)
    assert v[1] == pytest.approx(2.0)
    assert v[-1] == pytest.approx(0.2)  # the floor, at the last step
    # step 4: progress 1/3, cos(pi/3) = 0.5 -> 0.2 + 1.8 * 0.75
    assert v[4] == pytest.approx(0.2 + 1.8 * 0.75)
    assert all(a >= b for a, b in zip(v[1:], v[2:]))


def test_cosine_floor_zero():
    v = lrs(Schedule("cosine", peak=1.0, steps=21, warmup=0, min_ratio=0.0))
    assert v[0] == pytest.approx(1.0) and v[10] == pytest.approx(0.5) and v[-1] == pytest.approx(0.0, abs=1e-12)


def test_wsd_decays_over_exactly_the_last_fraction_linear():
    s = Schedule("wsd", peak=1.0, steps=100, warmup=10, min_ratio=0.1, wsd_decay=0.2, decay_shape="linear")
    v = lrs(s)
    assert decay_start(100, 0.2) == 80
    assert v[10:80] == [1.0] * 70  # stable phase
    assert sum(1 for x in v[10:] if x < 1.0) == 20  # exactly the last 20% decays
    # decay step k = 1..20 (steps 80..99): 1 - 0.9 * k / 20
    assert v[80] == pytest.approx(1 - 0.9 / 20)
    assert v[89] == pytest.approx(1 - 0.9 * 10 / 20)
    assert v[99] == pytest.approx(0.1)


def test_wsd_sqrt_shape_is_one_minus_sqrt_to_zero():
    s = Schedule("wsd", peak=2.0, steps=40, warmup=0, min_ratio=0.0, wsd_decay=0.25, decay_shape="sqrt")
    v = lrs(s)
    assert v[:30] == [2.0] * 30
    # the last 10 steps: lr = 2 (1 - sqrt(k / 10)), k = 1..10
    for k in range(1, 11):
        assert v[29 + k] == pytest.approx(2.0 * (1 - math.sqrt(k / 10)))
    assert v[-1] == 0.0
    # 1 - sqrt decays faster early than linear would
    linear = lrs(Schedule("wsd", peak=2.0, steps=40, min_ratio=0.0, wsd_decay=0.25))
    assert all(a <= b for a, b in zip(v[30:], linear[30:])) and v[31] < linear[31]


@pytest.mark.parametrize("steps, frac, decaying", [(7, 0.2, 1), (10, 0.2, 2), (10, 0.01, 1), (10, 1.0, 10),
                                                    (1000, 0.2, 200), (33, 0.5, 16)])
def test_wsd_decay_length_rounds_and_is_at_least_one(steps, frac, decaying):
    # round half to even: 33 x 0.5 = 16.5 -> 16
    assert steps - decay_start(steps, frac) == decaying
    v = lrs(Schedule("wsd", peak=1.0, steps=steps, min_ratio=0.5, wsd_decay=frac))
    assert sum(1 for x in v if x < 1.0) == decaying and v[-1] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ the rules


def test_deepseek_rules_hand_values():
    # 0.3118 C^-0.125 at C = 1e16 is 0.3118 x 1e-2; 0.2920 C^0.3271 at C = 1e10 is 0.2920 x 10^3.271
    assert rules.lr_rule("deepseek", 123, 1e16) == pytest.approx(0.003118)
    assert rules.lr_rule("deepseek", 10**9, 1e8) == pytest.approx(0.03118)  # N plays no part
    assert rules.batch_tokens_rule("deepseek", 123, 1e10) == pytest.approx(0.2920 * 1866.380, rel=1e-6)


def test_porian_rules_hand_values():
    # 3.7 N^-0.36 at N = 1e6 is 3.7 x 10^-2.16; 0.00037 N^0.703 sequences of 2048 at N = 1e8 is 0.00037 x 10^5.624
    assert rules.lr_rule("porian", 10**6, 1.0) == pytest.approx(3.7 * 0.0069183, rel=1e-4)
    assert rules.batch_tokens_rule("porian", 10**8, 1.0) == pytest.approx(0.00037 * 420726.6 * 2048, rel=1e-5)


def test_size_rules_are_deepseek_at_the_compute_optimal_budget_and_ignore_the_budget():
    # N = 1e5: C* = 120 x 1e10 = 1.2e12 (6 N D at D = 20 N); DeepSeek there: 0.3118 x 1.2e12^-0.125 ...
    assert rules.compute_optimal_budget(10**5) == pytest.approx(1.2e12)
    assert rules.lr_rule("size", 10**5, 1.0) == pytest.approx(0.3118 * 1.2e12 ** -0.125)
    assert rules.batch_tokens_rule("size", 10**5, 1.0) == pytest.approx(0.2920 * 1.2e12 ** 0.3271)
    for budget in (1e8, 1e12, 1e20):  # the run's budget plays no part: one trunk serves every budget
        assert rules.lr_rule("size", 10**5, budget) == rules.lr_rule("size", 10**5, 1.0)
        assert rules.batch_tokens_rule("size", 10**5, budget) == rules.batch_tokens_rule("size", 10**5, 1.0)
    # larger models: smaller lr (N^-0.25), larger batch (N^0.654)
    assert rules.lr_rule("size", 16 * 10**5, 1.0) == pytest.approx(rules.lr_rule("size", 10**5, 1.0) / 2)
    assert rules.batch_tokens_rule("size", 4 * 10**5, 1.0) == pytest.approx(
        rules.batch_tokens_rule("size", 10**5, 1.0) * 4 ** 0.6542, rel=1e-6)


def test_init_std_rule_is_gpt2_at_its_width_and_scales_as_one_over_sqrt_width():
    assert rules.init_std_rule(768) == pytest.approx(0.02)
    assert rules.init_std_rule(192) == pytest.approx(0.04)
    assert rules.init_std_rule(3072) == pytest.approx(0.01)


def test_a_null_init_std_in_the_config_takes_the_rule_and_a_given_one_wins():
    from train.config import resolve_model
    from model.config import GPTConfig
    base = {f: getattr(GPTConfig(), f) for f in GPTConfig.__dataclass_fields__}
    assert resolve_model({**base, "width": 48, "heads": 2, "init_std": None, "vocab_size": None}, 256).init_std \
        == pytest.approx(0.08)
    assert resolve_model({**base, "width": 48, "heads": 2, "init_std": 0.5, "vocab_size": None}, 256).init_std == 0.5


def test_plan_with_size_rules_gives_one_shape_the_same_hyperparameters_at_every_budget():
    plans = [rules.plan_run(*cfgs(budget=b, lr_rule="size", batch_rule="size"), seq_len=128, world_size=1,
                            n_params=40_000, flops_per_token=3e5) for b in (1e10, 1e11, 1e12)]
    assert len({(p.lr, p.batch_tokens, p.beta2) for p in plans}) == 1
    assert [p.steps for p in plans] == sorted(p.steps for p in plans) and plans[0].steps < plans[-1].steps


def test_beta2_threshold():
    assert rules.beta2_rule(10_000) == 0.99
    assert rules.beta2_rule(220_000_000) == 0.99
    assert rules.beta2_rule(220_000_001) == 0.95


def cfgs(**kw):
    optim = dict(lr=None, lr_rule="deepseek", warmup=None, beta2=None)
    train = dict(tokens=None, budget=None, tokens_per_param=None, batch_tokens=None, batch_rule="deepseek")
    for k, v in kw.items():
        (optim if k in optim else train)[k] = v
    return SimpleNamespace(**optim), SimpleNamespace(**train)


def test_plan_budget_gives_tokens_batch_and_steps():
    optim, train = cfgs(budget=1e12, batch_tokens=4096)
    p = rules.plan_run(optim, train, seq_len=128, world_size=1, n_params=50_000, flops_per_token=400_000.0)
    assert p.requested_tokens == pytest.approx(2.5e6)
    assert p.steps == 610 and p.tokens == 610 * 4096  # round(2.5e6 / 4096) = round(610.35)
    assert p.lr == pytest.approx(0.3118 * 1e12 ** -0.125)
    assert p.beta2 == 0.99


def test_plan_tokens_per_param():
    optim, train = cfgs(tokens_per_param=20, batch_tokens=1024)
    p = rules.plan_run(optim, train, seq_len=128, world_size=1, n_params=30_000, flops_per_token=1.0)
    assert p.requested_tokens == 600_000 and p.steps == 586  # round(585.9)


def test_plan_rule_batch_is_rounded_to_whole_sequences_per_rank():
    optim, train = cfgs(tokens=10**7)
    # deepseek at C = 1e7 x 3e5 = 3e12: 0.292 x 3e12^0.3271 = 3,660 tokens -> 256-token units: 14 x 256 = 3,584
    p = rules.plan_run(optim, train, seq_len=128, world_size=2, n_params=1000, flops_per_token=3e5)
    assert p.batch_tokens == 3584
    tiny = rules.plan_run(*cfgs(tokens=1000), seq_len=128, world_size=4, n_params=1000, flops_per_token=1.0)
    assert tiny.batch_tokens == 512  # never below one sequence per rank


def test_plan_warmup_is_n_tokens_but_at_least_two_over_one_minus_beta2_steps_capped_at_a_quarter():
    optim, train = cfgs(tokens=2048 * 2000, batch_tokens=2048)  # 2,000 steps: the cap is 500

    def warmup(o, n):
        return rules.plan_run(o, train, 128, 1, n_params=n, flops_per_token=1.0).warmup_steps

    assert warmup(optim, 2048 * 300) == 300  # N tokens = 300 steps > 200
    assert warmup(optim, 2048 * 300 + 1) == 301  # ceil
    assert warmup(optim, 20_000) == 200  # N tokens is 10 steps; beta2 0.99 (the rule's) needs 2 / 0.01 = 200
    assert warmup(cfgs(beta2=0.9)[0], 20_000) == 20  # 2 / (1 - 0.9)
    assert warmup(cfgs(beta2=0.95)[0], 20_000) == 40
    assert warmup(optim, 10**7) == 500  # N tokens = 4,883 steps: capped at a quarter of the run
    short = cfgs(tokens=2048 * 100, batch_tokens=2048)[1]
    assert rules.plan_run(optim, short, 128, 1, n_params=20_000, flops_per_token=1.0).warmup_steps == 25  # cap wins
    o2, _ = cfgs(warmup=0.1)
    assert warmup(o2, 10**7) == 200
    o3, _ = cfgs(warmup=7)
    assert warmup(o3, 10**7) == 7


def test_plan_given_values_win_over_rules():
    optim, train = cfgs(tokens=10**6, batch_tokens=1024, lr=0.5, beta2=0.9)
    p = rules.plan_run(optim, train, 128, 1, n_params=10**9, flops_per_token=1.0)
    assert (p.lr, p.beta2, p.batch_tokens) == (0.5, 0.9, 1024)


def test_plan_refuses_a_batch_that_is_not_whole_sequences():
    optim, train = cfgs(tokens=10**6, batch_tokens=1000)
    with pytest.raises(ConfigError, match=r"train.batch_tokens=1000 .* nearest valid: 896 or 1024"):
        rules.plan_run(optim, train, 128, 1, n_params=1000, flops_per_token=1.0)
# Append to tests/test_rules.py (uses its cfgs() helper, rules, pytest, ConfigError).


def test_plan_one_step_run_and_a_batch_equal_to_the_run_are_allowed():
    p = rules.plan_run(*cfgs(tokens=1024, batch_tokens=1024), 128, 1, n_params=1000, flops_per_token=1.0)
    assert (p.steps, p.tokens, p.warmup_steps) == (1, 1024, 0)


def test_plan_refuses_a_batch_larger_than_the_run_and_names_the_largest_valid_one():
    # 1000 tokens in 128-token sequences: at most 896 (7 whole sequences)
    with pytest.raises(ConfigError, match=r"^train.batch_tokens=1024 is larger than the whole run \(train.tokens=1000\); "
                                          r"use train.batch_tokens <= 896 or more train.tokens$"):
        rules.plan_run(*cfgs(tokens=1000, batch_tokens=1024), 128, 1, n_params=1000, flops_per_token=1.0)
    # a budget or tokens_per_param run takes whatever batch it is given (its length follows from the budget)
    for kw in ({"budget": 1000.0}, {"tokens_per_param": 1}):
        assert rules.plan_run(*cfgs(batch_tokens=1024, **kw), 128, 1, n_params=1000, flops_per_token=1.0).steps == 1


def test_plan_warmup_cap_is_a_whole_number_of_steps():
    # 102 steps: a quarter is 25.5 -> 25 steps
    p = rules.plan_run(*cfgs(tokens=2048 * 102, batch_tokens=2048), 128, 1, n_params=10**7, flops_per_token=1.0)
    assert p.warmup_steps == 25 and isinstance(p.warmup_steps, int)


def test_plan_warmup_of_one_is_one_step_not_the_whole_run():
    p = rules.plan_run(*cfgs(tokens=2048 * 100, batch_tokens=2048, warmup=1), 128, 1, n_params=10**7,
                       flops_per_token=1.0)
    assert p.warmup_steps == 1
