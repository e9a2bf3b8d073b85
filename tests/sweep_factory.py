"""Fabricate sweep folders (summary.json + metrics.jsonl per run) from a known scaling law.

Used by tests/test_fit.py and tests/test_report.py to drive the fitter and the report end to end,
exactly through the files that training writes.  The law is L(N, D) = E + A/N^alpha + B/D^beta with
N = total parameters; each run of an IsoFLOP design trains D = C / flops_per_token(model) tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LAW = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
VOCAB = 512
SEQ = 256


def law_loss(N, D, law=LAW):
    return law["E"] + law["A"] / np.asarray(N, float) ** law["alpha"] + law["B"] / np.asarray(D, float) ** law["beta"]


def true_a(law=LAW):
    return law["beta"] / (law["alpha"] + law["beta"])


def shape_counts(width, depth, vocab=VOCAB, seq=SEQ):
    """Parameter and FLOP counts of a toy GPT shape (tied embedding/head)."""
    non_emb = 12 * depth * width * width
    emb = vocab * width
    total = non_emb + emb
    matmul = 6 * (non_emb + emb)  # forward+backward of every matmul incl. the output head
    attn = 6 * depth * seq * width  # causal attention scores and values, forward+backward
    return {"params_total": total, "params_non_embedding": non_emb, "params_embedding": emb,
            "flops_per_token": matmul + attn,
            "flops_conventions": {"exact": matmul + attn, "no_attention": matmul,
                                  "6n_total": 6 * total, "6n_non_embedding": 6 * non_emb}}


def default_shapes(n=7, width0=64, depth0=2):
    """A ladder of shapes growing ~1.6x in total parameters per step."""
    shapes = []
    for i in range(n):
        w = int(round(width0 * 1.25 ** i / 16) * 16)
        d = depth0 + i // 2
        shapes.append((w, d))
    return shapes


def write_run(root, name, summary, metrics_lines=None, truncate_last=False):
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    if summary is not None:
        text = summary if isinstance(summary, str) else json.dumps(summary)
        (d / "summary.json").write_text(text)
    if metrics_lines is not None:
        text = "\n".join(json.dumps(m) for m in metrics_lines) + "\n"
        if truncate_last:
            text = text[:-25]  # killed mid-write
        (d / "metrics.jsonl").write_text(text)
    return d


def make_sweep(root, *, budgets=(3e13, 1e14, 3e14), shapes=None, law=LAW, noise=0.0, seed=0, curves=True,
               n_evals=12, sweep="chinchilla", bad_runs=True):
    """Write an IsoFLOP sweep under ``root``; returns the list of (name, N, D, C, loss) written as completed.

    bad_runs adds one failed, one diverged, one skipped, one malformed summary.json and one killed run
    (metrics.jsonl with a truncated last line and no summary.json).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    shapes = shapes or default_shapes()
    written = []
    for C in budgets:
        for w, depth in shapes:
            cnt = shape_counts(w, depth)
            fpt = cnt["flops_per_token"]
            D = C / fpt
            N = cnt["params_total"]
            loss = float(law_loss(N, D, law) * np.exp(noise * rng.standard_normal()))
            name = f"C{C:.0e}_w{w}_d{depth}"
            lines = []
            if curves:
                steps = np.linspace(0, D, n_evals + 1)[1:]
                for k, t in enumerate(steps, start=1):
                    lines.append({"step": k * 10, "tokens": float(t), "flops": float(t * fpt),
                                  "train_loss": float(law_loss(N, t, law)) + 0.05, "lr": 1e-3, "grad_norm": 1.0,
                                  "tokens_per_s": 1e4, "mfu": 0.1})
                    vl = float(law_loss(N, t, law))
                    lines.append({"step": k * 10, "tokens": float(t), "flops": float(t * fpt),
                                  "val_loss": vl if k < len(steps) else loss, "val_bpb": vl / np.log(2) / 4,
                                  "val_full": True})
            summary = {
                "status": "completed", "reason": None, "name": name, "sweep": sweep, "group": "test-sweep",
                "model": {"width": w, "depth": depth, "heads": max(1, w // 32), "vocab_size": VOCAB,
                          "seq_len": SEQ, "mlp": "swiglu"},
                **cnt, "flops_per_token_6n": 6 * cnt["params_total"], "tokens": D, "compute": D * fpt,
                "budget": C, "final_val_loss": loss, "best_val_loss": loss, "final_val_bpb": loss / np.log(2) / 4,
                "tokens_per_s": 1e4, "mfu": 0.1, "wall_s": D / 1e4, "device": "cpu", "world_size": 1,
                "seed": 0, "git_commit": "abc123", "versions": {"torch": "x"}, "wandb_run_id": None,
            }
            write_run(root, name, summary, lines if curves else None)
            written.append((name, N, D, D * fpt, loss))
    if bad_runs:
        base = {"sweep": sweep, "group": "test-sweep", "budget": budgets[0], "model": {"width": 64, "depth": 2},
                "final_val_loss": None, "best_val_loss": None, "tokens": None, "compute": None}
        write_run(root, "bad_failed", {**base, "status": "failed", "reason": "CUDA out of memory", "name": "bad_failed"})
        write_run(root, "bad_diverged", {**base, "status": "diverged", "reason": "loss is NaN at step 120",
                                         "name": "bad_diverged", "final_val_loss": float("nan")},
                  [{"step": 1, "tokens": 10.0, "flops": 1e6, "val_loss": 9.0}])
        write_run(root, "bad_skipped", {**base, "status": "skipped", "name": "bad_skipped",
                                        "reason": "needs more tokens than the data holds"})
        write_run(root, "bad_malformed", '{"status": "completed", "name": "bad_malf')
        write_run(root, "bad_killed", None, [{"step": 1, "tokens": 10.0, "flops": 1e6, "val_loss": 9.0},
                                             {"step": 2, "tokens": 20.0, "flops": 2e6, "val_loss": 8.0}],
                  truncate_last=True)
    return written


def make_shape_sweep(root, *, non_emb=(2.0e6, 8.0e6), ratios=(8, 16, 32, 64, 128), seed=0):
    """Kaplan's shape check: fixed non-embedding N, varied width/depth; loss has a shallow optimum."""
    rng = np.random.default_rng(seed)
    for target in non_emb:
        for r in ratios:
            # 12 depth width^2 = target with width = r depth  ->  depth = (target / (12 r^2))^(1/3)
            depth = max(1, (target / (12 * r * r)) ** (1 / 3))
            width = int(round(r * depth / 8) * 8)
            depth = max(1, int(round(target / (12 * width * width))))
            cnt = shape_counts(width, depth)
            D = 20 * cnt["params_total"]
            loss = float(law_loss(cnt["params_total"], D) + 0.01 * np.log(r / 32) ** 2 + 0.002 * rng.standard_normal())
            name = f"shape_N{target:.0e}_r{r}"
            write_run(root, name, {"status": "completed", "name": name, "sweep": "shape", "group": "shape",
                                   "model": {"width": width, "depth": depth}, **cnt, "tokens": D,
                                   "compute": D * cnt["flops_per_token"], "budget": None,
                                   "final_val_loss": loss, "tokens_per_s": 1e4, "wall_s": 10.0})


def make_tokens_sweep(root, *, shapes=((64, 2), (128, 3), (192, 4)), multiples=(5, 10, 20, 40, 80)):
    """A ladder of N, each trained at several tokens-per-parameter multiples."""
    for w, depth in shapes:
        cnt = shape_counts(w, depth)
        for m in multiples:
            D = m * cnt["params_total"]
            name = f"tokens_w{w}_x{m}"
            write_run(root, name, {"status": "completed", "name": name, "sweep": "tokens", "group": "tokens",
                                   "model": {"width": w, "depth": depth}, **cnt, "tokens": D,
                                   "compute": D * cnt["flops_per_token"], "budget": None,
                                   "final_val_loss": float(law_loss(cnt["params_total"], D)),
                                   "tokens_per_s": 1e4, "wall_s": 10.0})
