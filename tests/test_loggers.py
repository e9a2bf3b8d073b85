"""One logger interface: JSONL (the run record's metrics.jsonl), wandb (never stops training), none;
only rank 0 logs."""
import json
import sys
import types

import pytest

from train.config import LoggerConfig
from train.io_utils import wandb_mode
from train.loggers import JsonlLogger, MultiLogger, NullLogger, WandbLogger, make_logger


def test_rank_zero_only_and_none(tmp_path):
    assert isinstance(make_logger(LoggerConfig(kind="jsonl"), tmp_path, rank=1, resume_step=0, config_dict={},
                                  name="x"), NullLogger)
    assert isinstance(make_logger(LoggerConfig(kind="none"), tmp_path, rank=0, resume_step=0, config_dict={},
                                  name="x"), NullLogger)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_jsonl_writes_rows_and_truncates_on_resume(tmp_path):
    log = make_logger(LoggerConfig(kind="jsonl"), tmp_path, rank=0, resume_step=0, config_dict={}, name="x")
    for step in (10, 20, 30):
        log.log({"step": step, "train_loss": 1.0 / step, "mfu": None})
    log.close()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30] and rows[0]["mfu"] is None
    # a run resumed from step 20 drops what it logged after its checkpoint, then appends
    log = JsonlLogger(tmp_path, resume_step=20)
    log.log({"step": 30, "train_loss": 0.5})
    log.close()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30] and rows[-1]["train_loss"] == 0.5


def test_wandb_mode_follows_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert wandb_mode("auto")[0] == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto")[0] == "online"
    assert wandb_mode("disabled")[0] == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("online")[0] == "offline"  # the environment wins, as in wandb itself


@pytest.mark.parametrize("failing", ["log", "summary", "finish"])
def test_a_wandb_failure_is_reported_once_and_never_stops_training(monkeypatch, tmp_path, caplog, failing):
    calls = []

    class Flaky:
        def __init__(self):
            self.summary = FlakyDict()

        def log(self, *a, **k):
            calls.append("log")
            if failing == "log":
                raise ConnectionError("network down")

        def finish(self):
            calls.append("finish")
            if failing == "finish":
                raise ConnectionError("network down")

    class FlakyDict(dict):
        def __setitem__(self, key, value):
            calls.append("summary")
            if failing == "summary":
                raise ConnectionError("network down")
            super().__setitem__(key, value)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: Flaky()))
    log = WandbLogger(tmp_path, LoggerConfig(kind="wandb"), {}, "run", None)
    log.log({"step": 1, "train_loss": 2.0})  # none of these may raise
    log.log({"step": 2, "train_loss": 1.0})
    log.summary({"final_val_loss": 1.0, "status": "completed"})
    log.close()
    assert caplog.text.count("wandb disabled for this run") == 1
    assert calls.count(failing) == 1  # after the failure wandb is left alone
    first = calls.index(failing)
    assert all(c != failing for c in calls[first + 1:])


def test_wandb_that_cannot_start_leaves_no_run(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: (_ for _ in ()).throw(
        RuntimeError("no wandb here"))))
    log = WandbLogger(tmp_path, LoggerConfig(kind="wandb"), {}, "run", None)
    log.log({"step": 1, "train_loss": 2.0})
    log.summary({"x": 1})
    log.close()
    assert log.run_id is None and caplog.text.count("wandb disabled for this run") == 1


def test_wandb_and_jsonl_see_the_same_rows(monkeypatch, tmp_path):
    seen = []

    class Run:
        id = "abc123"
        summary = {}

        def log(self, row, step):
            seen.append((step, row))

        def finish(self):
            pass

    inits = []
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: inits.append(kw) or Run()))
    cfg = LoggerConfig(kind="wandb", group="chinchilla-cpu", tags=["a"])
    log = make_logger(cfg, tmp_path, rank=0, resume_step=0, config_dict={"model": {"width": 8}}, name="r1")
    assert isinstance(log, MultiLogger) and log.run_id == "abc123"
    log.log({"step": 5, "train_loss": 3.0, "mfu": None})
    log.summary({"final_val_loss": 2.5, "status": "completed"})
    log.close()
    assert seen == [(5, {"train_loss": 3.0})]
    assert inits[0]["group"] == "chinchilla-cpu" and inits[0]["config"] == {"model": {"width": 8}}
    assert inits[0]["dir"] == str(tmp_path)
    assert Run.summary == {"final_val_loss": 2.5, "status": "completed"}
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 5, "train_loss": 3.0, "mfu": None}]


@pytest.mark.slow
def test_training_with_wandb_offline_end_to_end(tmp_path):
    """`python -m train logger=wandb` with wandb offline: the run gets a wandb id in its record, a local
    wandb run folder, and the same metrics rows in metrics.jsonl."""
    pytest.importorskip("wandb")
    from tests.conftest import TINY, run_cli

    run_dir = tmp_path / "run"
    p = run_cli(["-m", "train", *TINY, "train.tokens=10240", "logger=wandb", f"hydra.run.dir={run_dir}"],
                cache_dir=tmp_path / "cache", env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)},
                timeout=300, check=True)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "completed" and s["wandb_run_id"]
    assert list((run_dir / "wandb").glob(f"offline-run-*-{s['wandb_run_id']}"))
    assert any("train_loss" in json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert "wandb disabled" not in p.stderr


@pytest.mark.slow
def test_real_wandb_offline_run_writes_local_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = make_logger(LoggerConfig(kind="wandb"), tmp_path, rank=0, resume_step=0, config_dict={"a": 1}, name="off")
    log.log({"step": 1, "train_loss": 2.0})
    log.close()
    assert log.run_id
    assert list((tmp_path / "wandb").glob("offline-run-*"))
