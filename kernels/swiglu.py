"""SwiGLU activation: silu(gate) * up, fused forward and backward.

Triton path: 2-D tiles (rows x columns of the last dim) so row-strided views such as the two
halves of a fused gate/up projection are read in place, without a copy. `swiglu_packed(h)` takes
that projection whole and writes its gradient as one buffer (no concatenation in the backward).
The backward recomputes sigmoid(gate) instead of saving silu(gate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import dispatch
from kernels.dispatch import interpreter_on, resolve

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover
    triton = None


def swiglu_reference(gate, up):
    return F.silu(gate) * up


if triton is not None:

    @triton.jit
    def _swiglu_fwd_kernel(
        G, U, O, n_rows, D, stride_g, stride_u, stride_o,
        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < D)
        g = tl.load(G + rows[:, None] * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + rows[:, None] * stride_u + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        out = g * tl.sigmoid(g) * u
        tl.store(O + rows[:, None] * stride_o + cols[None, :], out.to(O.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_bwd_kernel(
        DO, G, U, DG, DU, n_rows, D,
        stride_do, stride_g, stride_u, stride_dg, stride_du,
        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = (rows[:, None] < n_rows) & (cols[None, :] < D)
        r = rows[:, None]
        c = cols[None, :]
        do = tl.load(DO + r * stride_do + c, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + r * stride_g + c, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + r * stride_u + c, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        silu = g * sig
        # d silu(g)/dg = sig * (1 + g * (1 - sig))
        dg = do * u * sig * (1.0 + g * (1.0 - sig))
        du = do * silu
        tl.store(DG + r * stride_dg + c, dg.to(DG.dtype.element_ty), mask=mask)
        tl.store(DU + r * stride_du + c, du.to(DU.dtype.element_ty), mask=mask)


def _launch_config(D):
    if interpreter_on():
        return 8, min(triton.next_power_of_2(D), 64), 1
    block_d = min(triton.next_power_of_2(D), 1024)
    block_r = max(1, 2048 // block_d)
    return block_r, block_d, 4


def _forward(g2, u2):
    n_rows, D = g2.shape
    out = dispatch.empty((n_rows, D), g2.dtype, g2.device)
    BLOCK_R, BLOCK_D, num_warps = _launch_config(D)
    if out.numel() > 0:
        grid = (triton.cdiv(n_rows, BLOCK_R), triton.cdiv(D, BLOCK_D))
        _swiglu_fwd_kernel[grid](
            g2, u2, out, n_rows, D, g2.stride(0), u2.stride(0), out.stride(0),
            BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, num_warps=num_warps,
        )
    return out


def _backward(do2, g2, u2, dg, du):
    n_rows, D = g2.shape
    BLOCK_R, BLOCK_D, num_warps = _launch_config(D)
    if dg.numel() > 0:
        grid = (triton.cdiv(n_rows, BLOCK_R), triton.cdiv(D, BLOCK_D))
        _swiglu_bwd_kernel[grid](
            do2, g2, u2, dg, du, n_rows, D,
            do2.stride(0), g2.stride(0), u2.stride(0), dg.stride(0), du.stride(0),
            BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, num_warps=num_warps,
        )


class _SwiGLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        D = gate.shape[-1]
        g2, u2 = dispatch.as_rows(gate, D), dispatch.as_rows(up, D)
        ctx.save_for_backward(g2, u2)
        ctx.shape = gate.shape
        return _forward(g2, u2).view(gate.shape)

    @staticmethod
    def backward(ctx, dout):
        g2, u2 = ctx.saved_tensors
        n_rows, D = g2.shape
        dg = dispatch.empty((n_rows, D), g2.dtype, g2.device)
        du = dispatch.empty((n_rows, D), u2.dtype, u2.device)
        _backward(dispatch.as_rows(dout, D), g2, u2, dg, du)
        return dg.view(ctx.shape), du.view(ctx.shape)


class _SwiGLUPackedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        n = h.shape[-1] // 2
        h2 = dispatch.as_rows(h, 2 * n)
        ctx.save_for_backward(h2)
        ctx.shape = h.shape
        return _forward(h2[:, :n], h2[:, n:]).view(*h.shape[:-1], n)

    @staticmethod
    def backward(ctx, dout):
        (h2,) = ctx.saved_tensors
        n = h2.shape[1] // 2
        # d(gate) and d(up) land side by side in one buffer: the gradient of h needs no concatenation.
        dh = dispatch.empty(h2.shape, h2.dtype, h2.device)
        _backward(dispatch.as_rows(dout, n), h2[:, :n], h2[:, n:], dh[:, :n], dh[:, n:])
        return dh.view(ctx.shape)


def swiglu(gate, up, backend="auto"):
    """silu(gate) * up for two tensors of the same shape and dtype."""
    if resolve(backend, gate, up) == "torch":
        return swiglu_reference(gate, up)
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate and up must have the same shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    if gate.dtype != up.dtype:
        raise ValueError(f"swiglu: gate and up must have the same dtype, got {gate.dtype} and {up.dtype}")
    if gate.dim() == 0:
        return swiglu_reference(gate, up)
    return _SwiGLUFn.apply(gate, up)


def swiglu_packed(h, backend="auto"):
    """silu(gate) * up for a packed projection h = [gate | up] along the last dim (..., 2 * n).

    Same result as swiglu(*h.chunk(2, -1)); the Triton backward writes d(gate) and d(up) into one
    (..., 2 * n) gradient, where chunk's backward would concatenate two separate ones.
    """
    if h.dim() == 0 or h.shape[-1] % 2:
        raise ValueError(f"swiglu_packed: the last dim must be even ([gate | up]), got shape {tuple(h.shape)}")
    if resolve(backend, h) == "torch":
        return swiglu_reference(*h.chunk(2, dim=-1))
    return _SwiGLUPackedFn.apply(h)
