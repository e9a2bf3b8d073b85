"""Triton kernels for the GPT's hot paths, each with an exact PyTorch reference.

Public API (model/ and tests rely on these names):
    attention(q, k, v, causal=True, backend="auto")
    rms_norm(x, weight, eps=1e-6, backend="auto")
    linear_cross_entropy(x, weight, targets, ignore_index=-100, backend="auto")
    swiglu(gate, up, backend="auto"); swiglu_packed(h, backend="auto")   h = [gate | up]
    rope(x, cos, sin, backend="auto"); rope_qk(qkv, cos, sin, backend="auto")   in place on q, k
`backend` is "auto" (Triton on CUDA, reference elsewhere), "triton" or "torch"; see kernels.dispatch
(`check_backend(backend, device_type)` validates a choice up front).
"""
from kernels.dispatch import BACKENDS, check_backend, resolve  # noqa: F401
from kernels.attention import attention  # noqa: F401
from kernels.rmsnorm import rms_norm  # noqa: F401
from kernels.cross_entropy import linear_cross_entropy  # noqa: F401
from kernels.swiglu import swiglu, swiglu_packed  # noqa: F401
from kernels.rope import rope, rope_qk  # noqa: F401
