"""The run record: <run_dir>/{config.yaml, metrics.jsonl, summary.json}. The one writer of these files.

summary.json is the contract between training and fitting (see DESIGN.md); it is always written
atomically (temp file + rename), so a reader sees the old version or the new one, never half.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

STATUSES = ("running", "completed", "diverged", "failed", "skipped")
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; records are meant to be shared
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; the status and reason say what happened
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def check_writable(folder) -> Optional[str]:
    """None if `folder` can be created and written, else what is wrong (for a clear error)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return f"the output folder {folder} cannot be written ({e.strerror or e})"
    return None


def read_summary(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def git_commit() -> Optional[str]:
    try:
        repo = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "numpy", "hydra", "wandb"):
        try:
            v[name] = __import__(name).__version__
        except Exception:
            pass
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
    return v


class RunRecord:
    """Writes one run's record. Only one process (rank 0) should hold one."""

    def __init__(self, run_dir: Path, base: Optional[dict] = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.summary: dict = {"status": "running", "reason": None}
        if base:
            self.summary.update(base)

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.dir / CONFIG, yaml_text)

    def update(self, **fields) -> None:
        self.summary.update(fields)

    def write(self, status: Optional[str] = None, reason: Optional[str] = None, **fields) -> dict:
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"unknown run status {status!r}")
            self.summary["status"] = status
            self.summary["reason"] = reason
        self.summary.update(fields)
        atomic_write_text(self.dir / SUMMARY, json.dumps(_jsonable(self.summary), indent=2, sort_keys=False) + "\n")
        return self.summary


class MetricsFile:
    """Appends one JSON object per line to metrics.jsonl; truncates lines past a resumed step."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        if resume_step > 0 and self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step == 0 and self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a", buffering=1)

    def _truncate_after(self, step: int) -> None:
        # A killed run may have logged steps past its last checkpoint; they are re-run, so drop them.
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("step", 0) <= step:
                keep.append(line)
        atomic_write_text(self.path, "".join(l + "\n" for l in keep))

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(_jsonable(row)) + "\n")

    def close(self) -> None:
        self._f.close()
