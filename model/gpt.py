"""A compact GPT: pre-norm decoder blocks, rotary or learned positions, SwiGLU or GELU MLP.

The hot paths (attention, RMSNorm, SwiGLU, RoPE, the output head + loss) go through `kernels`,
which picks the Triton kernels or their exact PyTorch references (`config.kernels`). Nothing here
knows about distributed training, logging or Hydra.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from model.config import GPTConfig


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float, backend: str):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps, self.backend = eps, backend

    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.eps, backend=self.backend)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.width, config.norm_eps, config.kernels)
    return nn.LayerNorm(config.width, eps=config.norm_eps, bias=False)


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (seq_len, head_dim // 2), float32, in the rotate-half convention of kernels.rope."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=False)
        self.proj = nn.Linear(config.width, config.width, bias=False)

    def forward(self, x, cos, sin, kv=None):
        B, T, C = x.shape
        cfg = self.config
        qkv = self.qkv(x).view(B, T, 3, cfg.heads, cfg.head_dim)
        if cos is not None:  # q and k rotated inside the projection output (no copies of them)
            qkv = kernels.rope_qk(qkv, cos, sin, backend=cfg.kernels)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, T, head_dim) strided views
        if kv is None:
            y = kernels.attention(q, k, v, causal=True, backend=cfg.kernels)
        else:  # generation: attend over the cached keys/values too (model.generate.KVCache)
            y = kv.attend(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind, self.backend = config.mlp, config.kernels
        fan_out = 2 * config.hidden if config.mlp == "swiglu" else config.hidden
        self.up = nn.Linear(config.width, fan_out, bias=False)
        self.down = nn.Linear(config.hidden, config.width, bias=False)

    def forward(self, x):
        h = self.up(x)
        if self.kind == "swiglu":
            h = kernels.swiglu_packed(h, backend=self.backend)  # h = [gate | up]
        else:
            h = F.gelu(h, approximate="tanh")
        return self.down(h)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1, self.attn = make_norm(config), Attention(config)
        self.norm2, self.mlp = make_norm(config), MLP(config)

    def forward(self, x, cos, sin, kv=None):
        x = x + self.attn(self.norm1(x), cos, sin, kv)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.width)
        self.pos_emb = None if config.rotary else nn.Embedding(config.seq_len, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm_f = make_norm(config)
        self.head = nn.Linear(config.width, config.vocab_size, bias=False)
        if config.tied_embeddings:
            self.head.weight = self.tok_emb.weight
        if config.rotary:
            cos, sin = rope_tables(config.seq_len, config.head_dim, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        std = self.config.init_std
        # Residual-branch outputs are scaled by 1/sqrt(2 * depth) so the residual stream's variance
        # does not grow with depth (GPT-2's scheme).
        residual_std = std / math.sqrt(2 * self.config.depth)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.down.weight"):
                nn.init.normal_(p, 0.0, residual_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def param_counts(self) -> dict:
        """Counted from the built module: total, embedding (token + learned positions), non-embedding."""
        total = sum(p.numel() for p in self.parameters())  # a tied matrix appears once
        embedding = self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_logits: bool = False,
                cache=None):
        """idx, targets: (batch, seq) int64. Returns the mean loss, or (loss, logits) with return_logits
        (loss is None without targets). Without return_logits the head and loss are fused, so the
        (batch x seq x vocab) logits never exist. `cache` (a model.generate.KVCache, generation only):
        idx continues the cached tokens (positions start at cache.pos) and is appended to the cache."""
        B, T = idx.shape
        cfg = self.config
        start = 0 if cache is None else cache.pos
        if start + T > cfg.seq_len:
            raise ValueError(f"sequence length {start + T} exceeds model.seq_len={cfg.seq_len}")
        x = self.tok_emb(idx)
        cos = sin = None
        if cfg.rotary:
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        else:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if cache is None else cache.layer(i))
        if cache is not None:
            cache.advance(T)
        h = self.norm_f(x)

        if targets is not None and not return_logits:
            h2, w = h.reshape(B * T, cfg.width), self.head.weight
            if torch.is_autocast_enabled(h.device.type):
                # the fused kernel sits outside autocast's op table: give it what a Linear would get
                dt = torch.get_autocast_dtype(h.device.type)
                h2, w = h2.to(dt), w.to(dt)
            return kernels.linear_cross_entropy(h2, w, targets.reshape(-1), backend=cfg.kernels)

        logits = self.head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, cfg.vocab_size), targets.reshape(-1), ignore_index=-100)
        return loss, logits
