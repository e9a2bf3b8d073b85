"""Hyperparameters that follow model size or compute, by written rules (never hand-tuned per run).

A run's config either gives a value (optim.lr, train.batch_tokens, optim.warmup, optim.beta2) or
leaves it null, and then the rule below decides. N is the non-embedding parameter count (all
linear layers incl. the output head: the "standard" count of Porian et al. 2024); C is the run's
training compute in FLOPs (exact convention).

- size (default): DeepSeek's rules evaluated at the budget where N is compute-optimal, C*(N) = 120 N^2
            (6 N D FLOPs at D = 20 N, Chinchilla's ratio): lr = 0.3118 C*^-0.125, batch = 0.2920 C*^0.3271 tokens.
            They depend on N alone, so one constant-lr trunk can serve every budget a shape is in (cooldown
            forks), and at a shape's compute-optimal budget they equal DeepSeek's. Checked on CPU by an lr sweep
            at three sizes (docs/size-rules.md): the rule's lr is within a factor 2 of the best grid lr at each.
- deepseek: lr = 0.3118 * C^-0.125;  batch = 0.2920 * C^0.3271 tokens  (DeepSeek LLM, Bi et al. 2024), C the
            run's own budget: fine for one run per budget (cosine), but it gives one shape a different lr at
            every budget, so it cannot share a trunk.
- porian:   lr = 3.7 * N^-0.36;  batch = 0.00037 * N^0.703 sequences of 2048 tokens
            (Porian et al. 2024, "Resolving Discrepancies in Compute-Optimal Scaling of LMs", tuned fits)
  Measured here (budget 1e12, byte-level pycode, seq 128, shapes 32x2x2..96x3x3, N = 35k-357k):
  Porian's rules (lr 0.09-0.04) keep these tiny models on a loss plateau until the cosine decay
  lowers the lr (final val loss 1.94-2.89); DeepSeek's rules (lr 0.0099, batch ~2.4k tokens) give
  1.64-2.21 for the same four runs.
- init_std (model.init_std null): 0.02 sqrt(768 / width), GPT-2's 0.02 at its width, scaled as 1/sqrt(width).
  At these widths (16-128) a fixed 0.02 leaves the model on a plateau whose exit time varies by seed: it was
  the source of the seed-to-seed spread (docs/size-rules.md).
- warmup (null): N tokens, i.e. ceil(N / batch_tokens) steps (Porian et al.'s short warmup), but at least
            2 / (1 - beta2) steps (200 at beta2 0.99; Ma & Yarats 2021), at most 25% of the run
- beta2 (null): 0.99 up to 220M parameters, 0.95 above (Porian et al.: beta2 matters at small batch)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from model.config import ConfigError


RULES = ("size", "deepseek", "porian")


def compute_optimal_budget(n_params: int) -> float:
    """C*(N) = 6 N D at D = 20 N: the budget at which N is compute-optimal by Chinchilla's ratio."""
    return 120.0 * float(n_params) ** 2


def lr_rule(rule: str, n_params: int, compute: float) -> float:
    if rule == "porian":
        return 3.7 * n_params ** -0.36
    if rule == "size":
        compute = compute_optimal_budget(n_params)
    return 0.3118 * compute ** -0.125


def batch_tokens_rule(rule: str, n_params: int, compute: float) -> float:
    if rule == "porian":
        return 0.00037 * n_params ** 0.703 * 2048
    if rule == "size":
        compute = compute_optimal_budget(n_params)
    return 0.2920 * compute ** 0.3271


def init_std_rule(width: int) -> float:
    """std of the weights' normal init: GPT-2's 0.02 at its width 768, scaled as 1 / sqrt(width)."""
    return 0.02 * math.sqrt(768 / width)


def warmup_rule(n_params: int, batch_tokens: int, beta2: float) -> int:
    """Warmup steps: N tokens (Porian et al. 2024), but never fewer than 2 / (1 - beta2) steps (Ma & Yarats
    2021): Adam's second-moment average needs about that many steps before its step sizes are trustworthy.
    At the cpu preset's sizes N tokens is only ~30 steps, and the seed-to-seed spread came from there."""
    return max(math.ceil(n_params / batch_tokens), math.ceil(2.0 / (1.0 - beta2) - 1e-9))  # 1 - 0.9 is not 0.1 in floats


def beta2_rule(n_params: int) -> float:
    return 0.99 if n_params <= 220e6 else 0.95


@dataclass(frozen=True)
class Plan:
    """What one run will do, decided before any training step."""

    tokens: int  # tokens actually trained = steps * batch_tokens
    batch_tokens: int
    steps: int
    warmup_steps: int
    lr: float
    beta2: float
    requested_tokens: float


def plan_run(optim, train, seq_len: int, world_size: int, n_params: int, flops_per_token: float) -> Plan:
    if train.budget is not None:
        requested = train.budget / flops_per_token
    elif train.tokens_per_param is not None:
        requested = train.tokens_per_param * n_params
    else:
        requested = float(train.tokens)
    compute = requested * flops_per_token

    unit = seq_len * world_size  # every rank gets whole sequences
    if train.batch_tokens is None:
        raw = batch_tokens_rule(train.batch_rule, n_params, compute)
        batch_tokens = max(unit, int(round(raw / unit)) * unit)
    else:
        batch_tokens = train.batch_tokens
        if batch_tokens % unit:
            lo = max(unit, batch_tokens // unit * unit)
            raise ConfigError(
                f"train.batch_tokens={batch_tokens} must be a multiple of model.seq_len x world size = "
                f"{seq_len} x {world_size} = {unit}; nearest valid: {lo} or {lo + unit}"
            )
        if train.budget is None and train.tokens_per_param is None and batch_tokens > requested:
            raise ConfigError(
                f"train.batch_tokens={batch_tokens} is larger than the whole run (train.tokens={train.tokens}); "
                f"use train.batch_tokens <= {int(requested) // unit * unit} or more train.tokens"
            )
    steps = max(1, int(round(requested / batch_tokens)))
    beta2 = optim.beta2 if optim.beta2 is not None else beta2_rule(n_params)
    if optim.warmup is None:
        warmup = min(warmup_rule(n_params, batch_tokens, beta2), steps // 4)
    elif optim.warmup < 1:
        warmup = int(round(optim.warmup * steps))
    else:
        warmup = int(optim.warmup)
    lr = optim.lr if optim.lr is not None else lr_rule(optim.lr_rule, n_params, compute)
    return Plan(tokens=steps * batch_tokens, batch_tokens=batch_tokens, steps=steps, warmup_steps=warmup,
                lr=lr, beta2=beta2, requested_tokens=requested)
