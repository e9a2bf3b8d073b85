"""kernels.attention: the Triton FlashAttention kernel (forward + backward) against a float64 reference.

On CPU the kernel runs under the Triton interpreter (set by conftest) in float32 and float16, on
both forward load paths (Hopper TMA descriptors and plain pointers). bfloat16 is GPU-only: the
interpreter emulates it through numpy, which has no bfloat16, and gets relative errors around 1e9
with exp2 overflow warnings, so `gpu` tests cover bfloat16 (and long sequences). Every Triton call
runs with `kernels.dispatch.POISON` on, so any output element a kernel forgets to write comes back
as NaN and fails the comparison.
"""
import importlib
import math

import pytest
import torch

from kernels import attention
from kernels.dispatch import interpreter_on

# `kernels.attention` the attribute is the function; the module holds the test hooks.
attn_mod = importlib.import_module("kernels.attention")
dispatch = importlib.import_module("kernels.dispatch")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(dispatch, "POISON", True)


@pytest.fixture(params=[True, False], ids=["tma", "pointers"])
def load_path(request, monkeypatch):
    """Run the forward through TMA descriptors (Hopper) or plain pointer loads (older GPUs)."""
    monkeypatch.setattr(attn_mod, "_INTERPRET_TMA", request.param)
    return request.param


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(shape, dtype, device, scale=1.0, layout="bhsd"):
    """Fresh random q, k, v (leaf tensors requiring grad). layout 'bshd' gives the strided
    (batch, heads, seq, dim) views a GPT gets from splitting its qkv projection."""
    b, h, s, d = shape
    out = []
    for _ in range(3):
        if layout == "bshd":
            base = (torch.randn(b, s, h, d, device=device, dtype=torch.float32) * scale).to(dtype)
            t = base.requires_grad_().transpose(1, 2)
            out.append((base, t))
        else:
            t = (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(dtype).requires_grad_()
            out.append((t, t))
    return out


def _rel_err(x, ref):
    """||x - ref|| / ||ref||. The denominator has a floor of RMS 1e-2 per element (gradients of unit
    inputs are O(0.1-1) per element) because at seq 1 the exact dq and dk are zero and the kernel
    returns float32 cancellation noise of ~1e-8 per element there."""
    x = x.detach().to(torch.float64)
    ref = ref.detach().to(torch.float64)
    floor = 1e-2 * math.sqrt(ref.numel())
    return ((x - ref).norm() / max(ref.norm().item(), floor)).item()


def _check(shape, causal, dtype=torch.float32, tol=1e-4, layout="bhsd", scale=1.0, grad_layout="contig"):
    device = _device()
    pairs = _inputs(shape, dtype, device, scale, layout)
    leaves = [p[0] for p in pairs]
    q, k, v = (p[1] for p in pairs)
    out = attention(q, k, v, causal=causal, backend="triton")
    assert out.shape == q.shape and out.dtype == dtype

    dout = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    if grad_layout == "transposed":  # a non-contiguous upstream gradient
        dout = dout.transpose(2, 3).contiguous().transpose(2, 3)
    out.backward(dout)

    ref_leaves = [x.detach().to(torch.float64).requires_grad_() for x in leaves]
    if layout == "bshd":
        rq, rk, rv = (x.transpose(1, 2) for x in ref_leaves)
    else:
        rq, rk, rv = ref_leaves
    ref = attn_mod.attention_math(rq, rk, rv, causal=causal)
    ref.backward(dout.to(torch.float64))

    results = {"out": (out, ref)}
    for name, got, want in zip(("dq", "dk", "dv"), leaves, ref_leaves):
        results[name] = (got.grad, want.grad)
    for name, (got, want) in results.items():
        assert not torch.isnan(got).any(), f"{name}: NaN (unwritten or invalid) elements, shape={shape}"
        err = _rel_err(got, want)
        assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e} (shape={shape}, causal={causal})"


needs_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() or interpreter_on()),
    reason="Triton attention needs CUDA or TRITON_INTERPRET=1",
)


# ------------------------------------------------------------------------ CPU (interpreter) ----

@needs_kernel
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 3, 67, 32),   # ragged tail in every block size
        (1, 2, 1, 32),    # a single token
        (1, 2, 16, 32),   # exactly one key block
        (1, 1, 130, 64),  # several query blocks, ragged, head_dim 64
        (1, 1, 37, 128),  # head_dim 128
    ],
    ids=lambda s: "x".join(map(str, s)),
)
def test_triton_matches_float64_reference(shape, causal, load_path):
    _check(shape, causal)


@needs_kernel
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_float16_matches_float64_reference(causal, load_path):
    # 16-bit inputs and outputs, float32 accumulation: the model's fast path, at float16's precision.
    _check((1, 2, 67, 64), causal, dtype=torch.float16, tol=2e-3)


@needs_kernel
def test_layouts_past_int32_offsets_are_copied(monkeypatch):
    # In-slab offsets are int32; inputs whose seq x row stride would overflow them are copied to
    # (batch, heads, seq, head_dim) and O is allocated that way. Pretend every strided layout
    # overflows and check the copies give the same answers.
    monkeypatch.setattr(attn_mod, "_in_int32", lambda t: t.is_contiguous())
    _check((2, 2, 45, 32), True, layout="bshd", grad_layout="transposed")


@needs_kernel
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_strided_inputs_and_gradient(causal):
    # q, k, v as (batch, seq, heads, dim) transposed views, and a gradient with non-unit head_dim
    # stride: the wrapper passes strides (or copies) so both must give the same numbers.
    _check((2, 2, 45, 32), causal, layout="bshd", grad_layout="transposed")


@needs_kernel
def test_sum_loss_gradient_with_zero_strides():
    # out.sum().backward() hands the kernel an expanded gradient whose strides are all zero.
    q, k, v = (torch.randn(1, 2, 21, 32, device=_device(), requires_grad=True) for _ in range(3))
    attention(q, k, v, causal=True, backend="triton").sum().backward()
    r = [x.detach().double().requires_grad_() for x in (q, k, v)]
    attn_mod.attention_math(*r, causal=True).sum().backward()
    for got, want in zip((q, k, v), r):
        assert _rel_err(got.grad, want.grad) <= 1e-4


@needs_kernel
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_large_logits_stay_finite(causal):
    # Scores of several hundred: exercises the running-max rescaling and masked exponents.
    # Conditioning grows with the logits, so the bound is looser than for unit inputs.
    _check((1, 2, 50, 32), causal, scale=6.0, tol=1e-3)


@needs_kernel
@pytest.mark.skipif(torch.cuda.is_available() and not interpreter_on(), reason="interpreter block sizes only")
@pytest.mark.parametrize(
    "blocks",
    [
        {"fwd": (16, 16), "dkdv": (16, 16), "dq": (16, 16)},  # equal blocks: diagonal is one tile
        {"fwd": (64, 16), "dkdv": (16, 64), "dq": (64, 32)},  # outer block 4x / 2x the inner one
    ],
    ids=["equal", "ratio4"],
)
def test_other_block_sizes(monkeypatch, blocks):
    # The GPU autotuner picks other tile shapes than the interpreter default; the masking logic
    # must be right for each of them.
    table = {stage: {"BLOCK_M": bm, "BLOCK_N": bn} for stage, (bm, bn) in blocks.items()}
    table["pre"] = {"BLOCK_M": 16}
    monkeypatch.setattr(attn_mod, "_INTERPRET_BLOCKS", table)
    _check((1, 2, 83, 32), True)
    _check((1, 1, 83, 32), False)


@needs_kernel
def test_poison_reaches_outputs(monkeypatch):
    # The poisoning must be live for the checks above to mean anything: with the main kernel
    # launches skipped, every output and gradient must come back as NaN (nothing else writes them).
    monkeypatch.setattr(attn_mod, "_launch", lambda *args, **kwargs: None)
    q, k, v = (torch.randn(1, 1, 20, 32, device=_device(), requires_grad=True) for _ in range(3))
    out = attention(q, k, v, causal=True, backend="triton")
    assert torch.isnan(out).all()
    out.backward(torch.ones_like(out))
    for t in (q, k, v):
        assert torch.isnan(t.grad).all()


# ------------------------------------------------------------------------ API / dispatch -----

@pytest.mark.parametrize("causal", [True, False])
def test_torch_backend_matches_math_reference(causal):
    q, k, v = (torch.randn(2, 3, 29, 48, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = attention(q, k, v, causal=causal, backend="torch")
    ref = attn_mod.attention_math(q, k, v, causal=causal)
    assert _rel_err(out, ref) <= 1e-12
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for got, want in zip(grads, ref_grads):
        assert _rel_err(got, want) <= 1e-12


def test_math_reference_is_softmax_attention():
    # Guard the reference itself against an independent per-row loop.
    q, k, v = (torch.randn(1, 1, 5, 4, dtype=torch.float64) for _ in range(3))
    ref = attn_mod.attention_math(q, k, v, causal=True)[0, 0]
    for i in range(5):
        s = (k[0, 0, : i + 1] @ q[0, 0, i]) / math.sqrt(4)
        w = torch.exp(s - s.max())
        w = w / w.sum()
        assert torch.allclose(ref[i], w @ v[0, 0, : i + 1], atol=1e-12)


def test_auto_on_cpu_uses_reference():
    q, k, v = (torch.randn(1, 2, 9, 32) for _ in range(3))
    out = attention(q, k, v, causal=True, backend="auto")
    assert torch.allclose(out, attn_mod.attention_math(q, k, v, causal=True), atol=1e-5)


@pytest.mark.parametrize("head_dim", [48, 16, 256])
def test_auto_on_cuda_falls_back_for_unsupported_head_dims(head_dim):
    # The GPU decision, asked on a CPU: auto would run the kernel on CUDA, except where it cannot.
    q = torch.randn(1, 1, 8, head_dim, dtype=torch.float16)
    assert attn_mod.route(q, q, q, "auto", device_type="cuda") == "torch"
    ok = torch.randn(1, 1, 8, 64, dtype=torch.float16)
    assert attn_mod.route(ok, ok, ok, "auto", device_type="cuda") == "triton"
    assert attn_mod.route(ok, ok, ok, "auto", device_type="cpu") == "torch"


def test_auto_on_cuda_sends_float32_to_sdpa():
    q = torch.randn(1, 1, 8, 64)
    assert attn_mod.route(q, q, q, "auto", device_type="cuda") == "torch"
    assert attn_mod.route(q.bfloat16(), q.bfloat16(), q.bfloat16(), "auto", device_type="cuda") == "triton"
    # forced, float32 still runs the kernel (the exactness path)
    assert attn_mod.route(q, q, q, "triton", device_type="cuda") == "triton"


@needs_kernel
@pytest.mark.parametrize("head_dim, dtype, path", [(48, torch.float16, "torch"), (32, torch.float16, "triton"),
                                                   (32, torch.float32, "torch")])
def test_attention_follows_the_routing(monkeypatch, head_dim, dtype, path):
    # End to end with the device seen as CUDA: `attention(backend="auto")` takes the path `route`
    # names (a kernel launch on an unsupported head dim would fail; a silent SDPA would not count).
    monkeypatch.setattr(dispatch, "device_of", lambda *tensors: "cuda")
    taken = []
    monkeypatch.setattr(attn_mod, "attention_reference",
                        lambda *a: taken.append("torch") or attn_mod.attention_math(*a))
    real_apply = attn_mod._FlashAttention.apply
    monkeypatch.setattr(attn_mod._FlashAttention, "apply", lambda *a: taken.append("triton") or real_apply(*a))
    q = torch.randn(1, 2, 20, head_dim).to(dtype)
    out = attention(q, q, q, causal=True, backend="auto")
    assert taken == [path]
    assert _rel_err(out, attn_mod.attention_math(q.double(), q.double(), q.double())) <= 2e-3


def test_grid_limits_are_clear_errors():
    q = torch.randn(65536, 1, 1, 32, dtype=torch.float16)
    with pytest.raises(ValueError, match="at most 65535"):
        attn_mod.route(q, q, q, "triton", device_type="cuda")
    assert attn_mod.route(q, q, q, "auto", device_type="cuda") == "torch"


def test_unknown_backend_is_rejected():
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(ValueError, match="backend"):
        attention(q, q, q, backend="cuda")


def test_triton_on_cpu_without_interpreter_is_rejected(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        attention(q, q, q, backend="triton")


@needs_kernel
@pytest.mark.parametrize("head_dim", [48, 16, 256])
def test_unsupported_head_dim_is_a_clear_error(head_dim):
    q = torch.randn(1, 1, 8, head_dim, device=_device())
    with pytest.raises(ValueError, match=f"head_dim {head_dim} is not supported"):
        attention(q, q, q, backend="triton")


@needs_kernel
def test_other_unsupported_inputs_are_clear_errors():
    dev = _device()
    q = torch.randn(1, 1, 8, 32, device=dev)
    with pytest.raises(ValueError, match="dtype"):
        attention(q.double(), q.double(), q.double(), backend="triton")
    with pytest.raises(ValueError, match="same shape"):
        attention(q, torch.randn(1, 1, 9, 32, device=dev), torch.randn(1, 1, 9, 32, device=dev), backend="triton")
    with pytest.raises(ValueError, match="4-D"):
        attention(q[0], q[0], q[0], backend="triton")


# ------------------------------------------------------------------------ GPU ---------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("seq", [1024, 2048])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_gpu_half_precision(dtype, head_dim, seq, causal):
    _check((2, 4, seq, head_dim), causal, dtype=dtype, tol=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_gpu_float32_and_odd_lengths(causal, monkeypatch):
    # float32 follows torch's TF32 switch; pin it off (other code may enable TF32 globally).
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    _check((2, 3, 1000, 64), causal, dtype=torch.float32, tol=1e-4)
    _check((1, 2, 67, 32), causal, dtype=torch.bfloat16, tol=1e-2)
