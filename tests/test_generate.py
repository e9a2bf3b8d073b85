"""Generation with a KV cache: the cache against full recomputation, sampling rules, batching, FLOPs."""
import pytest
import torch

from model import GPT, GPTConfig, flops_per_token
from model.flops import forward_flops
from model.generate import KVCache, generate, sample_next

CONFIGS = [
    GPTConfig(vocab_size=50, seq_len=40, width=32, depth=2, heads=2, kernels="torch"),
    GPTConfig(vocab_size=61, seq_len=33, width=48, depth=3, heads=3, mlp="gelu", norm="layernorm",
              rotary=False, tied_embeddings=True, kernels="torch"),
]
IDS = ["rotary", "learned-pos"]


def make_model(cfg, seed=0):
    torch.manual_seed(seed)
    m = GPT(cfg)
    # a sharper (larger) head than the init's keeps greedy choices clear of near-ties
    with torch.no_grad():
        m.head.weight.mul_(20)
    return m


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_cached_logits_equal_full_forward(cfg):
    m = make_model(cfg)
    seq = torch.randint(0, cfg.vocab_size, (3, cfg.seq_len))
    _, full = m(seq, return_logits=True)
    cache = KVCache(cfg.depth, cfg.seq_len)
    _, first = m(seq[:, :7], return_logits=True, cache=cache)  # a prompt, then one token at a time
    steps = [first]
    for t in range(7, cfg.seq_len):
        steps.append(m(seq[:, t:t + 1], return_logits=True, cache=cache)[1])
    assert cache.pos == cfg.seq_len
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_cache_continues_with_several_tokens_at_once(cfg):
    m = make_model(cfg)
    seq = torch.randint(0, cfg.vocab_size, (2, 20))
    _, full = m(seq, return_logits=True)
    cache = KVCache(cfg.depth, 20)
    parts = [m(seq[:, a:b], return_logits=True, cache=cache)[1] for a, b in ((0, 5), (5, 12), (12, 20))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)


def test_cache_rejects_overflow():
    cfg = CONFIGS[0]
    m = make_model(cfg)
    cache = KVCache(cfg.depth, 4)
    m(torch.zeros(1, 4, dtype=torch.long), return_logits=True, cache=cache)
    with pytest.raises(ValueError, match="holds 4 positions"):
        m(torch.zeros(1, 1, dtype=torch.long), return_logits=True, cache=cache)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_cached_and_uncached_generation_agree_greedy(cfg):
    m = make_model(cfg)
    prompts = [[1, 2, 3], [4, 5, 6], [7, 8], [9], [10, 11, 12, 13, 14]]
    a = generate(m, prompts, max_new_tokens=25, temperature=0, num_samples=2)
    b = generate(m, prompts, max_new_tokens=25, temperature=0, num_samples=2, use_cache=False)
    assert a == b
    # not a degenerate model: different prompts give different continuations
    assert len({tuple(o[0]) for o in a}) == len(prompts)
    # capped by the context: prompt + completion never exceeds seq_len
    assert all(len(p) + len(o[0]) <= cfg.seq_len for p, o in zip(prompts, a))


def test_cached_and_uncached_generation_agree_when_sampling():
    """Both paths consume the generator identically, so sampled tokens agree too."""
    cfg = CONFIGS[0]
    m = make_model(cfg)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8]]
    kw = dict(max_new_tokens=15, temperature=0.8, top_k=10, num_samples=4, stop_ids=[0, 1, 2])
    a = generate(m, prompts, generator=torch.Generator().manual_seed(5), **kw)
    b = generate(m, prompts, generator=torch.Generator().manual_seed(5), use_cache=False, **kw)
    assert a == b


def test_top_k_one_is_greedy():
    m = make_model(CONFIGS[0])
    prompts = [[1, 2, 3], [4, 5], [6]]
    greedy = generate(m, prompts, max_new_tokens=12, temperature=0, num_samples=3)
    top1 = generate(m, prompts, max_new_tokens=12, temperature=1.5, top_k=1, num_samples=3,
                    generator=torch.Generator().manual_seed(0))
    assert top1 == greedy


def test_top_k_restricts_the_support():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]]).repeat(2000, 1)
    draws = sample_next(logits, 1.0, 2, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3}
    assert sample_next(logits[:1], 0, None, None).item() == 1


def test_temperature_sharpens():
    logits = torch.tensor([[0.0, 1.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    p_hot = sample_next(logits, 1.0, None, g).float().mean().item()
    p_cold = sample_next(logits, 0.25, None, g).float().mean().item()
    assert p_hot == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.02)
    assert p_cold == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item(), abs=0.01)


def test_batching_does_not_change_per_row_results():
    m = make_model(CONFIGS[0])
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9], [3, 3]]
    batched = generate(m, prompts, max_new_tokens=10, temperature=0, num_samples=2, max_rows=64)
    alone = [generate(m, [p], max_new_tokens=10, temperature=0, num_samples=2)[0] for p in prompts]
    small_chunks = generate(m, prompts, max_new_tokens=10, temperature=0, num_samples=2, max_rows=2)
    assert batched == alone == small_chunks


def test_sampling_is_deterministic_given_the_generator():
    m = make_model(CONFIGS[0])
    prompts = [[1, 2, 3], [4, 5]]
    kw = dict(max_new_tokens=10, temperature=1.0, num_samples=8)
    a = generate(m, prompts, generator=torch.Generator().manual_seed(1), **kw)
    b = generate(m, prompts, generator=torch.Generator().manual_seed(1), **kw)
    c = generate(m, prompts, generator=torch.Generator().manual_seed(2), **kw)
    assert a == b and a != c
    assert len({tuple(s) for s in a[0]}) > 1  # samples of one prompt differ


def test_stops_at_a_stop_token_and_keeps_it():
    m = make_model(CONFIGS[0])
    prompts = [[1, 2, 3], [4, 5]]
    free = generate(m, prompts, max_new_tokens=12, temperature=0)
    stop = free[0][0][4]  # the 5th greedy token of prompt 0 becomes a stop token
    out = generate(m, prompts, max_new_tokens=12, temperature=0, stop_ids=[stop])
    first = free[0][0].index(stop)
    assert out[0][0] == free[0][0][:first + 1]
    other = free[1][0]
    assert out[1][0] == (other[:other.index(stop) + 1] if stop in other else other)


@pytest.mark.parametrize("bad, fragment", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(num_samples=0), "num_samples"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(prompts=[[]]), "prompt 0 has 0 tokens"),
    (dict(prompts=[[1] * 40]), "prompt 0 has 40 tokens"),
])
def test_generate_rejects_bad_arguments(bad, fragment):
    m = make_model(CONFIGS[0])
    kw = dict(prompts=[[1, 2]], max_new_tokens=3)
    kw.update(bad)
    with pytest.raises(ValueError, match=fragment):
        generate(m, kw.pop("prompts"), **kw)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_forward_flops_agree_with_the_training_count(cfg):
    full = forward_flops(cfg, 0, cfg.seq_len)
    assert full == pytest.approx(cfg.seq_len * flops_per_token(cfg).exact / 3, rel=1e-12)
    # a prompt plus tokens generated one at a time costs the same as one pass over the whole
    P = 9
    steps = forward_flops(cfg, 0, P) + sum(forward_flops(cfg, t, t + 1) for t in range(P, cfg.seq_len))
    assert steps == pytest.approx(full, rel=1e-12)
    # one decode step at position t: the matmuls once plus attention over t + 1 keys
    no_attn = flops_per_token(cfg).no_attention / 3
    assert forward_flops(cfg, 12, 13) == pytest.approx(no_attn + cfg.depth * 4 * cfg.width * 13)
    with pytest.raises(ValueError, match="start=5, stop=4"):
        forward_flops(cfg, 5, 4)
