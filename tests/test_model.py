"""The GPT and its exact accounting: parameter counts from shapes vs the module, FLOPs vs torch's counter."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import model.gpt as gpt_module
from model import GPT, ConfigError, GPTConfig, flops_per_token, mfu, param_counts

SHAPES = [
    GPTConfig(),
    GPTConfig(vocab_size=301, seq_len=67, width=96, depth=3, heads=3, mlp="gelu", norm="layernorm",
              rotary=False, tied_embeddings=True),
    GPTConfig(vocab_size=1000, seq_len=32, width=64, depth=2, heads=2, tied_embeddings=True),
    GPTConfig(vocab_size=512, seq_len=128, width=160, depth=5, heads=5, mlp_hidden=200, rotary=False),
]


def explicit_attention(q, k, v, causal=True, backend="auto"):
    """Attention as two matmuls, so FlopCounterMode sees (and counts) them."""
    T = q.shape[-2]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return F.softmax(s, dim=-1) @ v


@pytest.mark.parametrize("cfg", SHAPES, ids=lambda c: f"w{c.width}d{c.depth}{c.mlp}{'-tied' if c.tied_embeddings else ''}")
def test_param_counts_match_module(cfg):
    m = GPT(cfg)
    counted = param_counts(cfg)
    assert m.param_counts() == counted.__dict__
    # an independent count: every parameter tensor by name
    by_name = {n: p.numel() for n, p in m.named_parameters()}  # tied weights appear once
    assert sum(by_name.values()) == counted.total
    emb = by_name["tok_emb.weight"] + by_name.get("pos_emb.weight", 0)
    assert counted.embedding == emb


@pytest.mark.parametrize("cfg", SHAPES, ids=lambda c: f"w{c.width}d{c.depth}{c.mlp}")
def test_flops_match_torch_flop_counter(cfg, monkeypatch):
    """Forward + backward of a batch, counted by torch, vs our per-token count times the tokens.
    The explicit attention computes the full T x T products (no causal saving), so it is compared
    with the non-causal count; the causal count is checked against the closed form below."""
    monkeypatch.setattr(gpt_module.kernels, "attention", explicit_attention)
    cfg = cfg.replace(kernels="torch")
    m = GPT(cfg)
    B = 2
    idx = torch.randint(0, cfg.vocab_size, (B, cfg.seq_len))
    with FlopCounterMode(display=False) as counter:
        loss, _ = m(idx, idx, return_logits=True)
        loss.backward()
    torch_per_token = counter.get_total_flops() / (B * cfg.seq_len)
    ours = flops_per_token(cfg, causal=False).exact
    assert abs(torch_per_token - ours) / ours < 0.02, (torch_per_token, ours)


def test_causal_attention_flops_closed_form():
    cfg = GPTConfig(seq_len=100, width=64, depth=3, heads=4)
    full, causal = flops_per_token(cfg, causal=False), flops_per_token(cfg, causal=True)
    assert full.no_attention == causal.no_attention
    # training attention FLOPs: 3 x depth x 4 x width x keys per query; causal averages (T+1)/2 keys
    assert full.exact - full.no_attention == pytest.approx(3 * 3 * 4 * 64 * 100)
    assert causal.exact - causal.no_attention == pytest.approx(3 * 3 * 4 * 64 * 50.5)
    counts = param_counts(cfg)
    assert causal.six_n_total == 6 * counts.total and causal.six_n_non_embedding == 6 * counts.non_embedding


def test_head_is_counted_even_when_tied():
    untied, tied = GPTConfig(), GPTConfig(tied_embeddings=True)
    assert flops_per_token(untied).no_attention == flops_per_token(tied).no_attention
    assert param_counts(untied).total - param_counts(tied).total == 256 * 128


def test_forward_loss_fused_equals_logits_path():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, seq_len=33, width=64, depth=2, heads=4, kernels="torch")
    m = GPT(cfg)
    idx = torch.randint(0, 97, (3, 33))
    fused = m(idx, idx)
    loss, logits = m(idx, idx, return_logits=True)
    assert logits.shape == (3, 33, 97)
    assert torch.allclose(fused, loss, rtol=1e-5, atol=1e-6)
    # an untrained model predicts roughly uniformly
    assert abs(loss.item() - math.log(97)) < 0.5
    none_loss, logits2 = m(idx, return_logits=True)
    assert none_loss is None and torch.equal(logits, logits2)


def test_forward_is_causal():
    torch.manual_seed(1)
    for rotary in (True, False):
        m = GPT(GPTConfig(vocab_size=50, seq_len=16, width=32, depth=2, heads=2, rotary=rotary, kernels="torch"))
        a = torch.randint(0, 50, (1, 16))
        b = a.clone()
        b[0, 10:] = (b[0, 10:] + 1) % 50
        _, la = m(a, return_logits=True)
        _, lb = m(b, return_logits=True)
        assert torch.allclose(la[0, :10], lb[0, :10], atol=1e-6)
        assert not torch.allclose(la[0, 10:], lb[0, 10:])


def test_residual_init_is_scaled():
    torch.manual_seed(0)
    m = GPT(GPTConfig(width=256, depth=8, heads=4))
    std_proj = m.blocks[0].attn.proj.weight.std().item()
    std_qkv = m.blocks[0].attn.qkv.weight.std().item()
    assert std_qkv == pytest.approx(0.02, rel=0.05)
    assert std_proj == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


@pytest.mark.parametrize("bad, fragment", [
    (dict(width=130, heads=4), "not divisible by model.heads"),
    (dict(depth=0), "model.depth"),
    (dict(seq_len=-3), "model.seq_len"),
    (dict(mlp="relu"), "model.mlp"),
    (dict(norm="batchnorm"), "model.norm"),
    (dict(kernels="cuda"), "model.kernels"),
    (dict(width=12, heads=4), "even head dim"),
])
def test_config_rejects_bad_values(bad, fragment):
    with pytest.raises(ConfigError, match=fragment):
        GPTConfig(**bad)


def test_swiglu_hidden_keeps_mlp_size_close_to_gelu():
    for width in (64, 128, 384, 768):
        s, g = GPTConfig(width=width, heads=1), GPTConfig(width=width, heads=1, mlp="gelu")
        assert abs(3 * s.hidden - 2 * g.hidden) / (2 * g.hidden) < 0.1


def test_mfu_uses_known_peaks_only():
    assert mfu(1e6, 1e9, "NVIDIA H100 80GB HBM3") == pytest.approx(1e15 / 989e12)
    assert mfu(1e6, 1e9, "NVIDIA H100 PCIe") == pytest.approx(1e15 / 756e12)
    assert mfu(1e6, 1e9, "NVIDIA A100-SXM4-80GB", world_size=2) == pytest.approx(1e15 / (2 * 312e12))
    assert mfu(1e6, 1e9, "cpu (2 cores)") is None
