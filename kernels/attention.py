"""Scaled dot-product attention: a FlashAttention-2 style Triton kernel and its PyTorch reference.

    attention(q, k, v, causal=True, backend="auto") -> (batch, heads, seq, head_dim)

The Triton path never materialises the seq x seq score matrix:

forward    one program per (query block, batch*head). K/V tiles stream through an online
           softmax (running max m, running sum l, rescaled fp32 accumulator). The base-2
           log-sum-exp of each row (m + log2 l) is saved for the backward pass.
backward   recomputes P = exp2(S * log2(e) - lse) tile by tile instead of storing it:
             1. preprocess: delta = rowsum(dO * O)            (= rowsum(P * dP), per query row)
             2. dK/dV: one program per key block, looping over query blocks
             3. dQ:    one program per query block, looping over key blocks
           Each output tile is owned by exactly one program, so the causal backward needs no
           atomics (the cost is computing Q K^T and dO V^T twice, once in each kernel).

Causal attention skips key blocks above the diagonal entirely and applies the element mask only
to blocks that cross it. Any sequence length works (ragged tails are masked); head_dim must be
32, 64 or 128 (it is a compile-time constant); inputs may be float32, float16 or bfloat16 and
every matmul accumulates in float32. The softmax scale is 1/sqrt(head_dim); log2(e) is folded
into it so the kernels use exp2 (one MUFU instruction on NVIDIA GPUs).

float32 inputs use IEEE float32 matmuls unless torch.backends.cuda.matmul.allow_tf32 is set (then
TF32), mirroring torch; float32 is a correctness path, bfloat16/float16 are the fast ones.

Block sizes are autotuned on CUDA (keyed on seq length, head_dim and causal). Under the Triton
interpreter (TRITON_INTERPRET=1, the CPU test suite) one small fixed configuration is used
(`_INTERPRET_BLOCKS`) so tests stay fast and still cross several block boundaries.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from kernels import dispatch
from kernels.dispatch import interpreter_on, resolve

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - kernels/ must import without triton (the torch path still works)
    triton = None
    tl = None

SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Test hook: when True the Triton wrapper fills every buffer it allocates (O, LSE, delta, dQ, dK,
# dV) with NaN before launching, so any element a kernel fails to write shows up in the result.

# Fixed block sizes used under the interpreter. Blocks are deliberately unequal (query blocks
# twice the key blocks in fwd/dQ, the reverse in dK/dV) so the diagonal spans several inner
# iterations, as with the larger GPU configs. Tests may monkeypatch this.
_INTERPRET_BLOCKS = {
    "fwd": {"BLOCK_M": 32, "BLOCK_N": 16},
    "dkdv": {"BLOCK_M": 16, "BLOCK_N": 32},
    "dq": {"BLOCK_M": 32, "BLOCK_N": 16},
    "pre": {"BLOCK_M": 32},
}

_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------
# PyTorch references
# ----------------------------------------------------------------------------------------------


def attention_reference(q, k, v, causal=True):
    """Fast fallback: PyTorch SDPA (any device, any float dtype incl. float64, any head_dim)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def attention_math(q, k, v, causal=True):
    """Explicit-math reference for tests: softmax(q k^T / sqrt(d) + mask) v in q's dtype."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if causal:
        n_q, n_k = s.shape[-2], s.shape[-1]
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _bh_offset(pid_bh, H, stride_z, stride_h):
        # int64: batch*heads*seq*dim can exceed 2**31 elements for long sequences.
        z = pid_bh // H
        h = pid_bh % H
        return z.to(tl.int64) * stride_z + h.to(tl.int64) * stride_h

    # ---------------------------------------------------------------------------- forward ----

    @triton.jit
    def _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d,
                   N_CTX, qk_scale, lo, hi,
                   MASK: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
                   DOT_PREC: tl.constexpr):
        """Fold key blocks [lo, hi) into the running softmax of one query block."""
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            col_ok = cols < N_CTX
            # K loaded transposed (head_dim x BLOCK_N) so the dot needs no register shuffle.
            kT = tl.load(K + cols[None, :] * stride_kn + offs_d[:, None], mask=col_ok[None, :], other=0.0)
            qk = tl.dot(q, kT, input_precision=DOT_PREC)
            if MASK:  # only the diagonal / ragged-tail blocks pay for the element mask
                if CAUSAL:
                    keep = offs_m[:, None] >= cols[None, :]
                else:
                    keep = col_ok[None, :]
                qk = tl.where(keep, qk, float("-inf"))
            # Every row keeps at least one key in its first visited block (key 0 is always
            # visible), so m_new is finite and exp2(-inf - m_new) = 0 never sees inf - inf.
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])  # scale folded into one FMA
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def _attn_fwd_kernel(Q, K, V, O, LSE,
                         stride_qz, stride_qh, stride_qm,
                         stride_kz, stride_kh, stride_kn,
                         stride_vz, stride_vh, stride_vn,
                         stride_oz, stride_oh, stride_om,
                         H, N_CTX, qk_scale,
                         HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        if CAUSAL:
            # Causal work grows with the query index: launch the heaviest blocks first so the
            # cheap ones fill the tail of the last wave.
            pid_m = tl.num_programs(0) - 1 - pid_m
        pid_bh = tl.program_id(1)
        Q += _bh_offset(pid_bh, H, stride_qz, stride_qh)
        K += _bh_offset(pid_bh, H, stride_kz, stride_kh)
        V += _bh_offset(pid_bh, H, stride_vz, stride_vh)
        O += _bh_offset(pid_bh, H, stride_oz, stride_oh)
        LSE += pid_bh.to(tl.int64) * N_CTX

        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < N_CTX

        q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        if CAUSAL:
            # Blocks fully below the diagonal need no mask (BLOCK_M % BLOCK_N == 0 keeps the
            # boundary on a key-block edge); blocks above it are never visited.
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n,
                                       offs_d, N_CTX, qk_scale, 0, start_m,
                                       False, True, BLOCK_N, DOT_PREC)
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n,
                                       offs_d, N_CTX, qk_scale, start_m,
                                       tl.minimum(start_m + BLOCK_M, N_CTX),
                                       True, True, BLOCK_N, DOT_PREC)
        else:
            # Full key blocks unmasked, then the ragged tail (if any) with a column mask.
            n_full = (N_CTX // BLOCK_N) * BLOCK_N
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n,
                                       offs_d, N_CTX, qk_scale, 0, n_full,
                                       False, False, BLOCK_N, DOT_PREC)
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n,
                                       offs_d, N_CTX, qk_scale, n_full, N_CTX,
                                       True, False, BLOCK_N, DOT_PREC)

        acc = acc / l_i[:, None]
        tl.store(LSE + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)  # base-2 LSE of scaled scores
        tl.store(O + offs_m[:, None] * stride_om + offs_d[None, :], acc.to(O.dtype.element_ty),
                 mask=row_ok[:, None])

    # --------------------------------------------------------------------------- backward ----

    @triton.jit
    def _attn_bwd_preprocess(O, DO, DELTA,
                             stride_oz, stride_oh, stride_om,
                             stride_doz, stride_doh, stride_dom,
                             H, N_CTX,
                             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
        # delta_i = sum_j P_ij dP_ij = dO_i . O_i: the softmax-Jacobian term, once per row.
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        O += _bh_offset(pid_bh, H, stride_oz, stride_oh)
        DO += _bh_offset(pid_bh, H, stride_doz, stride_doh)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < N_CTX
        o = tl.load(O + offs_m[:, None] * stride_om + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + offs_m[:, None] * stride_dom + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + pid_bh.to(tl.int64) * N_CTX + offs_m, delta, mask=row_ok)

    @triton.jit
    def _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_dom,
                    offs_n, offs_m, offs_d, N_CTX, qk_scale, lo, hi,
                    MASK: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PREC: tl.constexpr):
        """Accumulate dK, dV of one key block over query blocks [lo, hi); works on P^T."""
        for start_m in range(lo, hi, BLOCK_M):
            start_m = tl.multiple_of(start_m, BLOCK_M)
            rows = start_m + offs_m
            row_ok = rows < N_CTX
            # Query rows past the end load q = dO = 0 and lse = +inf, so their P^T column is
            # exactly 0 and they add nothing: no element mask is needed for the ragged tail.
            qT = tl.load(Q + rows[None, :] * stride_qm + offs_d[:, None], mask=row_ok[None, :], other=0.0)
            lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
            sT = tl.dot(k, qT, input_precision=DOT_PREC) * qk_scale - lse[None, :]
            if MASK:  # diagonal blocks only: query i sees key j iff i >= j
                # Mask the exponent, not P: a masked score is not bounded by lse and could
                # overflow exp2 (harmless after a where, but it is cleaner never to make inf).
                sT = tl.where(rows[None, :] >= offs_n[:, None], sT, float("-inf"))
            pT = tl.math.exp2(sT)
            do = tl.load(DO + rows[:, None] * stride_dom + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PREC)
            delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
            dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            dsT = pT * (dpT - delta[None, :])
            dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=DOT_PREC)
        return dk, dv

    @triton.jit
    def _attn_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA,
                              stride_qz, stride_qh, stride_qm,
                              stride_kz, stride_kh, stride_kn,
                              stride_vz, stride_vh, stride_vn,
                              stride_doz, stride_doh, stride_dom,
                              stride_dkz, stride_dkh, stride_dkn,
                              stride_dvz, stride_dvh, stride_dvn,
                              H, N_CTX, qk_scale, sm_scale,
                              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_n = tl.program_id(0)  # causal: low key blocks see the most queries and already go first
        pid_bh = tl.program_id(1)
        Q += _bh_offset(pid_bh, H, stride_qz, stride_qh)
        K += _bh_offset(pid_bh, H, stride_kz, stride_kh)
        V += _bh_offset(pid_bh, H, stride_vz, stride_vh)
        DO += _bh_offset(pid_bh, H, stride_doz, stride_doh)
        DK += _bh_offset(pid_bh, H, stride_dkz, stride_dkh)
        DV += _bh_offset(pid_bh, H, stride_dvz, stride_dvh)
        LSE += pid_bh.to(tl.int64) * N_CTX
        DELTA += pid_bh.to(tl.int64) * N_CTX

        start_n = pid_n * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        col_ok = offs_n < N_CTX
        # K and V stay resident for the whole query sweep.
        k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

        if CAUSAL:
            # Queries before start_n never see this key block: start at the diagonal, masked
            # while the query blocks cross it (BLOCK_N % BLOCK_M == 0), unmasked after.
            dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_dom,
                                 offs_n, offs_m, offs_d, N_CTX, qk_scale,
                                 start_n, tl.minimum(start_n + BLOCK_N, N_CTX), True, BLOCK_M, DOT_PREC)
            dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_dom,
                                 offs_n, offs_m, offs_d, N_CTX, qk_scale,
                                 start_n + BLOCK_N, N_CTX, False, BLOCK_M, DOT_PREC)
        else:
            dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_dom,
                                 offs_n, offs_m, offs_d, N_CTX, qk_scale,
                                 0, N_CTX, False, BLOCK_M, DOT_PREC)

        dk *= sm_scale  # dS is w.r.t. the scaled scores; the chain rule brings the scale back
        tl.store(DK + offs_n[:, None] * stride_dkn + offs_d[None, :], dk.to(DK.dtype.element_ty),
                 mask=col_ok[:, None])
        tl.store(DV + offs_n[:, None] * stride_dvn + offs_d[None, :], dv.to(DV.dtype.element_ty),
                 mask=col_ok[:, None])

    @triton.jit
    def _dq_inner(dq, q, do, lse, delta, K, V, stride_kn, stride_vn,
                  offs_m, offs_n, offs_d, N_CTX, qk_scale, lo, hi,
                  MASK: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
                  DOT_PREC: tl.constexpr):
        """Accumulate dQ of one query block over key blocks [lo, hi)."""
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            col_ok = cols < N_CTX
            kT = tl.load(K + cols[None, :] * stride_kn + offs_d[:, None], mask=col_ok[None, :], other=0.0)
            vT = tl.load(V + cols[None, :] * stride_vn + offs_d[:, None], mask=col_ok[None, :], other=0.0)
            s = tl.dot(q, kT, input_precision=DOT_PREC) * qk_scale - lse[:, None]
            if MASK:
                if CAUSAL:
                    keep = offs_m[:, None] >= cols[None, :]
                else:
                    keep = col_ok[None, :]
                s = tl.where(keep, s, float("-inf"))
            p = tl.math.exp2(s)
            dp = tl.dot(do, vT, input_precision=DOT_PREC)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=DOT_PREC)
        return dq

    @triton.jit
    def _attn_bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA,
                            stride_qz, stride_qh, stride_qm,
                            stride_kz, stride_kh, stride_kn,
                            stride_vz, stride_vh, stride_vn,
                            stride_doz, stride_doh, stride_dom,
                            stride_dqz, stride_dqh, stride_dqm,
                            H, N_CTX, qk_scale, sm_scale,
                            HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        if CAUSAL:  # heaviest query blocks first, as in the forward
            pid_m = tl.num_programs(0) - 1 - pid_m
        pid_bh = tl.program_id(1)
        Q += _bh_offset(pid_bh, H, stride_qz, stride_qh)
        K += _bh_offset(pid_bh, H, stride_kz, stride_kh)
        V += _bh_offset(pid_bh, H, stride_vz, stride_vh)
        DO += _bh_offset(pid_bh, H, stride_doz, stride_doh)
        DQ += _bh_offset(pid_bh, H, stride_dqz, stride_dqh)
        LSE += pid_bh.to(tl.int64) * N_CTX
        DELTA += pid_bh.to(tl.int64) * N_CTX

        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < N_CTX
        # Q, dO and the per-row statistics stay resident; rows past the end get lse = +inf so
        # their P row is 0.
        q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + offs_m[:, None] * stride_dom + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        lse = tl.load(LSE + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        if CAUSAL:
            dq = _dq_inner(dq, q, do, lse, delta, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d,
                           N_CTX, qk_scale, 0, start_m, False, True, BLOCK_N, DOT_PREC)
            dq = _dq_inner(dq, q, do, lse, delta, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d,
                           N_CTX, qk_scale, start_m, tl.minimum(start_m + BLOCK_M, N_CTX),
                           True, True, BLOCK_N, DOT_PREC)
        else:
            # The ragged key tail is masked explicitly: a zero-loaded key would give
            # p = exp2(-lse), which can overflow for rows with very negative scores.
            n_full = (N_CTX // BLOCK_N) * BLOCK_N
            dq = _dq_inner(dq, q, do, lse, delta, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d,
                           N_CTX, qk_scale, 0, n_full, False, False, BLOCK_N, DOT_PREC)
            dq = _dq_inner(dq, q, do, lse, delta, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d,
                           N_CTX, qk_scale, n_full, N_CTX, True, False, BLOCK_N, DOT_PREC)

        dq *= sm_scale
        tl.store(DQ + offs_m[:, None] * stride_dqm + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=row_ok[:, None])

    # ------------------------------------------------------------------------- autotuning ----
    # Hopper-oriented candidates (BLOCK_M = query tile, BLOCK_N = key tile, warps, stages). Each
    # call prunes them for its head_dim and dtype before timing:
    #   - causal masking needs the outer tile to be a multiple of the inner one (the diagonal must
    #     start on an inner-tile edge);
    #   - fp32 accumulator + score tiles above ~160 registers per thread spill (calibrated by
    #     compiling every candidate for sm_90a and reading `ptxas -v`);
    #   - Q/K/V/dO tiles (pipelined ones times num_stages) must fit 227 KiB of shared memory.

    def _cfgs(*rows):
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                for bm, bn, w, s in rows]

    _FWD_CONFIGS = _cfgs((64, 64, 4, 3), (64, 64, 4, 4), (128, 32, 4, 3), (128, 64, 4, 3),
                         (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3))
    _DKDV_CONFIGS = _cfgs((32, 64, 4, 2), (32, 64, 4, 3), (32, 128, 8, 2), (32, 128, 8, 3),
                          (64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2), (64, 128, 8, 3))
    _DQ_CONFIGS = _cfgs((64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 8, 3),
                        (128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 2), (128, 64, 8, 3))
    _SMEM_LIMIT = 227 * 1024
    _REG_LIMIT = 160

    def _config_fits(c, kind, head_dim, elt):
        bm, bn, stages = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages
        threads = 32 * c.num_warps
        if kind == "fwd":
            ok = bm % bn == 0
            regs = bm * (head_dim + bn) / threads                   # O acc + S/P tile
            smem = elt * head_dim * (bm + stages * 2 * bn)          # Q + pipelined K, V
        elif kind == "dkdv":
            ok = bn % bm == 0
            regs = 2 * bn * (head_dim + bm) / threads               # dK, dV acc + P^T, dP^T
            smem = elt * head_dim * (2 * bn + stages * 2 * bm)      # K, V + pipelined Q, dO
        else:
            ok = bm % bn == 0
            regs = bm * (head_dim + 2 * bn) / threads               # dQ acc + P/dS, dP
            smem = elt * head_dim * (2 * bm + stages * 2 * bn)      # Q, dO + pipelined K, V
        return ok and regs <= _REG_LIMIT and smem <= _SMEM_LIMIT

    def _pruner(kind):
        def prune(configs, named_args, **kwargs):
            head_dim, elt = kwargs["HEAD_DIM"], named_args["Q"].element_size()
            kept = [c for c in configs if _config_fits(c, kind, head_dim, elt)]
            return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]
        return prune

    _TUNE_KEY = ["N_CTX", "HEAD_DIM", "CAUSAL"]  # the autotuner adds the tensors' dtypes itself

    _attn_fwd_tuned = triton.autotune(
        configs=_FWD_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _pruner("fwd")},
    )(_attn_fwd_kernel)
    _attn_bwd_dkdv_tuned = triton.autotune(
        configs=_DKDV_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _pruner("dkdv")},
    )(_attn_bwd_dkdv_kernel)
    _attn_bwd_dq_tuned = triton.autotune(
        configs=_DQ_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _pruner("dq")},
    )(_attn_bwd_dq_kernel)


# ----------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------


def _unsupported_reason(q, k, v):
    """Why the Triton kernel cannot take these inputs, or None when it can."""
    if triton is None:
        return "triton is not installed"
    if q.dim() != 4:
        return f"q, k, v must be 4-D (batch, heads, seq, head_dim), got q.shape={tuple(q.shape)}"
    if not (q.shape == k.shape == v.shape):
        return (f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not supported (use one of {SUPPORTED_DTYPES})"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return (f"head_dim {q.shape[-1]} is not supported by the Triton attention kernel "
                f"(supported: {SUPPORTED_HEAD_DIMS}); use backend='torch'")
    if q.shape[2] == 0 or q.shape[0] * q.shape[1] == 0:
        return "empty input"
    return None


def _last_dim_contiguous(t):
    # The kernels take batch/head/seq strides but assume unit stride along head_dim (vector loads).
    return t if t.stride(-1) == 1 else t.contiguous()


def _dot_precision(dtype):
    # float32 inputs follow torch's matmul TF32 switch (off by default: exact IEEE float32);
    # for 16-bit inputs the setting is ignored by tl.dot.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _launch(tuned, plain, stage, grid_rows, bh, *args, **meta):
    """Launch autotuned on a GPU, or with the fixed interpreter blocks under TRITON_INTERPRET."""
    outer, inner = ("BLOCK_N", "BLOCK_M") if stage == "dkdv" else ("BLOCK_M", "BLOCK_N")
    if interpreter_on():
        blocks = _INTERPRET_BLOCKS[stage]
        if blocks[outer] % blocks[inner] != 0:
            raise ValueError(f"attention {stage}: {outer} must be a multiple of {inner}, got {blocks}")
        plain[(triton.cdiv(grid_rows, blocks[outer]), bh)](*args, **meta, **blocks)
    else:
        tuned[lambda m: (triton.cdiv(grid_rows, m[outer]), bh)](*args, **meta)


def _on_device_of(t):
    # Triton launches on the current CUDA device; make that the tensors' device (multi-GPU).
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        B, H, N, D = q.shape
        o = torch.empty_like(q)  # same memory layout as q, so a (B, S, H, D) view stays cheap
        lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
        dispatch.poison(o, lse)
        sm_scale = 1.0 / math.sqrt(D)
        meta = dict(HEAD_DIM=D, CAUSAL=bool(causal), DOT_PREC=_dot_precision(q.dtype))
        with _on_device_of(q):
            _launch(_attn_fwd_tuned, _attn_fwd_kernel, "fwd", N, B * H,
                    q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
                    H, N, sm_scale * _LOG2E, **meta)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.sm_scale = sm_scale
        ctx.meta = meta
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        do = _last_dim_contiguous(do)
        B, H, N, D = q.shape
        sm_scale, meta = ctx.sm_scale, ctx.meta
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        delta = torch.empty_like(lse)
        dispatch.poison(dq, dk, dv, delta)

        if interpreter_on():
            pre_block = _INTERPRET_BLOCKS["pre"]["BLOCK_M"]
        else:
            pre_block = 128 if D <= 64 else 64  # memory-bound: big tiles, bounded registers
        common = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
        scales = (H, N, sm_scale * _LOG2E, sm_scale)
        with _on_device_of(q):
            _attn_bwd_preprocess[(triton.cdiv(N, pre_block), B * H)](
                o, do, delta, *_strides(o), *_strides(do), H, N, HEAD_DIM=D, BLOCK_M=pre_block)
            _launch(_attn_bwd_dkdv_tuned, _attn_bwd_dkdv_kernel, "dkdv", N, B * H,
                    q, k, v, do, dk, dv, lse, delta, *common, *_strides(dk), *_strides(dv), *scales,
                    **meta)
            _launch(_attn_bwd_dq_tuned, _attn_bwd_dq_kernel, "dq", N, B * H,
                    q, k, v, do, dq, lse, delta, *common, *_strides(dq), *scales, **meta)
        return dq, dk, dv, None


def attention(q, k, v, causal=True, backend="auto"):
    """Attention over (batch, heads, seq, head_dim) tensors with softmax scale 1/sqrt(head_dim).

    backend "triton" runs the FlashAttention kernel and raises ValueError for inputs it does not
    support (head_dim other than 32/64/128, float64, mismatched shapes). "auto" uses the kernel
    on CUDA when it supports the inputs and PyTorch SDPA otherwise. "torch" always uses SDPA.
    """
    which = resolve(backend, q, k, v)
    if which == "triton":
        reason = _unsupported_reason(q, k, v)
        if reason is not None:
            if backend == "triton":
                raise ValueError(f"attention backend 'triton': {reason}")
            which = "torch"
    if which == "torch":
        return attention_reference(q, k, v, causal)
    return _FlashAttention.apply(q, k, v, causal)
