"""Choose between a Triton kernel and its PyTorch reference.

`auto` runs Triton where it can run for real (CUDA tensors) and the exact PyTorch reference
everywhere else. `triton` forces the kernel: on CPU tensors that only works under the Triton
interpreter (TRITON_INTERPRET=1), which is how the CPU test suite exercises every kernel.
`torch` forces the reference.
"""
from __future__ import annotations

import os

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


def resolve(backend: str, *tensors: torch.Tensor) -> str:
    """Return "triton" or "torch" for a call on `tensors` with the requested `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    # backend == "triton"
    if not triton_available():
        raise RuntimeError("kernel backend 'triton' was requested but triton is not installed")
    if not on_cuda and not interpreter_on():
        raise RuntimeError(
            "kernel backend 'triton' needs CUDA tensors; on CPU set TRITON_INTERPRET=1 "
            "(slow, for tests) or use backend 'auto' / 'torch'"
        )
    return "triton"


def as_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """A (rows, width) view of `t` whose last dimension is contiguous (copied only when it is not)."""
    t2 = t.reshape(-1, width)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()
