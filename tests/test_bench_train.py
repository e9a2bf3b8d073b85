"""bench/train.py: the CPU smoke run writes the schema and both stacks train the same model;
flags are validated; the size ladder has the shapes it claims. A GPU run is marked `gpu`."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import train as bench_train
from model import GPTConfig
from model.flops import param_counts

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "train.py"
ROW_KEYS = {
    "model", "params", "params_non_embedding", "seq_len", "batch_seqs",
    "tokens_per_s", "mfu", "peak_mb", "loss0", "loss_last",
    "baseline_tokens_per_s", "baseline_mfu", "baseline_peak_mb", "baseline_loss0", "baseline_loss_last",
    "speedup",
}


def _run(tmp_path, *flags, timeout=300):
    out = tmp_path / "train.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *flags, "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc, out


def _check_rows(payload, rel_loss0, rel_loss_last):
    rows = payload["results"]
    assert rows
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert "error" not in r and "baseline_error" not in r, r
        assert r["tokens_per_s"] > 0 and r["baseline_tokens_per_s"] > 0
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / r["baseline_tokens_per_s"], rel=1e-9)
        # same initial weights and batch: the same loss at step 0, and the same loss after the
        # same sequence of updates (the timed steps really train, in both stacks alike)
        assert math.isfinite(r["loss0"]) and r["loss0"] == pytest.approx(r["baseline_loss0"], rel=rel_loss0)
        assert r["loss_last"] == pytest.approx(r["baseline_loss_last"], rel=rel_loss_last)
        assert r["loss_last"] != r["loss0"]  # the optimizer moved the weights
        spec = dict(bench_train.SIZES[r["model"]])
        spec.pop("batch")
        counts = param_counts(GPTConfig(**spec))
        assert (r["params"], r["params_non_embedding"]) == (counts.total, counts.non_embedding)
        assert r["seq_len"] == spec["seq_len"]
    return rows


@pytest.mark.slow
def test_train_bench_smoke_writes_schema(tmp_path):
    payload, proc, out = _run(tmp_path, "--smoke")
    assert {"device", "torch", "triton", "date", "command", "results"} <= set(payload)
    assert payload["device"] == "cpu (interpreter smoke)"
    assert "--smoke" in payload["command"]
    rows = _check_rows(payload, rel_loss0=1e-5, rel_loss_last=1e-4)
    assert [r["model"] for r in rows] == ["tiny"]
    r = rows[0]
    assert r["batch_seqs"] == bench_train.SIZES["tiny"]["batch"]
    assert r["mfu"] is None and r["baseline_mfu"] is None  # no bf16 peak for a CPU
    assert r["peak_mb"] is None and r["baseline_peak_mb"] is None
    assert r["baseline_graph_breaks"] == 0  # the baseline model compiles as one graph
    # table on stdout; smoke results never land in bench/results
    assert "tiny" in proc.stdout and "ratio" in proc.stdout
    assert f"wrote {out}" in proc.stdout
    assert not list((REPO / "bench" / "results").glob("train-cpu*"))


@pytest.mark.parametrize("failure, code", [(torch.cuda.OutOfMemoryError, 0), (RuntimeError, 1)])
def test_a_failing_stack_is_recorded_in_its_row(tmp_path, monkeypatch, failure, code):
    """One stack failing (OOM, or anything else) fills its row's error and the run goes on."""
    def fake_measure(stack, cfg, batch, args, device, torch_):
        if stack == "baseline" and cfg.width == 64:
            raise failure("out of memory" if failure is torch.cuda.OutOfMemoryError else "kernel exploded")
        return {"tokens_per_s": 100.0 * cfg.width, "peak_mb": None, "loss0": 5.0, "loss_last": 4.0,
                "graph_breaks": None, "notes": []}

    monkeypatch.setattr(bench_train, "measure", fake_measure)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # main(--smoke) sets it; restored after the test
    monkeypatch.setitem(bench_train.SIZES, "tiny2", dict(bench_train.SIZES["tiny"], width=128))
    out = tmp_path / "t.json"
    assert bench_train.main(["--smoke", "--sizes", "tiny,tiny2", "--out", str(out)]) == code
    first, second = json.loads(out.read_text())["results"]
    expected = "OOM" if code == 0 else "RuntimeError: kernel exploded"
    assert first["baseline_error"] == expected and "error" not in first
    assert first["tokens_per_s"] == 6400.0 and first["baseline_tokens_per_s"] is None
    assert first["speedup"] is None and first["baseline_loss0"] is None
    assert "error" not in second and "baseline_error" not in second and second["speedup"] == 1.0


@pytest.mark.parametrize("flags, message", [
    (["--sizes", "10m,huge"], "unknown size"),
    (["--warmup", "0"], "--warmup must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch", "-2"], "--batch must be >= 1"),
    (["--smoke", "--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
    (["--smoke", "--compile", "model"], "Dynamo cannot trace"),
    (["--compile", "max"], "invalid choice"),
])
def test_bad_flags_are_rejected_clearly(flags, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_train.parse_args(flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults():
    gpu = bench_train.parse_args([])
    assert gpu.sizes == ["10m", "50m", "124m", "350m"] and (gpu.warmup, gpu.steps) == (10, 20)
    assert gpu.compile == "none" and not gpu.cuda_graphs and gpu.out is None
    smoke = bench_train.parse_args(["--smoke"])
    assert smoke.sizes == ["tiny"] and (smoke.warmup, smoke.steps) == (2, 3)
    assert bench_train.parse_args(["--sizes", " 124M, 10m "]).sizes == ["124m", "10m"]


def test_size_ladder_shapes():
    ladder = {name: dict(spec) for name, spec in bench_train.SIZES.items()}
    for name in ("10m", "50m", "124m", "350m"):
        spec = ladder[name]
        assert spec["seq_len"] == 1024 and spec["vocab_size"] == 50304
        assert spec["width"] // spec["heads"] == 64
    assert {k: ladder["124m"][k] for k in ("width", "depth", "heads")} == {"width": 768, "depth": 12, "heads": 12}
    assert {k: ladder["350m"][k] for k in ("width", "depth", "heads")} == {"width": 1024, "depth": 24, "heads": 16}
    for name, target in (("10m", 10e6), ("50m", 50e6), ("124m", 85e6)):
        spec = ladder[name]
        spec.pop("batch")
        head = spec["vocab_size"] * spec["width"]  # untied: counted as non-embedding by model.flops
        blocks = param_counts(GPTConfig(**spec)).non_embedding - head
        assert abs(blocks / target - 1) < 0.1, (name, blocks)


@pytest.mark.gpu
@pytest.mark.parametrize("flags", [[], ["--cuda-graphs"], ["--compile", "model"]])
def test_train_bench_tiny_on_cuda(tmp_path, flags):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    payload, _, _ = _run(tmp_path, "--sizes", "tiny", "--warmup", "3", "--steps", "3", *flags, timeout=600)
    assert payload["device"] == torch.cuda.get_device_name()
    # bf16 autocast with different kernels: close, not equal
    rows = _check_rows(payload, rel_loss0=1e-2, rel_loss_last=3e-2)
    assert rows[0]["peak_mb"] > 0 and rows[0]["baseline_peak_mb"] > 0
