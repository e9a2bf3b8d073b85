"""Causal attention; placeholder with the public signature until the Triton kernel lands."""
import torch
import torch.nn.functional as F

from kernels.dispatch import resolve


def attention_reference(q, k, v, causal=True):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def attention(q, k, v, causal=True, backend="auto"):
    resolve(backend, q, k, v)
    return attention_reference(q, k, v, causal)
