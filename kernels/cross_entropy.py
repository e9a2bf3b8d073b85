"""Fused linear + cross-entropy: mean CE of (x @ weight.T) without materialising all logits.

Triton path (the Liger approach): the tokens are processed in chunks sized so one chunk's logits
fit a memory budget. For each chunk the logits come from a matmul, then a Triton kernel computes
each row's loss (two passes over the vocabulary: online max / sum-exp, then the gradient) and
overwrites the logits in place with d loss / d logits = (softmax - onehot) / n_valid. The two
gradient GEMMs follow immediately: grad_x[chunk] = dlogits @ W and grad_W += dlogits.T @ x_chunk
(accumulated in float32). Gradients are computed during the forward and only scaled by
grad_output in the backward.

No host synchronisation: n_valid is a device tensor, the only Python control flow is over
shapes, so the call can be captured in a CUDA graph. Kernel offsets are int64 (tokens x vocab
may exceed 2^31). All targets ignored gives loss 0 and zero gradients. Targets must lie in
[0, vocab) or equal ignore_index (not checked on the device).

float16: softmax probabilities divided by n_valid can underflow float16, so for float16 the
kernel writes the unscaled (softmax - onehot) and 1/n_valid is applied with grad_output in the
backward; float32 and bfloat16 (float32's exponent range) are scaled in the kernel.
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

# Memory budget for one chunk of logits, in bytes (the chunk's row count follows from vocab and dtype).
CHUNK_BYTES = 256 * 1024 * 1024


def linear_cross_entropy_reference(x, weight, targets, ignore_index=-100):
    logits = x @ weight.t()
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)


if triton is not None:

    @triton.jit
    def _lse_step(m, s, z):
        # Fold one block of logits into the running (max, sum of exp) pair.
        m_new = tl.maximum(m, tl.max(z, axis=0))
        return m_new, s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)

    @triton.jit
    def _ce_loss_grad_kernel(
        LOGITS, stride_l, TARGETS, LOSS, SCALE,
        V, ignore_index,
        COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        base = LOGITS + row * stride_l
        target = tl.load(TARGETS + row).to(tl.int64)
        valid = target != ignore_index
        # The target's logit is read before pass 2 starts overwriting the row in place: no
        # barrier orders this load after pass 1 against other warps' pass-2 stores.
        z_target = tl.load(base + tl.where(valid, target, 0)).to(tl.float32)

        # Whole blocks without a mask, then the tail (all-masked when BLOCK_V divides V): with a
        # row stride that is a multiple of 16 (the host pads it), the unmasked loads and stores
        # vectorise even when the vocabulary is not a multiple of 16 (50257).
        offs = tl.arange(0, BLOCK_V)
        v_full = (V // BLOCK_V) * BLOCK_V
        tail = v_full + offs
        tail_ok = tail < V

        # Pass 1: running max and sum of exp over the vocabulary, in float32.
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        for start in range(0, v_full, BLOCK_V):
            m, s = _lse_step(m, s, tl.load(base + start + offs).to(tl.float32))
        m, s = _lse_step(m, s, tl.load(base + tail, mask=tail_ok, other=float("-inf")).to(tl.float32))
        lse = m + tl.log(s)
        tl.store(LOSS + row, tl.where(valid, lse - z_target, 0.0))

        # Pass 2: overwrite the logits with (softmax - onehot) * scale (0 for ignored rows).
        if COMPUTE_GRAD:
            scale = tl.where(valid, tl.load(SCALE).to(tl.float32), 0.0)
            out_ty = LOGITS.dtype.element_ty
            for start in range(0, v_full, BLOCK_V):
                cols = start + offs
                p = tl.exp(tl.load(base + cols).to(tl.float32) - lse)
                p = tl.where(cols == target, p - 1.0, p)
                tl.store(base + cols, (p * scale).to(out_ty))
            p = tl.exp(tl.load(base + tail, mask=tail_ok, other=0.0).to(tl.float32) - lse)
            p = tl.where(tail == target, p - 1.0, p)
            tl.store(base + tail, (p * scale).to(out_ty), mask=tail_ok)


def _launch_config(V):
    if interpreter_on():
        return 128, 1
    block_v = min(triton.next_power_of_2(V), 8192)
    num_warps = 4 if block_v <= 1024 else (8 if block_v <= 4096 else 16)
    return block_v, num_warps


def _chunk_rows(n, V, dtype, chunk_size):
    """Tokens per chunk: `chunk_size` if given, else the most that fit CHUNK_BYTES of logits,
    evened out over the chunks (8192 tokens with room for 2670 -> 4 chunks of 2048, not 3 full + a sliver)."""
    n = max(n, 1)
    if chunk_size is not None:
        return max(1, min(int(chunk_size), n))
    bytes_per_row = V * torch.empty((), dtype=dtype).element_size()
    rows = max(1, min(CHUNK_BYTES // bytes_per_row, n))
    n_chunks = -(-n // rows)
    return -(-n // n_chunks)


def _add_grad_w(grad_w, dlogits, xc):
    """grad_w (float32) += dlogits.T @ xc."""
    if dlogits.dtype == torch.float32:
        grad_w.addmm_(dlogits.t(), xc)
    elif grad_w.is_cuda:
        # 16-bit inputs: one GEMM that accumulates in float32 straight into grad_w (no 16-bit
        # (vocab, width) temporary, no rounding of each chunk's contribution).
        torch.addmm(grad_w, dlogits.t(), xc, out_dtype=torch.float32, out=grad_w)
    else:
        grad_w.add_(torch.mm(dlogits.t(), xc))  # CPU has no out_dtype GEMM


def _forward_chunks(x, w, targets, ignore_index, chunk_size, need_grad_x, need_grad_w):
    """Loss (float32 scalar tensor) and, if requested, unscaled-by-grad_output gradients."""
    N, D = x.shape
    V = w.shape[0]
    dev = x.device
    n_valid = (targets != ignore_index).sum()
    inv_n = 1.0 / n_valid.clamp(min=1).to(torch.float32)  # device scalar, no sync
    one = torch.ones((), dtype=torch.float32, device=dev)
    # float16: keep dlogits unscaled (see module doc) and apply 1/n_valid afterwards.
    kernel_scale, post_scale = (one, inv_n) if x.dtype == torch.float16 else (inv_n, one)
    compute_grad = need_grad_x or need_grad_w

    loss_rows = dispatch.empty((N,), torch.float32, dev)
    grad_x = dispatch.empty((N, D), x.dtype, dev) if need_grad_x else None
    grad_w = torch.zeros((V, D), dtype=torch.float32, device=dev) if need_grad_w else None
    BLOCK_V, num_warps = _launch_config(V)
    rows = _chunk_rows(N, V, x.dtype, chunk_size)
    # One logits buffer for every chunk, its rows padded to a multiple of 16 elements so each
    # row starts 16-byte aligned (vector loads in the kernel); cuBLAS writes the strided view.
    buf = torch.empty((min(rows, N), -(-V // 16) * 16), dtype=x.dtype, device=dev)
    for start in range(0, N, rows):
        end = min(start + rows, N)
        xc = x[start:end]
        logits = torch.mm(xc, w.t(), out=buf[: end - start, :V])
        _ce_loss_grad_kernel[(end - start,)](
            logits, logits.stride(0), targets[start:end], loss_rows[start:end], kernel_scale,
            V, ignore_index,
            COMPUTE_GRAD=compute_grad, BLOCK_V=BLOCK_V, num_warps=num_warps,
        )
        if need_grad_x:
            torch.mm(logits, w, out=grad_x[start:end])
        if need_grad_w:
            _add_grad_w(grad_w, logits, xc)
    loss = loss_rows.sum() * inv_n
    return loss, grad_x, grad_w, post_scale


class _LinearCrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, ignore_index, chunk_size, need_grad_x, need_grad_w):
        w = weight if weight.dtype == x.dtype else weight.to(x.dtype)
        w = w.contiguous()
        x = x.contiguous()
        targets = targets.contiguous()
        loss, grad_x, grad_w, post_scale = _forward_chunks(
            x, w, targets, ignore_index, chunk_size, need_grad_x, need_grad_w
        )
        ctx.save_for_backward(
            grad_x if grad_x is not None else torch.empty(0),
            grad_w if grad_w is not None else torch.empty(0),
            post_scale,
        )
        ctx.has = (grad_x is not None, grad_w is not None)
        ctx.w_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w, post_scale = ctx.saved_tensors
        g = grad_out.to(torch.float32) * post_scale  # device scalar
        dx = dw = None
        if ctx.has[0] and ctx.needs_input_grad[0]:
            dx = (grad_x.float() * g).to(grad_x.dtype)
        if ctx.has[1] and ctx.needs_input_grad[1]:
            dw = (grad_w * g).to(ctx.w_dtype)
        return dx, dw, None, None, None, None, None


def linear_cross_entropy(x, weight, targets, ignore_index=-100, backend="auto", chunk_size=None):
    """Mean cross-entropy of x @ weight.T against targets, over targets != ignore_index.

    x: (N, D) (or (..., D), flattened with targets), weight: (V, D), targets: (N,) int64.
    Returns a float32 scalar. `chunk_size` overrides the number of tokens per chunk.
    """
    if resolve(backend, x, weight, targets) == "torch":
        return linear_cross_entropy_reference(x, weight, targets, ignore_index)
    D = x.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != D:
        raise ValueError(f"linear_cross_entropy: weight must be (vocab, {D}), got {tuple(weight.shape)}")
    x2 = x.reshape(-1, D)
    t2 = targets.reshape(-1)
    if t2.shape[0] != x2.shape[0]:
        raise ValueError(
            f"linear_cross_entropy: {x2.shape[0]} tokens in x but {t2.shape[0]} targets"
        )
    grad_on = torch.is_grad_enabled()
    need_gx = grad_on and x.requires_grad
    need_gw = grad_on and weight.requires_grad
    return _LinearCrossEntropyFn.apply(x2, weight, t2, int(ignore_index), chunk_size, need_gx, need_gw)
