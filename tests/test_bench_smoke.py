"""bench/kernels.py --smoke runs end to end on the CPU and writes a result file with the schema."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROW_KEYS = {
    "kernel", "pass", "dtype", "shape", "ours_ms", "baseline", "baseline_ms", "speedup", "tflops",
    "ours_peak_mb", "baseline_peak_mb",
}


@pytest.mark.slow
def test_kernel_bench_smoke_writes_schema(tmp_path):
    out = tmp_path / "kernels-smoke.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "kernels.py"), "--smoke", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert {"device", "torch", "triton", "date", "command", "results"} <= set(payload)
    assert payload["device"] == "cpu (interpreter smoke)"
    assert "--smoke" in payload["command"]
    assert "errors" not in payload

    rows = payload["results"]
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"attention", "rms_norm", "swiglu", "rope", "linear_cross_entropy"}
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["pass"] in ("fwd", "bwd", "fwd+bwd")
        assert isinstance(r["shape"], dict) and r["shape"]
        assert r["ours_ms"] > 0 and r["baseline_ms"] > 0
        assert abs(r["speedup"] - r["baseline_ms"] / r["ours_ms"]) < 1e-9 * r["speedup"] + 1e-12
    baselines = {(r["kernel"], r["baseline"]) for r in rows}
    for k in ("rms_norm", "swiglu", "rope"):
        assert (k, "eager") in baselines and (k, "torch.compile") in baselines
    assert ("attention", "sdpa-flash") in baselines
    assert {r["pass"] for r in rows if r["kernel"] == "linear_cross_entropy"} == {"fwd", "fwd+bwd"}
    # The table goes to stdout and a smoke run never writes into bench/results.
    assert "wrote" in proc.stdout and str(out) in proc.stdout
    assert not (REPO / "bench" / "results" / "kernels-cpu-interpreter-smoke.json").exists()
