"""One logger interface with three backends (jsonl, wandb, none); rank selection happens here only.

`make_logger` returns a logger that does nothing on ranks other than 0. The JSONL backend is the
run record's metrics.jsonl; wandb mirrors the same rows. A wandb failure is reported once and
never stops training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from train.io_utils import wandb_mode
from train.log import get_logger
from train.record import METRICS, MetricsFile

log = get_logger("wandb")


class Logger:
    run_id: Optional[str] = None

    def log(self, row: dict) -> None: ...

    def summary(self, fields: dict) -> None: ...

    def close(self) -> None: ...


class NullLogger(Logger):
    pass


class JsonlLogger(Logger):
    def __init__(self, run_dir: Path, resume_step: int):
        self.file = MetricsFile(Path(run_dir) / METRICS, resume_step)

    def log(self, row):
        self.file.write(row)

    def close(self):
        self.file.close()


class WandbLogger(Logger):
    def __init__(self, run_dir: Path, cfg, config_dict: dict, name: str, resume_id: Optional[str]):
        self._run = None
        try:
            import wandb

            self._run = wandb.init(
                project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags) or None,
                name=name, config=config_dict, dir=str(run_dir), mode=wandb_mode(cfg.mode)[0],
                id=resume_id, resume="allow" if resume_id else None, reinit=True,
            )
            self.run_id = getattr(self._run, "id", None)
        except Exception as e:  # wandb must never stop training
            self._warn(e)

    def _warn(self, e):
        log.warning(f"wandb disabled for this run: {type(e).__name__}: {e}")
        self._run = None

    def log(self, row):
        if self._run is None:
            return
        try:
            self._run.log({k: v for k, v in row.items() if v is not None and k != "step"}, step=row["step"])
        except Exception as e:
            self._warn(e)

    def summary(self, fields):
        if self._run is None:
            return
        try:
            for k, v in fields.items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    self._run.summary[k] = v
        except Exception as e:
            self._warn(e)

    def close(self):
        if self._run is not None:
            try:
                self._run.finish()
            except Exception as e:
                self._warn(e)


class MultiLogger(Logger):
    def __init__(self, loggers):
        self.loggers = loggers
        self.run_id = next((l.run_id for l in loggers if l.run_id), None)

    def log(self, row):
        for l in self.loggers:
            l.log(row)

    def summary(self, fields):
        for l in self.loggers:
            l.summary(fields)

    def close(self):
        for l in self.loggers:
            l.close()


def make_logger(cfg, run_dir: Path, rank: int, resume_step: int, config_dict: dict, name: str,
                resume_id: Optional[str] = None) -> Logger:
    if rank != 0 or cfg.kind == "none":
        return NullLogger()
    loggers: list[Logger] = [JsonlLogger(run_dir, resume_step)]
    if cfg.kind == "wandb":
        loggers.append(WandbLogger(run_dir, cfg, config_dict, name, resume_id))
    return MultiLogger(loggers)
