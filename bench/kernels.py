"""Benchmark the Triton kernels against their PyTorch baselines, in one process.

    python bench/kernels.py                 # GPU: writes bench/results/kernels-<gpu-slug>.json
    python bench/kernels.py --kernels rms_norm,swiglu --reps 100
    python bench/kernels.py --smoke --out /tmp/k.json   # CPU, tiny shapes, Triton interpreter

Per (kernel, pass, shape): median of many repetitions timed with CUDA events (warm-up not timed),
cycling through several freshly made input sets so a set is not left hot in L2. Baselines:
  attention            torch scaled_dot_product_attention, flash backend (sdpa_kernel(FLASH_ATTENTION))
  rms_norm/swiglu/rope the eager PyTorch reference, and torch.compile of that reference
                       (swiglu as the model calls it: a packed [gate | up] projection)
  linear_cross_entropy logits = x @ W.T, then F.cross_entropy on float32 logits
Peak memory is the torch.cuda.max_memory_allocated delta of one call (CUDA only).
TFLOP/s are given for the matmul-bound kernels (attention: causal fwd = 2*2*B*H*T*T*D/2, bwd = 2.5x
fwd; linear CE: 2*N*D*V per GEMM); the memory-bound ones report achieved GB/s instead.

--smoke runs everything end to end on the CPU (TRITON_INTERPRET=1, float32, tiny shapes,
time.perf_counter, torch.compile with the aot_eager backend) and writes its JSON to --out, by
default a temporary folder: its numbers measure nothing and must never land in bench/results.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    # Run as `python bench/kernels.py`, this file's folder is sys.path[0] and this file would
    # shadow the top-level `kernels` package: put the repository root there instead.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(REPO))

KERNELS = ("attention", "rms_norm", "swiglu", "rope", "linear_cross_entropy")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, Triton interpreter (checks the script runs)")
    p.add_argument("--out", type=Path, default=None, help="result JSON path (default: bench/results/kernels-<gpu>.json; smoke: a temp dir)")
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated subset of {','.join(KERNELS)}")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default 10; smoke 1)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions, median reported (default 50; smoke 2)")
    args = p.parse_args(argv)
    args.kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    bad = [k for k in args.kernels if k not in KERNELS]
    if bad:
        p.error(f"unknown kernel(s) {bad}; choose from {KERNELS}")
    if args.warmup is None:
        args.warmup = 1 if args.smoke else 10
    if args.reps is None:
        args.reps = 2 if args.smoke else 50
    return args


# ------------------------------------------------------------------------------------------ cases
# A case: make() -> tuple of fresh input tensors; ours / baselines take those tensors; grad_idx: the
# inputs that get gradients; out_like: index of the input whose shape the output has, or a function
# of the inputs giving a tensor of that shape (None: scalar).


def _cases(kernel, smoke, device, torch, F):
    import kernels as K
    from kernels.cross_entropy import linear_cross_entropy_reference
    from kernels.rmsnorm import rms_norm_reference
    from kernels.rope import rope_reference
    from kernels.swiglu import swiglu_reference

    dt = torch.float32 if smoke else torch.bfloat16
    es = torch.empty((), dtype=dt).element_size()

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device=device, dtype=torch.float32).mul_(scale).to(dt)

    cases = []
    if kernel == "attention":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa_flash(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def ours(q, k, v):
            return K.attention(q, k, v, causal=True, backend="triton")

        grid = [(1, 2, 64, 64)] if smoke else [
            (max(2, 16384 // T), 16, T, D) for D in (64, 128) for T in (1024, 2048, 4096, 8192)
        ]
        for B, H, T, D in grid:
            fwd = 2 * 2 * B * H * T * T * D / 2
            cases.append(dict(
                shape={"B": B, "H": H, "T": T, "D": D}, make=lambda B=B, H=H, T=T, D=D: tuple(randn(B, H, T, D) for _ in range(3)),
                ours=ours, baselines={"sdpa-flash": sdpa_flash}, grad_idx=(0, 1, 2), out_like=0,
                passes={"fwd": (fwd, None), "bwd": (2.5 * fwd, None)},
            ))
    elif kernel == "rms_norm":
        grid = [(64, 96)] if smoke else [(16384, 768), (8192, 4096)]
        for N, D in grid:
            cases.append(dict(
                shape={"N": N, "D": D}, make=lambda N=N, D=D: (randn(N, D), 1 + randn(D, scale=0.1)),
                ours=lambda x, w: K.rms_norm(x, w, backend="triton"),
                baselines={"eager": rms_norm_reference, "torch.compile": "compile"},
                reference=rms_norm_reference, grad_idx=(0, 1), out_like=0,
                passes={"fwd": (None, 2 * N * D * es), "bwd": (None, 3 * N * D * es)},
            ))
    elif kernel == "swiglu":
        # The model's call: the packed projection h = [gate | up] (N, 2D) -> (N, D).
        grid = [(64, 96)] if smoke else [(16384, 2048), (8192, 11008)]

        def packed_reference(h):
            return swiglu_reference(*h.chunk(2, dim=-1))

        for N, D in grid:
            cases.append(dict(
                shape={"N": N, "D": D}, make=lambda N=N, D=D: (randn(N, 2 * D),),
                ours=lambda h: K.swiglu_packed(h, backend="triton"),
                baselines={"eager": packed_reference, "torch.compile": "compile"},
                reference=packed_reference, grad_idx=(0,), out_like=lambda raw, D=D: raw[0][:, :D],
                passes={"fwd": (None, 3 * N * D * es), "bwd": (None, 5 * N * D * es)},
            ))
    elif kernel == "rope":
        grid = [(1, 2, 32, 32)] if smoke else [(8, 12, 2048, 64), (4, 32, 4096, 128)]
        for B, H, T, D in grid:
            inv = 1.0 / 10000.0 ** (torch.arange(0, D, 2, device=device, dtype=torch.float32) / D)
            ang = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv[None, :]
            cos, sin = ang.cos(), ang.sin()
            n = B * H * T * D
            cases.append(dict(
                shape={"B": B, "H": H, "T": T, "D": D}, make=lambda B=B, H=H, T=T, D=D: (randn(B, H, T, D),),
                ours=lambda x, c=cos, s=sin: K.rope(x, c, s, backend="triton"),
                baselines={"eager": lambda x, c=cos, s=sin: rope_reference(x, c, s), "torch.compile": "compile"},
                reference=lambda x, c=cos, s=sin: rope_reference(x, c, s), grad_idx=(0,), out_like=0,
                passes={"fwd": (None, 2 * n * es), "bwd": (None, 2 * n * es)},
            ))
    elif kernel == "linear_cross_entropy":
        grid = [(16, 32, 301)] if smoke else [(8192, 768, 50257), (8192, 4096, 128256)]
        for N, D, V in grid:
            def make(N=N, D=D, V=V):
                t = torch.randint(0, V, (N,), device=device)
                return randn(N, D), randn(V, D, scale=D ** -0.5), t

            gemm = 2 * N * D * V
            cases.append(dict(
                shape={"N": N, "D": D, "V": V}, make=make,
                ours=lambda x, w, t: K.linear_cross_entropy(x, w, t, backend="triton"),
                baselines={"logits+F.cross_entropy": linear_cross_entropy_reference},
                grad_idx=(0, 1), out_like=None,
                passes={"fwd": (gemm, None), "fwd+bwd": (3 * gemm, None)},
            ))
    return cases


# ---------------------------------------------------------------------------------------- running


def _n_sets(bytes_per_set, smoke):
    if smoke:
        return 2
    l2_bytes = 50 * 2**20  # H100: 50 MB L2; rotate through >= ~4x that
    return int(min(8, max(2, math.ceil(4 * l2_bytes / max(bytes_per_set, 1)))))


def _pass_fn_and_sets(torch, fn, case, pass_, raw_sets):
    """(callable, list of argument tuples) that time one pass of fn on each raw input set."""
    gi = case["grad_idx"]
    if pass_ == "fwd":
        def run(*ins):
            with torch.no_grad():
                return fn(*ins)
        return run, [tuple(raw) for raw in raw_sets]

    def leaves(raw):
        return tuple(t.detach().clone().requires_grad_(i in gi) for i, t in enumerate(raw))

    def grad_out(raw):
        ol = case["out_like"]
        if ol is None:
            return None
        return torch.randn_like(ol(raw) if callable(ol) else raw[ol])

    if pass_ == "fwd+bwd":
        def run(*args):
            *ins, go = args
            out = fn(*ins)
            return torch.autograd.grad(out, [ins[i] for i in gi], go)
        return run, [leaves(raw) + (grad_out(raw),) for raw in raw_sets]

    # "bwd": forward once per set outside the timing, then time the backward (graph retained).
    sets = []
    for raw in raw_sets:
        ins = leaves(raw)
        out = fn(*ins)
        sets.append((out, tuple(ins[i] for i in gi), grad_out(raw)))

    def run(out, ins, go):
        return torch.autograd.grad(out, ins, go, retain_graph=True)
    return run, sets


def main(argv=None):
    args = parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton / kernels are imported
    import torch
    import torch.nn.functional as F

    from bench.timing import command_line, device_info, format_table, peak_memory_mb, slug, time_cpu, time_cuda, write_results

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench/kernels.py times GPU kernels and needs CUDA; on a CPU use --smoke (checks that it runs)")
    device = "cpu" if args.smoke else "cuda"
    torch.manual_seed(0)
    try:
        import torch._dynamo as dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, name):
                setattr(dynamo.config, name, 64)
    except Exception:
        pass

    info = device_info("cpu (interpreter smoke)" if args.smoke else None)
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="scalelab-bench-smoke-")) / "kernels-smoke.json"
            if args.smoke else REPO / "bench" / "results" / f"kernels-{slug(info['device'])}.json"
        )

    def timer(fn, sets):
        if args.smoke:
            return time_cpu(fn, sets, warmup=args.warmup, reps=args.reps)
        return time_cuda(fn, sets, warmup=args.warmup, reps=args.reps)

    def peak(fn, sets):
        return None if args.smoke else peak_memory_mb(fn, sets[0])

    rows, errors = [], []
    for kernel in args.kernels:
        try:
            cases = _cases(kernel, args.smoke, device, torch, F)
        except Exception as exc:
            errors.append(f"{kernel}: set-up failed: {exc!r}")
            traceback.print_exc()
            continue
        for case in cases:
            probe = case["make"]()
            n_sets = _n_sets(sum(t.numel() * t.element_size() for t in probe), args.smoke)
            raw_sets = [probe] + [case["make"]() for _ in range(n_sets - 1)]
            del probe
            baselines = dict(case["baselines"])
            for name, b in baselines.items():
                if b == "compile":
                    # A fresh compiled wrapper per shape; aot_eager in smoke (no C compiler needed).
                    baselines[name] = torch.compile(
                        case["reference"], dynamic=False, backend="aot_eager" if args.smoke else "inductor"
                    )
            dtype = str(raw_sets[0][0].dtype).replace("torch.", "")
            for pass_, (flops, nbytes) in case["passes"].items():
                label = f"{kernel} {pass_} {case['shape']}"
                try:
                    fn, sets = _pass_fn_and_sets(torch, case["ours"], case, pass_, raw_sets)
                    ours_ms = timer(fn, sets)
                    ours_peak = peak(fn, sets)
                    del sets
                except Exception as exc:
                    errors.append(f"{label}: ours failed: {exc!r}")
                    traceback.print_exc()
                    continue
                for bname, bfn in baselines.items():
                    base_ms = base_peak = None
                    row_err = None
                    try:
                        fn, sets = _pass_fn_and_sets(torch, bfn, case, pass_, raw_sets)
                        base_ms = timer(fn, sets)
                        base_peak = peak(fn, sets)
                        del sets
                    except Exception as exc:  # a baseline failing is reported, not fatal
                        row_err = f"{type(exc).__name__}: {exc}"[:300]
                        print(f"[warn] {label}: baseline {bname} failed: {row_err}", file=sys.stderr)
                    row = {
                        "kernel": kernel,
                        "pass": pass_,
                        "dtype": dtype,
                        "shape": case["shape"],
                        "ours_ms": ours_ms,
                        "baseline": bname,
                        "baseline_ms": base_ms,
                        "speedup": (base_ms / ours_ms) if (base_ms and ours_ms > 0) else None,
                        "tflops": (flops / (ours_ms * 1e-3) / 1e12) if flops else None,
                        "baseline_tflops": (flops / (base_ms * 1e-3) / 1e12) if (flops and base_ms) else None,
                        "ours_gbps": (nbytes / (ours_ms * 1e-3) / 1e9) if nbytes else None,
                        "ours_peak_mb": ours_peak,
                        "baseline_peak_mb": base_peak,
                    }
                    if row_err:
                        row["baseline_error"] = row_err
                    rows.append(row)
            del raw_sets
            if device == "cuda":
                torch.cuda.empty_cache()

    payload = dict(info)
    payload["command"] = command_line("bench/kernels.py", argv)
    payload["settings"] = {"warmup": args.warmup, "reps": args.reps, "timer": "perf_counter" if args.smoke else "cuda events"}
    payload["results"] = rows
    if errors:
        payload["errors"] = errors
    path = write_results(args.out, payload)

    table_rows = [dict(r, shape=" ".join(f"{k}={v}" for k, v in r["shape"].items())) for r in rows]
    print(f"{info['device']} | torch {info['torch']} | triton {info['triton']} | {info['date']}")
    print(format_table(table_rows, [
        ("kernel", "kernel", ""), ("pass", "pass", ""), ("dtype", "dtype", ""), ("shape", "shape", ""),
        ("baseline", "baseline", ""), ("ours_ms", "ours ms", ".3f"), ("baseline_ms", "base ms", ".3f"),
        ("speedup", "speedup", ".2f"), ("tflops", "TFLOP/s", ".1f"), ("ours_gbps", "GB/s", ".0f"),
        ("ours_peak_mb", "ours MiB", ".0f"), ("baseline_peak_mb", "base MiB", ".0f"),
    ]))
    print(f"wrote {path}")
    if errors:
        print("errors:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
