"""Evaluate a trained GPT on held-out task problems: n sampled answers per problem, checked exactly.

    from sweeps.testtime.evaluate import evaluate
    result = evaluate(model, tokenizer, heldout_problems(spec), n_samples=32, seed=0)
    result["problems"][0]  # {"id", "difficulty", "n", "c", "wrong", "none", "majority", ...}

Each problem's prompt (train.data.tasks.prompt) is encoded with the tokenizer (any object with
encode(str) -> ids, decode(ids) -> str and vocab_size; the bytes tokenizer is the one the task is
designed for: with a BPE the prompt's last token may be split differently than in training) and
completed n times by model.generate with the KV cache; generation stops at any token whose text
holds a newline (or the end-of-text token). `c` counts completions that train.data.tasks.check
accepts; the votes (`wrong`: sizes of the groups of equal wrong answers, largest first; `none`:
completions without an answer) let sweeps.testtime.estimators compute majority@k; `majority` is the
most frequent answer over all n (ties to the smallest value). FLOPs per sample count each sample as
an independent query, prompt + its completion (model.flops.forward_flops); the sampler itself runs
a prompt once for all its samples. Deterministic given the seed (on one device type).
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Sequence

import torch

from model.flops import forward_flops
from model.generate import generate
from train.data import tasks


def stop_ids(tokenizer) -> List[int]:
    """Token ids whose text holds the answer terminator (a newline), plus end-of-text if any."""
    ids = [i for i in range(tokenizer.vocab_size) if tasks.ANSWER_END in tokenizer.decode([i])]
    eot = getattr(tokenizer, "eot", None)
    return ids + ([eot] if eot is not None and eot not in ids else [])


def _votes(problem, answers: Sequence[Optional[int]]) -> Dict:
    counts = Counter(a for a in answers if a is not None)
    wrong = sorted((m for a, m in counts.items() if a != problem.answer), reverse=True)
    majority = min(counts, key=lambda a: (-counts[a], a)) if counts else None
    return {"wrong": wrong, "none": sum(a is None for a in answers), "majority": majority,
            "majority_correct": majority == problem.answer}


@torch.no_grad()
def evaluate(model, tokenizer, problems: Sequence[tasks.Problem], *, n_samples: int, temperature: float = 1.0,
             top_k: Optional[int] = None, seed: int = 0, max_new_tokens: Optional[int] = None,
             max_rows: int = 512) -> Dict:
    """Per-problem counts and the inference accounting for `model` on `problems` (see module docstring)."""
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    prompts = [tokenizer.encode(tasks.prompt(p)) for p in problems]
    if max_new_tokens is None:  # the longest true answer line, plus room for a couple of stray tokens
        max_new_tokens = max(len(tokenizer.encode(f"{p.answer}{tasks.ANSWER_END}")) for p in problems) + 2
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    outs = generate(model, prompts, max_new_tokens=max_new_tokens, num_samples=n_samples,
                    temperature=temperature, top_k=top_k, stop_ids=stop_ids(tokenizer), generator=gen,
                    max_rows=max_rows)
    records, flops, prompt_flops = [], 0.0, 0.0
    for p, ids, samples in zip(problems, prompts, outs):
        texts = [tokenizer.decode(s) for s in samples]
        c = sum(tasks.check(p, t) for t in texts)
        rec = {"id": p.id, "difficulty": p.difficulty, "n": len(samples), "c": c,
               **_votes(p, [tasks.parse_answer(t) for t in texts]),
               "prompt_tokens": len(ids), "completion_tokens": sum(len(s) for s in samples)}
        records.append(rec)
        flops += sum(forward_flops(model.config, 0, len(ids) + len(s)) for s in samples)
        prompt_flops += forward_flops(model.config, 0, len(ids)) * len(samples)
    total = len(problems) * n_samples
    return {"problems": records, "n_samples": n_samples, "infer_flops_per_sample": flops / total,
            "prompt_flops_per_sample": prompt_flops / total,
            "settings": {"temperature": temperature, "top_k": top_k, "seed": seed,
                         "max_new_tokens": max_new_tokens}}
