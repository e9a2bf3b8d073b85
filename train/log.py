"""The one output channel: the `scalelab` logger, used by training, data, sweeps and the launcher.

    from train.log import get_logger
    log = get_logger("data")          # "scalelab.data"
    log.info("tokenising ...")        # console: "[scalelab] tokenising ..."
    log.info(line, extra=PLAIN)       # console: the line as is (training step lines)
    log.error("bad value")            # console: "error: bad value"

`setup()` is called once per process (again only to add a run's log file): the console handler goes to
stderr on the process that should print (rank 0), and every rank may write its own file. Metrics are
not logged here: they go through train.loggers (metrics.jsonl, wandb).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

NAME = "scalelab"
PLAIN = {"plain": True}  # extra= for lines printed without the "[scalelab]" prefix


def get_logger(child: Optional[str] = None) -> logging.Logger:
    return logging.getLogger(f"{NAME}.{child}" if child else NAME)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"[{NAME}] warning: {text}"
        if getattr(record, "plain", False):
            return text
        return f"[{NAME}] {text}"


class _FileFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


def setup(console: bool = True, file: Optional[Path] = None) -> logging.Logger:
    """Configure the `scalelab` logger: a stderr handler when `console` (rank 0), and a file handler
    for `file` (replacing an earlier one, so a process that runs several jobs logs each to its own
    file). Idempotent; never touches the root logger or other libraries' loggers."""
    log = get_logger()
    log.setLevel(logging.INFO)
    log.propagate = False  # Hydra's or a user's root handlers would print every line twice
    consoles = [h for h in log.handlers if getattr(h, "_scalelab", None) == "console"]
    if console and not consoles:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_ConsoleFormatter())
        h._scalelab = "console"
        log.addHandler(h)
    elif not console:
        for h in consoles:
            log.removeHandler(h)
    if file is not None:
        for h in [h for h in log.handlers if getattr(h, "_scalelab", None) == "file"]:
            log.removeHandler(h)
            h.close()
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        h = logging.FileHandler(file, mode="a", encoding="utf-8")
        h.setFormatter(_FileFormatter())
        h._scalelab = "file"
        log.addHandler(h)
    return log


def close_file() -> None:
    """Close the run's log file handler (the console stays)."""
    log = get_logger()
    for h in [h for h in log.handlers if getattr(h, "_scalelab", None) == "file"]:
        log.removeHandler(h)
        h.close()
