"""Sweeps end to end on CPU: the smoke preset through the pool launcher (a failed job does not stop
the sweep or the fit; a relaunch skips finished runs), through submitit's local executor, the
presets of every sweep, and the launcher's slot planning."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.launcher import job_command, make_slots
from sweeps.plan import fmt_budget

REPO = Path(__file__).resolve().parents[1]


def run(args, cache_dir, timeout=600, env_extra=None):
    env = {**os.environ, "SCALELAB_CACHE": str(cache_dir), "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           **(env_extra or {})}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep-cache")


def summaries(sweep_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in Path(sweep_dir).glob("*/summary.json")}


def test_smoke_sweep_with_a_failing_job_then_relaunch(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    # 30x1x4: width not divisible by heads, a job that must fail without stopping anything
    args = ["-m", "train", "+sweep=chinchilla", "sweep.preset=smoke", f"hydra.sweep.dir={sweep_dir}",
            "sweep.presets.smoke.shapes=[16x1x1,32x1x1,32x2x2,30x1x4]"]
    p = run(args, cache_dir)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "preset smoke (chosen)" in p.stderr
    s = summaries(sweep_dir)
    assert len(s) == 8, sorted(s)
    bad = [v for k, v in s.items() if k.endswith("30x1x4")]
    assert len(bad) == 2 and all(v["status"] == "failed" and "model.width=30" in v["reason"] for v in bad)
    good = [v for k, v in s.items() if not k.endswith("30x1x4")]
    assert all(v["status"] in ("completed", "skipped") for v in good)
    assert all(v["reason"] for v in good if v["status"] == "skipped")
    assert sum(v["status"] == "completed" for v in good) >= 5
    for v in good:
        if v["status"] == "completed":
            assert v["sweep"] == "chinchilla" and v["group"] == "chinchilla-smoke"
            assert abs(v["compute"] - v["budget"]) / v["budget"] < 0.2  # tokens follow the budget
    # the end-of-sweep analysis ran once, after every job, whatever their outcome
    fit = json.loads((sweep_dir / "fit.json").read_text())
    assert any("30x1x4" in e["name"] for e in fit["excluded"])
    assert fit["flops_convention"] == "exact" and fit["params_convention"] == "total"
    for key in ("approach1", "approach2", "approach3"):
        assert key in fit
    assert (sweep_dir / "report.md").exists() and (sweep_dir / "report.html").exists()
    assert list(sweep_dir.glob("*.png"))
    assert "ended in" in p.stderr and "on CPU x1 thread" in p.stderr

    before = {k: v for k, v in s.items() if v["status"] == "completed"}
    p2 = run(args, cache_dir)
    assert p2.returncode == 0, p2.stderr[-4000:]
    after = summaries(sweep_dir)
    for name, v in before.items():
        assert after[name] == v  # untouched: not retrained
        assert "nothing to do" in (sweep_dir / name / "job.log").read_text()


def test_submitit_local_launcher_runs_a_sweep(tmp_path, cache_dir):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "submitit"
    p = run(["-m", "train", "+sweep=chinchilla", "sweep.preset=smoke", "hydra/launcher=submitit_local",
             f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.timeout_min=10",
             "sweep.presets.smoke.budgets=[1e10]", "sweep.presets.smoke.shapes=[16x1x1,32x1x1,32x2x2]"], cache_dir)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    s = summaries(sweep_dir)
    assert len(s) == 3 and all(v["status"] in ("completed", "skipped") for v in s.values()), s
    assert (sweep_dir / "fit.json").exists()
    assert (sweep_dir / ".submitit").is_dir()


@pytest.mark.parametrize("sweep, preset, expect_jobs", [
    ("chinchilla", "cpu", 24), ("chinchilla", "gpu", 24), ("shape", "cpu", 6), ("tokens", "cpu", 20),
    ("chinchilla", "smoke", 6),
])
def test_every_preset_of_every_sweep_plans(cache_dir, sweep, preset, expect_jobs):
    p = run(["-m", "sweeps.plan", sweep, "--preset", preset], cache_dir, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"{expect_jobs} jobs" in p.stdout, p.stdout


def test_shape_sweep_keeps_non_embedding_params_close(cache_dir):
    p = run(["-m", "sweeps.plan", "shape", "--preset", "cpu"], cache_dir, timeout=120)
    rows = [l for l in p.stdout.splitlines() if l.startswith("model.shape=")]
    n = [int(l.split()[1].replace(",", "")) for l in rows]
    assert len(n) == 6 and max(n) / min(n) < 1.6, rows
    depths = [int(l.split()[0].split("x")[1]) for l in rows]
    assert depths == [1, 2, 3, 4, 6, 8]


def test_plan_rejects_unknown_sweep_and_preset(cache_dir):
    p = run(["-m", "sweeps.plan", "nosuch"], cache_dir, timeout=60)
    assert p.returncode == 2 and "no sweep named 'nosuch'" in p.stderr
    p = run(["-m", "sweeps.plan", "chinchilla", "--preset", "tpu"], cache_dir, timeout=60)
    assert p.returncode == 2 and "sweep.preset='tpu'" in p.stderr and "Traceback" not in p.stderr


def test_auto_preset_follows_the_hardware(cache_dir):
    p = run(["-c", "from sweeps.plan import detect_preset; print(detect_preset())"], cache_dir, timeout=60)
    import torch

    assert p.stdout.strip() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_fmt_budget_names_are_stable():
    assert [fmt_budget(x) for x in (1e13, 3e13, 2.5e12, 6e11, 9.9999999e12)] == ["1e13", "3e13", "2.5e12", "6e11", "1e13"]


def test_slots_one_job_per_gpu_or_packed_or_multi_gpu():
    assert make_slots([0, 1, 2, 3], 1, 1, 1, None) == [{"gpus": [0]}, {"gpus": [1]}, {"gpus": [2]}, {"gpus": [3]}]
    assert make_slots([0, 1], 1, 3, 1, None) == [{"gpus": [0]}] * 3 + [{"gpus": [1]}] * 3
    assert make_slots([0, 1, 2, 3, 4, 5, 6, 7], 4, 1, 1, None) == [{"gpus": [0, 1, 2, 3]}, {"gpus": [4, 5, 6, 7]}]
    assert make_slots([0, 1, 2, 3], 1, 1, 1, 2) == [{"gpus": [0]}, {"gpus": [1]}]
    cpu = make_slots([], 1, 1, 1, None)
    assert cpu and all(s == {"threads": 1} for s in cpu)
    with pytest.raises(ValueError, match="gpus_per_job=3"):
        make_slots([0, 1], 3, 1, 1, None)
    with pytest.raises(ValueError, match="jobs_per_gpu"):
        make_slots([0, 1, 2, 3], 2, 2, 1, None)


def test_multi_gpu_jobs_run_under_torchrun(tmp_path):
    cmd = job_command(["model.shape=64x2x2"], tmp_path / "job", {"gpus": [2, 3]})
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=2" in cmd
    assert cmd[-2:] == ["hydra.mode=RUN", f"hydra.run.dir={tmp_path / 'job'}"]
    single = job_command(["model.shape=64x2x2"], tmp_path / "job", {"gpus": [0]})
    assert single[1:3] == ["-m", "train"]
