"""AdamW with decay on matrices only, and learning-rate schedules as pure functions of the step
(so resuming needs only the step number)."""
from __future__ import annotations

import math

import torch


def build_optimizer(model: torch.nn.Module, lr: float, beta1: float, beta2: float, eps: float,
                    weight_decay: float) -> torch.optim.AdamW:
    """No weight decay on norms, biases or embeddings (a tied head counts as an embedding)."""
    embeddings = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            embeddings.add(id(module.weight))
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_cuda = any(p.is_cuda for p in decay + no_decay)
    # The fused CUDA implementation runs the whole update in a few kernels; foreach is the CPU default.
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps, fused=on_cuda or None)


def lr_at(step: int, steps: int, warmup: int, lr: float, schedule: str, min_ratio: float, wsd_decay: float) -> float:
    """Learning rate for optimizer step `step` (0-based) of a run of `steps` steps."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    floor = lr * min_ratio
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        span = max(1, steps - warmup - 1)
        progress = min(1.0, (step - warmup) / span)
        return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: warmup, stable at lr, then a linear decay to the floor over the last wsd_decay of the run
    decay_steps = max(1, int(round(wsd_decay * steps)))
    start = steps - decay_steps
    if step < start:
        return lr
    progress = min(1.0, (step - start + 1) / decay_steps)
    return lr + (floor - lr) * progress
