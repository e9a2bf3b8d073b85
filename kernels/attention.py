"""Scaled dot-product attention: a FlashAttention-2 style Triton kernel and its PyTorch reference.

    attention(q, k, v, causal=True, backend="auto") -> (batch, heads, seq, head_dim)

The Triton path never materialises the seq x seq score matrix:

forward    one program per (query block, head, batch). K/V tiles stream through an online
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

Hopper (sm_90) loads: the forward reads Q/K/V and writes O through TMA tensor descriptors
(`tl.make_tensor_descriptor`, one per (batch, head) slab, built on the device), which moves the
address arithmetic and bounds checks into the copy engine; older GPUs and inputs whose strides are
not 16-byte multiples take the pointer path. Compiled for sm_90a (tests/test_kernels_sm90.py), the
descriptors cut the forward's registers at head_dim 128 (see `_BUDGET`). The interpreter runs both
paths (`_INTERPRET_TMA`).

float32: `backend="auto"` sends float32 inputs on CUDA to PyTorch SDPA. Forced with
`backend="triton"`, float32 uses IEEE float32 dots unless torch.backends.cuda.matmul.allow_tf32
is set (then TF32), mirroring torch: compiled for sm_90a the IEEE dots use no tensor cores and
spill kilobytes per thread in every tile configuration, so that path is for exactness checks only.

Scalar arguments are cast to float32 inside the kernels: torch.compile (Inductor) passes Python
floats as fp64, which would otherwise turn the tile math into fp64 (or fail to compile).

Limits: batch and heads each up to 65535 (grid axes y and z); seq x head_dim below 2**31. Offsets
inside one (batch, head) slab are int32 (cheaper in registers); inputs whose seq x row stride would
overflow them (a packed qkv projection at long context) are copied to a contiguous layout first.

Block sizes are autotuned on CUDA, keyed on the sequence length's power-of-two bucket (not the
exact length), head_dim, causal, precision and the load path; timings are cached on disk (Triton's
cache), so later runs and processes reuse them (concurrent ranks still each tune once). Under the
Triton interpreter (TRITON_INTERPRET=1, the CPU test suite) one small fixed configuration is used
(`_INTERPRET_BLOCKS`) so tests stay fast and still cross several block boundaries.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from kernels import dispatch
from kernels.dispatch import interpreter_on

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - kernels/ must import without triton (the torch path still works)
    triton = None
    tl = None

SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_GRID_YZ = 65535  # CUDA grid limit on axes y (heads) and z (batch)

# Fixed block sizes used under the interpreter. Blocks are deliberately unequal (query blocks
# twice the key blocks in fwd/dQ, the reverse in dK/dV) so the diagonal spans several inner
# iterations, as with the larger GPU configs. Tests may monkeypatch this.
_INTERPRET_BLOCKS = {
    "fwd": {"BLOCK_M": 32, "BLOCK_N": 16},
    "dkdv": {"BLOCK_M": 16, "BLOCK_N": 32},
    "dq": {"BLOCK_M": 32, "BLOCK_N": 16},
    "pre": {"BLOCK_M": 32},
}
# Whether the forward takes the TMA-descriptor path under the interpreter (tests flip it).
_INTERPRET_TMA = True

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
    def _slab(T, stride_z, stride_h):
        # This program's (batch, head) slab; int64 because batch*heads*seq*dim can pass 2**31.
        return T + tl.program_id(2).to(tl.int64) * stride_z + tl.program_id(1).to(tl.int64) * stride_h

    @triton.jit
    def _row_stats(T, H, N_CTX):
        # Per-row float32 statistics (LSE, delta) are contiguous (batch, heads, seq).
        return T + (tl.program_id(2).to(tl.int64) * H + tl.program_id(1)) * N_CTX

    # In-slab offsets are int32: the host keeps seq x row stride below 2**31 (`_prepare`). Both
    # int64 tile addresses and loop-carried block pointers cost 40-60 registers per thread in
    # the loops at sm_90a (ptxas -v), enough to spill at head_dim 128.

    @triton.jit
    def _tile(T, start, offs_rows, offs_d, stride):
        # (rows, head_dim) pointers of rows start + offs_rows
        return T + (start + offs_rows[:, None]) * stride + offs_d[None, :]

    @triton.jit
    def _tile_t(T, start, offs_rows, offs_d, stride):
        # the same tile transposed: (head_dim, rows) pointers
        return T + (start + offs_rows[None, :]) * stride + offs_d[:, None]

    # ---------------------------------------------------------------------------- forward ----

    @triton.jit
    def _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d,
                   N_CTX, qk_scale, lo, hi,
                   MASK: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
                   DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr):
        """Fold key blocks [lo, hi) into the running softmax of one query block.
        K, V are tensor descriptors (USE_TMA; rows past N_CTX read as 0) or slab pointers."""
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            col_ok = cols < N_CTX
            if USE_TMA:
                kT = tl.trans(K.load([start_n, 0]))
            else:
                # K loaded transposed (head_dim x BLOCK_N) so the dot needs no register shuffle.
                kT = tl.load(_tile_t(K, start_n, offs_n, offs_d, stride_kn), mask=col_ok[None, :], other=0.0)
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
            if USE_TMA:
                v = V.load([start_n, 0])
            else:
                v = tl.load(_tile(V, start_n, offs_n, offs_d, stride_vn), mask=col_ok[:, None], other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
            m_i = m_new
        return acc, l_i, m_i

    @triton.jit
    def _attn_fwd_kernel(Q, K, V, O, LSE,
                         stride_qz, stride_qh, stride_qm,
                         stride_kz, stride_kh, stride_kn,
                         stride_vz, stride_vh, stride_vn,
                         stride_oz, stride_oh, stride_om,
                         H, N_CTX, SEQ_BUCKET, qk_scale,
                         HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                         USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # SEQ_BUCKET is unused here: it is the autotuning key (the next power of two of N_CTX).
        qk_scale = tl.cast(qk_scale, tl.float32)  # torch.compile passes Python floats as fp64
        pid_m = tl.program_id(0)
        if CAUSAL:
            # Causal work grows with the query index: launch the heaviest blocks first so the
            # cheap ones fill the tail of the last wave.
            pid_m = tl.num_programs(0) - 1 - pid_m
        out_ty = O.dtype.element_ty
        Q = _slab(Q, stride_qz, stride_qh)
        K = _slab(K, stride_kz, stride_kh)
        V = _slab(V, stride_vz, stride_vh)
        O = _slab(O, stride_oz, stride_oh)
        LSE = _row_stats(LSE, H, N_CTX)

        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < N_CTX

        if USE_TMA:
            Q = tl.make_tensor_descriptor(Q, [N_CTX, HEAD_DIM], [stride_qm, 1], [BLOCK_M, HEAD_DIM])
            K = tl.make_tensor_descriptor(K, [N_CTX, HEAD_DIM], [stride_kn, 1], [BLOCK_N, HEAD_DIM])
            V = tl.make_tensor_descriptor(V, [N_CTX, HEAD_DIM], [stride_vn, 1], [BLOCK_N, HEAD_DIM])
            O = tl.make_tensor_descriptor(O, [N_CTX, HEAD_DIM], [stride_om, 1], [BLOCK_M, HEAD_DIM])
            q = Q.load([start_m, 0])
        else:
            q = tl.load(_tile(Q, start_m, tl.arange(0, BLOCK_M), offs_d, stride_qm),
                        mask=row_ok[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        if CAUSAL:
            # Blocks fully below the diagonal need no mask (BLOCK_M % BLOCK_N == 0 keeps the
            # boundary on a key-block edge); blocks above it are never visited.
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n,
                                       offs_d, N_CTX, qk_scale, 0, start_m,
                                       False, True, BLOCK_N, DOT_PREC, USE_TMA)
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n,
                                       offs_d, N_CTX, qk_scale, start_m,
                                       tl.minimum(start_m + BLOCK_M, N_CTX),
                                       True, True, BLOCK_N, DOT_PREC, USE_TMA)
        else:
            # Full key blocks unmasked, then the ragged tail (if any) with a column mask.
            n_full = (N_CTX // BLOCK_N) * BLOCK_N
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n,
                                       offs_d, N_CTX, qk_scale, 0, n_full,
                                       False, False, BLOCK_N, DOT_PREC, USE_TMA)
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n,
                                       offs_d, N_CTX, qk_scale, n_full, N_CTX,
                                       True, False, BLOCK_N, DOT_PREC, USE_TMA)

        acc = acc / l_i[:, None]
        tl.store(LSE + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)  # base-2 LSE of scaled scores
        if USE_TMA:
            O.store([start_m, 0], acc.to(out_ty))  # rows past N_CTX are clipped by the descriptor
        else:
            tl.store(_tile(O, start_m, tl.arange(0, BLOCK_M), offs_d, stride_om), acc.to(out_ty),
                     mask=row_ok[:, None])

    # --------------------------------------------------------------------------- backward ----

    @triton.jit
    def _attn_bwd_preprocess_kernel(O, DO, DELTA,
                             stride_oz, stride_oh, stride_om,
                             stride_doz, stride_doh, stride_dom,
                             H, N_CTX,
                             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
        # delta_i = sum_j P_ij dP_ij = dO_i . O_i: the softmax-Jacobian term, once per row.
        start_m = tl.program_id(0) * BLOCK_M
        O = _slab(O, stride_oz, stride_oh)
        DO = _slab(DO, stride_doz, stride_doh)
        offs = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = start_m + offs < N_CTX
        o = tl.load(_tile(O, start_m, offs, offs_d, stride_om), mask=row_ok[:, None], other=0.0)
        do = tl.load(_tile(DO, start_m, offs, offs_d, stride_dom), mask=row_ok[:, None], other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(_row_stats(DELTA, H, N_CTX) + start_m + offs, delta, mask=row_ok)

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
            qT = tl.load(_tile_t(Q, start_m, offs_m, offs_d, stride_qm), mask=row_ok[None, :], other=0.0)
            lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
            sT = tl.dot(k, qT, input_precision=DOT_PREC) * qk_scale - lse[None, :]
            if MASK:  # diagonal blocks only: query i sees key j iff i >= j
                # Mask the exponent, not P: a masked score is not bounded by lse and could
                # overflow exp2 (harmless after a where, but it is cleaner never to make inf).
                sT = tl.where(rows[None, :] >= offs_n[:, None], sT, float("-inf"))
            pT = tl.math.exp2(sT)
            do = tl.load(_tile(DO, start_m, offs_m, offs_d, stride_dom), mask=row_ok[:, None], other=0.0)
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
                              H, N_CTX, SEQ_BUCKET, qk_scale, sm_scale,
                              HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        qk_scale = tl.cast(qk_scale, tl.float32)  # fp64 under torch.compile
        sm_scale = tl.cast(sm_scale, tl.float32)
        # causal: low key blocks see the most queries and already go first
        start_n = tl.program_id(0) * BLOCK_N
        Q = _slab(Q, stride_qz, stride_qh)
        K = _slab(K, stride_kz, stride_kh)
        V = _slab(V, stride_vz, stride_vh)
        DO = _slab(DO, stride_doz, stride_doh)
        DK = _slab(DK, stride_dkz, stride_dkh)
        DV = _slab(DV, stride_dvz, stride_dvh)
        LSE = _row_stats(LSE, H, N_CTX)
        DELTA = _row_stats(DELTA, H, N_CTX)

        tile_n = tl.arange(0, BLOCK_N)
        offs_n = start_n + tile_n
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        col_ok = offs_n < N_CTX
        # K and V stay resident for the whole query sweep.
        k = tl.load(_tile(K, start_n, tile_n, offs_d, stride_kn), mask=col_ok[:, None], other=0.0)
        v = tl.load(_tile(V, start_n, tile_n, offs_d, stride_vn), mask=col_ok[:, None], other=0.0)
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
        tl.store(_tile(DK, start_n, tile_n, offs_d, stride_dkn), dk.to(DK.dtype.element_ty),
                 mask=col_ok[:, None])
        tl.store(_tile(DV, start_n, tile_n, offs_d, stride_dvn), dv.to(DV.dtype.element_ty),
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
            kT = tl.load(_tile_t(K, start_n, offs_n, offs_d, stride_kn), mask=col_ok[None, :], other=0.0)
            vT = tl.load(_tile_t(V, start_n, offs_n, offs_d, stride_vn), mask=col_ok[None, :], other=0.0)
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
                            H, N_CTX, SEQ_BUCKET, qk_scale, sm_scale,
                            HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        qk_scale = tl.cast(qk_scale, tl.float32)  # fp64 under torch.compile
        sm_scale = tl.cast(sm_scale, tl.float32)
        pid_m = tl.program_id(0)
        if CAUSAL:  # heaviest query blocks first, as in the forward
            pid_m = tl.num_programs(0) - 1 - pid_m
        Q = _slab(Q, stride_qz, stride_qh)
        K = _slab(K, stride_kz, stride_kh)
        V = _slab(V, stride_vz, stride_vh)
        DO = _slab(DO, stride_doz, stride_doh)
        DQ = _slab(DQ, stride_dqz, stride_dqh)
        LSE = _row_stats(LSE, H, N_CTX)
        DELTA = _row_stats(DELTA, H, N_CTX)

        start_m = pid_m * BLOCK_M
        tile_m = tl.arange(0, BLOCK_M)
        offs_m = start_m + tile_m
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < N_CTX
        # Q, dO and the per-row statistics stay resident; rows past the end get lse = +inf so
        # their P row is 0.
        q = tl.load(_tile(Q, start_m, tile_m, offs_d, stride_qm), mask=row_ok[:, None], other=0.0)
        do = tl.load(_tile(DO, start_m, tile_m, offs_d, stride_dom), mask=row_ok[:, None], other=0.0)
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
        tl.store(_tile(DQ, start_m, tile_m, offs_d, stride_dqm), dq.to(DQ.dtype.element_ty),
                 mask=row_ok[:, None])

    # ------------------------------------------------------------------------- autotuning ----
    # Hopper-oriented candidates (BLOCK_M = query tile, BLOCK_N = key tile, warps, stages); each
    # call prunes them with `config_fits` before timing.

    def _cfgs(*rows):
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                for bm, bn, w, s in rows]

    CONFIGS = {
        "fwd": _cfgs((64, 64, 4, 3), (64, 64, 4, 4), (128, 32, 4, 3), (128, 64, 4, 3),
                     (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3)),
        "dkdv": _cfgs((32, 64, 4, 2), (32, 64, 4, 3), (32, 128, 8, 2), (32, 128, 8, 3),
                      (64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2), (64, 128, 8, 3)),
        "dq": _cfgs((64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 8, 3),
                    (128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 2), (128, 64, 8, 3)),
    }


# Pruning rule, calibrated against `ptxas -v` at sm_90a (`python -m kernels.aot --candidates`
# compiles every candidate; tests/test_kernels_sm90.py compiles every kept one and fails on any
# spill). A tile's register pressure is its fp32 accumulators per thread: fwd O + S
# BLOCK_M x (head_dim + BLOCK_N), dK/dV 2 BLOCK_N x (head_dim + BLOCK_M), dQ BLOCK_M x (head_dim +
# 2 BLOCK_N), over the threads. Per kernel, the budget keeps the candidates that compile without
# spilling at head dims 32/64/128 in 16-bit dtypes and drops those that spill or sit at the
# 255-register cap (triton 3.9, sequence length not a multiple of 16, fp64 scalars):
#   fwd, pointer loads  96: hd128 128x32x4w (160) spills 24 B, 128x64x4w (192) 532 B; 128x128x8w
#                           (128) needs 254 registers at hd128, 128x64x4w 242 at hd64: dropped
#   fwd, TMA loads     160: descriptors free the address registers: 128x128x8w fits at hd128 (231,
#                           pointer path 254), 128x32x4w 212 (pointer path spills); 128x64x4w (192)
#                           reaches 255 and is dropped
#   dK/dV              160: 64x64x4w and 64x128x8w (192) spill 200-330 B at hd128; 32x64x4w (160) 253
#   dQ                 128: 128x32x4w (192) spills 124 B at hd128; 64x64x4w and 128x64x8w (128) 182, 230
_BUDGET = {("fwd", False): 96, ("fwd", True): 160, "dkdv": 160, "dq": 128}
_SMEM_LIMIT = 227 * 1024  # sm_90 shared memory per block


def config_fits(kind, block_m, block_n, num_warps, num_stages, head_dim, elt_bytes, tma=False):
    """Whether a (BLOCK_M, BLOCK_N, warps, stages) candidate suits `kind` ("fwd", "dkdv", "dq")."""
    threads = 32 * num_warps
    if kind == "fwd":
        ok = block_m % block_n == 0
        acc = block_m * (head_dim + block_n) / threads
        smem = elt_bytes * head_dim * (block_m + num_stages * 2 * block_n)
        budget = _BUDGET[("fwd", bool(tma))]
    elif kind == "dkdv":
        ok = block_n % block_m == 0
        acc = 2 * block_n * (head_dim + block_m) / threads
        smem = elt_bytes * head_dim * (2 * block_n + num_stages * 2 * block_m)
        budget = _BUDGET["dkdv"]
    else:
        ok = block_m % block_n == 0
        acc = block_m * (head_dim + 2 * block_n) / threads
        smem = elt_bytes * head_dim * (2 * block_m + num_stages * 2 * block_n)
        budget = _BUDGET["dq"]
    return ok and acc <= budget and smem <= _SMEM_LIMIT


def kept_configs(kind, head_dim, elt_bytes, dot_prec="tf32", tma=False):
    """The autotune candidates for one call, after pruning (never empty)."""
    configs = CONFIGS[kind]
    if dot_prec == "ieee":
        # IEEE fp32 dots run without tensor cores and spill in every candidate (kilobytes per
        # thread at sm_90a): one small tile, no tuning; this path exists for exactness, not speed.
        return [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]
    kept = [c for c in configs
            if config_fits(kind, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages,
                           head_dim, elt_bytes, tma)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


if triton is not None:

    def _pruner(kind):
        def prune(configs, named_args, **kwargs):
            return kept_configs(kind, kwargs["HEAD_DIM"], named_args["Q"].element_size(),
                                kwargs["DOT_PREC"], kwargs.get("USE_TMA", False))
        return prune

    def _tuned(kind, kernel, key):
        return triton.autotune(configs=CONFIGS[kind], key=key, cache_results=True,
                               prune_configs_by={"early_config_prune": _pruner(kind)})(kernel)

    # The autotuner adds the tensors' dtypes to the key itself.
    _KEY = ["SEQ_BUCKET", "HEAD_DIM", "CAUSAL", "DOT_PREC"]
    _attn_fwd_tuned = _tuned("fwd", _attn_fwd_kernel, _KEY + ["USE_TMA"])
    _attn_bwd_dkdv_tuned = _tuned("dkdv", _attn_bwd_dkdv_kernel, _KEY)
    _attn_bwd_dq_tuned = _tuned("dq", _attn_bwd_dq_kernel, _KEY)


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
    if q.shape[0] > MAX_GRID_YZ or q.shape[1] > MAX_GRID_YZ:
        return (f"batch {q.shape[0]} and heads {q.shape[1]} must each be at most {MAX_GRID_YZ} "
                "(CUDA grid limit); split the batch")
    if q.shape[2] * q.shape[3] >= 2**31:
        return f"seq {q.shape[2]} x head_dim {q.shape[3]} must be below 2**31 (int32 offsets inside one head)"
    return None


def route(q, k, v, backend="auto", device_type=None):
    """"triton" or "torch" for an attention call; raises ValueError for backend "triton" with
    inputs the kernel cannot take. `device_type` defaults to the tensors' (tests pass "cuda" to
    check the GPU decision on a CPU)."""
    device_type = device_type or dispatch.device_of(q, k, v)
    if dispatch.choose(backend, device_type) == "torch":
        return "torch"
    reason = _unsupported_reason(q, k, v)
    if reason is None and backend == "auto" and q.dtype == torch.float32:
        reason = "float32 on CUDA goes to SDPA (the kernel's IEEE fp32 dots have no tensor cores and spill)"
    if reason is None:
        return "triton"
    if backend == "triton":
        raise ValueError(f"attention backend 'triton': {reason}")
    return "torch"


def _aligned_16(t):
    # The kernels take batch/head/seq strides and assume a unit head_dim stride. Row strides and
    # slab starts that are multiples of 16 elements let the compiler vectorise every load (and are
    # what TMA descriptors require); anything else is copied once.
    return t.stride(-1) == 1 and all(s % 16 == 0 for s in t.stride()[:3]) and t.storage_offset() % 16 == 0


def _in_int32(t):
    # In-slab offsets are int32 (int64 ones cost registers, see `_tile`): the last valid row must
    # start below 2**31 elements. A long sequence of a wide packed projection (128K tokens of qkv
    # at width 8192: 3.2e9) is copied to (batch, heads, seq, head_dim), where the row stride is
    # head_dim. Masked rows past the end may wrap; they are never read or written.
    return t.shape[2] * t.stride(2) < 2**31


def _prepare(t):
    return t if _aligned_16(t) and _in_int32(t) else t.contiguous()


def _use_tma(q, k, v):
    # Descriptors need 16-byte aligned slabs and row strides (`_prepare` ensured both) that are
    # not zero (an expanded tensor); they exist from sm_90 on.
    if any(t.stride(2) == 0 for t in (q, k, v)):
        return False
    if interpreter_on():
        return _INTERPRET_TMA
    return (q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9
            and hasattr(tl, "make_tensor_descriptor"))


def _tma_scratch(size, alignment, stream):
    # Device-side TMA descriptors live in a small global buffer that Triton asks for at launch.
    return torch.empty(size, dtype=torch.int8, device="cpu" if interpreter_on() else "cuda")


def _dot_precision(dtype):
    # float32 inputs follow torch's matmul TF32 switch (off by default: exact IEEE float32);
    # for 16-bit inputs the setting is ignored by tl.dot.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def preprocess_block(head_dim):
    return 128 if head_dim <= 64 else 64  # memory-bound: big tiles, bounded registers


def _launch(tuned, plain, stage, n_ctx, heads, batch, *args, **meta):
    """Launch autotuned on a GPU, or with the fixed interpreter blocks under TRITON_INTERPRET.
    Grid: (sequence blocks, heads, batch)."""
    outer, inner = ("BLOCK_N", "BLOCK_M") if stage == "dkdv" else ("BLOCK_M", "BLOCK_N")
    if interpreter_on():
        blocks = _INTERPRET_BLOCKS[stage]
        if blocks[outer] % blocks[inner] != 0:
            raise ValueError(f"attention {stage}: {outer} must be a multiple of {inner}, got {blocks}")
        plain[(triton.cdiv(n_ctx, blocks[outer]), heads, batch)](*args, **meta, **blocks)
    else:
        tuned[lambda m: (triton.cdiv(n_ctx, m[outer]), heads, batch)](*args, **meta)


def _on_device_of(t):
    # Triton launches on the current CUDA device; make that the tensors' device (multi-GPU).
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal):
        q, k, v = (_prepare(t) for t in (q, k, v))
        B, H, N, D = q.shape
        # O is laid out (batch, seq, heads, head_dim): the model's o.transpose(1, 2).reshape(B, S, C)
        # is then a view, and the upstream gradient arrives in the same free layout.
        o = torch.empty((B, N, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)
        if not _in_int32(o):
            o = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
        lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
        dispatch.poison(o, lse)
        sm_scale = 1.0 / math.sqrt(D)
        seq_bucket = triton.next_power_of_2(N)
        meta = dict(HEAD_DIM=D, CAUSAL=bool(causal), DOT_PREC=_dot_precision(q.dtype))
        use_tma = _use_tma(q, k, v)
        with _on_device_of(q):
            if use_tma:
                triton.set_allocator(_tma_scratch)
            _launch(_attn_fwd_tuned, _attn_fwd_kernel, "fwd", N, H, B,
                    q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
                    H, N, seq_bucket, sm_scale * _LOG2E, USE_TMA=use_tma, **meta)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.sm_scale = sm_scale
        ctx.meta = meta
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        do = _prepare(do)
        B, H, N, D = q.shape
        sm_scale, meta = ctx.sm_scale, ctx.meta
        dq, dk, dv = (torch.empty((B, H, N, D), dtype=q.dtype, device=q.device) for _ in range(3))
        delta = torch.empty_like(lse)
        dispatch.poison(dq, dk, dv, delta)

        pre_block = _INTERPRET_BLOCKS["pre"]["BLOCK_M"] if interpreter_on() else preprocess_block(D)
        common = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
        scales = (H, N, triton.next_power_of_2(N), sm_scale * _LOG2E, sm_scale)
        with _on_device_of(q):
            _attn_bwd_preprocess_kernel[(triton.cdiv(N, pre_block), H, B)](
                o, do, delta, *_strides(o), *_strides(do), H, N, HEAD_DIM=D, BLOCK_M=pre_block)
            _launch(_attn_bwd_dkdv_tuned, _attn_bwd_dkdv_kernel, "dkdv", N, H, B,
                    q, k, v, do, dk, dv, lse, delta, *common, *_strides(dk), *_strides(dv), *scales,
                    **meta)
            _launch(_attn_bwd_dq_tuned, _attn_bwd_dq_kernel, "dq", N, H, B,
                    q, k, v, do, dq, lse, delta, *common, *_strides(dq), *scales, **meta)
        return dq, dk, dv, None


def attention(q, k, v, causal=True, backend="auto"):
    """Attention over (batch, heads, seq, head_dim) tensors with softmax scale 1/sqrt(head_dim).

    backend "triton" runs the FlashAttention kernel and raises ValueError for inputs it does not
    support (head_dim other than 32/64/128, float64, mismatched shapes). "auto" uses the kernel
    for 16-bit inputs on CUDA and PyTorch SDPA otherwise (float32, CPU, unsupported shapes).
    "torch" always uses SDPA.
    """
    if route(q, k, v, backend) == "torch":
        return attention_reference(q, k, v, causal)
    return _FlashAttention.apply(q, k, v, causal)
