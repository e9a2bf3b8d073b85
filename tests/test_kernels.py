"""Triton kernels (rmsnorm, swiglu, rope, fused linear cross-entropy) against float64 references.

On CPU the kernels run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
in float32 and float16, on small odd shapes, with output buffers poisoned with NaN so unwritten
elements show. bfloat16 is GPU-only: the interpreter emulates it through numpy, which has no
bfloat16, and its results are not the kernel's (attention comes out with relative errors around
1e9 and exp2 overflow warnings), so `gpu`-marked tests check bfloat16 at realistic sizes.
Compilation for sm_90a (registers, spills, tensor cores) is tests/test_kernels_sm90.py.
"""
import importlib

import pytest
import torch

from kernels import check_backend, linear_cross_entropy, rms_norm, rope, rope_qk, swiglu, swiglu_packed
from kernels.cross_entropy import linear_cross_entropy_reference
from kernels.rmsnorm import rms_norm_reference
from kernels.rope import rope_qk_reference, rope_reference
from kernels.swiglu import swiglu_reference

# kernels/__init__ re-exports functions named like their modules (kernels.swiglu, kernels.rope),
# so `import kernels.swiglu as m` would give the function: fetch the modules explicitly.
rms_mod = importlib.import_module("kernels.rmsnorm")
swiglu_mod = importlib.import_module("kernels.swiglu")
rope_mod = importlib.import_module("kernels.rope")
ce_mod = importlib.import_module("kernels.cross_entropy")
dispatch = importlib.import_module("kernels.dispatch")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL32 = 1e-4
TOL16 = 2e-3  # float16 inputs and outputs (11-bit mantissa), float32 math inside
TOL_BF16 = 1e-2


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(dispatch, "POISON", True)


def rel_err(ours, ref):
    ours = ours.detach().to(torch.float64)
    ref = ref.detach().to(torch.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert torch.isfinite(ours).all(), "non-finite values (unwritten / poisoned elements?)"
    denom = ref.norm()
    return ((ours - ref).norm() / (denom if denom > 0 else 1.0)).item()


def leaf(t, dtype=None):
    t = t.detach()
    if dtype is not None:
        t = t.to(dtype)
    return t.clone().requires_grad_(True)


def grads_of(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out)


# ----------------------------------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("shape", [(123, 96), (3, 41, 96), (5, 7, 80)])
def test_rms_norm_matches_float64_reference(shape):
    D = shape[-1]
    x = torch.randn(shape, device=DEV) * 2.0 + 0.3
    w = torch.randn(D, device=DEV)
    gy = torch.randn(shape, device=DEV)

    xo, wo = leaf(x), leaf(w)
    y = rms_norm(xo, wo, eps=1e-6, backend="triton")
    dx, dw = grads_of(y, (xo, wo), gy)

    xr, wr = leaf(x, torch.float64), leaf(w, torch.float64)
    yr = rms_norm_reference(xr, wr, eps=1e-6)
    dxr, dwr = grads_of(yr, (xr, wr), gy.double())

    assert y.dtype == x.dtype and y.shape == x.shape
    assert rel_err(y, yr) <= TOL32
    assert rel_err(dx, dxr) <= TOL32
    assert rel_err(dw, dwr) <= TOL32


def test_rms_norm_noncontiguous_input():
    base = torch.randn(96, 123, device=DEV, requires_grad=True)
    x = base.t()  # (123, 96) view, last-dim stride != 1
    w = torch.randn(96, device=DEV)
    gy = torch.randn(123, 96, device=DEV)
    y = rms_norm(x, w, backend="triton")
    (dbase,) = grads_of(y, (base,), gy)
    baser = leaf(base, torch.float64)
    yr = rms_norm_reference(baser.t(), w.double())
    (dbaser,) = grads_of(yr, (baser,), gy.double())
    assert rel_err(y, yr) <= TOL32
    assert rel_err(dbase, dbaser) <= TOL32


def test_rms_norm_width_limit(monkeypatch):
    # Rows wider than MAX_WIDTH would spill in the backward: "triton" refuses, "auto" (on CUDA)
    # takes the reference.
    D = rms_mod.MAX_WIDTH + 16
    x, w = torch.randn(3, D, device=DEV), torch.randn(D, device=DEV)
    with pytest.raises(ValueError, match=f"width {D} is above {rms_mod.MAX_WIDTH}"):
        rms_norm(x, w, backend="triton")
    monkeypatch.setattr(dispatch, "device_of", lambda *tensors: "cuda")
    monkeypatch.setattr(rms_mod._RMSNormFn, "apply", lambda *a: pytest.fail("kernel launched"))
    assert torch.equal(rms_norm(x, w, backend="auto"), rms_norm_reference(x, w))


# ----------------------------------------------------------------------------------------- SwiGLU


@pytest.mark.parametrize("shape", [(7, 11, 13), (1001,), (37, 129)])
def test_swiglu_matches_float64_reference(shape):
    g = torch.randn(shape, device=DEV) * 3.0
    u = torch.randn(shape, device=DEV)
    go = torch.randn(shape, device=DEV)

    ga, ua = leaf(g), leaf(u)
    out = swiglu(ga, ua, backend="triton")
    dg, du = grads_of(out, (ga, ua), go)

    gr, ur = leaf(g, torch.float64), leaf(u, torch.float64)
    outr = swiglu_reference(gr, ur)
    dgr, dur = grads_of(outr, (gr, ur), go.double())

    assert out.shape == g.shape and out.dtype == g.dtype
    assert rel_err(out, outr) <= TOL32
    assert rel_err(dg, dgr) <= TOL32
    assert rel_err(du, dur) <= TOL32


def test_swiglu_on_chunked_projection_views():
    # gate/up as the two halves of a fused projection: row-strided views, read in place.
    h = torch.randn(3, 19, 2 * 45, device=DEV, requires_grad=True)
    gate, up = h.chunk(2, dim=-1)
    out = swiglu(gate, up, backend="triton")
    go = torch.randn_like(out)
    (dh,) = torch.autograd.grad(out, h, go)

    hr = leaf(h, torch.float64)
    gr, ur = hr.chunk(2, dim=-1)
    outr = swiglu_reference(gr, ur)
    (dhr,) = torch.autograd.grad(outr, hr, go.double())
    assert rel_err(out, outr) <= TOL32
    assert rel_err(dh, dhr) <= TOL32


def test_swiglu_packed_matches_float64_reference_without_a_concatenation():
    h = torch.randn(3, 19, 2 * 45, device=DEV, requires_grad=True)
    out = swiglu_packed(h, backend="triton")
    go = torch.randn_like(out)
    (dh,) = torch.autograd.grad(out, h, go)
    hr = leaf(h, torch.float64)
    outr = swiglu_reference(*hr.chunk(2, dim=-1))
    (dhr,) = torch.autograd.grad(outr, hr, go.double())
    assert out.shape == (3, 19, 45)
    assert rel_err(out, outr) <= TOL32
    assert rel_err(dh, dhr) <= TOL32
    # The backward's one buffer: d(gate) and d(up) written side by side, no cat (autograd's chunk
    # backward would be a CatBackward / a copy into a new tensor).
    assert "Cat" not in type(out.grad_fn).__name__
    with pytest.raises(ValueError, match="last dim must be even"):
        swiglu_packed(torch.randn(4, 7, device=DEV), backend="triton")


@pytest.mark.parametrize("packed", [False, True], ids=["gate-up", "packed"])
def test_swiglu_float16(packed):
    h = (torch.randn(37, 2 * 129, device=DEV) * 3.0).half().requires_grad_()
    go = torch.randn(37, 129, device=DEV).half()
    out = swiglu_packed(h, backend="triton") if packed else swiglu(*h.chunk(2, dim=-1), backend="triton")
    (dh,) = torch.autograd.grad(out, h, go)
    hr = leaf(h, torch.float64)
    outr = swiglu_reference(*hr.chunk(2, dim=-1))
    (dhr,) = torch.autograd.grad(outr, hr, go.double())
    assert out.dtype == dh.dtype == torch.float16
    assert rel_err(out, outr) <= TOL16
    assert rel_err(dh, dhr) <= TOL16


# ------------------------------------------------------------------------------------------- RoPE


def rope_tables(seq, head_dim, base=10000.0, device=DEV):
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    ang = torch.arange(seq, dtype=torch.float64, device=device)[:, None] * inv[None, :]
    return ang.cos().float(), ang.sin().float()


def test_rope_matches_float64_reference():
    B, H, T, D = 2, 3, 67, 32
    x = torch.randn(B, H, T, D, device=DEV)
    cos, sin = rope_tables(T, D)
    gy = torch.randn(B, H, T, D, device=DEV)

    xo = leaf(x)
    y = rope(xo, cos, sin, backend="triton")
    (dx,) = grads_of(y, (xo,), gy)

    xr = leaf(x, torch.float64)
    yr = rope_reference(xr, cos.double(), sin.double())
    (dxr,) = grads_of(yr, (xr,), gy.double())

    assert y.shape == x.shape and y.dtype == x.dtype
    assert rel_err(y, yr) <= TOL32
    assert rel_err(dx, dxr) <= TOL32
    # The rotation preserves norms pairwise: the backward is the inverse rotation.
    assert rel_err(rope(y, cos, -sin, backend="triton"), x) <= TOL32


def test_rope_on_transposed_qkv_view_and_long_table():
    B, T, H, D = 2, 67, 3, 32
    qkv = torch.randn(B, T, 3, H, D, device=DEV, requires_grad=True)
    q = qkv[:, :, 0].transpose(1, 2)  # (B, H, T, D), non-contiguous
    assert not q.is_contiguous()
    cos, sin = rope_tables(T + 29, D)  # a table longer than seq: first T rows are used
    y = rope(q, cos, sin, backend="triton")
    gy = torch.randn_like(y)
    (dqkv,) = torch.autograd.grad(y, qkv, gy)

    qkvr = leaf(qkv, torch.float64)
    qr = qkvr[:, :, 0].transpose(1, 2)
    yr = rope_reference(qr, cos[:T].double(), sin[:T].double())
    (dqkvr,) = torch.autograd.grad(yr, qkvr, gy.double())
    assert rel_err(y, yr) <= TOL32
    assert rel_err(dqkv, dqkvr) <= TOL32


def test_rope_rejects_bad_tables():
    x = torch.randn(1, 2, 8, 16, device=DEV)
    cos, sin = rope_tables(8, 16)
    with pytest.raises(ValueError, match="cos and sin"):
        rope(x, cos[:, :4], sin[:, :4], backend="torch")
    with pytest.raises(ValueError, match="cos and sin"):
        rope(x, cos[:5], sin[:5], backend="torch")


def test_rope_qk_rotates_q_and_k_in_place():
    B, T, H, D = 2, 67, 3, 32
    base = torch.randn(B, T, 3 * H * D, device=DEV, requires_grad=True)
    cos, sin = rope_tables(T + 5, D)
    qkv = base * 1.0  # a non-leaf, like the projection output
    view = qkv.view(B, T, 3, H, D)
    out = rope_qk(view, cos, sin, backend="triton")
    assert out.data_ptr() == qkv.data_ptr() and out.shape == (B, T, 3, H, D)  # no copy of q, k
    go = torch.randn_like(out)
    (dbase,) = torch.autograd.grad(out, base, go)

    baser = leaf(base, torch.float64)
    outr = rope_qk_reference(baser.view(B, T, 3, H, D), cos[:T].double(), sin[:T].double())
    (dbaser,) = torch.autograd.grad(outr, baser, go.double())
    assert rel_err(out, outr) <= TOL32
    assert torch.equal(out[:, :, 2].detach(), base.view(B, T, 3, H, D)[:, :, 2].detach())  # v untouched
    assert rel_err(dbase, dbaser) <= TOL32
    # the packed reference agrees with rotating q and k one at a time
    q = baser.view(B, T, 3, H, D)[:, :, 0].transpose(1, 2)
    assert rel_err(outr[:, :, 0].transpose(1, 2), rope_reference(q, cos[:T].double(), sin[:T].double())) == 0


def test_rope_qk_rejects_a_non_packed_layout():
    cos, sin = rope_tables(8, 16)
    qkv = torch.randn(2, 8, 3, 16, 4, device=DEV).transpose(3, 4)  # heads not contiguous before dim
    with pytest.raises(ValueError, match="packed projection"):
        rope_qk(qkv, cos, sin, backend="triton")
    with pytest.raises(ValueError, match="batch, seq, 3, heads"):
        rope_qk(torch.randn(2, 8, 2, 4, 16, device=DEV), cos, sin, backend="triton")


# ----------------------------------------------------------------------------- fused linear + CE


def ce_inputs(N=123, D=48, V=301, ignore_frac=0.2, device=DEV):
    x = torch.randn(N, D, device=device)
    w = torch.randn(V, D, device=device) * 0.3
    t = torch.randint(0, V, (N,), device=device)
    t[torch.rand(N, device=device) < ignore_frac] = -100
    if ignore_frac > 0 and N >= 2:  # small N: make sure both kinds of row are present
        t[0] = -100
        t[1] = torch.randint(0, V, (), device=device)
    return x, w, t


def assert_ce_matches_float64(x, w, t, **kwargs):
    """The Triton loss and both gradients against the float64 reference, float32 tolerance."""
    xo, wo = leaf(x), leaf(w)
    loss = linear_cross_entropy(xo, wo, t, backend="triton", **kwargs)
    dx, dw = torch.autograd.grad(loss, (xo, wo))
    xr, wr = leaf(x, torch.float64), leaf(w, torch.float64)
    lossr = linear_cross_entropy_reference(xr, wr, t)
    dxr, dwr = torch.autograd.grad(lossr, (xr, wr))
    assert rel_err(loss, lossr) <= TOL32
    assert rel_err(dx, dxr) <= TOL32
    assert rel_err(dw, dwr) <= TOL32


@pytest.mark.parametrize("chunk_size", [None, 40, 1])
def test_linear_cross_entropy_matches_float64_reference(chunk_size):
    if chunk_size == 1:
        x, w, t = ce_inputs(N=9)  # one token per chunk: keep the interpreter run short
    else:
        x, w, t = ce_inputs()
    assert (t == -100).any() and (t != -100).any()
    scale = 1.7  # grad_output != 1 must scale both gradients

    xo, wo = leaf(x), leaf(w)
    loss = linear_cross_entropy(xo, wo, t, backend="triton", chunk_size=chunk_size)
    dx, dw = torch.autograd.grad(loss * scale, (xo, wo))

    xr, wr = leaf(x, torch.float64), leaf(w, torch.float64)
    lossr = linear_cross_entropy_reference(xr, wr, t)
    dxr, dwr = torch.autograd.grad(lossr * scale, (xr, wr))

    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert rel_err(loss, lossr) <= TOL32
    assert rel_err(dx, dxr) <= TOL32
    assert rel_err(dw, dwr) <= TOL32


def test_linear_cross_entropy_small_chunk_budget(monkeypatch):
    # The default chunking comes from the byte budget: shrink it so several chunks are used.
    x, w, t = ce_inputs(N=50)
    monkeypatch.setattr(ce_mod, "CHUNK_BYTES", 301 * 4 * 16)  # 16 rows of float32 logits
    assert ce_mod._chunk_rows(50, 301, torch.float32, None) == 13  # 4 even chunks of <= 16 rows
    assert ce_mod._chunk_rows(48, 301, torch.float32, None) == 16
    assert ce_mod._chunk_rows(50, 301, torch.float32, 7) == 7
    assert_ce_matches_float64(x, w, t)


def test_linear_cross_entropy_all_ignored_is_zero():
    x, w, _ = ce_inputs(N=37)
    t = torch.full((37,), -100, dtype=torch.long, device=DEV)
    xo, wo = leaf(x), leaf(w)
    loss = linear_cross_entropy(xo, wo, t, backend="triton", chunk_size=16)
    dx, dw = torch.autograd.grad(loss, (xo, wo))
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert torch.count_nonzero(dx) == 0 and torch.count_nonzero(dw) == 0


def test_linear_cross_entropy_custom_ignore_index_and_3d_input():
    x, w, t = ce_inputs(N=60)
    t[t == -100] = 7  # token 7 is now the ignored one
    x3, t3 = x.view(4, 15, 48), t.view(4, 15)
    xo, wo = leaf(x3), leaf(w)
    loss = linear_cross_entropy(xo, wo, t3, ignore_index=7, backend="triton", chunk_size=32)
    dx, dw = torch.autograd.grad(loss, (xo, wo))
    xr, wr = leaf(x, torch.float64), leaf(w, torch.float64)
    lossr = linear_cross_entropy_reference(xr, wr, t, ignore_index=7)
    dxr, dwr = torch.autograd.grad(lossr, (xr, wr))
    assert dx.shape == x3.shape
    assert rel_err(loss, lossr) <= TOL32
    assert rel_err(dx, dxr.view(4, 15, 48)) <= TOL32
    assert rel_err(dw, dwr) <= TOL32


def test_linear_cross_entropy_tied_embedding_weight():
    V, D, N = 301, 48, 41
    w = torch.randn(V, D, device=DEV) * 0.3
    idx = torch.randint(0, V, (N,), device=DEV)
    t = torch.randint(0, V, (N,), device=DEV)
    lin = torch.randn(D, D, device=DEV) / D**0.5

    def run(weight, fn):
        h = torch.nn.functional.embedding(idx, weight) @ lin.to(weight.dtype)
        return fn(h, weight, t)

    wo = leaf(w)
    loss = run(wo, lambda h, W, tt: linear_cross_entropy(h, W, tt, backend="triton", chunk_size=16))
    (dw,) = torch.autograd.grad(loss, (wo,))
    wr = leaf(w, torch.float64)
    lossr = run(wr, linear_cross_entropy_reference)
    (dwr,) = torch.autograd.grad(lossr, (wr,))
    assert rel_err(loss, lossr) <= TOL32
    assert rel_err(dw, dwr) <= TOL32


def test_linear_cross_entropy_without_grad():
    x, w, t = ce_inputs(N=20)
    with torch.no_grad():
        loss = linear_cross_entropy(x.requires_grad_(), w, t, backend="triton")
    lossr = linear_cross_entropy_reference(x.double(), w.double(), t)
    assert loss.grad_fn is None
    assert rel_err(loss, lossr) <= TOL32


@pytest.mark.parametrize("V", [23, 256, 257], ids=["V<block", "V=2blocks", "V=2blocks+1"])
def test_linear_cross_entropy_vocab_against_the_block(V):
    # The kernel reads whole blocks unmasked and then one masked tail block (interpreter block:
    # 128): a vocabulary below one block, an exact multiple (all-masked tail) and one past it.
    x, w, t = ce_inputs(N=30, V=V)
    t[2] = V - 1  # the last logit is a target: the tail's target handling is exercised
    assert_ce_matches_float64(x, w, t, chunk_size=16)


def test_linear_cross_entropy_float16_scales_after_the_kernel(monkeypatch):
    # float16 keeps (softmax - onehot) unscaled in the kernel and applies 1/n_valid with
    # grad_output afterwards (the scaled probabilities would underflow float16): check that this
    # branch is the one taken, and that it gives the float64 answer. The spy also checks that the
    # logits rows the kernel reads are padded to a multiple of 16 elements.
    scales = []
    real = ce_mod._ce_loss_grad_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(logits, stride, targets, loss, scale, *args, **kwargs):
                scales.append(scale.item())
                # rows padded to 16 elements (vector loads in the kernel; see test_kernels_sm90)
                assert stride % 16 == 0 and stride >= logits.shape[1] == 301
                return real[grid](logits, stride, targets, loss, scale, *args, **kwargs)
            return launch

    monkeypatch.setattr(ce_mod, "_ce_loss_grad_kernel", Spy())
    x, w, t = ce_inputs(N=64)  # V = 301
    x16, w16 = leaf(x, torch.float16), leaf(w, torch.float16)
    loss = linear_cross_entropy(x16, w16, t, backend="triton", chunk_size=40)
    dx, dw = torch.autograd.grad(loss * 1.7, (x16, w16))
    assert scales and all(s == 1.0 for s in scales)  # unscaled in the kernel
    xr, wr = leaf(x16, torch.float64), leaf(w16, torch.float64)
    lossr = linear_cross_entropy_reference(xr, wr, t)
    dxr, dwr = torch.autograd.grad(lossr * 1.7, (xr, wr))
    assert dx.dtype == dw.dtype == torch.float16
    assert rel_err(loss, lossr) <= TOL16
    assert rel_err(dx, dxr) <= TOL16
    assert rel_err(dw, dwr) <= TOL16


# ------------------------------------------------------------------------------ backends, errors


def test_torch_backend_is_the_reference():
    x = torch.randn(5, 16, device=DEV)
    w = torch.randn(16, device=DEV)
    assert torch.equal(rms_norm(x, w, backend="torch"), rms_norm_reference(x, w))
    g, u = torch.randn(5, 16, device=DEV), torch.randn(5, 16, device=DEV)
    assert torch.equal(swiglu(g, u, backend="torch"), swiglu_reference(g, u))
    q = torch.randn(1, 2, 6, 16, device=DEV)
    cos, sin = rope_tables(6, 16)
    assert torch.equal(rope(q, cos, sin, backend="torch"), rope_reference(q, cos, sin))
    xe, we, te = ce_inputs(N=10, D=16, V=23)
    assert torch.equal(
        linear_cross_entropy(xe, we, te, backend="torch"), linear_cross_entropy_reference(xe, we, te)
    )


def test_auto_backend_on_cpu_uses_reference():
    if torch.cuda.is_available():
        pytest.skip("auto picks Triton on CUDA")
    x, w = torch.randn(4, 8), torch.randn(8)
    assert torch.equal(rms_norm(x, w), rms_norm_reference(x, w))


@pytest.mark.parametrize("name", ["rms_norm", "swiglu", "rope", "linear_cross_entropy"])
def test_bad_backend_name_errors(name):
    x = torch.randn(1, 2, 4, 8)
    calls = {
        "rms_norm": lambda: rms_norm(x, torch.randn(8), backend="cuda"),
        "swiglu": lambda: swiglu(x, x, backend="cuda"),
        "rope": lambda: rope(x, torch.ones(4, 4), torch.zeros(4, 4), backend="cuda"),
        "linear_cross_entropy": lambda: linear_cross_entropy(
            x.view(8, 8), torch.randn(5, 8), torch.zeros(8, dtype=torch.long), backend="cuda"
        ),
    }
    with pytest.raises(ValueError, match="backend must be one of"):
        calls[name]()


def test_check_backend_for_config_validation(monkeypatch):
    assert check_backend("auto", "cpu") is None and check_backend("torch", "cpu") is None
    assert check_backend("triton", "cuda") is None
    problem = check_backend("cuda", "cuda")
    assert "'cuda'" in problem and "('auto', 'triton', 'torch')" in problem  # names the value and the choices
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    problem = check_backend("triton", "cpu")
    assert "needs a CUDA device" in problem and "TRITON_INTERPRET=1" in problem
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert check_backend("triton", "cpu") is None


# ------------------------------------------------------------------------------------- GPU, bf16


def _bf16_check(ours, ref):
    assert not torch.isnan(ours).any()
    assert rel_err(ours.float(), ref) <= TOL_BF16


@pytest.mark.gpu
def test_gpu_rms_norm_bf16():
    x = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    w = (1 + 0.1 * torch.randn(4096, device="cuda")).to(torch.bfloat16)
    gy = torch.randn_like(x)
    xo, wo = leaf(x), leaf(w)
    y = rms_norm(xo, wo, backend="triton")
    dx, dw = grads_of(y, (xo, wo), gy)
    xr, wr = leaf(x, torch.float64), leaf(w, torch.float64)
    yr = rms_norm_reference(xr, wr)
    dxr, dwr = grads_of(yr, (xr, wr), gy.double())
    _bf16_check(y, yr)
    _bf16_check(dx, dxr)
    _bf16_check(dw, dwr)


@pytest.mark.gpu
def test_gpu_swiglu_bf16():
    g = torch.randn(8192, 3072, device="cuda", dtype=torch.bfloat16) * 2
    u = torch.randn_like(g)
    go = torch.randn_like(g)
    ga, ua = leaf(g), leaf(u)
    out = swiglu(ga, ua, backend="triton")
    dg, du = grads_of(out, (ga, ua), go)
    gr, ur = leaf(g, torch.float64), leaf(u, torch.float64)
    outr = swiglu_reference(gr, ur)
    dgr, dur = grads_of(outr, (gr, ur), go.double())
    _bf16_check(out, outr)
    _bf16_check(dg, dgr)
    _bf16_check(du, dur)


@pytest.mark.gpu
def test_gpu_packed_swiglu_and_rope_qk_bf16():
    h = torch.randn(4096, 2 * 2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    go = torch.randn(4096, 2048, device="cuda", dtype=torch.bfloat16)
    (dh,) = torch.autograd.grad(swiglu_packed(h, backend="triton"), h, go)
    hr = leaf(h, torch.float64)
    (dhr,) = torch.autograd.grad(swiglu_reference(*hr.chunk(2, dim=-1)), hr, go.double())
    _bf16_check(dh, dhr)
    B, T, H, D = 4, 1024, 12, 64
    base = torch.randn(B, T, 3 * H * D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cos, sin = rope_tables(T, D, device="cuda")
    out = rope_qk((base * 1).view(B, T, 3, H, D), cos, sin, backend="triton")
    go = torch.randn_like(out)
    (db,) = torch.autograd.grad(out, base, go)
    br = leaf(base, torch.float64)
    outr = rope_qk_reference(br.view(B, T, 3, H, D), cos.double(), sin.double())
    (dbr,) = torch.autograd.grad(outr, br, go.double())
    _bf16_check(out, outr)
    _bf16_check(db, dbr)


@pytest.mark.gpu
def test_gpu_rope_bf16():
    B, H, T, D = 4, 16, 2048, 128
    x = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
    cos, sin = rope_tables(T, D, device="cuda")
    gy = torch.randn_like(x)
    xo = leaf(x)
    y = rope(xo, cos, sin, backend="triton")
    (dx,) = grads_of(y, (xo,), gy)
    xr = leaf(x, torch.float64)
    yr = rope_reference(xr, cos.double(), sin.double())
    (dxr,) = grads_of(yr, (xr,), gy.double())
    _bf16_check(y, yr)
    _bf16_check(dx, dxr)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_linear_cross_entropy_realistic(dtype):
    N, D, V = 8192, 768, 50257
    x = torch.randn(N, D, device="cuda").to(dtype)
    w = (torch.randn(V, D, device="cuda") * 0.05).to(dtype)
    t = torch.randint(0, V, (N,), device="cuda")
    t[torch.rand(N, device="cuda") < 0.1] = -100
    xo, wo = leaf(x), leaf(w)
    loss = linear_cross_entropy(xo, wo, t, backend="triton")
    dx, dw = torch.autograd.grad(loss, (xo, wo))
    xr, wr = leaf(x, torch.float32), leaf(w, torch.float32)
    lossr = linear_cross_entropy_reference(xr, wr, t)
    dxr, dwr = torch.autograd.grad(lossr, (xr, wr))
    assert dx.dtype == dtype and dw.dtype == dtype
    _bf16_check(loss, lossr)
    _bf16_check(dx, dxr)
    _bf16_check(dw, dwr)


@pytest.mark.gpu
def test_gpu_linear_cross_entropy_cuda_graph_capture():
    # No host synchronisation inside: the whole forward + backward can be captured.
    N, D, V = 1024, 256, 5003
    x = torch.randn(N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(V, D, device="cuda") * 0.05).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, V, (N,), device="cuda")
    t[::5] = -100

    def step():
        loss = linear_cross_entropy(x, w, t, backend="triton", chunk_size=300)
        return (loss,) + torch.autograd.grad(loss, (x, w))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        eager = step()  # warm-up (compiles the kernel) outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
def test_gpu_linear_cross_entropy_more_than_2pow31_logits_in_a_chunk():
    # One chunk holding > 2^31 logits: row offsets inside the kernel must be int64.
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip("needs ~40 GiB of free GPU memory")
    N, D, V = 43000, 64, 50257
    assert N * V > 2**31
    x = torch.randn(N, D, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(V, D, device="cuda") * 0.05).to(torch.bfloat16)
    t = torch.randint(0, V, (N,), device="cuda")
    t[-5:] = torch.arange(V - 5, V, device="cuda")  # tail rows, last vocab entries
    xo, wo = leaf(x), leaf(w)
    loss = linear_cross_entropy(xo, wo, t, backend="triton", chunk_size=N)
    dx, _ = torch.autograd.grad(loss, (xo, wo))
    with torch.no_grad():
        ref_rows = torch.cat([
            torch.nn.functional.cross_entropy(
                (x[i:i + 4096].float() @ w.float().t()), t[i:i + 4096], reduction="none"
            )
            for i in range(0, N, 4096)
        ])
    _bf16_check(loss, ref_rows.mean())
    assert not torch.isnan(dx[-100:]).any() and dx[-100:].abs().sum() > 0
