"""Sampling from the GPT with a KV cache: temperature, top-k, batched over prompts x samples.

    from model.generate import generate
    g = torch.Generator().manual_seed(0)          # on the model's device
    outs = generate(model, [[51, 43, 61], [55, 61]], num_samples=8, max_new_tokens=12,
                    temperature=1.0, top_k=None, stop_ids=[10], generator=g)
    outs[i][j]  # token ids of the j-th completion of prompt i, ending with the stop token if one came

How it runs: prompts are grouped by length, so the rows of one forward pass share their positions
and need no padding or attention mask. Each prompt is run once (the prefill), its cache is copied
to its `num_samples` rows, and then every row decodes one token per step until all rows have
produced a stop token or `max_new_tokens` tokens (a row that stopped keeps being fed, its tokens
are dropped). Rows per pass are bounded by `max_rows` (one prompt's samples are never split).

Sampling: temperature 0 is greedy (argmax, the lowest id on ties); otherwise logits / temperature,
optionally cut to the top_k largest (ties with the k-th kept), are sampled with torch.multinomial
from the one `generator`, consumed in a fixed order (groups by increasing prompt length, prompts in
their given order, `max_rows` per chunk). The result is thus a pure function of the weights, the
prompts, the settings and the generator's seed on one device type; greedy results of a prompt do
not depend on what else is in the batch. FLOPs of a completion: model.flops.forward_flops.

Model code: no Hydra, no logging, no distributed. Call it under torch.autocast for bf16 on a GPU.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F


class _LayerKV:
    """One layer's cached keys and values, (rows, heads, max_len, head_dim), allocated on first use."""

    def __init__(self, cache: "KVCache"):
        self.cache, self.k, self.v = cache, None, None

    def attend(self, q, k, v):
        """Store this step's k, v at positions [pos, pos + T) and attend q over every cached position
        (causally: the query at position pos + r sees keys 0 .. pos + r). Called by model.gpt.Attention."""
        start, T = self.cache.pos, k.shape[2]
        stop = start + T
        if stop > self.cache.max_len:
            raise ValueError(f"KV cache holds {self.cache.max_len} positions, asked to fill up to {stop}")
        if self.k is None:
            shape = (k.shape[0], k.shape[1], self.cache.max_len, k.shape[3])
            self.k = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(shape, dtype=v.dtype, device=v.device)
        self.k[:, :, start:stop] = k
        self.v[:, :, start:stop] = v
        keys, values = self.k[:, :, :stop], self.v[:, :, :stop]
        mask = None if T == 1 else torch.ones(T, stop, dtype=torch.bool, device=q.device).tril(start)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


class KVCache:
    """Keys and values of every layer for a batch of rows, up to `max_len` positions.

    Pass it as GPT.forward(idx, cache=...): the tokens of idx are placed at positions
    [cache.pos, cache.pos + T), appended to the cache, and `pos` advances by T."""

    def __init__(self, depth: int, max_len: int):
        self.max_len, self.pos = max_len, 0
        self.layers = [_LayerKV(self) for _ in range(depth)]

    def layer(self, i: int) -> _LayerKV:
        return self.layers[i]

    def advance(self, n: int) -> None:
        self.pos += n

    def repeat_rows(self, n: int) -> None:
        """Row r becomes rows r*n .. r*n + n - 1 (a prompt's prefill shared by its n samples)."""
        for layer in self.layers:
            if layer.k is not None:
                layer.k = layer.k.repeat_interleave(n, dim=0)
                layer.v = layer.v.repeat_interleave(n, dim=0)


def sample_next(logits: torch.Tensor, temperature: float, top_k: Optional[int],
                generator: Optional[torch.Generator]) -> torch.Tensor:
    """Next token ids (rows,) from the last-position logits (rows, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check(model, prompts, max_new_tokens, num_samples, temperature, top_k, max_rows):
    seq_len = model.config.seq_len
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be an integer >= 1, got {max_rows!r}")
    for i, p in enumerate(prompts):
        if not 1 <= len(p) < seq_len:
            raise ValueError(f"prompt {i} has {len(p)} tokens; valid: 1 .. {seq_len - 1} (model.seq_len={seq_len})")


def _decode(model, x, num_samples, new_tokens, temperature, top_k, stop, generator, use_cache):
    """(rows, <= new_tokens) sampled ids for the prompts x (prompts, P), rows = prompts x samples."""
    if use_cache:
        cache = KVCache(model.config.depth, x.shape[1] + new_tokens)
        _, logits = model(x, return_logits=True, cache=cache)
        cache.repeat_rows(num_samples)
        logits = logits[:, -1].repeat_interleave(num_samples, dim=0)
    else:  # the reference path: the whole sequence again at every step
        seq = x.repeat_interleave(num_samples, dim=0)
        logits = model(seq, return_logits=True)[1][:, -1]
    out = torch.empty(logits.shape[0], new_tokens, dtype=torch.long, device=x.device)
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=x.device)
    for t in range(new_tokens):
        nxt = sample_next(logits, temperature, top_k, generator)
        out[:, t] = nxt
        done |= torch.isin(nxt, stop)
        if t == new_tokens - 1 or bool(done.all()):
            break
        if use_cache:
            logits = model(nxt[:, None], return_logits=True, cache=cache)[1][:, -1]
        else:
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            logits = model(seq, return_logits=True)[1][:, -1]
    return out[:, :t + 1].cpu()


def _trim(row: List[int], stop: set) -> List[int]:
    for i, tok in enumerate(row):
        if tok in stop:
            return row[:i + 1]
    return row


@torch.no_grad()
def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, num_samples: int = 1,
             temperature: float = 1.0, top_k: Optional[int] = None, stop_ids: Iterable[int] = (),
             generator: Optional[torch.Generator] = None, use_cache: bool = True,
             max_rows: int = 512) -> List[List[List[int]]]:
    """`num_samples` completions of each prompt (lists of token ids): out[prompt][sample], each at
    most `max_new_tokens` long (and never past model.config.seq_len), ending with its first stop
    token when one was produced. use_cache=False recomputes the whole sequence at every step (the
    reference the cache is tested against). See the module docstring for batching and randomness."""
    _check(model, prompts, max_new_tokens, num_samples, temperature, top_k, max_rows)
    device = next(model.parameters()).device
    stop_set = {int(s) for s in stop_ids}
    stop = torch.tensor(sorted(stop_set), dtype=torch.long, device=device)
    by_len: dict = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    per_chunk = max(1, max_rows // num_samples)
    out: List[List[List[int]]] = [[] for _ in prompts]
    for length in sorted(by_len):
        ids = by_len[length]
        new_tokens = min(max_new_tokens, model.config.seq_len - length)
        for c in range(0, len(ids), per_chunk):
            chunk = ids[c:c + per_chunk]
            x = torch.tensor([list(prompts[i]) for i in chunk], dtype=torch.long, device=device)
            rows = _decode(model, x, num_samples, new_tokens, temperature, top_k, stop, generator,
                           use_cache).tolist()
            for r, i in enumerate(chunk):
                out[i] = [_trim(rows[r * num_samples + j], stop_set) for j in range(num_samples)]
    return out
