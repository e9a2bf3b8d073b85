"""Choose between a Triton kernel and its PyTorch reference.

`auto` runs Triton where it can run for real (CUDA tensors) and the exact PyTorch reference
everywhere else. `triton` forces the kernel: on CPU tensors that only works under the Triton
interpreter (TRITON_INTERPRET=1), which is how the CPU test suite exercises every kernel.
`torch` forces the reference.

Kernels may narrow `auto` further for inputs they do not serve well; attention does so for float32
on CUDA (PyTorch SDPA instead, see kernels.attention), so `train.dtype=fp32` with `model.kernels=auto`
never takes a slow path. `check_backend` is the cheap up-front check a trainer runs while validating
its config, before any data or model is built.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

BACKENDS = ("auto", "triton", "torch")

# Tests set this: every kernel output buffer is filled with NaN before the launch, so an element
# the kernel forgot to write shows up instead of passing by luck.
POISON = False


def empty(shape, dtype, device) -> torch.Tensor:
    """Allocate a kernel output (NaN-filled when POISON is on)."""
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def poison(*tensors: torch.Tensor) -> None:
    """Fill already-allocated outputs with NaN when POISON is on."""
    if POISON:
        for t in tensors:
            t.fill_(float("nan"))


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_backend(backend: str, device_type: str) -> Optional[str]:
    """Why `backend` cannot run on `device_type` ("cuda", "cpu", ...), or None when it can.

    Cheap (no CUDA call, no kernel compile): meant for config validation before training starts.
    """
    if backend not in BACKENDS:
        return f"kernel backend must be one of {BACKENDS}, got {backend!r}"
    if backend != "triton":
        return None
    if not triton_available():
        return "kernel backend 'triton' was requested but triton is not installed (use 'auto' or 'torch')"
    if device_type != "cuda" and not interpreter_on():
        return (f"kernel backend 'triton' needs a CUDA device, got device type {device_type!r}; on a CPU "
                "set TRITON_INTERPRET=1 (slow, for tests) or use backend 'auto' / 'torch'")
    return None


def device_of(*tensors: torch.Tensor) -> str:
    """"cuda" when every tensor is on a CUDA device, else the first other device type."""
    return next((t.device.type for t in tensors if not t.is_cuda), "cuda")


def choose(backend: str, device_type: str) -> str:
    """"triton" or "torch" for a call on `device_type`; raises for a backend that cannot run there."""
    problem = check_backend(backend, device_type)
    if problem is not None:
        raise (ValueError if backend not in BACKENDS else RuntimeError)(problem)
    if backend == "auto":
        return "triton" if device_type == "cuda" and triton_available() else "torch"
    return backend


def resolve(backend: str, *tensors: torch.Tensor) -> str:
    """Return "triton" or "torch" for a call on `tensors` with the requested `backend`."""
    return choose(backend, device_of(*tensors))


def as_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """A (rows, width) view of `t` whose last dimension is contiguous (copied only when it is not)."""
    t2 = t.reshape(-1, width)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()
