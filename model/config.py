"""The GPT's configuration: a frozen, validated dataclass (no Hydra here; train/ builds its schema from it)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from kernels.dispatch import BACKENDS as KERNEL_BACKENDS  # one definition (model/__init__ imports kernels anyway)

MLP_KINDS = ("swiglu", "gelu")
NORM_KINDS = ("rmsnorm", "layernorm")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what would be valid."""


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256
    seq_len: int = 128
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp: str = "swiglu"  # swiglu | gelu
    # Hidden size of the MLP. None: 4*width for gelu; 8/3*width rounded up for
    # swiglu (a multiple of 16), which keeps the MLP's parameter count (and FLOPs) close to the gelu MLP's.
    mlp_hidden: Optional[int] = None
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    rotary: bool = True  # rotary positions; False gives learned absolute position embeddings
    rope_base: float = 10000.0
    tied_embeddings: bool = False
    init_std: float = 0.02
    norm_eps: float = 1e-6
    kernels: str = "auto"  # auto | triton | torch (see kernels.dispatch)

    def __post_init__(self):
        def positive(name):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")

        for name in ("vocab_size", "seq_len", "width", "depth", "heads"):
            positive(name)
        if self.width % self.heads:
            raise ConfigError(
                f"model.width={self.width} is not divisible by model.heads={self.heads}; "
                f"valid heads for this width: {[h for h in range(1, self.width + 1) if self.width % h == 0 and self.width // h >= 8][:12]}"
            )
        if self.rotary and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head dim, got width/heads = {self.head_dim}")
        if self.mlp not in MLP_KINDS:
            raise ConfigError(f"model.mlp must be one of {MLP_KINDS}, got {self.mlp!r}")
        if self.norm not in NORM_KINDS:
            raise ConfigError(f"model.norm must be one of {NORM_KINDS}, got {self.norm!r}")
        if self.kernels not in KERNEL_BACKENDS:
            raise ConfigError(f"model.kernels must be one of {KERNEL_BACKENDS}, got {self.kernels!r}")
        if self.mlp_hidden is not None:
            positive("mlp_hidden")
        if not self.init_std > 0:
            raise ConfigError(f"model.init_std must be > 0, got {self.init_std!r}")
        if not self.norm_eps > 0:
            raise ConfigError(f"model.norm_eps must be > 0, got {self.norm_eps!r}")
        if not self.rope_base > 0:
            raise ConfigError(f"model.rope_base must be > 0, got {self.rope_base!r}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.width
        return _round_up(8 * self.width / 3, 16)

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)
