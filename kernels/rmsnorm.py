"""RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, over the last dimension.

Triton path: one program per row in the forward (the whole row in one block, float32 math,
rstd saved for backward); the backward gives each program a contiguous range of rows, computes
dx row by row and accumulates its partial dweight in float32, then the partials are summed.

Widths up to MAX_WIDTH: the backward holds a whole row of x, dy, weight and the dweight
accumulator in registers, which at sm_90a fits up to 8192 (16 warps, 119 registers) and spills
above (width 12288: 176 B per thread, also with 32 warps). Wider rows take the PyTorch reference
under `auto` and are an error under `triton`.
"""
from __future__ import annotations

import torch

from kernels import dispatch
from kernels.dispatch import interpreter_on, resolve

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - triton missing: only the reference is usable
    triton = None


MAX_WIDTH = 8192


def rms_norm_reference(x, weight, eps=1e-6):
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(y.dtype)).to(x.dtype)


if triton is not None:

    @triton.jit
    def _rms_norm_fwd_kernel(X, W, Y, RSTD, stride_x, stride_y, D, eps, BLOCK_D: tl.constexpr):
        eps = tl.cast(eps, tl.float32)  # torch.compile passes Python floats as fp64
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        mean_sq = tl.sum(x * x, axis=0) / D
        rstd = 1.0 / tl.sqrt(mean_sq + eps)
        y = x * rstd * w
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _rms_norm_bwd_kernel(
        DY, X, W, RSTD, DX, DW_PART,
        stride_dy, stride_x, stride_dx,
        n_rows, D, rows_per_prog,
        BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        dw_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        row_start = pid.to(tl.int64) * rows_per_prog
        row_end = tl.minimum(row_start + rows_per_prog, n_rows)
        for row in range(row_start, row_end):
            x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            xhat = x * rstd
            wdy = w * dy
            # d/dx of x*rstd*w: rstd * (w*dy - xhat * mean(w*dy*xhat))
            c = tl.sum(xhat * wdy, axis=0) / D
            dx = (wdy - xhat * c) * rstd
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
            dw_acc += dy * xhat
        tl.store(DW_PART + pid.to(tl.int64) * D + cols, dw_acc, mask=mask)


def _launch_config(D):
    block = triton.next_power_of_2(D)
    if interpreter_on():
        return block, 1
    num_warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    return block, num_warps


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        D = x.shape[-1]
        if weight.shape != (D,):
            raise ValueError(f"rms_norm: weight must have shape ({D},), got {tuple(weight.shape)}")
        x2 = dispatch.as_rows(x, D)
        w = weight.contiguous()
        n_rows = x2.shape[0]
        y = dispatch.empty((n_rows, D), x.dtype, x.device)
        rstd = dispatch.empty((n_rows,), torch.float32, x.device)
        BLOCK_D, num_warps = _launch_config(D)
        if n_rows > 0:
            _rms_norm_fwd_kernel[(n_rows,)](
                x2, w, y, rstd, x2.stride(0), y.stride(0), D, eps,
                BLOCK_D=BLOCK_D, num_warps=num_warps,
            )
        ctx.save_for_backward(x2, w, rstd)
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, w, rstd = ctx.saved_tensors
        n_rows, D = x2.shape
        dy2 = dispatch.as_rows(dy, D)
        dx = dispatch.empty((n_rows, D), x2.dtype, x2.device)
        BLOCK_D, num_warps = _launch_config(D)
        if interpreter_on() or not x2.is_cuda:
            n_prog = 4
        else:
            n_prog = 2 * torch.cuda.get_device_properties(x2.device).multi_processor_count
        n_prog = max(1, min(n_prog, n_rows))
        rows_per_prog = triton.cdiv(n_rows, n_prog) if n_rows > 0 else 1
        n_prog = triton.cdiv(n_rows, rows_per_prog) if n_rows > 0 else 1
        dw_part = dispatch.empty((n_prog, D), torch.float32, x2.device)
        if n_rows > 0:
            _rms_norm_bwd_kernel[(n_prog,)](
                dy2, x2, w, rstd, dx, dw_part,
                dy2.stride(0), x2.stride(0), dx.stride(0),
                n_rows, D, rows_per_prog,
                BLOCK_D=BLOCK_D, num_warps=num_warps,
            )
            dw = dw_part.sum(0)
        else:
            dw = torch.zeros(D, dtype=torch.float32, device=x2.device)
        return dx.view(ctx.x_shape), dw.to(w.dtype), None


def rms_norm(x, weight, eps=1e-6, backend="auto"):
    """RMSNorm over the last dim of x (..., D) with a (D,) weight; output has x's dtype."""
    which = resolve(backend, x, weight)
    if which == "triton" and x.shape[-1] > MAX_WIDTH:
        if backend == "triton":
            raise ValueError(f"rms_norm backend 'triton': width {x.shape[-1]} is above {MAX_WIDTH}, the widest "
                             "row the fused backward holds in registers; use backend 'auto' or 'torch'")
        which = "torch"
    if which == "torch":
        return rms_norm_reference(x, weight, eps)
    return _RMSNormFn.apply(x, weight, float(eps))
