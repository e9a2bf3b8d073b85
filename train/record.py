"""The run record: <run_dir>/{config.yaml, metrics.jsonl, summary.json}. The one writer and the one reader.

summary.json is the contract between training and everything downstream (collect, fit, launcher,
wandb report, benchmarks, tests). Its schema is `RunSummary`, a typed and versioned dataclass: the
trainer fills one through `RunRecord`, and every reader goes through `load_summary`, which checks the
schema version. Files are written atomically, so a reader sees the old version or the new one.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from train.io_utils import atomic_open, atomic_write_text, to_jsonable, write_json

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"

SCHEMA = "scalelab.run/2"
# Version 1 had no `schema` field and the same keys minus data, identity, role, fork, resumed_from and
# flags; it is read as version 2 with those left empty.
READABLE = ("scalelab.run/1", SCHEMA)
STATUSES = ("running", "completed", "diverged", "failed", "skipped")
ROLES = ("run", "trunk", "fork")  # trunk: constant-lr run that cooldown forks branch from; not a fit point


@dataclass
class RunSummary:
    """summary.json. Losses are in nats per token; compute in FLOPs under the exact convention."""

    schema: str = SCHEMA
    status: str = "running"
    reason: Optional[str] = None
    flags: List[str] = field(default_factory=list)  # e.g. "above_uniform_loss": fitted with care or not at all

    # what the run is
    name: Optional[str] = None
    sweep: Optional[str] = None
    group: Optional[str] = None
    role: str = "run"
    fork: Optional[Dict[str, Any]] = None  # forks: {"trunk": dir, "step": branch step, "cooldown_steps": n}
    identity: Dict[str, Any] = field(default_factory=dict)  # settings that determine the result (see run.py)
    seed: Optional[int] = None
    budget: Optional[float] = None  # the requested FLOP budget (sweeps), None for token-count runs
    model: Dict[str, Any] = field(default_factory=dict)  # width, depth, heads, vocab_size, seq_len, ...
    data: Dict[str, Any] = field(default_factory=dict)  # data fingerprint: source, tokenizer, vocab, tokens, hash

    # exact accounting (model/flops.py)
    params_total: Optional[int] = None
    params_non_embedding: Optional[int] = None
    params_embedding: Optional[int] = None
    flops_per_token: Optional[float] = None  # exact: all matmuls incl. the head, plus causal attention, x3
    flops_per_token_6n: Optional[float] = None  # 6 x total parameters
    flops_conventions: Dict[str, float] = field(default_factory=dict)

    # the plan (train/rules.py)
    tokens: Optional[int] = None
    compute: Optional[float] = None
    batch_tokens: Optional[int] = None
    steps: Optional[int] = None
    lr: Optional[float] = None
    beta2: Optional[float] = None
    warmup_steps: Optional[int] = None
    data_unique_tokens: Optional[int] = None

    # the outcome
    final_val_loss: Optional[float] = None
    best_val_loss: Optional[float] = None
    final_val_bpb: Optional[float] = None
    tokens_per_s: Optional[float] = None
    mfu: Optional[float] = None
    wall_s: Optional[float] = None
    steps_done: Optional[int] = None
    tokens_done: Optional[int] = None
    resumed_from: Optional[str] = None  # the checkpoint the last attempt continued from
    testtime: Optional[Dict[str, Any]] = None  # repeated sampling after training (train/testtime.py), if enabled

    # where and with what
    world_size: Optional[int] = None
    device: Optional[str] = None
    host: Optional[str] = None
    git_commit: Optional[str] = None
    versions: Dict[str, str] = field(default_factory=dict)
    wandb_run_id: Optional[str] = None

    @property
    def shape(self) -> Optional[str]:
        m = self.model
        return f"{m['width']}x{m['depth']}x{m['heads']}" if {"width", "depth", "heads"} <= set(m) else None

    def to_dict(self) -> dict:
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "RunSummary":
        """Raises ValueError for a record this code cannot read (unknown schema, wrong types)."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        schema = data.get("schema", "scalelab.run/1")
        if schema not in READABLE:
            raise ValueError(f"schema {schema!r} is not one this version reads ({', '.join(READABLE)})")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}  # keys of newer minor additions are ignored
        values["schema"] = SCHEMA
        s = cls(**values)
        if s.status not in STATUSES:
            raise ValueError(f"unknown status {s.status!r}")
        for name in ("model", "data", "identity", "flops_conventions", "versions"):
            if not isinstance(getattr(s, name), dict):
                raise ValueError(f"{name} is not an object")
        return s


def load_summary(run_dir) -> Tuple[Optional[RunSummary], Optional[str]]:
    """(summary, None), or (None, why) for a summary.json that is missing, malformed or of another schema."""
    path = Path(run_dir) / SUMMARY
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, f"no {SUMMARY} (run killed before it started, or still starting)"
    except OSError as e:
        return None, f"{SUMMARY} unreadable: {e}"
    try:
        return RunSummary.from_dict(json.loads(text)), None
    except (ValueError, TypeError) as e:
        return None, f"{SUMMARY} malformed ({e})"


class RunRecord:
    """Writes one run's record. Only one process (rank 0) holds one."""

    def __init__(self, run_dir: Path, summary: Optional[RunSummary] = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.summary = summary or RunSummary()

    def write_config(self, yaml_text: str, overrides=()) -> None:
        header = f"# overrides: {' '.join(overrides)}\n" if overrides else ""
        atomic_write_text(self.dir / CONFIG, header + yaml_text)

    def update(self, **fields) -> None:
        for key, value in fields.items():
            if not hasattr(self.summary, key):
                raise AttributeError(f"RunSummary has no field {key!r}")
            setattr(self.summary, key, value)

    def write(self, status: Optional[str] = None, reason: Optional[str] = None, **fields) -> RunSummary:
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"unknown run status {status!r}")
            self.summary.status, self.summary.reason = status, reason
        self.update(**fields)
        write_json(self.dir / SUMMARY, self.summary.to_dict())
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
        for row in read_metrics(self.path):
            if row.get("step", 0) <= step:
                keep.append(json.dumps(row))
        with atomic_open(self.path) as f:
            f.write("".join(line + "\n" for line in keep))

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(to_jsonable(row)) + "\n")

    def close(self) -> None:
        self._f.close()


def read_metrics(path) -> List[dict]:
    """The JSON objects of a metrics.jsonl, skipping blank, truncated or malformed lines."""
    rows = []
    try:
        with open(path, "r", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    rows.append(obj)
    except OSError:
        return []
    return rows
