"""Checkpoints: <run_dir>/ckpt/step_XXXXXXXX.pt. `Checkpointer` owns their names and retention.

A checkpoint holds full (unsharded) model and optimizer state, so it can be resumed on any world
size, plus the loop state (the data position and the learning rate are pure functions of the step)
and the RNG states. Files are written atomically; on resume the newest readable one wins, and each
unreadable newer one is reported by name.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np
import torch

from train.io_utils import atomic_open

_NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(Exception):
    """No checkpoint could be read where one was required. The message names the files."""


class Checkpointer:
    """Saves, finds and prunes one run's checkpoints.

    keep: how many of the newest checkpoints survive pruning; keep_steps: steps whose checkpoints are
    never pruned (a trunk's branch points, which cooldown forks start from)."""

    def __init__(self, run_dir, keep: int = 2, keep_steps: Iterable[int] = ()):
        self.dir = Path(run_dir) / "ckpt"
        self.keep = keep
        self.keep_steps = set(int(s) for s in keep_steps)

    @staticmethod
    def path_for(run_dir, step: int) -> Path:
        return Path(run_dir) / "ckpt" / f"step_{step:08d}.pt"

    def steps(self) -> List[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _NAME.match(p.name)))

    def save(self, step: int, state: dict) -> Path:
        path = self.path_for(self.dir.parent, step)
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
        self._prune()
        return path

    def _prune(self) -> None:
        steps = self.steps()
        for step in steps[:-self.keep] if self.keep else steps:
            if step not in self.keep_steps:
                self.path_for(self.dir.parent, step).unlink(missing_ok=True)

    def load_latest(self) -> Tuple[Optional[dict], Optional[Path], List[str]]:
        """(state, path, problems): the newest checkpoint that reads, and one line per newer one that
        did not (a file truncated by a crash or a full disk). (None, None, problems) when none reads."""
        problems = []
        for step in reversed(self.steps()):
            path = self.path_for(self.dir.parent, step)
            try:
                return load(path), path, problems
            except Exception as e:  # torch raises RuntimeError, EOFError, pickle errors ... for a bad file
                problems.append(f"{path} could not be read ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
        return None, None, problems

    def clear(self) -> None:
        for step in self.steps():
            self.path_for(self.dir.parent, step).unlink(missing_ok=True)


def load(path) -> dict:
    # weights_only=False: the state holds RNG states and plain Python objects written by this code.
    return torch.load(path, map_location="cpu", weights_only=False)


def load_step(run_dir, step: int) -> dict:
    """The checkpoint of `run_dir` at exactly `step` (a fork's branch point); CheckpointError if absent or bad."""
    path = Checkpointer.path_for(run_dir, step)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        return load(path)
    except Exception as e:
        raise CheckpointError(f"{path} could not be read ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


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
