"""Training throughput of this stack against a plain PyTorch baseline, in one process.

    python bench/train.py                       # GPU: writes bench/results/train-<gpu-slug>.json
    python bench/train.py --sizes 10m,50m --cuda-graphs
    python bench/train.py --sizes 124m --compile model --batch 24
    python bench/train.py --smoke --out /tmp/t.json   # CPU, tiny model, Triton interpreter

For each model size (GPT shapes at seq 1024, vocab 50304, bf16 autocast over float32 weights) two
stacks train the same model (same initial weights, same batches, same micro-batch), both through
the trainer's own step (train/step.py: forward + backward, gradient clipping, AdamW), so the figures
describe `python -m train`:
  scalelab  kernels="triton": Triton attention, RMSNorm, SwiGLU, RoPE and the fused linear +
            cross-entropy head (`model(x, y)`); fused AdamW; optional torch.compile of the model
            (--compile model, as train.compile=true) and optional CUDA graphs (--cuda-graphs, as
            train.cuda_graphs=true: the whole step captured once, then replayed).
  baseline  kernels="torch": SDPA attention and eager ops, logits + F.cross_entropy
            (`model(x, y, return_logits=True)`), torch.compile of the model, fused AdamW.
A measurement runs --warmup untimed steps (compilation, autotuning, allocator growth), then
--steps back-to-back steps timed as one span (CUDA events; perf_counter on CPU), so time the GPU
sits idle between launches counts against the stack. tokens/s = batch tokens x steps / span;
MFU = exact FLOPs per token (model.flops) x tokens/s / the device's dense bf16 peak; peak memory
is torch.cuda.max_memory_allocated over the whole measurement (weights, optimizer state and
activations), reset between stacks. loss0 / loss_last are the losses of the first warm-up step and
the last timed step: equal loss0 shows both stacks start from the same model. An OOM (or any
other failure) in one stack is recorded in its row and the run goes on.

--smoke runs everything on the CPU in float32 (no autocast) with the Triton kernels in the
interpreter (TRITON_INTERPRET=1) and the baseline compiled with the aot_eager backend; it writes
its JSON to --out, by default a temporary folder: its numbers measure nothing and must never land
in bench/results.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    # Run as `python bench/train.py`, this file's folder is sys.path[0], where this file would
    # shadow the `train` package (and bench/kernels.py the `kernels` package): use the repo root.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(REPO))

# name -> shape and default micro-batch (sequences; sized to fit 80 GB for both stacks). 10m and 50m
# are the GPU sweep preset's 384x6x6 and 640x10x10 shapes, named by their transformer-block parameters
# (10.6M, 49M); 124m and 350m are the GPT-2 small and medium shapes, named as GPT-2 counts them.
# Rows report the counts of the model actually trained, in the project's convention (model.flops:
# non-embedding includes the untied output head, so 124m has 124M non-embedding, 162M total).
SIZES = {
    "tiny": dict(width=64, depth=2, heads=2, vocab_size=256, seq_len=32, batch=2),  # smoke / GPU test
    "10m": dict(width=384, depth=6, heads=6, vocab_size=50304, seq_len=1024, batch=32),
    "50m": dict(width=640, depth=10, heads=10, vocab_size=50304, seq_len=1024, batch=32),
    "124m": dict(width=768, depth=12, heads=12, vocab_size=50304, seq_len=1024, batch=16),
    "350m": dict(width=1024, depth=24, heads=16, vocab_size=50304, seq_len=1024, batch=16),
}
GPU_SIZES = ("10m", "50m", "124m", "350m")
SMOKE_SIZES = ("tiny",)
N_BATCHES = 4  # distinct random batches, cycled through
OPTIM = dict(lr=3e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
GRAD_CLIP = 1.0  # the trainer's default (optim.grad_clip)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, Triton interpreter (checks the script runs)")
    p.add_argument("--sizes", default=None,
                   help=f"comma-separated subset of {','.join(SIZES)} (default {','.join(GPU_SIZES)}; smoke: tiny)")
    p.add_argument("--batch", type=int, default=None,
                   help="micro-batch in sequences for every size (default: per size)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before timing, >= 1 (default 10; smoke 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; smoke 3)")
    p.add_argument("--compile", choices=("none", "model"), default="none",
                   help="torch.compile the scalelab stack's model (the baseline is always compiled)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="scalelab stack: capture forward+backward+optimizer step in a CUDA graph and replay it")
    p.add_argument("--out", type=Path, default=None,
                   help="result JSON (default: bench/results/train-<gpu>.json; smoke: a temp dir)")
    args = p.parse_args(argv)

    sizes = args.sizes or ",".join(SMOKE_SIZES if args.smoke else GPU_SIZES)
    args.sizes = [s.strip().lower() for s in sizes.split(",") if s.strip()]
    bad = [s for s in args.sizes if s not in SIZES]
    if bad or not args.sizes:
        p.error(f"unknown size(s) {bad or sizes!r}; choose from {','.join(SIZES)}")
    if args.warmup is None:
        args.warmup = 2 if args.smoke else 10
    if args.steps is None:
        args.steps = 3 if args.smoke else 20
    if args.warmup < 1:
        p.error(f"--warmup must be >= 1 (step 0 gives loss0 and the compile/autotune warm-up), got {args.warmup}")
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    if args.smoke and args.cuda_graphs:
        p.error("--cuda-graphs needs a CUDA device; it cannot be used with --smoke")
    if args.smoke and args.compile == "model":
        p.error("--compile model cannot be used with --smoke: Dynamo cannot trace Triton kernels "
                "running in the interpreter (TRITON_INTERPRET=1); it is a GPU option")
    return args


# ------------------------------------------------------------------------------------ one stack


def _make_batches(cfg, batch, device, torch):
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(N_BATCHES):
        tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len + 1), generator=g)
        out.append((tokens[:, :-1].contiguous().to(device), tokens[:, 1:].contiguous().to(device)))
    return out


def _graph_break_notes(counters):
    """(number of graph breaks, ["count x reason", ...]) recorded by Dynamo since counters.clear()."""
    breaks = counters.get("graph_break", {})
    notes = [f"{n} x {' '.join(str(reason).split())[:240]}" for reason, n in breaks.items()]
    return sum(breaks.values()), notes


def measure(stack, cfg, batch, args, device, torch):
    """Train `cfg` with `stack` ("scalelab" or "baseline"); returns a dict of this stack's figures. Both
    stacks run the trainer's own step (train/step.py: forward + backward, gradient clipping at the
    trainer's default, AdamW), so the numbers describe what `python -m train` runs."""
    from torch._dynamo.utils import counters

    from model import GPT
    from train.optim import build_optimizer
    from train.step import TrainStep, autocast_for

    cuda = device == "cuda"
    ours = stack == "scalelab"
    graphs = ours and args.cuda_graphs
    compiled = (args.compile == "model") if ours else True
    cfg = cfg.replace(kernels="triton" if ours else "torch")

    batches = _make_batches(cfg, batch, device, torch)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)  # same initial weights for both stacks
    model = GPT(cfg).to(device)
    opt = build_optimizer(model, **OPTIM)  # fused AdamW on CUDA
    class LogitsLoss(torch.nn.Module):
        """The baseline's loss: full logits, then F.cross_entropy (`model(x, y, return_logits=True)`)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, y):
            return self.inner(x, y, return_logits=True)[0]

    fwd = model if ours else LogitsLoss(model)
    if compiled:
        fwd = torch.compile(fwd, backend="inductor" if cuda else "aot_eager")
    step_fn = TrainStep(fwd, opt, accum=1, grad_clip=GRAD_CLIP,
                        autocast=autocast_for(torch.device(device), bf16=cuda, cuda_graphs=graphs), cuda_graphs=graphs)

    def step(x, y):
        return step_fn([(x, y)], OPTIM["lr"])[0]

    counters.clear()
    for i in range(args.warmup):
        loss = step(*batches[i % N_BATCHES])
        if i == 0:
            loss0 = loss.item()
    n_breaks, notes = _graph_break_notes(counters) if compiled else (None, [])

    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
    else:
        t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step(*batches[(args.warmup + i) % N_BATCHES])
    if cuda:
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        seconds = time.perf_counter() - t0
    loss_last = loss.item()
    if not math.isfinite(loss_last):
        raise FloatingPointError(f"non-finite loss {loss_last} after {args.warmup + args.steps} steps")
    return {
        "tokens_per_s": batch * cfg.seq_len * args.steps / seconds,
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "loss0": loss0,
        "loss_last": loss_last,
        "graph_breaks": n_breaks,
        "notes": notes,
    }


def run_stack(stack, cfg, batch, args, device, torch):
    """measure() with failures turned into {"error": ...}; frees the stack's memory afterwards."""
    error = None
    try:
        return measure(stack, cfg, batch, args, device, torch)
    except torch.cuda.OutOfMemoryError:
        error = "OOM"
    except Exception as exc:
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:400]
        traceback.print_exc()
    finally:
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    print(f"[{stack}] failed: {error}", file=sys.stderr)
    return {"error": error}


# ------------------------------------------------------------------------------------------ main


def main(argv=None):
    args = parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton / kernels are imported
    import torch

    from bench.timing import command_line, device_info, format_table, slug, write_results
    from model import GPTConfig
    from model.flops import flops_per_token, mfu, param_counts

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench/train.py measures GPU training and needs CUDA; on a CPU use --smoke (checks that it runs)")
    device = "cpu" if args.smoke else "cuda"
    info = device_info("cpu (interpreter smoke)" if args.smoke else None)
    if args.out is None:
        args.out = (Path(tempfile.mkdtemp(prefix="scalelab-bench-smoke-")) / "train-smoke.json" if args.smoke
                    else REPO / "bench" / "results" / f"train-{slug(info['device'])}.json")

    rows, notes, failed = [], [], False
    for name in args.sizes:
        spec = dict(SIZES[name])
        default_batch = spec.pop("batch")
        batch = args.batch or default_batch
        cfg = GPTConfig(**spec)
        counts = param_counts(cfg)
        fpt = flops_per_token(cfg).exact
        row = {"model": name, "params": counts.total, "params_non_embedding": counts.non_embedding,
               "seq_len": cfg.seq_len, "batch_seqs": batch, "flops_per_token": fpt}
        for stack, prefix in (("scalelab", ""), ("baseline", "baseline_")):
            print(f"{name}: {stack} ...", file=sys.stderr, flush=True)
            r = run_stack(stack, cfg, batch, args, device, torch)
            tps = r.get("tokens_per_s")
            row[prefix + "tokens_per_s"] = tps
            row[prefix + "mfu"] = mfu(tps, fpt, info["device"]) if tps else None
            for key in ("peak_mb", "loss0", "loss_last", "graph_breaks"):
                row[prefix + key] = r.get(key)
            if "error" in r:
                row[prefix + "error"] = r["error"]
                failed |= r["error"] != "OOM"
            notes += [f"{name} {stack}: graph break {n}" for n in r.get("notes", [])]
        row["speedup"] = (row["tokens_per_s"] / row["baseline_tokens_per_s"]
                          if row["tokens_per_s"] and row["baseline_tokens_per_s"] else None)
        rows.append(row)

    payload = dict(info)
    payload["command"] = command_line("bench/train.py", argv)
    payload["settings"] = {
        "warmup": args.warmup, "steps": args.steps,
        "timer": "perf_counter" if args.smoke else "cuda events over all timed steps",
        "dtype": "float32 (Triton interpreter)" if args.smoke else "bf16 autocast, float32 weights",
        "optimizer": "AdamW " + ("fused" if device == "cuda" else "foreach (CPU)") + f" {OPTIM}",
        "scalelab": {"kernels": "triton", "loss": "fused linear+cross-entropy", "compile": args.compile,
                     "cuda_graphs": args.cuda_graphs},
        "baseline": {"kernels": "torch (SDPA)", "loss": "logits + F.cross_entropy",
                     "compile": "model (aot_eager backend)" if args.smoke else "model (inductor)"},
    }
    payload["results"] = rows
    if notes:
        payload["notes"] = notes
    path = write_results(args.out, payload)

    def pct(v):
        return None if v is None else 100 * v

    table = [dict(r, params_m=r["params"] / 1e6, mfu_pct=pct(r["mfu"]), baseline_mfu_pct=pct(r["baseline_mfu"]),
                  mem_ratio=(r["peak_mb"] / r["baseline_peak_mb"]
                             if r.get("peak_mb") and r.get("baseline_peak_mb") else None),
                  status=", ".join(f"{k}: {r[k]}" for k in ("error", "baseline_error") if k in r) or "ok")
             for r in rows]
    print(f"{info['device']} | torch {info['torch']} | triton {info['triton']} | {info['date']}")
    print(f"scalelab: triton kernels, compile={args.compile}, cuda_graphs={args.cuda_graphs} | "
          f"baseline: SDPA + logits/F.cross_entropy, torch.compile | ratios are scalelab / baseline")
    print(format_table(table, [
        ("model", "model", ""), ("params_m", "params M", ".1f"), ("batch_seqs", "B", "d"), ("seq_len", "T", "d"),
        ("tokens_per_s", "tok/s", ".0f"), ("baseline_tokens_per_s", "base tok/s", ".0f"), ("speedup", "ratio", ".2f"),
        ("mfu_pct", "MFU %", ".1f"), ("baseline_mfu_pct", "base MFU %", ".1f"),
        ("peak_mb", "MiB", ".0f"), ("baseline_peak_mb", "base MiB", ".0f"), ("mem_ratio", "mem ratio", ".2f"),
        ("graph_breaks", "breaks", "d"), ("baseline_graph_breaks", "base breaks", "d"),
        ("loss0", "loss0", ".4f"), ("baseline_loss0", "base loss0", ".4f"), ("status", "status", ""),
    ]))
    for n in notes:
        print(n)
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
