"""`python -m train` end to end on CPU: records, determinism, budget -> tokens, divergence guard,
skips, kill-and-resume, and a clear error for every kind of bad input."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One tiny debug configuration reused by every test here: a 2-layer model on a capped stdlib corpus.
TINY = [
    "model.width=32", "model.depth=2", "model.heads=2", "model.seq_len=32",
    "data.max_tokens=3000000", "data.val_tokens=4096",
    "train.tokens=40960", "train.batch_tokens=1024", "train.eval_every=20", "train.ckpt_every=10",
    "train.log_every=5", "train.min_steps=5", "optim.lr=3e-3",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data-cache")


def run_train(args, run_dir, cache_dir, check=True, timeout=300, env_extra=None):
    env = {**os.environ, "SCALELAB_CACHE": str(cache_dir), "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "train", *args, f"hydra.run.dir={run_dir}"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nSTDOUT:\n{p.stdout}\nSTDERR:\n{p.stderr}")
    return p


def summary(run_dir):
    return json.loads((Path(run_dir) / "summary.json").read_text())


def metrics(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_complete_record_and_learns(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    run_train(TINY, run_dir, cache_dir)
    s = summary(run_dir)
    assert s["status"] == "completed" and s["reason"] is None
    for key in ("model", "params_total", "params_non_embedding", "params_embedding", "flops_per_token",
                "flops_per_token_6n", "tokens", "compute", "budget", "final_val_loss", "best_val_loss",
                "final_val_bpb", "tokens_per_s", "mfu", "wall_s", "device", "world_size", "seed",
                "git_commit", "versions", "wandb_run_id"):
        assert key in s, key
    assert s["model"] == {**s["model"], "width": 32, "depth": 2, "heads": 2, "vocab_size": 256, "seq_len": 32}
    assert s["tokens"] == 40960 and s["compute"] == pytest.approx(40960 * s["flops_per_token"])
    assert s["params_total"] == s["params_non_embedding"] + s["params_embedding"]
    assert s["world_size"] == 1 and s["tokens_per_s"] > 0
    rows = metrics(run_dir)
    train_rows = [r for r in rows if "train_loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val_rows] == [20, 40]
    assert val_rows[-1]["val_loss"] == pytest.approx(s["final_val_loss"])
    # visibly learns: well below the uniform-prediction loss of a 256-token vocabulary
    assert s["final_val_loss"] < math.log(256) - 1.0
    assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
    for r in train_rows:
        assert {"step", "tokens", "flops", "train_loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(r)
    assert (run_dir / "config.yaml").read_text().count("width: 32") == 1
    assert sorted(p.name for p in (run_dir / "ckpt").iterdir()) == ["step_00000030.pt", "step_00000040.pt"]


def test_deterministic_on_cpu_and_seed_matters(tmp_path, cache_dir):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_train(TINY + ["train.tokens=10240", "train.seed=3"], a, cache_dir)
    run_train(TINY + ["train.tokens=10240", "train.seed=3"], b, cache_dir)
    run_train(TINY + ["train.tokens=10240", "train.seed=4"], c, cache_dir)
    assert summary(a)["final_val_loss"] == summary(b)["final_val_loss"]
    assert summary(a)["final_val_loss"] != summary(c)["final_val_loss"]


def test_budget_sets_tokens_from_exact_flops(tmp_path, cache_dir):
    run_dir = tmp_path / "budget"
    run_train(TINY + ["train.budget=1e10", "train.tokens=null"], run_dir, cache_dir)
    s = summary(run_dir)
    assert s["budget"] == 1e10
    # tokens = budget / exact FLOPs per token, rounded to whole batches
    assert abs(s["tokens"] - 1e10 / s["flops_per_token"]) <= 1024 / 2
    assert s["compute"] == pytest.approx(s["tokens"] * s["flops_per_token"])


def test_divergence_guard_records_diverged_and_exits_zero(tmp_path, cache_dir):
    run_dir = tmp_path / "div"
    p = run_train(TINY + ["optim.lr=50", "optim.warmup=0", "optim.grad_clip=0", "train.log_every=1"],
                  run_dir, cache_dir, check=False)
    assert p.returncode == 0, p.stderr
    s = summary(run_dir)
    assert s["status"] == "diverged", s
    assert "step" in s["reason"]


def test_run_needing_more_data_than_exists_is_skipped(tmp_path, cache_dir):
    run_dir = tmp_path / "skip"
    p = run_train(TINY + ["train.tokens=100000000"], run_dir, cache_dir, check=False)
    assert p.returncode != 0  # outside a sweep a skipped run is an error the user should see
    s = summary(run_dir)
    assert s["status"] == "skipped" and "training data holds" in s["reason"]
    assert "skipped" in p.stderr


def test_completed_run_is_not_redone(tmp_path, cache_dir):
    run_dir = tmp_path / "again"
    run_train(TINY + ["train.tokens=5120", "train.min_steps=1"], run_dir, cache_dir)
    before = (run_dir / "summary.json").read_text()
    p = run_train(TINY + ["train.tokens=5120", "train.min_steps=1"], run_dir, cache_dir)
    assert "nothing to do" in p.stderr
    assert (run_dir / "summary.json").read_text() == before


def test_sigkill_and_resume_reproduces_uninterrupted_loss(tmp_path, cache_dir):
    args = TINY + ["train.tokens=81920", "train.ckpt_every=10", "train.eval_every=40"]
    ref = tmp_path / "ref"
    run_train(args, ref, cache_dir)

    killed = tmp_path / "killed"
    env = {**os.environ, "SCALELAB_CACHE": str(cache_dir), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.Popen([sys.executable, "-m", "train", *args, f"hydra.run.dir={killed}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # kill between checkpoints, after the second one: the run must redo steps it had done
    while time.time() < deadline:
        ck = list((killed / "ckpt").glob("step_*.pt")) if (killed / "ckpt").exists() else []
        if any(p.name >= "step_00000030.pt" for p in ck):
            time.sleep(0.3)
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert summary(killed)["status"] == "running"  # no completion claimed by a killed run

    p = run_train(args + ["train.resume=auto"], killed, cache_dir)
    assert "resuming from" in p.stderr
    a, b = summary(ref), summary(killed)
    assert b["status"] == "completed"
    assert abs(a["final_val_loss"] - b["final_val_loss"]) <= 1e-5
    # the metrics file has each step once, as if never interrupted
    steps = [r["step"] for r in metrics(killed) if "train_loss" in r]
    assert steps == sorted(set(steps)) and steps == [r["step"] for r in metrics(ref) if "train_loss" in r]


BAD_INPUTS = [
    (["model.width=30", "model.heads=4"], "model.width=30 is not divisible by model.heads=4"),
    (["model.depth=0"], "model.depth"),
    (["model.seq_len=-8"], "model.seq_len"),
    (["train.tokens=0"], "train.tokens"),
    (["+model.wdth=64"], "wdth"),
    (["optim.lr=-0.1"], "optim.lr"),
    (["train.batch_tokens=1048576"], "larger than the whole run"),
    (["train.batch_tokens=1000"], "multiple of model.seq_len"),
    (["data=text", "data.path=/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
    (["optim.schedule=linear"], "optim.schedule"),
    (["model.kernels=cuda"], "model.kernels"),
    (["logger=tensorboard"], "logger"),
]


@pytest.mark.parametrize("override, fragment", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_a_clear_error(tmp_path, cache_dir, override, fragment):
    run_dir = tmp_path / "bad"
    p = run_train(TINY + override, run_dir, cache_dir, check=False, timeout=120)
    assert p.returncode != 0
    assert fragment in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    s = (run_dir / "summary.json")
    assert not s.exists() or json.loads(s.read_text())["status"] != "completed"


def test_corrupt_shard_is_a_clear_error(tmp_path, cache_dir):
    import numpy as np

    folder = tmp_path / "shards"
    folder.mkdir()
    np.arange(5000, dtype=np.uint16).__mod__(256).astype(np.uint16).tofile(folder / "train.bin")
    (folder / "val.bin").write_bytes(np.arange(3000, dtype=np.uint16).__mod__(256).astype(np.uint16).tobytes()[:-1])
    p = run_train(TINY + ["data=bin", f"data.path={folder}", "data.vocab_size=256"], tmp_path / "run", cache_dir,
                  check=False)
    assert p.returncode != 0 and "val.bin" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_unwritable_output_folder_is_a_clear_error(tmp_path, cache_dir):
    if os.geteuid() == 0:
        target = Path("/proc/scalelab-cannot-write-here")  # even root cannot create folders in /proc
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "run"
    p = run_train(TINY, target, cache_dir, check=False)
    assert p.returncode != 0
    assert "cannot be written" in p.stderr or "hydra.run.dir" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
