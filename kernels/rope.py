"""Rotary position embedding. Convention (shared with model/): rotate-half (GPT-NeoX / LLaMA style).

x: (batch, heads, seq, head_dim); cos, sin: (seq, head_dim // 2), float32.
With x1 = x[..., :D/2], x2 = x[..., D/2:]:
    out = cat(x1 * cos - x2 * sin, x2 * cos + x1 * sin)

Triton path: one pass; each program rotates a block of positions of one (batch, head), reading x
through its strides (so a transposed view from a qkv split is not copied) and writing a
contiguous output. The backward is the inverse rotation (the same kernel with -sin).
cos and sin are treated as constants (no gradient). A cos/sin table longer than seq is allowed:
its first `seq` rows are used.
"""
from __future__ import annotations

import torch

from kernels import dispatch
from kernels.dispatch import interpreter_on, resolve

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover
    triton = None

# Tests set this to True: output buffers are NaN-filled before each launch (unwritten elements show).


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


if triton is not None:

    @triton.jit
    def _rope_kernel(
        X, COS, SIN, Y,
        H, T, HALF,
        sxb, sxh, sxt, syb, syh, syt, sct, sst,
        INVERSE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
    ):
        pid_bh = tl.program_id(0)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        t = tl.program_id(1).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        d = tl.arange(0, BLOCK_H)
        mask = (t[:, None] < T) & (d[None, :] < HALF)
        x_ptr = X + b * sxb + h * sxh + t[:, None] * sxt + d[None, :]
        y_ptr = Y + b * syb + h * syh + t[:, None] * syt + d[None, :]
        x1 = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + HALF, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(COS + t[:, None] * sct + d[None, :], mask=mask, other=0.0).to(tl.float32)
        s = tl.load(SIN + t[:, None] * sst + d[None, :], mask=mask, other=0.0).to(tl.float32)
        if INVERSE:
            s = -s
        y1 = x1 * c - x2 * s
        y2 = x2 * c + x1 * s
        tl.store(y_ptr, y1.to(Y.dtype.element_ty), mask=mask)
        tl.store(y_ptr + HALF, y2.to(Y.dtype.element_ty), mask=mask)


def _launch_config(half):
    block_h = triton.next_power_of_2(half)
    if interpreter_on():
        return 16, block_h, 1
    block_t = max(1, min(64, 2048 // block_h))
    return block_t, block_h, 4 if block_t * block_h <= 1024 else 8


def _rotate(x, cos, sin, inverse):
    B, H, T, D = x.shape
    half = D // 2
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    y = dispatch.empty((B, H, T, D), x.dtype, x.device)
    if y.numel() == 0:
        return y
    BLOCK_T, BLOCK_H, num_warps = _launch_config(half)
    grid = (B * H, triton.cdiv(T, BLOCK_T))
    _rope_kernel[grid](
        x, cos, sin, y, H, T, half,
        x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
        cos.stride(0), sin.stride(0),
        INVERSE=inverse, BLOCK_T=BLOCK_T, BLOCK_H=BLOCK_H, num_warps=num_warps,
    )
    return y


class _RoPEFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _rotate(dy, cos, sin, inverse=True), None, None


def rope(x, cos, sin, backend="auto"):
    """Apply rotary embeddings to x (batch, heads, seq, head_dim) with cos/sin (seq, head_dim // 2)."""
    if x.dim() != 4 or x.shape[-1] % 2 != 0:
        raise ValueError(f"rope: x must be (batch, heads, seq, head_dim) with even head_dim, got {tuple(x.shape)}")
    T, half = x.shape[2], x.shape[3] // 2
    if cos.dim() != 2 or cos.shape != sin.shape or cos.shape[0] < T or cos.shape[1] != half:
        raise ValueError(
            f"rope: cos and sin must both be (seq >= {T}, {half}), got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    cos, sin = cos[:T], sin[:T]
    if resolve(backend, x, cos, sin) == "torch":
        return rope_reference(x, cos, sin)
    return _RoPEFn.apply(x, cos, sin)
