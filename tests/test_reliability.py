"""What a user can rely on when things go wrong or are done twice: a relaunch never reuses a result made
with other settings, a skipped run is retried once its cause is fixed, resume survives a truncated
checkpoint, one process per run folder, signals end a run with one line and a resumable checkpoint,
runs that learned nothing are flagged, stale error files go, and a cooldown fork equals a straight
WSD run. Each test reproduces a failure mode found in use."""
import json
import math
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import TINY, run_cli, summary
from train.data import VAL_SET
from train.checkpoint import Checkpointer
from train.lock import RunLock


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability-cache")


def train(args, run_dir, cache_dir, **kw):
    return run_cli(["-m", "train", *TINY, *args, f"hydra.run.dir={run_dir}"], cache_dir=cache_dir, **kw)


SHORT = ["train.tokens=10240", "train.ckpt_every=5"]


@pytest.mark.slow
def test_relaunch_with_other_settings_is_refused_and_names_each_difference(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    train(SHORT + ["model.shape=64x2x2"], run_dir, cache_dir, check=True)
    before = (run_dir / "summary.json").read_text()
    p = train(SHORT + ["model.shape=32x1x1"], run_dir, cache_dir)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "model.width: 64 -> 32" in p.stderr and "model.depth: 2 -> 1" in p.stderr
    assert "hydra.run.dir" in p.stderr and "train.resume=never" in p.stderr
    assert (run_dir / "summary.json").read_text() == before
    # the explicit option trains the folder again with the new settings
    p = train(SHORT + ["model.shape=32x1x1", "train.resume=never"], run_dir, cache_dir, check=True)
    assert summary(run_dir)["model"]["width"] == 32 and summary(run_dir)["status"] == "completed"


@pytest.mark.slow
def test_a_result_scored_on_the_old_validation_set_is_not_reused(tmp_path, cache_dir):
    """Records made before the validation set was spread over the split scored their val loss on its first
    tokens: the same settings relaunched refuse to call that result done."""
    run_dir = tmp_path / "run"
    train(SHORT, run_dir, cache_dir, check=True)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["identity"]["val_set"] == VAL_SET
    del s["identity"]["val_set"]  # as a record made before the key existed
    (run_dir / "summary.json").write_text(json.dumps(s))
    p = train(SHORT, run_dir, cache_dir)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert f"val_set: None -> {VAL_SET!r}" in p.stderr, p.stderr


@pytest.mark.slow
def test_an_interrupted_run_relaunched_with_other_settings_is_refused(tmp_path, cache_dir):
    """Resuming would continue a checkpoint under other settings: refused, naming the difference, and the
    checkpoints and record are left as they were."""
    run_dir = tmp_path / "run"
    train(SHORT, run_dir, cache_dir, check=True)
    s = json.loads((run_dir / "summary.json").read_text())
    s["status"] = "running"  # as a run killed mid-way leaves it
    (run_dir / "summary.json").write_text(json.dumps(s))
    before, ckpts = (run_dir / "summary.json").read_text(), Checkpointer(run_dir).steps()
    assert ckpts
    p = train(SHORT + ["optim.lr=1e-3"], run_dir, cache_dir)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "optim.lr: 0.003 -> 0.001" in p.stderr and "train.resume=never" in p.stderr, p.stderr
    assert Checkpointer(run_dir).steps() == ckpts and (run_dir / "summary.json").read_text() == before


@pytest.mark.slow
def test_a_skipped_run_is_retried_once_the_cause_is_fixed(tmp_path, cache_dir):
    run_dir = tmp_path / "skip"
    p = train(["train.tokens=4096", "train.min_steps=10"], run_dir, cache_dir)
    assert p.returncode == 3 and summary(run_dir)["status"] == "skipped" and "min_steps" in summary(run_dir)["reason"]
    p = train(["train.tokens=4096", "train.min_steps=2"], run_dir, cache_dir, check=True)
    assert summary(run_dir)["status"] == "completed", p.stderr
    assert "already" not in p.stderr


@pytest.mark.slow
def test_resume_skips_a_truncated_checkpoint_and_says_which(tmp_path, cache_dir):
    args = ["train.tokens=20480", "train.ckpt_every=5"]  # 20 steps; the checkpoints of steps 15 and 20 stay
    ref, run_dir = tmp_path / "ref", tmp_path / "run"
    train(args, ref, cache_dir, check=True)
    train(args, run_dir, cache_dir, check=True)
    # make the run look killed while its newest checkpoint was cut short (a full disk, a crash)
    s = json.loads((run_dir / "summary.json").read_text())
    s["status"] = "running"
    (run_dir / "summary.json").write_text(json.dumps(s))
    newest = Checkpointer.path_for(run_dir, 20)
    newest.write_bytes(newest.read_bytes()[:1000])
    p = train(args, run_dir, cache_dir)
    assert p.returncode == 0, p.stderr
    assert "step_00000020.pt could not be read" in p.stderr and "resuming from" in p.stderr
    assert "Traceback" not in p.stderr
    out = summary(run_dir)
    assert out["status"] == "completed" and out["resumed_from"].endswith("step_00000015.pt")
    assert abs(out["final_val_loss"] - summary(ref)["final_val_loss"]) <= 1e-5


@pytest.mark.slow
def test_a_second_process_refuses_a_folder_in_use(tmp_path, cache_dir):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with RunLock(run_dir):
        p = train(SHORT, run_dir, cache_dir)
    assert p.returncode == 2 and "is being trained by pid" in p.stderr and "Traceback" not in p.stderr
    assert not (run_dir / "summary.json").exists()
    train(SHORT, run_dir, cache_dir, check=True)  # the lock went with its holder


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143),
                                       pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_signal_stops_after_a_checkpoint_with_one_line_and_resumes(tmp_path, cache_dir, sig, code):
    run_dir = tmp_path / "sig"
    args = ["train.tokens=204800", "train.ckpt_every=1000", "train.eval_every=0"]
    proc = train(args, run_dir, cache_dir, wait=False)
    log = run_dir / "train.log"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # signal it once training steps are running
        if log.exists() and "step " in log.read_text():
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out[-2000:]
    assert "Traceback" not in out and "relaunch the same command to resume" in out
    s = summary(run_dir)
    assert s["status"] == "failed" and "interrupted" in s["reason"]
    stopped_at = s["steps_done"]
    assert Checkpointer(run_dir).steps() == [stopped_at]  # saved where it stopped, not at ckpt_every
    p = train(args, run_dir, cache_dir, check=True)
    assert f"(step {stopped_at})" in p.stderr and summary(run_dir)["status"] == "completed"


def test_a_run_that_learned_nothing_is_flagged_and_left_out_of_fits(tmp_path, cache_dir):
    from sweeps.collect import collect

    run_dir = tmp_path / "sweep" / "flat"
    train(["train.tokens=5120", "train.min_steps=1", "optim.lr=1e-9", "model.init_std=1.0"], run_dir, cache_dir,
          check=True)
    s = summary(run_dir)
    assert s["status"] == "completed" and s["final_val_loss"] > math.log(256)
    assert "above_uniform_loss" in s["flags"]
    ds = collect(tmp_path / "sweep")
    assert len(ds) == 0 and "learned nothing" in ds.excluded[0]["reason"]


@pytest.mark.slow
def test_error_file_of_a_failed_attempt_goes_after_a_success(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "error.txt").write_text("Traceback of an earlier attempt")
    train(SHORT, run_dir, cache_dir, check=True)
    assert not (run_dir / "error.txt").exists()


def test_triton_kernels_on_a_cpu_are_refused_before_anything_is_written(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    p = train(SHORT + ["model.kernels=triton"], run_dir, cache_dir)
    assert p.returncode == 2 and "model.kernels=triton needs a CUDA device" in p.stderr
    assert "Traceback" not in p.stderr and not run_dir.exists()


def test_cuda_graphs_on_a_cpu_are_refused(tmp_path, cache_dir):
    p = train(SHORT + ["train.cuda_graphs=true"], tmp_path / "run", cache_dir)
    assert p.returncode == 2 and "train.cuda_graphs=true needs one process on a CUDA device" in p.stderr


@pytest.mark.slow
def test_a_cooldown_fork_equals_a_straight_wsd_run(tmp_path, cache_dir):
    """One trunk at constant lr, branched at the decay start: the fork's loss is the straight run's."""
    wsd = ["optim.schedule=wsd", "optim.wsd_decay=0.2", "optim.decay_shape=sqrt", "optim.min_lr_ratio=0",
           "optim.warmup=4", "train.eval_every=0"]
    straight, trunk, fork = tmp_path / "straight", tmp_path / "trunk", tmp_path / "fork"
    train(wsd + ["train.tokens=40960"], straight, cache_dir, check=True)  # 40 steps: decay from step 32
    train([a for a in wsd if "schedule" not in a] + ["optim.schedule=constant", "train.tokens=32768",
                                                     "train.keep_ckpt_steps=[16,32]", "train.ckpt_every=10"],
          trunk, cache_dir, check=True)
    assert {16, 32} <= set(Checkpointer(trunk).steps())  # branch points survive the pruning
    p = train(wsd + ["train.tokens=40960", f"train.init_from={trunk}", "train.init_step=32"], fork, cache_dir,
              check=True)
    assert "branching from" in p.stderr
    a, b = summary(straight), summary(fork)
    assert abs(a["final_val_loss"] - b["final_val_loss"]) <= 1e-5
    assert b["fork"]["step"] == 32 and b["resumed_from"].endswith("step_00000032.pt")
    # a fork whose trunk was trained with other settings refuses to branch
    p = train(wsd + ["train.tokens=40960", f"train.init_from={trunk}", "train.init_step=32", "optim.lr=1e-3"],
              tmp_path / "bad", cache_dir)
    assert p.returncode == 2 and "optim.lr" in p.stderr and "Traceback" not in p.stderr
