"""Every Triton kernel compiled for sm_90a (H100 / H200) without a GPU, and ptxas's report checked.

The interpreter runs the kernels' arithmetic, not the compiler: code it accepts can still fail to
compile, do its math in fp64, spill registers or miss the tensor cores on a GPU. `kernels.aot`
compiles each kernel ahead of time with the triton wheel's ptxas, specialised as real launches
specialise it (fp64 float scalars as torch.compile passes them; every autotune candidate at head
dims 32/64/128 in bfloat16 and float16, marked kept or pruned). This file runs it in a subprocess
with TRITON_INTERPRET off and two workers, and checks: every kernel is covered, every job
compiles, kept configurations spill nothing and pruned ones would have (the pruning rule and ptxas
agree), attention runs on wgmma, the Hopper forward loads through TMA, no fp64 arithmetic.

Two runs: `quick` (bfloat16, attention at head_dim 128 where registers are tightest, every kernel:
56 jobs) and `exhaustive` (every head dim and dtype: 243 jobs, marked slow; CI runs both).

Skipped, with the reason, where the triton wheel has no ptxas or no ahead-of-time compiler API.
The numbers are triton 3.9's; after a triton upgrade a failure here names the job and the fix
(re-calibrate `kernels.attention._BUDGET` from `python -m kernels.aot`).
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL_MODULES = ("kernels.attention", "kernels.rmsnorm", "kernels.swiglu", "kernels.rope", "kernels.cross_entropy")
ATTENTION = ("attn_fwd", "attn_dkdv", "attn_dq")
FAMILIES = ATTENTION + ("attn_pre", "rms_fwd", "rms_bwd", "swiglu_fwd", "swiglu_bwd", "rope", "cross_entropy")


@pytest.fixture(scope="module", params=[pytest.param("quick", marks=pytest.mark.slow),
                                        pytest.param("exhaustive", marks=pytest.mark.slow)])
def report(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("sm90")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(out / "cache"), TRITON_DEFAULT_FP_FUSION="1", PYTHONPATH=str(REPO))
    quick = ["--quick"] if request.param == "quick" else []
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.aot", "--json", str(out / "report.json"), "--workers", "2", *quick],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode == 3:  # kernels.aot: no toolchain for sm_90a here
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


def _jobs(report, family, **match):
    jobs = {name: e for name, e in report.items()
            if e["kernel"] == family and all(e.get(k) == v for k, v in match.items())}
    assert jobs, f"no {family} jobs matching {match} were compiled"
    return jobs


def _launched_kernels():
    """(module, name) of every @triton.jit kernel the wrappers launch (named *_kernel)."""
    from triton.runtime.jit import JITFunction
    from triton.runtime.interpreter import InterpretedFunction

    found = set()
    for name in KERNEL_MODULES:
        mod = importlib.import_module(name)
        for attr, value in vars(mod).items():
            if attr.endswith("_kernel") and isinstance(value, (JITFunction, InterpretedFunction)):
                found.add((name, attr))
    return found


def test_every_triton_kernel_is_compiled(report):
    compiled = {(e["module"], e["fn"]) for e in report.values()}
    kernels = _launched_kernels()
    assert len(kernels) >= 10  # 4 attention, 2 RMSNorm, 2 SwiGLU, RoPE, cross-entropy
    assert kernels <= compiled, f"kernels never compiled for sm_90a: {sorted(kernels - compiled)}"
    assert {e["kernel"] for e in report.values()} == set(FAMILIES)


def test_attention_covers_every_candidate_at_model_head_dims_and_dtypes(report, request):
    attn = importlib.import_module("kernels.attention")
    quick = request.node.callspec.params["report"] == "quick"
    for dtype in ("bf16",) if quick else ("bf16", "fp16"):
        for head_dim in (128,) if quick else (32, 64, 128):
            for kind in ("fwd", "dkdv", "dq"):
                jobs = _jobs(report, f"attn_{kind}", dtype=dtype, head_dim=head_dim, causal=True, tma=kind == "fwd")
                got = {tuple(e["config"]): e["kept"] for e in jobs.values()}
                kept = attn.kept_configs(kind, head_dim, 2, "tf32", tma=kind == "fwd")
                want = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages): c in kept
                        for c in attn.CONFIGS[kind]}
                assert got == want, (dtype, head_dim, kind)


@pytest.mark.parametrize("family", FAMILIES)
def test_compiles_without_spilling(report, family):
    bad = []
    for name, e in _jobs(report, family).items():
        r = e["result"]
        if "error" in r:
            bad.append(f"{name}: {r['error'][-600:]}")
        elif e.get("kept", True) and (r["spill_stores"] or r["spill_loads"]):
            bad.append(f"{name}: {r['registers']} registers, spills {r['spill_stores']} B stores / "
                       f"{r['spill_loads']} B loads")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("family", ATTENTION)
def test_pruned_attention_configs_would_spill(report, family):
    # The other half of "the pruner matches ptxas": what it drops spills or comes within 16 of the
    # 255-register cap (either side of the rule is fine there). A pruned config with room to spare
    # means the rule is needlessly tight: re-calibrate _BUDGET from `python -m kernels.aot`.
    loose = [f"{name}: {e['result']['registers']} registers, no spill"
             for name, e in _jobs(report, family).items()
             if e.get("kept") is False and "error" not in e["result"]
             and not (e["result"]["spill_stores"] or e["result"]["registers"] >= 240)]
    assert not loose, "\n".join(loose)


@pytest.mark.parametrize("family", ATTENTION)
def test_attention_uses_tensor_core_mma(report, family):
    missing = [name for name, e in _jobs(report, family).items() if "error" not in e["result"]
               and e["result"]["wgmma"] == 0 and e["result"]["mma"] == 0]
    assert not missing, f"no wgmma / mma.sync in the PTX of: {missing}"


def test_hopper_forward_loads_through_tma(report):
    for name, e in _jobs(report, "attn_fwd").items():
        if "error" not in e["result"]:
            assert (e["result"]["tma_loads"] > 0) == e["tma"], name


def test_cross_entropy_loads_are_vectorised_at_an_odd_vocabulary(report):
    # Row stride padded to 16 elements + unmasked whole blocks: 128-bit loads at V = 50257 (GPT-2's
    # vocabulary), where a row stride of 50257 allowed only scalar ones.
    for name, e in _jobs(report, "cross_entropy", vocab=50257).items():
        if "error" not in e["result"]:
            assert e["result"]["vector_loads"] > 0, name


@pytest.mark.parametrize("family", FAMILIES)
def test_fp64_scalars_leave_no_fp64_arithmetic(report, family):
    for name, e in _jobs(report, family).items():
        r = e["result"]
        if "error" in r:
            continue
        assert r["f64_params"] == len(e["floats"]), name  # the scalars did arrive as fp64 ...
        assert r["f64_math"] == 0, f"{name}: {r['f64_math']} fp64 instructions"  # ... and were cast once
