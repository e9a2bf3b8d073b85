"""Rotary position embedding. Convention (shared with model/): rotate-half (GPT-NeoX / LLaMA style).

x: (batch, heads, seq, head_dim); cos, sin: (seq, head_dim // 2), float32.
With x1 = x[..., :D/2], x2 = x[..., D/2:]:
    out = cat(x1 * cos - x2 * sin, x2 * cos + x1 * sin)
"""
import torch

from kernels.dispatch import resolve


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def rope(x, cos, sin, backend="auto"):
    resolve(backend, x)  # validates the name; the Triton kernel is added by the kernels work
    return rope_reference(x, cos, sin)
