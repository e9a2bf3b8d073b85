"""AdamW with decay on matrices only, and learning-rate schedules as pure functions of the step
(so resuming needs only the step number, and a cooldown fork branched from a constant-lr trunk
follows exactly the WSD schedule of a straight run)."""
from __future__ import annotations

import math
from dataclasses import dataclass

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


def decay_start(steps: int, wsd_decay: float) -> int:
    """First step of WSD's final decay: the last round(wsd_decay x steps) steps decay. A cooldown fork
    branches from its trunk's checkpoint at this step."""
    return steps - max(1, int(round(wsd_decay * steps)))


@dataclass(frozen=True)
class Schedule:
    """lr(step) for optimizer step `step` (0-based) of a run of `steps` steps, after `warmup` linear steps:
    cosine to peak x min_ratio at the end; wsd: constant, then the last wsd_decay of the steps decay to
    the floor (linear, or 1 - sqrt as in Hägele et al. 2024); constant: the peak throughout."""

    kind: str
    peak: float
    steps: int
    warmup: int = 0
    min_ratio: float = 0.1
    wsd_decay: float = 0.2
    decay_shape: str = "linear"

    def __call__(self, step: int) -> float:
        lr = self.peak
        if self.warmup > 0 and step < self.warmup:
            return lr * (step + 1) / self.warmup
        floor = lr * self.min_ratio
        if self.kind == "constant":
            return lr
        if self.kind == "cosine":
            span = max(1, self.steps - self.warmup - 1)
            progress = min(1.0, (step - self.warmup) / span)
            return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        start = decay_start(self.steps, self.wsd_decay)
        if step < start:
            return lr
        progress = min(1.0, (step - start + 1) / (self.steps - start))
        if self.decay_shape == "sqrt":
            progress = math.sqrt(progress)
        return lr + (floor - lr) * progress
