"""torchrun on CPU (gloo): same result as one process with the same global batch, one run record,
resume across world sizes, and a dead rank ending the run as failed instead of hanging."""
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY, metrics, run_cli, run_train, summary

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun tests run on Linux")


def torchrun(args, run_dir, cache_dir, nproc=2, check=True, timeout=300, wait=True):
    return run_cli(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "train",
                    *args, f"hydra.run.dir={run_dir}"], cache_dir=cache_dir, cwd=run_dir.parent, timeout=timeout,
                   check=check and wait, wait=wait)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dist-cache")


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_with_same_global_batch(tmp_path, cache_dir, parallel):
    one, two = tmp_path / "one", tmp_path / "two"
    # 100 validation windows in batches of 16: 7 batches, so the ranks get unequal shares
    args = TINY + ["data.val_tokens=3200"]
    run_train(args, one, cache_dir)
    torchrun(args + [f"train.parallel={parallel}"], two, cache_dir)
    a, b = summary(one), summary(two)
    assert b["status"] == "completed" and b["world_size"] == 2 and a["world_size"] == 1
    assert abs(a["final_val_loss"] - b["final_val_loss"]) / a["final_val_loss"] < 0.002
    assert a["tokens"] == b["tokens"] and a["steps"] == b["steps"]
    # exactly one run folder, one record, nothing per rank beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert len(list(tmp_path.rglob("summary.json"))) == 2
    # (no .hydra/ at all: the record's config.yaml holds the resolved config and the overrides)
    assert len(list(two.rglob("metrics.jsonl"))) == 1 and len(list(two.rglob("config.yaml"))) == 1
    assert not list(two.glob(".hydra"))
    rows = [r for r in metrics(two) if "train_loss" in r]
    assert [r["step"] for r in rows] == [r["step"] for r in metrics(one) if "train_loss" in r]


@pytest.mark.slow
def test_resume_on_another_world_size(tmp_path, cache_dir):
    args = TINY + ["train.tokens=81920", "train.ckpt_every=10", "train.eval_every=40"]
    ref = tmp_path / "ref"
    run_train(args, ref, cache_dir)
    # one process trains part of the run (it is stopped at its first checkpoints) ...
    part = tmp_path / "part"
    proc = run_train(args, part, cache_dir, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (part / "ckpt" / "step_00000020.pt").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    steps = sorted(int(f.stem.split("_")[1]) for f in (part / "ckpt").glob("step_*.pt"))
    assert steps and steps[-1] >= 20 and steps[-1] < 80
    # ... and two processes finish it, from the newest checkpoint (not from scratch: the loss alone cannot
    # tell, since two processes from scratch reach the one-process loss too)
    p = torchrun(args, part, cache_dir)
    s = summary(part)
    assert s["status"] == "completed" and s["world_size"] == 2
    out = p.stdout + p.stderr
    assert f"resuming from {part / 'ckpt'}" in out and f"(step {steps[-1]})" in out, out[-3000:]
    assert s["resumed_from"].endswith(f"step_{steps[-1]:08d}.pt")
    # the two processes trained only the steps after the checkpoint (a resume that logs the right line but
    # starts from the initial weights and step 0 would redo the early steps) ...
    redone = [int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("step ")]
    assert redone and min(redone) > steps[-1], out[-3000:]
    # ... and the record holds each logged step once, as the uninterrupted run's does
    assert [r["step"] for r in metrics(part)] == [r["step"] for r in metrics(ref)]
    assert abs(s["final_val_loss"] - summary(ref)["final_val_loss"]) < 1e-4, p.stdout


@pytest.mark.slow
def test_two_processes_with_gradient_accumulation_match_one(tmp_path, cache_dir):
    """Per process 16 sequences as 2 micro-batches of 8: DDP's no_sync path and the 1/accum scaling."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_train(TINY + ["train.tokens=10240"], one, cache_dir)
    p = torchrun(TINY + ["train.tokens=10240", "train.micro_batch=8"], two, cache_dir)
    assert "2 micro-steps of 8 sequences" in p.stdout + p.stderr, (p.stdout + p.stderr)[-2000:]
    assert abs(summary(one)["final_val_loss"] - summary(two)["final_val_loss"]) / summary(one)["final_val_loss"] < 2e-3
    # AdamW hardly sees a gradient scaled by a constant: the logged train loss (the mean over micro-batches
    # and processes) and the norm of the all-reduced gradient must agree too
    rows = {d: [(r["step"], r["train_loss"], r["grad_norm"]) for r in metrics(d) if "train_loss" in r]
            for d in (one, two)}
    assert [r[0] for r in rows[one]] == [r[0] for r in rows[two]] and rows[one]
    for (_, loss_a, norm_a), (_, loss_b, norm_b) in zip(rows[one], rows[two]):
        assert loss_b == pytest.approx(loss_a, rel=1e-4) and norm_b == pytest.approx(norm_a, rel=1e-3)


def _worker_pids(parent_pid):
    """PIDs of torchrun's workers, by the RANK in their environment."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != parent_pid:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(d.name)
    return found


@pytest.mark.slow
def test_a_dead_rank_fails_the_run_instead_of_hanging(tmp_path, cache_dir):
    run_dir = tmp_path / "dead"
    args = TINY + ["train.tokens=2048000", "train.dist_timeout_s=60"]
    proc = torchrun(args, run_dir, cache_dir, wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "ckpt").exists():
        time.sleep(0.1)
    workers = _worker_pids(proc.pid)
    assert 1 in workers, f"no rank-1 worker found under torchrun {proc.pid}: {workers}"
    os.kill(workers[1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "failed", (s, out[-3000:])
    assert s["reason"]


def test_slurm_tasks_become_torch_ranks(monkeypatch):
    """Under `srun` (or submitit_slurm with tasks_per_node > 1) each task derives torchrun's variables."""
    from train.ranks import env_from_slurm as _env_from_slurm

    # _env_from_slurm writes os.environ; give it a copy so nothing leaks into later tests
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-10],cpu3")
    _env_from_slurm()
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("5", "1", "8")
    assert os.environ["MASTER_ADDR"] == "gpu07"
    assert os.environ["MASTER_PORT"] == str(29500 + 123456 % 1000)


def test_single_slurm_task_and_torchrun_are_left_alone(monkeypatch):
    from train.ranks import env_from_slurm as _env_from_slurm

    monkeypatch.setattr(os, "environ", dict(os.environ))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    _env_from_slurm()
    assert "RANK" not in os.environ  # one task: a plain single-process run
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("RANK", "2")  # torchrun inside the allocation already set it
    _env_from_slurm()
    assert os.environ["RANK"] == "2" and "WORLD_SIZE" not in os.environ
