"""Compile every Triton kernel ahead of time for a GPU target, without a GPU, and read ptxas's report.

    python -m kernels.aot                      # table: registers, spills, tensor-core ops per job
    python -m kernels.aot --json out.json --workers 2 --filter attn_fwd

Uses Triton's compiler API (ASTSource + GPUTarget) and the ptxas shipped in the triton wheel: no
GPU, no driver. Each job is one kernel specialisation as a real launch makes it:
  - pointers 16-byte aligned; integer arguments divisible by 16 where the model's shapes make them
    so (strides, widths) and not where they need not be (sequence length, rows, vocabulary);
  - Python floats typed fp64, as torch.compile (Inductor) passes them to user Triton kernels;
  - attention: every autotune candidate at head dims 32/64/128 in bfloat16 and float16, causal (what
    the model runs), each marked kept or pruned by `kernels.attention.kept_configs` (the pruned
    ones show the other side of the rule); non-causal samples; the forward's pointer path too;
  - the other kernels at the launch configurations their wrappers pick for representative widths.
Per job: registers, spill stores/loads (ptxas -v), shared memory, wgmma / mma.sync counts, and fp64
arithmetic in the PTX. tests/test_kernels_sm90.py runs this in a subprocess and checks the report.

Needs TRITON_INTERPRET unset (the kernels must be JIT functions, not interpreted ones).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import os
import re
import sys
import time
from typing import Optional

TARGET_ARCH = 90  # sm_90a (H100 / H200)
DTYPES = ("bf16", "fp16")
HEAD_DIMS = (32, 64, 128)
_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclasses.dataclass
class Job:
    name: str  # unique, e.g. "attn_fwd[bf16,hd128,128x64,w8,s3,tma]"
    kernel: str  # family: attn_fwd, attn_dkdv, attn_dq, attn_pre, rms_fwd, rms_bwd, swiglu_fwd, ...
    module: str
    fn: str
    pointers: dict  # argument name -> element type ("bf16", "fp32", "i64", ...)
    floats: tuple  # float scalar arguments
    div16: tuple  # integer arguments that are multiples of 16 in real launches
    constexprs: dict
    num_warps: int
    num_stages: int = 3
    tensor_cores: bool = False  # expect wgmma / mma in the PTX
    meta: dict = dataclasses.field(default_factory=dict)  # dtype, head_dim, config ... for tests


def _attention_jobs(dtypes, head_dims):
    A = importlib.import_module("kernels.attention")

    scalars = {"fwd": ("qk_scale",), "dkdv": ("qk_scale", "sm_scale"), "dq": ("qk_scale", "sm_scale")}
    fns = {"fwd": "_attn_fwd_kernel", "dkdv": "_attn_bwd_dkdv_kernel", "dq": "_attn_bwd_dq_kernel"}
    tensors = {"fwd": ("Q", "K", "V", "O"), "dkdv": ("Q", "K", "V", "DO", "DK", "DV"),
               "dq": ("Q", "K", "V", "DO", "DQ")}
    jobs = []

    def add(kind, dt, hd, cfg, kept, causal=True, tma=False):
        bm, bn, w, s = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages
        consts = dict(HEAD_DIM=hd, CAUSAL=causal, DOT_PREC="tf32", BLOCK_M=bm, BLOCK_N=bn)
        if kind == "fwd":
            consts["USE_TMA"] = tma
        pointers = {n: dt for n in tensors[kind]}
        pointers.update(LSE="fp32", DELTA="fp32")
        flags = (",tma" if tma else "") + ("" if causal else ",full") + ("" if cfg in kept else ",pruned")
        jobs.append(Job(
            name=f"attn_{kind}[{dt},hd{hd},{bm}x{bn},w{w},s{s}{flags}]", kernel=f"attn_{kind}",
            module="kernels.attention", fn=fns[kind], pointers=pointers, floats=scalars[kind],
            div16=("stride", "SEQ_BUCKET"), constexprs=consts, num_warps=w, num_stages=s,
            tensor_cores=True, meta=dict(dtype=dt, head_dim=hd, config=[bm, bn, w, s], causal=causal,
                                         tma=tma, kept=cfg in kept),
        ))

    for dt in dtypes:
        for hd in head_dims:
            for kind in ("fwd", "dkdv", "dq"):
                # Causal (the model's case) at every candidate, kept or pruned, so the report shows
                # both sides of the pruning rule; the forward with its Hopper TMA loads.
                tma = kind == "fwd"
                kept = A.kept_configs(kind, hd, _DTYPE_BYTES[dt], "tf32", tma)
                for cfg in A.CONFIGS[kind]:
                    add(kind, dt, hd, cfg, kept, tma=tma)
                if dt == "bf16":  # samples of the other specialisations
                    add(kind, dt, hd, kept[0], kept, causal=False, tma=tma)
                    if kind == "fwd":  # the pointer path (pre-Hopper GPUs), compiled for sm_90a too
                        pointer = A.kept_configs(kind, hd, _DTYPE_BYTES[dt], "tf32", tma=False)
                        for cfg in A.CONFIGS[kind]:
                            add(kind, dt, hd, cfg, pointer)
            jobs.append(Job(
                name=f"attn_pre[{dt},hd{hd}]", kernel="attn_pre", module="kernels.attention",
                fn="_attn_bwd_preprocess_kernel", pointers=dict(O=dt, DO=dt, DELTA="fp32"), floats=(),
                div16=("stride",), constexprs=dict(HEAD_DIM=hd, BLOCK_M=A.preprocess_block(hd)),
                num_warps=4, meta=dict(dtype=dt, head_dim=hd),
            ))
    return jobs


def _elementwise_jobs(dtypes):
    # import_module: kernels/__init__ re-exports functions under the module names (kernels.rope, ...)
    ce = importlib.import_module("kernels.cross_entropy")
    rms = importlib.import_module("kernels.rmsnorm")
    rp = importlib.import_module("kernels.rope")
    sw = importlib.import_module("kernels.swiglu")

    jobs = []
    for dt in dtypes:
        for width in (768, 4096, rms.MAX_WIDTH):  # one width per launch configuration (4, 8, 16 warps)
            block, warps = rms._launch_config(width)
            common = dict(module="kernels.rmsnorm", constexprs=dict(BLOCK_D=block), num_warps=warps,
                          meta=dict(dtype=dt, width=width))
            jobs.append(Job(name=f"rms_fwd[{dt},D{width}]", kernel="rms_fwd", fn="_rms_norm_fwd_kernel",
                            pointers=dict(X=dt, W=dt, Y=dt, RSTD="fp32"), floats=("eps",),
                            div16=("stride_x", "stride_y", "D"), **common))
            jobs.append(Job(name=f"rms_bwd[{dt},D{width}]", kernel="rms_bwd", fn="_rms_norm_bwd_kernel",
                            pointers=dict(DY=dt, X=dt, W=dt, RSTD="fp32", DX=dt, DW_PART="fp32"), floats=(),
                            div16=("stride_dy", "stride_x", "stride_dx", "D"), **common))
        for hidden in (256, 2048):  # a narrow tile (8 x 256) and the widest (2 x 1024)
            block_r, block_d, warps = sw._launch_config(hidden)
            common = dict(module="kernels.swiglu", constexprs=dict(BLOCK_R=block_r, BLOCK_D=block_d),
                          num_warps=warps, floats=(), meta=dict(dtype=dt, hidden=hidden))
            jobs.append(Job(name=f"swiglu_fwd[{dt},D{hidden}]", kernel="swiglu_fwd", fn="_swiglu_fwd_kernel",
                            pointers=dict(G=dt, U=dt, O=dt), div16=("D", "stride"), **common))
            jobs.append(Job(name=f"swiglu_bwd[{dt},D{hidden}]", kernel="swiglu_bwd", fn="_swiglu_bwd_kernel",
                            pointers=dict(DO=dt, G=dt, U=dt, DG=dt, DU=dt), div16=("D", "stride"), **common))
        for hd in HEAD_DIMS:
            block_t, block_h, warps = rp._launch_config(hd // 2)
            for inverse in (False, True):
                jobs.append(Job(
                    name=f"rope[{dt},hd{hd}{',inverse' if inverse else ''}]", kernel="rope",
                    module="kernels.rope", fn="_rope_kernel", pointers=dict(X=dt, COS="fp32", SIN="fp32", Y=dt),
                    floats=(), div16=("HALF", "sx", "sy", "sc", "ss"), num_warps=warps,
                    constexprs=dict(INVERSE=inverse, BLOCK_T=block_t, BLOCK_H=block_h),
                    meta=dict(dtype=dt, head_dim=hd),
                ))
        for vocab in (256, 50257):
            block_v, warps = ce._launch_config(vocab)
            for grad in (True, False):
                jobs.append(Job(
                    name=f"cross_entropy[{dt},V{vocab}{'' if grad else ',loss-only'}]", kernel="cross_entropy",
                    module="kernels.cross_entropy", fn="_ce_loss_grad_kernel",
                    pointers=dict(LOGITS=dt, TARGETS="i64", LOSS="fp32", SCALE="fp32"), floats=(),
                    div16=("stride_l",), num_warps=warps, constexprs=dict(COMPUTE_GRAD=grad, BLOCK_V=block_v),
                    meta=dict(dtype=dt, vocab=vocab),
                ))
    return jobs


def all_jobs(quick=False):
    """Every job; `quick`: a representative quarter (bfloat16; attention at head_dim 128, the
    tightest in registers)."""
    if quick:
        return _attention_jobs(("bf16",), (128,)) + _elementwise_jobs(("bf16",))
    return _attention_jobs(DTYPES, HEAD_DIMS) + _elementwise_jobs(DTYPES + ("fp32",))


def _signature(fn, job):
    """Triton signature and specialisation attributes for one job."""
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in job.constexprs:
            signature[name] = "constexpr"
        elif name in job.pointers:
            signature[name] = "*" + job.pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in job.floats:
            signature[name] = "fp64"
        else:
            signature[name] = "i32"
            if any(name.startswith(prefix) for prefix in job.div16):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, attrs


_F64_MATH = re.compile(r"^\s*(?!cvt\.\w+\.f32\.f64)(?!ld\.param)[a-z]+\.[\w.]*f64", re.MULTILINE)


def compile_job(job: Job) -> dict:
    """Compile one job for sm_90a; the ptxas -v report, PTX instruction counts, or the error."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    fn = getattr(importlib.import_module(job.module), job.fn)
    signature, attrs = _signature(fn, job)
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v output is printed: capture it
    knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report
    log = io.StringIO()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            kernel = compile(ASTSource(fn=fn, signature=signature, constexprs=job.constexprs, attrs=attrs),
                             target=GPUTarget("cuda", TARGET_ARCH, 32),
                             options={"num_warps": job.num_warps, "num_stages": job.num_stages})
    except Exception as exc:  # reported per job; the test names it
        return {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}"}
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    ptx = kernel.asm["ptx"]
    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_stores": int(spills.group(1)) if spills else None,
        "spill_loads": int(spills.group(2)) if spills else None,
        "shared_bytes": kernel.metadata.shared,
        "wgmma": ptx.count("wgmma.mma_async"),
        "mma": len(re.findall(r"\bmma\.sync", ptx)),
        "tma_loads": ptx.count("cp.async.bulk.tensor"),
        "vector_loads": len(re.findall(r"ld\.global[\w.]*\.v[248]\.", ptx)),
        "f64_math": len(_F64_MATH.findall(ptx)),
        "f64_params": ptx.count(".param .f64"),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _compile_index(args):
    i, quick = args
    job = all_jobs(quick)[i]
    return job.name, compile_job(job)


def toolchain_problem() -> Optional[str]:
    """Why this machine cannot compile for sm_90a, or None."""
    try:
        from triton import knobs
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as exc:
        return f"this triton has no ahead-of-time compiler API ({exc!r})"
    try:
        ptxas = knobs.nvidia.ptxas.path
    except Exception as exc:
        return f"the triton wheel ships no ptxas ({exc!r})"
    if not ptxas or not os.path.exists(ptxas):
        return f"the triton wheel ships no ptxas (looked for {ptxas!r})"
    return None


def run(names_filter: str = "", workers: int = 1, quick: bool = False) -> dict:
    """Compile the jobs whose name contains `names_filter`; {name: {job fields..., "result": ...}}."""
    jobs = all_jobs(quick)
    chosen = [(i, quick) for i, job in enumerate(jobs) if names_filter in job.name]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = dict(pool.map(_compile_index, chosen, chunksize=1))
    else:
        results = dict(_compile_index(c) for c in chosen)
    out = {}
    for i, _ in chosen:
        job = jobs[i]
        out[job.name] = {"kernel": job.kernel, "fn": job.fn, "module": job.module,
                         "tensor_cores": job.tensor_cores, "floats": list(job.floats),
                         "num_warps": job.num_warps, "num_stages": job.num_stages, **job.meta,
                         "result": results[job.name]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--filter", default="", help="only jobs whose name contains this")
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--quick", action="store_true", help="a representative quarter of the jobs (see all_jobs)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("kernels.aot: unset TRITON_INTERPRET (kernels must be compiled, not interpreted)", file=sys.stderr)
        return 2
    problem = toolchain_problem()
    if problem:
        print(f"kernels.aot: cannot compile for sm_{TARGET_ARCH}a: {problem}", file=sys.stderr)
        return 3
    report = run(args.filter, args.workers, args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    for name, entry in report.items():  # one line per job
        r = entry["result"]
        if "error" in r:
            lines = [line for line in r["error"].splitlines() if line.strip(" ^")]
            print(f"{name:55s} ERROR {lines[-1][:100] if lines else '?'}")
        else:
            print(f"{name:55s} regs {r['registers']:3d} spill {r['spill_stores']:5d}/{r['spill_loads']:<5d} "
                  f"smem {r['shared_bytes']:6d} wgmma {r['wgmma']:3d} mma {r['mma']:3d} tma {r['tma_loads']:2d} "
                  f"vec {r['vector_loads']:2d} f64 {r['f64_math']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
