"""Repeated sampling after training: n answers per held-out task problem, checked exactly.

    testtime.enabled=true (data=tasks)  ->  <run dir>/testtime_counts.json + summary.json "testtime"

`evaluate_run` (called by train/run.py's report step, on a completed run) samples `testtime.n_samples`
completions of every held-out problem of the run's task corpus (train/data/tasks.py) from the trained
GPT (unwrapped; FSDP shards gathered; rank 0 only) and writes:
- testtime_counts.json: per problem {"id", "difficulty", "n", "c", "wrong", "none", "majority", ...}
  (c: completions the checker accepts; wrong: sizes of the groups of equal wrong answers; none:
  completions without an answer), the sampler's settings and its FLOPs per sample. Anyone can
  recompute every pass@k and majority@k from it; sweeps/testtime does, with intervals and fits.
- a compact block for the run record (and the same numbers to the metrics logger, so wandb has them):
  mean pass@k and majority@k over problems at k = 1, 2, 4, ..., n, FLOPs per sample, wall time.

Estimators (per problem; averaged over problems by the callers):
pass@k (Chen et al. 2021): with n samples of which c are correct, the chance that a random k-subset
(without replacement) holds at least one correct sample is
    1 - C(n - c, k) / C(n, k) = 1 - prod_{i=0}^{k-1} (n - c - i) / (n - i),
an unbiased estimate of 1 - (1 - p)^k for the problem's success rate p. The product form has factors
in [0, 1], so it neither overflows nor cancels; its running products give every k at once.
Majority vote at k: the chance that a random k-subset of the n samples has the correct answer as its
plurality answer. Samples without an answer do not vote; a tie between t answers counts 1/t (a
uniformly random tie-break); a subset with no votes fails. Exact over all C(n, k) subsets (so, like
pass@k, an unbiased estimate of the k-sample majority accuracy), from the vote counts.

Sampling: each problem's prompt (tasks.prompt) is completed n times by model.generate with the KV
cache; generation stops at a token whose text holds a newline (or end-of-text). FLOPs per sample
count each sample as an independent query, prompt plus its own completion (model.flops.forward_flops;
the sampler itself runs a prompt once for all its samples). Deterministic given testtime.seed on
one device type.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from math import comb
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from model.config import ConfigError
from model.flops import forward_flops
from model.generate import generate
from train.data import tasks
from train.io_utils import write_json
from train.log import get_logger

log = get_logger("testtime")
COUNTS_FILE = "testtime_counts.json"
COUNTS_FORMAT = "scalelab-testtime-counts-v1"
MAX_MAJORITY_SAMPLES = 1000  # majority@k's subset counts overflow float64 beyond this


# ------------------------------------------------------------------------------------ estimators


def _counts(n, c):
    n, c = np.atleast_1d(np.asarray(n, dtype=np.int64)), np.atleast_1d(np.asarray(c, dtype=np.int64))
    if n.shape != c.shape or (n < 1).any() or (c < 0).any() or (c > n).any():
        raise ValueError(f"need matching counts with n >= 1 and 0 <= c <= n, got n={n.tolist()}, c={c.tolist()}")
    return n, c


def pass_at_k_curve(n, c, kmax: Optional[int] = None) -> np.ndarray:
    """(problems, kmax) unbiased pass@k for k = 1..kmax; NaN where k > a problem's n."""
    n, c = _counts(n, c)
    kmax = int(n.max()) if kmax is None else int(kmax)
    if kmax < 1:
        raise ValueError(f"kmax must be >= 1, got {kmax}")
    i = np.arange(kmax)
    with np.errstate(divide="ignore", invalid="ignore"):
        factors = np.clip((n[:, None] - c[:, None] - i) / (n[:, None] - i), 0.0, 1.0)
    out = 1.0 - np.cumprod(factors, axis=1)
    out[i[None, :] >= n[:, None]] = np.nan
    return out


def pass_at_k(n, c, k: int) -> np.ndarray:
    """Per-problem unbiased pass@k (needs k <= n for every problem)."""
    n_arr, _ = _counts(n, c)
    if not 1 <= k <= n_arr.min():
        raise ValueError(f"k must be in 1..{int(n_arr.min())} (the fewest samples of any problem), got {k}")
    return pass_at_k_curve(n, c, k)[:, k - 1]


def _binomials(m: int, upto: int) -> np.ndarray:
    return np.array([float(comb(m, y)) for y in range(min(m, upto) + 1)])


def majority_at_k_curve(c: int, wrong: Sequence[int] = (), none: int = 0, kmax: Optional[int] = None) -> np.ndarray:
    """Majority-vote accuracy at k = 1..kmax (default n) for one problem, exact over all k-subsets.

    For x correct votes in the subset, count the ways to fill the other places: wrong groups of
    fewer than x samples and non-votes can never reach x, so they are picked freely (one binomial
    factor); each larger group takes fewer than x places, or exactly x (a tie). ways[j, t] counts
    fillings of j places with t tied groups; a t-way tie with the correct answer earns 1/(t + 1)."""
    wrong = [int(m) for m in wrong if int(m) > 0]
    c, none = int(c), int(none)
    n = c + sum(wrong) + none
    if c < 0 or none < 0 or n < 1:
        raise ValueError(f"need c >= 0, none >= 0 and at least one sample, got c={c}, wrong={wrong}, none={none}")
    if n > MAX_MAJORITY_SAMPLES:
        raise ValueError(f"majority@k is exact for up to {MAX_MAJORITY_SAMPLES} samples per problem, got {n}")
    kmax = n if kmax is None else int(kmax)
    if not 1 <= kmax <= n:
        raise ValueError(f"kmax must be in 1..{n}, got {kmax}")
    favourable = np.zeros(n + 1)
    for x in range(1, c + 1):
        big = [m for m in wrong if m >= x]
        free = none + sum(m for m in wrong if m < x)
        ways = np.zeros((n + 1, len(big) + 1))
        ways[:free + 1, 0] = _binomials(free, free)
        for m in big:
            below, at_x = _binomials(m, x - 1), float(comb(m, x))
            new = np.stack([np.convolve(ways[:, t], below)[:n + 1] for t in range(ways.shape[1])], axis=1)
            new[x:, 1:] += at_x * ways[:n + 1 - x, :-1]
            ways = new
        credit = ways @ (1.0 / (1.0 + np.arange(len(big) + 1)))
        favourable[x:] += comb(c, x) * credit[:n + 1 - x]
    ks = np.arange(1, kmax + 1)
    return favourable[ks] / np.array([float(comb(n, k)) for k in ks])


def report_ks(n: int) -> List[int]:
    """The k a run's record reports: 1, 2, 4, ... up to n, and n itself."""
    return sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n})


def mean_curves(problems: Sequence[Dict], ks: Sequence[int]) -> Dict[str, Dict[str, float]]:
    """Mean pass@k and majority@k over problems at the given k (each <= every problem's n)."""
    kmax = max(ks)
    passk = pass_at_k_curve([p["n"] for p in problems], [p["c"] for p in problems], kmax).mean(axis=0)
    maj = np.mean([majority_at_k_curve(p["c"], p["wrong"], p["none"], kmax) for p in problems], axis=0)
    return {"pass_at_k": {str(k): float(passk[k - 1]) for k in ks},
            "majority_at_k": {str(k): float(maj[k - 1]) for k in ks}}


# ------------------------------------------------------------------------------------- sampling


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


def evaluate(model, tokenizer, problems: Sequence[tasks.Problem], *, n_samples: int, temperature: float = 1.0,
             top_k: Optional[int] = None, seed: int = 0, max_new_tokens: Optional[int] = None,
             max_rows: int = 512) -> Dict:
    """Per-problem counts and the inference accounting for `model` (a GPT) on `problems`. `tokenizer`:
    encode(str) -> ids, decode(ids) -> str, vocab_size (the bytes tokenizer is the one the task is made
    for). `majority` is the most frequent answer over all n (ties to the smallest value)."""
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    prompts = [tokenizer.encode(tasks.prompt(p)) for p in problems]
    if max_new_tokens is None:  # the longest true answer line, plus room for a couple of stray tokens
        max_new_tokens = max(len(tokenizer.encode(f"{p.answer}{tasks.ANSWER_END}")) for p in problems) + 2
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
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


# --------------------------------------------------------------------------------- in a run


def check_settings(tt, data, seq_len: int) -> None:
    """The `testtime` section's values and relations (train/config.py's validate). Raises ConfigError."""
    for key in ("n_samples", "max_rows"):
        value = getattr(tt, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"testtime.{key} must be a positive integer, got {value!r}")
    if tt.n_samples > MAX_MAJORITY_SAMPLES:
        raise ConfigError(f"testtime.n_samples={tt.n_samples} is too many: majority@k is exact up to "
                          f"{MAX_MAJORITY_SAMPLES} samples per problem; valid: 1 .. {MAX_MAJORITY_SAMPLES}")
    if isinstance(tt.temperature, bool) or not isinstance(tt.temperature, (int, float)) or not tt.temperature >= 0:
        raise ConfigError(f"testtime.temperature must be a number >= 0 (0: greedy), got {tt.temperature!r}")
    if tt.top_k is not None and (isinstance(tt.top_k, bool) or not isinstance(tt.top_k, int) or tt.top_k < 1):
        raise ConfigError(f"testtime.top_k must be a positive integer or null (all tokens), got {tt.top_k!r}")
    if not tt.enabled:
        return
    if data.source != "tasks":
        raise ConfigError(f"testtime.enabled=true samples answers to the task corpus's held-out problems: it needs "
                          f"data=tasks (data.source=tasks), got data.source={data.source}")
    spec = tasks.task_spec(data)
    need = tasks.max_prompt_chars(spec) + tasks.max_answer_chars(spec)
    if seq_len < need:
        raise ConfigError(f"model.seq_len={seq_len} is too short for testtime: the longest held-out prompt "
                          f"({spec.max_terms} terms) and its answer take {need} tokens; valid: model.seq_len >= "
                          f"{need} (or a smaller data.task_max_terms)")


def _raw_model(model, info, parallel: str):
    """The trained GPT as one plain module on rank 0, None on the others: DDP and torch.compile
    unwrapped; FSDP's shards gathered first (a collective: every rank calls this)."""
    from train import distributed as D

    model = D.unwrap(model)
    if info.enabled and parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from model.gpt import GPT

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not info.is_main:
            return None
        full = GPT(model.config).to(info.device)
        full.load_state_dict(state)
        return full
    return model if info.is_main else None


def evaluate_run(run, run_dir, model, dataset, info, logger, step: int, bf16: bool) -> Optional[Dict]:
    """Sample, write testtime_counts.json, log the summary numbers; returns the run record's block
    (None on ranks other than 0). `run`: the RunConfig; `model`: as the training loop holds it."""
    tt = run.testtime
    raw = _raw_model(model, info, run.train.parallel)
    if raw is None:
        return None
    spec = tasks.task_spec(run.data)
    problems = tasks.heldout_problems(spec)
    log.info(f"testtime: {tt.n_samples} samples of each of {len(problems)} held-out problems "
             f"(temperature {tt.temperature}, top_k {tt.top_k})")
    started = time.time()
    raw.eval()
    with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=bf16):
        result = evaluate(raw, dataset.tokenizer(), problems, n_samples=tt.n_samples, temperature=tt.temperature,
                          top_k=tt.top_k, seed=tt.seed, max_rows=tt.max_rows)
    wall = time.time() - started
    write_json(Path(run_dir) / COUNTS_FILE, {"format": COUNTS_FORMAT, "run": Path(run_dir).name,
                                             "tasks": tasks.fingerprint(spec), "spec": dataclasses.asdict(spec),
                                             **result, "wall_s": wall})
    means = mean_curves(result["problems"], report_ks(tt.n_samples))
    block = {"counts": COUNTS_FILE, "tasks": tasks.fingerprint(spec), "problems": len(problems),
             "n_samples": tt.n_samples, **result["settings"],
             "infer_flops_per_sample": result["infer_flops_per_sample"],
             "prompt_flops_per_sample": result["prompt_flops_per_sample"], **means, "wall_s": wall}
    row = {f"testtime/pass@{k}": v for k, v in means["pass_at_k"].items()}
    row.update({f"testtime/maj@{k}": v for k, v in means["majority_at_k"].items()})
    row["testtime/infer_flops_per_sample"] = result["infer_flops_per_sample"]
    logger.log({"step": step, **row})
    logger.summary(row)
    n = str(tt.n_samples)
    log.info(f"testtime: pass@1 {means['pass_at_k']['1']:.3f}, pass@{n} {means['pass_at_k'][n]:.3f}, "
             f"majority@{n} {means['majority_at_k'][n]:.3f} in {wall:.1f} s; counts in {Path(run_dir) / COUNTS_FILE}")
    return block
