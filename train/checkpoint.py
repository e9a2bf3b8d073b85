"""Checkpoints: <run_dir>/ckpt/step_XXXXXXXX.pt, written atomically; the newest complete one wins.

A checkpoint holds full (unsharded) model and optimizer state, so it can be resumed on any world
size, plus the step (the data position and the learning rate are pure functions of it) and the
RNG states.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

_NAME = re.compile(r"^step_(\d{8})\.pt$")
KEEP = 2  # older checkpoints are deleted once a newer one is safely on disk


def ckpt_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "ckpt"


def latest(run_dir: Path) -> Optional[Path]:
    d = ckpt_dir(run_dir)
    if not d.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)))
    return found[-1][1] if found else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, state: dict) -> Path:
    d = ckpt_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:08d}.pt"
    tmp = d / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in sorted(p for p in d.iterdir() if _NAME.match(p.name))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path) -> dict:
    # weights_only=False: the state holds RNG states and plain Python objects written by this code.
    return torch.load(path, map_location="cpu", weights_only=False)
