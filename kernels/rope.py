"""Rotary position embedding. Convention (shared with model/): rotate-half (GPT-NeoX / LLaMA style).

x: (batch, heads, seq, head_dim); cos, sin: (seq, head_dim // 2), float32.
With x1 = x[..., :D/2], x2 = x[..., D/2:]:
    out = cat(x1 * cos - x2 * sin, x2 * cos + x1 * sin)

    rope(x, cos, sin)        a new rotated tensor
    rope_qk(qkv, cos, sin)   q and k of a packed (batch, seq, 3, heads, head_dim) projection

Triton path: one pass; each program rotates a block of positions of one (batch, head), reading
and writing through strides. `rope` writes a contiguous output; `rope_qk` rotates q and k in one
launch *in place* inside the projection output, so attention reads q, k, v as strided views of
one buffer and no rotated copies of q and k are made (or kept for the backward). The backward is
the inverse rotation (the same kernel with -sin). cos and sin are treated as constants (no
gradient). A cos/sin table longer than seq is allowed: its first `seq` rows are used.
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


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def rope_qk_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(batch, seq, 3, heads, head_dim) with q and k rotated (a new tensor)."""
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    return torch.stack((rope_reference(q, cos, sin), rope_reference(k, cos, sin), v), dim=2).transpose(1, 3)


if triton is not None:

    @triton.jit
    def _rope_kernel(
        X, COS, SIN, Y,
        H, T, HALF,
        sxb, sxh, sxt, syb, syh, syt, sct, sst,
        INVERSE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
    ):
        # A 1-D grid over (batch * heads) x position blocks: no grid-axis limit of 65535 applies.
        n_tb = tl.cdiv(T, BLOCK_T)
        pid = tl.program_id(0)
        pid_bh = pid // n_tb
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        t = (pid % n_tb).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        d = tl.arange(0, BLOCK_H)
        mask = (t[:, None] < T) & (d[None, :] < HALF)
        x_ptr = X + b * sxb + h * sxh + t[:, None] * sxt + d[None, :]
        y_ptr = Y + b * syb + h * syh + t[:, None] * syt + d[None, :]
        # Both halves are read before either is written, so Y may be X (in place).
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


def _rotate(x, cos, sin, inverse, out=None):
    """Rotate x (batch, heads, seq, head_dim), any strides with a unit last one, into `out`
    (a new contiguous tensor by default; may be x itself)."""
    B, H, T, D = x.shape
    half = D // 2
    cos = cos if cos.stride(-1) == 1 else cos.contiguous()
    sin = sin if sin.stride(-1) == 1 else sin.contiguous()
    y = dispatch.empty((B, H, T, D), x.dtype, x.device) if out is None else out
    if y.numel() == 0:
        return y
    BLOCK_T, BLOCK_H, num_warps = _launch_config(half)
    _rope_kernel[(B * H * triton.cdiv(T, BLOCK_T),)](
        x, cos, sin, y, H, T, half,
        x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
        cos.stride(0), sin.stride(0),
        INVERSE=inverse, BLOCK_T=BLOCK_T, BLOCK_H=BLOCK_H, num_warps=num_warps,
    )
    return y


def _packed(qkv):
    # q's heads are followed by k's in memory (the projection's layout): they merge into one view.
    return qkv.stride(-1) == 1 and qkv.stride(2) == qkv.shape[3] * qkv.stride(3)


def _qk_heads(qkv):
    # q and k of (batch, seq, 3, heads, head_dim) as one (batch, 2 * heads, seq, head_dim) view.
    B, T, _, H, D = qkv.shape
    return qkv[:, :, :2].view(B, T, 2 * H, D).transpose(1, 2)


class _RoPEFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        if x.stride(-1) != 1:
            x = x.contiguous()
        return _rotate(x, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        if dy.stride(-1) != 1:
            dy = dy.contiguous()
        return _rotate(dy, cos, sin, inverse=True), None, None


class _RoPEQKFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin):
        ctx.save_for_backward(cos, sin)
        qk = _qk_heads(qkv)
        _rotate(qk, cos, sin, inverse=False, out=qk)
        ctx.mark_dirty(qkv)
        return qkv

    @staticmethod
    def backward(ctx, dqkv):
        cos, sin = ctx.saved_tensors
        if not _packed(dqkv):
            dqkv = dqkv.contiguous()
        # A fresh buffer, not dqkv in place: an incoming gradient may be shared or expanded.
        grad = torch.empty(dqkv.shape, dtype=dqkv.dtype, device=dqkv.device)
        _rotate(_qk_heads(dqkv), cos, sin, inverse=True, out=_qk_heads(grad))
        grad[:, :, 2] = dqkv[:, :, 2]
        return grad, None, None


def _check_tables(T, half, cos, sin):
    if cos.dim() != 2 or cos.shape != sin.shape or cos.shape[0] < T or cos.shape[1] != half:
        raise ValueError(
            f"rope: cos and sin must both be (seq >= {T}, {half}), got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    return cos[:T], sin[:T]


def rope(x, cos, sin, backend="auto"):
    """Apply rotary embeddings to x (batch, heads, seq, head_dim) with cos/sin (seq, head_dim // 2)."""
    if x.dim() != 4 or x.shape[-1] % 2 != 0:
        raise ValueError(f"rope: x must be (batch, heads, seq, head_dim) with even head_dim, got {tuple(x.shape)}")
    cos, sin = _check_tables(x.shape[2], x.shape[3] // 2, cos, sin)
    if resolve(backend, x, cos, sin) == "torch":
        return rope_reference(x, cos, sin)
    return _RoPEFn.apply(x, cos, sin)


def rope_qk(qkv, cos, sin, backend="auto"):
    """Rotate q and k of a packed projection qkv (batch, seq, 3, heads, head_dim); v is unchanged.

    The Triton path rotates in place and returns qkv itself (the caller must not need the
    unrotated values); the torch path returns a new tensor. Use the returned tensor either way.
    """
    if qkv.dim() != 5 or qkv.shape[2] != 3 or qkv.shape[-1] % 2 != 0:
        raise ValueError(f"rope_qk: qkv must be (batch, seq, 3, heads, head_dim) with even head_dim, "
                         f"got {tuple(qkv.shape)}")
    cos, sin = _check_tables(qkv.shape[1], qkv.shape[-1] // 2, cos, sin)
    if resolve(backend, qkv, cos, sin) == "torch":
        return rope_qk_reference(qkv, cos, sin)
    if not _packed(qkv):
        raise ValueError(f"rope_qk: qkv must be a view of a packed projection (heads then head_dim "
                         f"contiguous), got strides {qkv.stride()}")
    return _RoPEQKFn.apply(qkv, cos, sin)
