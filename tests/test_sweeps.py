"""Sweeps end to end on CPU through the planner, the pool launcher and the end-of-sweep fit: the smoke
preset with cooldown forks (a broken job does not stop the sweep or the fit; a relaunch redoes nothing
finished), an interrupted sweep resuming to the same results, a relaunch with other settings refused,
settings every job shares checked once before launching, and the launcher's slots and commands."""
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from sweeps.launcher import _ready, job_command, make_slots
from sweeps.results import load_fit
from tests.conftest import run_cli
from train.record import load_summary

SMOKE = ["-m", "train", "+sweep=chinchilla", "sweep.preset=smoke"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep-cache")


def records(sweep_dir):
    return {p.name: load_summary(p)[0] for p in Path(sweep_dir).iterdir() if (p / "summary.json").exists()}


def planned(sweep_dir):
    return json.loads((Path(sweep_dir) / "plan.json").read_text())["jobs"]


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory, cache_dir):
    """The smoke sweep with one broken trunk (a file where its checkpoint folder belongs), then the same
    command again once the folder is mended. Returns (sweep dir, first run, second run, broken trunk)."""
    sweep_dir = tmp_path_factory.mktemp("smoke") / "sweep"
    args = SMOKE + [f"hydra.sweep.dir={sweep_dir}"]
    p = run_cli(["-m", "sweeps.plan", "chinchilla", "--preset", "smoke", "--json", f"hydra.sweep.dir={sweep_dir}"],
                cache_dir=cache_dir, timeout=300)
    jobs = json.loads(p.stdout)["jobs"]
    broken = next(j["name"] for j in jobs if j["role"] == "trunk")
    (sweep_dir / broken).mkdir(parents=True)
    (sweep_dir / broken / "ckpt").write_text("not a folder")
    first = run_cli(args, cache_dir=cache_dir, timeout=900)
    first_records = records(sweep_dir)
    fit_first = load_fit(sweep_dir)[0]
    (sweep_dir / broken / "ckpt").unlink()
    second = run_cli(args, cache_dir=cache_dir, timeout=900)
    return {"dir": sweep_dir, "first": first, "second": second, "broken": broken, "jobs": jobs,
            "first_records": first_records, "fit_first": fit_first}


@pytest.mark.slow
def test_a_broken_job_neither_stops_the_sweep_nor_the_fit(smoke_sweep):
    d, p, broken, jobs = smoke_sweep["dir"], smoke_sweep["first"], smoke_sweep["broken"], smoke_sweep["jobs"]
    assert "preset smoke (chosen)" in p.stderr and "on CPU x1 thread" in p.stderr
    s = smoke_sweep["first_records"]
    assert set(s) == {j["name"] for j in jobs}, sorted(s)  # every planned job ran and left a record
    orphans = {j["name"] for j in jobs if j["trunk"] == broken}
    assert orphans
    assert s[broken].status == "failed" and "ckpt" in s[broken].reason
    for name in orphans:  # forks of the broken trunk say why they could not branch
        assert s[name].status == "failed" and "cannot branch from trunk" in s[name].reason
    good = set(s) - orphans - {broken}
    assert good and all(s[n].status == "completed" for n in good), {n: s[n].status for n in good}
    for n in good:
        assert s[n].sweep == "chinchilla" and s[n].group == "chinchilla-smoke"
        if s[n].role == "fork":  # tokens follow the budget, under the exact FLOP count
            assert abs(s[n].compute - s[n].budget) / s[n].budget < 0.05
    # the analysis ran once, after every job, whatever their outcome
    assert p.stderr.count("fitting the frontier") == 1
    fit = smoke_sweep["fit_first"]
    assert fit is not None, "no readable fit.json after the first launch"
    excluded = {e["name"] for e in fit.excluded}
    assert {broken} | orphans <= excluded and not (good & excluded - {n for n in good if s[n].role == "trunk"})
    assert fit.n_points == sum(s[n].role == "fork" for n in good)
    assert fit.flops_convention == "exact" and fit.params_convention == "total"
    assert (d / "report.md").is_file()  # the report, rebuilt from that fit.json


@pytest.mark.slow
def test_relaunch_redoes_nothing_finished_and_completes_the_rest(smoke_sweep):
    d, p = smoke_sweep["dir"], smoke_sweep["second"]
    before, after = smoke_sweep["first_records"], records(d)
    assert all(r.status == "completed" for r in after.values()), {n: r.status for n, r in after.items()}
    for name, r in before.items():
        if r.status == "completed":
            assert after[name] == r  # untouched: not retrained
            assert "nothing to do" in (d / name / "job.log").read_text()
    outcome = json.loads((d / "sweep.json").read_text())["jobs"]
    assert all(o["status"] == "completed" for o in outcome.values())
    # every trunk's checkpoints went once all its forks completed
    assert not any((d / n / "ckpt").exists() for n, r in after.items() if r.role == "trunk")
    fit, why = load_fit(d)
    assert fit is not None, why
    assert fit.n_points == sum(r.role == "fork" for r in after.values())
    # exit 1 when the fit is not ok (a handful of smoke points rarely identify a law), and the report says why
    assert p.returncode == (0 if fit.ok else 1), (fit.status, p.stderr[-3000:])
    md = (d / "report.md").read_text()
    assert fit.created in md and (fit.ok or "Status: OK" not in md)
    assert p.stderr.count("fitting the frontier") == 1  # the relaunch fits again, once


@pytest.mark.slow
def test_the_end_of_sweep_fits_ran_on_every_point(smoke_sweep):
    """Not just a fit.json with the approaches' keys: approach 3 fitted every point it was given (the runs
    with at least A3_MIN_STEPS optimizer steps), on the first launch (one trunk's shape missing) and the
    relaunch; approach 2 saw every point of the relaunch (whether the smoke points give each budget an
    interior minimum is the data's business, not the test's)."""
    from sweeps.collect import collect
    from sweeps.fit import A3_MIN_STEPS

    first = smoke_sweep["fit_first"]
    assert first is not None
    final, why = load_fit(smoke_sweep["dir"])
    assert final is not None, why
    for fit in (first, final):
        a3 = fit.approach3
        assert a3.status != "skipped", a3.reason
        assert math.isfinite(a3.a) and a3.n_points == fit.settings["a3_points"] > 0
        assert fit.settings["a3_min_steps"] == A3_MIN_STEPS and fit.settings["a3_points"] <= fit.n_points
    ds = collect(smoke_sweep["dir"])
    assert final.settings["a3_points"] == int((ds.steps >= A3_MIN_STEPS).sum())
    assert final.approach2.n_points == final.n_points, final.approach2.reason


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_to_the_same_results(smoke_sweep, tmp_path, cache_dir):
    reference = records(smoke_sweep["dir"])
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(SMOKE + [f"hydra.sweep.dir={sweep_dir}"], cache_dir=cache_dir, wait=False)
    deadline = time.time() + 600
    while time.time() < deadline:  # stop it once the first fork has finished
        done = [n for n, r in records(sweep_dir).items() if r and r.role == "fork" and r.status == "completed"] \
            if sweep_dir.exists() else []
        if done or proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]
    assert "relaunch the same command to resume" in out and "Traceback" not in out
    stopped = records(sweep_dir)
    assert any(r.status != "completed" for r in stopped.values()) or len(stopped) < len(reference)
    p = run_cli(SMOKE + [f"hydra.sweep.dir={sweep_dir}"], cache_dir=cache_dir, timeout=900)
    assert p.returncode in (0, 1), p.stderr[-3000:]
    final = records(sweep_dir)
    assert set(final) == set(reference)
    for name, r in final.items():  # bit-identical losses: nothing was lost or trained twice
        assert r.status == "completed" and r.final_val_loss == reference[name].final_val_loss, name
        if stopped.get(name) is not None and stopped[name].status == "completed":
            assert "nothing to do" in (sweep_dir / name / "job.log").read_text()


@pytest.mark.slow
def test_relaunch_with_other_settings_is_refused(smoke_sweep, tmp_path, cache_dir):
    sweep_dir = tmp_path / "copy"
    shutil.copytree(smoke_sweep["dir"], sweep_dir)
    # the copy's forks branch from the copy's trunks: re-point nothing, the settings below differ anyway
    before = {n: r for n, r in records(sweep_dir).items()}
    p = run_cli(SMOKE + [f"hydra.sweep.dir={sweep_dir}", "optim.weight_decay=0.05"],
                cache_dir=cache_dir, timeout=600)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "refused" in p.stderr and "hydra.sweep.dir" in p.stderr and "Traceback" not in p.stderr
    assert "other settings" in (sweep_dir / next(iter(before)) / "job.log").read_text()
    assert records(sweep_dir) == before  # no record changed
    assert p.stderr.count("fitting the frontier") == 0


def test_a_setting_every_job_shares_is_checked_once_before_launching(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    p = run_cli(SMOKE + [f"hydra.sweep.dir={sweep_dir}", "data.tokenizer=gpt2"], cache_dir=cache_dir,
                env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty")}, timeout=300)
    assert p.returncode == 2 and "gpt2" in p.stderr and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.count("error:") == 1
    assert not sweep_dir.exists() or not [d for d in sweep_dir.iterdir() if d.is_dir()]


@pytest.mark.slow
def test_bad_preset_is_one_line(tmp_path):
    p = run_cli(SMOKE[:-1] + ["sweep.preset=nope", f"hydra.sweep.dir={tmp_path / 's'}"], timeout=120)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert "sweep.preset='nope'" in p.stderr and "smoke" in p.stderr
    p = run_cli(["-m", "train", "sweep.preset=nope", f"hydra.run.dir={tmp_path / 'r'}"], timeout=120)
    assert p.returncode == 2 and "+sweep=" in p.stderr and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_submitit_local_launcher_runs_trunks_then_forks(tmp_path, cache_dir):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "submitit"
    p = run_cli(SMOKE + ["hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep_dir}",
                         "hydra.launcher.timeout_min=10", "sweep.presets.smoke.budgets=[1e10]"],
                cache_dir=cache_dir, timeout=900)
    s = records(sweep_dir)
    jobs = planned(sweep_dir)
    assert set(s) == {j["name"] for j in jobs} and any(j["role"] == "fork" for j in jobs)
    assert all(r.status == "completed" for r in s.values()), {n: (r.status, r.reason) for n, r in s.items()}
    assert (sweep_dir / ".submitit").is_dir()
    assert p.stderr.count("fitting the frontier") == 1


def test_forks_wait_for_their_trunks_checkpoint(tmp_path):
    trunk = tmp_path / "trunk"
    fork = ["train.init_from=" + str(trunk), "train.init_step=7"]
    pending = [(0, [], trunk, None)]
    assert not _ready(fork, pending, {})  # its trunk is still to run
    assert _ready(fork, [], {})  # no trunk in this launch: the fork itself reports what is missing
    (trunk / "ckpt").mkdir(parents=True)
    (trunk / "ckpt" / "step_00000007.pt").write_bytes(b"x")
    assert _ready(fork, pending, {})
    assert _ready(["model.shape=8x1x1"], pending, {})


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


def test_auto_preset_follows_the_hardware():
    import torch

    from sweeps.plan import detect_preset

    assert detect_preset() == ("gpu" if torch.cuda.is_available() else "cpu")
