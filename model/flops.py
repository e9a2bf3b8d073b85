"""Exact parameter and FLOP accounting from the model's shapes, and MFU.

This is the project's one FLOP counter. Conventions (every fit says which it used):
- params: `total` (every trainable number, a tied matrix once), `embedding` (token embedding plus
  learned positions), `non_embedding` = total - embedding (includes an untied output head).
- FLOPs per token of training = 3 x forward (backward costs twice the forward's matmuls).
  `exact`: every matmul incl. the output head, plus causal attention (QK^T and AV, counting only
  the unmasked half: position t attends to t+1 keys). `no_attention`: matmuls only.
  `6n_total` / `6n_non_embedding`: the 6N shortcut (Chinchilla uses total N, Kaplan non-embedding).
Elementwise work (norms, activations, softmax, RoPE) is not counted, as is customary.
Inference (sampling with a KV cache): `forward_flops(cfg, start, stop)`, the forward FLOPs of
positions [start, stop) of one sequence, with the same per-layer accounting.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from model.config import GPTConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int
    non_embedding: int
    embedding: int


@dataclass(frozen=True)
class FlopCounts:
    """Training FLOPs per token under each convention (see module docstring)."""

    exact: float
    no_attention: float
    six_n_total: float
    six_n_non_embedding: float

    def as_dict(self) -> dict:
        d = asdict(self)
        return {"exact": d["exact"], "no_attention": d["no_attention"],
                "6n_total": d["six_n_total"], "6n_non_embedding": d["six_n_non_embedding"]}


def _layer_matmul_params(cfg: GPTConfig) -> int:
    w, h = cfg.width, cfg.hidden
    attn = 3 * w * w + w * w  # qkv + output projection
    mlp = (3 if cfg.mlp == "swiglu" else 2) * w * h  # (gate, up, down) or (up, down)
    return attn + mlp


def param_counts(cfg: GPTConfig) -> ParamCounts:
    w, V = cfg.width, cfg.vocab_size
    norm_params = cfg.width  # one weight vector per norm (no biases anywhere)
    per_layer = _layer_matmul_params(cfg) + 2 * norm_params
    embedding = V * w + (0 if cfg.rotary else cfg.seq_len * w)
    head = 0 if cfg.tied_embeddings else V * w
    total = embedding + cfg.depth * per_layer + norm_params + head
    return ParamCounts(total=total, non_embedding=total - embedding, embedding=embedding)


def attention_flops_per_token(cfg: GPTConfig, causal: bool = True) -> float:
    """Forward FLOPs per token of QK^T and AV over all layers, averaged over the sequence."""
    T, w = cfg.seq_len, cfg.width
    keys_per_query = (T + 1) / 2 if causal else T
    return cfg.depth * 2 * 2 * w * keys_per_query  # two matmuls, 2 FLOPs per multiply-add


def _forward_matmul_flops_per_token(cfg: GPTConfig) -> float:
    return 2 * (cfg.depth * _layer_matmul_params(cfg) + cfg.vocab_size * cfg.width)  # head always runs


def flops_per_token(cfg: GPTConfig, causal: bool = True) -> FlopCounts:
    forward_matmuls = _forward_matmul_flops_per_token(cfg)
    counts = param_counts(cfg)
    return FlopCounts(
        exact=3 * (forward_matmuls + attention_flops_per_token(cfg, causal)),
        no_attention=3 * forward_matmuls,
        six_n_total=6 * counts.total,
        six_n_non_embedding=6 * counts.non_embedding,
    )


def forward_flops(cfg: GPTConfig, start: int, stop: int) -> float:
    """Forward FLOPs of running positions [start, stop) of one sequence when the keys and values of
    every earlier position are cached (generation): every matmul incl. the head, plus attention where
    position t attends to t + 1 keys. A prompt of P tokens costs forward_flops(cfg, 0, P); the token
    generated at position t costs forward_flops(cfg, t, t + 1); a full-context pass,
    forward_flops(cfg, 0, seq_len), is seq_len x the forward third of flops_per_token(cfg).exact."""
    if not 0 <= start <= stop:
        raise ValueError(f"positions must satisfy 0 <= start <= stop, got start={start}, stop={stop}")
    n = stop - start
    keys = n * (start + 1 + stop) / 2  # sum of (t + 1) over t in [start, stop)
    return n * _forward_matmul_flops_per_token(cfg) + cfg.depth * 2 * 2 * cfg.width * keys


# Dense bf16 tensor-core peaks (no sparsity) from the vendors' datasheets, in FLOP/s.
# Matched by substring of torch.cuda.get_device_name(), most specific first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
)


def peak_flops(device_name: str) -> Optional[float]:
    for key, peak in PEAK_BF16_FLOPS:
        if key in device_name:
            return peak
    return None


def mfu(tokens_per_s: float, flops_per_token: float, device_name: str, world_size: int = 1) -> Optional[float]:
    """Model FLOPs utilisation: achieved model FLOP/s over the bf16 dense peak of all devices.
    None when the device's peak is unknown (CPUs, unlisted GPUs)."""
    peak = peak_flops(device_name)
    if peak is None:
        return None
    return tokens_per_s * flops_per_token / (peak * world_size)
