"""Timing and result-file helpers shared by the benchmarks in bench/.

`time_cuda` times with CUDA events (median over repetitions, warm-up excluded) and rotates through
several input sets so one set is not left hot in L2 between repetitions; `time_cpu` is the same
with time.perf_counter, for smoke runs. `device_info` and `write_results` give every result file
the same header (device, versions, date).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from train.io_utils import versions, write_json


def _call(fn: Callable, inputs):
    if isinstance(inputs, dict):
        return fn(**inputs)
    if isinstance(inputs, (tuple, list)):
        return fn(*inputs)
    return fn(inputs)


def time_cuda(fn: Callable, inputs_list: Sequence, warmup: int = 10, reps: int = 50) -> float:
    """Median milliseconds of fn(*inputs) over `reps` calls, cycling through `inputs_list`.

    Each repetition is bracketed by its own pair of CUDA events on the current stream; the
    warm-up calls (compilation, autotuning, allocator growth) are not timed.
    """
    if not inputs_list:
        raise ValueError("time_cuda needs at least one input set")
    n = len(inputs_list)
    for i in range(warmup):
        _call(fn, inputs_list[i % n])
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        inputs = inputs_list[i % n]
        starts[i].record()
        _call(fn, inputs)
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def time_cpu(fn: Callable, inputs_list: Sequence, warmup: int = 1, reps: int = 5) -> float:
    """Median milliseconds of fn(*inputs) with time.perf_counter (CPU / smoke runs)."""
    import time

    if not inputs_list:
        raise ValueError("time_cpu needs at least one input set")
    n = len(inputs_list)
    for i in range(warmup):
        _call(fn, inputs_list[i % n])
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        _call(fn, inputs_list[i % n])
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_memory_mb(fn: Callable, inputs) -> float | None:
    """Extra CUDA memory (MiB) allocated at the peak of one fn(*inputs) call, above what was
    allocated before it (torch.cuda.max_memory_allocated delta); None off CUDA."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = _call(fn, inputs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return (peak - before) / 2**20


def device_info(device: str | None = None) -> dict[str, Any]:
    """{"device", "torch", "triton", ..., "date"} for result files (versions from train.io_utils)."""
    if device is None:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    v = versions()
    return {"device": device, "torch": v.get("torch"), "triton": v.get("triton"), "versions": v,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (for result file names)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def command_line(script: str | None = None, argv: Sequence[str] | None = None) -> str:
    """The command that produced a result file, e.g. 'python bench/kernels.py --reps 100'."""
    script = script if script is not None else (sys.argv[0] if sys.argv else "")
    try:
        script = os.path.relpath(script)
    except ValueError:
        pass
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", script] + args)


def write_results(path, payload: dict) -> Path:
    """Write `payload` as indented JSON to `path` (atomically, parent folders created); returns the path."""
    return write_json(path, payload)


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; `columns` is [(key, header, format spec)]; None prints as '-'."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            v = r.get(key)
            line.append("-" if v is None else (format(v, fmt) if fmt else str(v)))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    numeric = [bool(fmt) for _, _, fmt in columns]
    out = []
    for j, c in enumerate(cells):
        out.append("  ".join(
            (s.rjust(w) if numeric[i] else s.ljust(w)) for i, (s, w) in enumerate(zip(c, widths))
        ).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
