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


def test_wandb_failure_never_stops_training(monkeypatch, tmp_path, caplog):
    class Broken:
        def __init__(self):
            self.summary = {}

        def log(self, *a, **k):
            raise ConnectionError("network down")

        def finish(self):
            raise ConnectionError("network down")

    fake = types.SimpleNamespace(init=lambda **kw: Broken())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log = WandbLogger(tmp_path, LoggerConfig(kind="wandb"), {}, "run", None)
    log.log({"step": 1, "train_loss": 2.0})  # must not raise
    log.log({"step": 2, "train_loss": 1.0})
    log.summary({"final_val_loss": 1.0})
    log.close()
    assert "wandb disabled for this run" in caplog.text

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: (_ for _ in ()).throw(
        RuntimeError("no wandb here"))))
    log = WandbLogger(tmp_path, LoggerConfig(kind="wandb"), {}, "run", None)
    log.log({"step": 1, "train_loss": 2.0})
    assert log.run_id is None


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
def test_real_wandb_offline_run_writes_local_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = make_logger(LoggerConfig(kind="wandb"), tmp_path, rank=0, resume_step=0, config_dict={"a": 1}, name="off")
    log.log({"step": 1, "train_loss": 2.0})
    log.close()
    assert log.run_id
    assert list((tmp_path / "wandb").glob("offline-run-*"))
