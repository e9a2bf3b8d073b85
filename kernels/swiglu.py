"""SwiGLU activation; placeholder with the public signature until the Triton kernel lands."""
import torch.nn.functional as F

from kernels.dispatch import resolve


def swiglu_reference(gate, up):
    return F.silu(gate) * up


def swiglu(gate, up, backend="auto"):
    resolve(backend, gate)
    return swiglu_reference(gate, up)
