"""`python -m train` end to end on CPU: records, determinism, budget -> tokens, divergence guard,
skips, kill-and-resume, and a clear error for every kind of bad input."""
import json
import math
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, metrics, run_train, summary


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data-cache")


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
    assert s["final_val_loss"] < math.log(256) - 1.0  # well below a uniform guess over bytes
    assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"]
    for r in train_rows:
        assert {"step", "tokens", "flops", "train_loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(r)
    assert (run_dir / "config.yaml").read_text().count("width: 32") == 1
    assert sorted(p.name for p in (run_dir / "ckpt").iterdir()) == ["step_00000030.pt", "step_00000040.pt"]


def context_free_losses(data_cfg: dict) -> tuple[float, float]:
    """Validation losses (nats/token) of the two best models that use no context beyond the current byte:
    the byte frequencies' entropy (no context at all) and the cross-entropy of byte-pair frequencies counted
    on the whole training split (the current byte only: what the model reaches if attention passes nothing
    on, e.g. it outputs zeros or attends to each position alone)."""
    import numpy as np

    from train.data import DataConfig, load

    ds = load(DataConfig(**data_cfg), progress=False)
    val = np.asarray(ds.val.tokens[: data_cfg["val_tokens"] + 1]).astype(np.int64)
    counts = np.bincount(val, minlength=256).astype(float)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    train = np.asarray(ds.train.tokens).astype(np.int64)
    pairs = np.bincount(train[:-1] * 256 + train[1:], minlength=256 * 256).reshape(256, 256) + 0.1
    bigram = float(-np.log(pairs[val[:-1], val[1:]] / pairs[val[:-1]].sum(axis=1)).mean())
    return unigram, bigram


@pytest.mark.slow
def test_the_model_uses_context(tmp_path, cache_dir, monkeypatch):
    """Below what a model reaches from the current byte alone (~2.57 nats here; no context at all: ~3.1) by a
    clear margin: the model has learned from the bytes before the current one, through attention.
    (Measured: 2.43 nats; with the attention output zeroed, 2.63.)"""
    monkeypatch.setenv("SCALELAB_CACHE", str(cache_dir))
    run_dir = tmp_path / "ctx"
    run_train(TINY + ["train.tokens=204800", "train.eval_every=0", "train.ckpt_every=0"], run_dir, cache_dir)
    unigram, bigram = context_free_losses({"max_tokens": 3000000, "val_tokens": 4096})
    assert 2.8 < unigram < 3.5 and 2.3 < bigram < unigram - 0.3  # the measuring sticks are what they should be
    assert summary(run_dir)["final_val_loss"] < bigram - 0.05, (summary(run_dir)["final_val_loss"], bigram)


@pytest.mark.slow
def test_gradient_accumulation_matches_one_big_micro_batch(tmp_path, cache_dir):
    """32 sequences per step as one micro-batch or as 4 micro-batches of 8: the same mean gradient."""
    one, four = tmp_path / "one", tmp_path / "four"
    run_train(TINY + ["train.tokens=10240"], one, cache_dir)
    p = run_train(TINY + ["train.tokens=10240", "train.micro_batch=8"], four, cache_dir)
    assert "4 micro-steps of 8 sequences" in p.stderr
    assert abs(summary(one)["final_val_loss"] - summary(four)["final_val_loss"]) < 1e-6
    # AdamW hardly sees a gradient scaled by a constant, so the validation loss alone misses a lost 1/accum:
    # the logged train loss (the mean over micro-batches) and gradient norm must agree too
    rows = {d: [(r["step"], r["train_loss"], r["grad_norm"]) for r in metrics(d) if "train_loss" in r]
            for d in (one, four)}
    assert [r[0] for r in rows[one]] == [r[0] for r in rows[four]] and rows[one]
    for (_, loss_a, norm_a), (_, loss_b, norm_b) in zip(rows[one], rows[four]):
        assert loss_b == pytest.approx(loss_a, rel=1e-5) and norm_b == pytest.approx(norm_a, rel=1e-4)


@pytest.mark.parametrize("args, reason", [
    (["optim.lr=1e30", "optim.warmup=0", "optim.grad_clip=0", "train.log_every=1"], "training loss is nan at step"),
    (["optim.lr=1e30", "optim.warmup=0", "optim.grad_clip=0", "train.log_every=1000", "train.eval_every=1"],
     "validation loss is nan at step 1"),
    (["optim.lr=3", "optim.warmup=0", "optim.grad_clip=0", "train.log_every=1"], "training loss ran away at step"),
], ids=["nan-train", "nan-val", "runaway"])
def test_each_divergence_guard_records_its_own_reason(tmp_path, cache_dir, args, reason):
    p = run_train(TINY + args, tmp_path / "div", cache_dir, check=False)
    assert p.returncode == 0, p.stderr
    s = summary(tmp_path / "div")
    assert s["status"] == "diverged" and s["reason"].startswith(reason), s["reason"]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_completed_run_is_not_redone(tmp_path, cache_dir):
    run_dir = tmp_path / "again"
    run_train(TINY + ["train.tokens=5120", "train.min_steps=1"], run_dir, cache_dir)
    before = (run_dir / "summary.json").read_text()
    p = run_train(TINY + ["train.tokens=5120", "train.min_steps=1"], run_dir, cache_dir)
    assert "nothing to do" in p.stderr
    assert (run_dir / "summary.json").read_text() == before


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_uninterrupted_loss(tmp_path, cache_dir):
    args = TINY + ["train.tokens=81920", "train.ckpt_every=10", "train.eval_every=40"]
    ref = tmp_path / "ref"
    run_train(args, ref, cache_dir)

    killed = tmp_path / "killed"
    proc = run_train(args, killed, cache_dir, wait=False)
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
    proc.communicate()
    assert summary(killed)["status"] == "running"  # no completion claimed by a killed run

    p = run_train(args + ["train.resume=auto"], killed, cache_dir)
    assert "resuming from" in p.stderr
    a, b = summary(ref), summary(killed)
    assert b["status"] == "completed"
    assert abs(a["final_val_loss"] - b["final_val_loss"]) <= 1e-5
    # the metrics file has each step once, as if never interrupted
    steps = [r["step"] for r in metrics(killed) if "train_loss" in r]
    assert steps == sorted(set(steps)) and steps == [r["step"] for r in metrics(ref) if "train_loss" in r]


# (overrides, what the one-line message must name: the key, the bad value and, where there is a list, the valid ones)
BAD_INPUTS = [
    (["model.width=30", "model.heads=4"], ["model.width=30", "model.heads=4", "valid heads", "[1, 2, 3]"]),
    (["model.depth=0"], ["model.depth", "positive integer", "got 0"]),
    (["model.seq_len=-8"], ["model.seq_len", "-8"]),
    (["model.shape=32x2"], ["model.shape", "WIDTHxDEPTHxHEADS", "'32x2'"]),
    (["train.tokens=0"], ["train.tokens", "got 0"]),
    (["train.tokens=abc"], ["train.tokens", "'abc'", "a number"]),
    (["+model.wdth=64"], ["model.wdth", "did you mean model.width"]),
    (["model.wdth=64"], ["model.wdth", "did you mean model.width"]),
    (["optim.lr=-0.1"], ["optim.lr", "-0.1", "positive"]),
    (["optim.min_lr_ratio=2"], ["optim.min_lr_ratio", "[0, 1]", "2.0"]),
    (["optim.wsd_decay=0"], ["optim.wsd_decay", "(0, 1]", "0.0"]),
    (["optim.beta2=1.5"], ["optim.beta2", "[0, 1)", "1.5"]),
    (["optim.beta1=-0.1"], ["optim.beta1", "[0, 1)", "-0.1"]),
    (["optim.decay_shape=cubic"], ["optim.decay_shape", "'cubic'", "linear", "sqrt"]),
    (["train.diverge_ratio=0.5"], ["train.diverge_ratio", "> 1", "0.5"]),
    (["train.budget=1e10", "train.tokens_per_param=20"], ["train.budget", "train.tokens_per_param", "choose one"]),
    (["train.micro_batch=5"], ["train.micro_batch=5", "32 sequences", "[1, 2, 4, 8, 16, 32]"]),
    (["train.init_step=3"], ["train.init_from", "train.init_step", "together"]),
    (["train.batch_tokens=1048576"], ["train.batch_tokens=1048576", "larger than the whole run", "<= 40960"]),
    (["train.batch_tokens=1000"], ["train.batch_tokens=1000", "multiple of model.seq_len", "992 or 1024"]),
    (["data=text", "data.path=/nonexistent/corpus.txt"], ["/nonexistent/corpus.txt"]),
    (["data.tokenizer=foo"], ["data.tokenizer='foo'", "bytes, bpe, gpt2"]),
    (["optim.schedule=linear"], ["optim.schedule", "'linear'", "cosine", "wsd", "constant"]),
    (["model.kernels=cuda"], ["model.kernels", "'cuda'", "auto", "triton", "torch"]),
    (["logger=tensorboard"], ["logger=tensorboard", "jsonl, none, wandb"]),
    (["sweep.preset=cpu"], ["sweep.preset='cpu'", "+sweep=NAME"]),
]


# One of each kind (model config, a value's type, a typo, the planner, the data, a config group) in the quick
# suite; each costs a process start (~2 s), so the rest run with the slow ones (CI runs all).
QUICK_BAD = {"model.width=30 model.heads=4", "train.tokens=abc", "+model.wdth=64", "train.batch_tokens=1000",
             "data=text data.path=/nonexistent/corpus.txt", "logger=tensorboard"}


@pytest.mark.parametrize("override, fragments", [
    pytest.param(o, f, id=" ".join(o), marks=() if " ".join(o) in QUICK_BAD else pytest.mark.slow)
    for o, f in BAD_INPUTS])
def test_bad_input_is_a_clear_error(tmp_path, cache_dir, override, fragments):
    run_dir = tmp_path / "bad"
    p = run_train(TINY + override, run_dir, cache_dir, check=False, timeout=120)
    assert p.returncode == 2, p.stderr
    for fragment in fragments:
        assert fragment in p.stderr, (fragment, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.count("error:") == 1, p.stderr
    assert not run_dir.exists(), sorted(run_dir.iterdir())  # nothing left behind that claims anything


def test_corrupt_shard_is_a_clear_error(tmp_path, cache_dir):
    import numpy as np

    folder = tmp_path / "shards"
    folder.mkdir()
    np.arange(5000, dtype=np.uint16).__mod__(256).astype(np.uint16).tofile(folder / "train.bin")
    (folder / "val.bin").write_bytes(np.arange(3000, dtype=np.uint16).__mod__(256).astype(np.uint16).tobytes()[:-1])
    p = run_train(TINY + ["data=bin", f"data.path={folder}", "data.vocab_size=256"], tmp_path / "run", cache_dir,
                  check=False)
    assert p.returncode != 0 and "val.bin" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_unwritable_default_runs_folder_is_a_clear_error(tmp_path, cache_dir):
    from tests.conftest import run_cli

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "runs").write_text("a file where the runs/ folder belongs")  # fails for root too
    p = run_cli(["-m", "train", *TINY], cache_dir=cache_dir, cwd=cwd, timeout=120)
    assert p.returncode == 2 and "runs" in p.stderr and "hydra.run.dir=PATH" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


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
