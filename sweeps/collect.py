"""Read run records (a sweep folder) or a CSV of (N, D, loss[, C]) into one :class:`Dataset`.

A sweep folder holds one sub-folder per run, each with ``summary.json`` (the contract with training)
and ``metrics.jsonl`` (the training curve).  Everything here is tolerant: a missing or malformed file,
a failed/diverged/skipped run or a missing loss is recorded in ``Dataset.excluded`` with its reason,
never raised.  Only problems with the *input itself* (no such path, no usable CSV column) raise
:class:`FitInputError`.
"""
from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from train.record import METRICS, SUMMARY, RunSummary, load_summary, read_metrics

PARAMS_CONVENTIONS = {
    "total": "N = every parameter of the built model (params_total), embeddings included",
    "non_embedding": "N = parameters without the embedding tables (params_non_embedding)",
}
FLOPS_CONVENTIONS = {
    "exact": "C = D x exact training FLOPs/token: all matmuls incl. the output head, plus causal "
    "attention, x3 for forward + backward",
    "no_attention": "C = D x training FLOPs/token of the matmuls only (attention score/value products left out)",
    "6n": "C = 6 N D, with N under the chosen parameter convention",
}
# Folders never searched for runs.
_SKIP_DIRS = {"ckpt", "checkpoints", ".hydra", "wandb", "__pycache__", ".git"}


class FitInputError(Exception):
    """The input cannot be fitted at all (missing path or column, too few points). Message is user-facing."""


@dataclass
class Dataset:
    """Points for the fitters plus everything the report needs to explain them."""

    kind: str  # "sweep" or "csv"
    source: str
    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray
    names: list
    budget: np.ndarray  # requested budget per point (NaN when unknown)
    fpt: np.ndarray  # FLOPs per token under the FLOP convention (C / D)
    params_convention: str
    params_description: str
    flops_convention: str
    flops_description: str
    runs: list = field(default_factory=list)  # one row per run seen (sweep folders), for the runs table
    excluded: list = field(default_factory=list)  # {"name", "reason"}
    curves: list = field(default_factory=list)  # {"name", "N", "fpt", "C": array, "loss": array}
    notes: list = field(default_factory=list)
    steps: Optional[np.ndarray] = None  # optimizer steps per point (sweep folders; None when unknown, as in CSVs)

    def __len__(self):
        return len(self.N)

    @classmethod
    def from_arrays(cls, N, D, C, loss, *, budget=None, names=None, source="arrays"):
        """A Dataset of plain arrays (C = FLOPs given per point; fpt = C / D)."""
        N, D, C, loss = (np.asarray(v, dtype=float) for v in (N, D, C, loss))
        budget = np.full(len(N), np.nan) if budget is None else np.asarray(budget, dtype=float)
        return cls(kind="arrays", source=source, N=N, D=D, C=C, loss=loss,
                   names=list(names) if names is not None else [f"p{i}" for i in range(len(N))],
                   budget=budget, fpt=C / D, params_convention="as given", params_description="N as given",
                   flops_convention="as given", flops_description="C as given")

    def subset(self, keep):
        """A copy holding only the points where ``keep`` is true (runs, exclusions and curves are shared)."""
        keep = np.asarray(keep, dtype=bool)
        cut = {k: getattr(self, k)[keep] for k in ("N", "D", "C", "loss", "budget", "fpt")}
        if self.steps is not None:
            cut["steps"] = self.steps[keep]
        names = [n for n, k in zip(self.names, keep) if k]
        return replace(self, names=names, **cut)

    def points(self):
        """The points used, as JSON-ready rows."""
        rows = []
        for i in range(len(self.N)):
            b = self.budget[i]
            rows.append({"name": self.names[i], "N": float(self.N[i]), "D": float(self.D[i]),
                         "C": float(self.C[i]), "loss": float(self.loss[i]),
                         "budget": None if not np.isfinite(b) else float(b)})
        return rows


# ----------------------------------------------------------------------------------------- helpers
def _num(x):
    """A finite float, or None."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def find_run_dirs(root):
    """Folders under ``root`` that hold a run record (summary.json or metrics.jsonl), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        if SUMMARY in filenames or METRICS in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []  # a run folder's sub-folders are its own (checkpoints, logs)
    return sorted(found)


def _flops_per_token(s: RunSummary, params, flops):
    """FLOPs per training token of one run under the chosen conventions (None when not derivable)."""
    conv = s.flops_conventions
    if flops == "exact":
        return _num(conv.get("exact")) or _num(s.flops_per_token)
    if flops == "no_attention":
        return _num(conv.get("no_attention"))
    # 6n
    if params == "total":
        v = _num(conv.get("6n_total")) or _num(s.flops_per_token_6n)
        n = _num(s.params_total)
    else:
        v = _num(conv.get("6n_non_embedding"))
        n = _num(s.params_non_embedding)
    return v or (6.0 * n if n else None)


def _curve(run_dir, name, N, fpt, fpt_exact):
    """Validation loss against cumulative compute (chosen convention) from metrics.jsonl, or None.

    Only evaluations on the whole validation set count (rows with ``val_full`` false used a fixed subset,
    which is noisier and not the same measurement); rows written before that field existed count as whole.
    """
    path = run_dir / METRICS
    if not path.is_file():
        return None
    cs, ls = [], []
    for row in read_metrics(path):
        loss = _num(row.get("val_loss"))
        if loss is None or loss <= 0 or row.get("val_full") is False:
            continue
        tokens = _num(row.get("tokens"))
        flops = _num(row.get("flops"))
        if tokens is not None and tokens > 0:
            c = tokens * fpt
        elif flops is not None and flops > 0 and fpt_exact:
            c = flops * fpt / fpt_exact
        else:
            continue
        cs.append(c)
        ls.append(loss)
    if len(cs) < 2:
        return None
    order = np.argsort(cs, kind="stable")
    return {"name": name, "N": N, "fpt": fpt, "C": np.asarray(cs)[order], "loss": np.asarray(ls)[order]}


# ------------------------------------------------------------------------------------ sweep folders
def collect(sweep_dir, params="total", flops="exact", loss_key="final_val_loss", sweep="auto"):
    """Read every run under ``sweep_dir`` into a :class:`Dataset` (completed runs with a loss are used).

    params: "total" | "non_embedding" -- which parameter count is N.
    flops:  "exact" | "no_attention" | "6n" -- which FLOPs per token make C = D x FLOPs/token.
    sweep:  "auto" fits only runs of the "chinchilla" sweep when there are any (shape and tokens
            sweeps answer other questions), "all" fits every run, or a sweep name.
    """
    root = Path(sweep_dir)
    if not root.exists():
        raise FitInputError(f"{root}: no such file or directory")
    if not root.is_dir():
        raise FitInputError(f"{root}: not a folder (give a sweep folder or a .csv file)")
    if params not in PARAMS_CONVENTIONS:
        raise FitInputError(f"unknown parameter convention {params!r} (choose from {', '.join(PARAMS_CONVENTIONS)})")
    if flops not in FLOPS_CONVENTIONS:
        raise FitInputError(f"unknown FLOP convention {flops!r} (choose from {', '.join(FLOPS_CONVENTIONS)})")

    if loss_key not in RunSummary.__dataclass_fields__ or not loss_key.endswith("loss"):
        losses = sorted(k for k in RunSummary.__dataclass_fields__ if k.endswith("val_loss"))
        raise FitInputError(f"--loss-key {loss_key!r} is not a loss field of summary.json (choose from {', '.join(losses)})")

    records = []
    for d in find_run_dirs(root):
        rel = str(d.relative_to(root)) if d != root else "."
        s, err = load_summary(d)
        records.append((d, rel, s, err))
    sweeps_seen = {s.sweep for _, _, s, _ in records if s}
    if sweep == "auto":
        wanted = "chinchilla" if "chinchilla" in sweeps_seen else None
    elif sweep in (None, "all"):
        wanted = None
    else:
        wanted = sweep
    # Runs of one sweep must share their data: the majority's fingerprint is the sweep's.
    hashes = Counter(s.data.get("hash") for _, _, s, _ in records
                     if s and s.status == "completed" and s.data.get("hash"))
    majority = hashes.most_common(1)[0][0] if hashes else None

    runs, excluded, curves = [], [], []
    cols = {k: [] for k in ("N", "D", "C", "loss", "budget", "fpt", "steps")}
    names = []
    for d, rel, s, err in records:
        row = {"name": rel, "dir": rel, "status": None, "reason": None, "sweep": None, "group": None,
               "role": None, "budget": None, "N": None, "D": None, "C": None, "loss": None, "tokens_per_s": None,
               "wall_s": None, "mfu": None, "width": None, "depth": None, "heads": None,
               "params_total": None, "params_non_embedding": None, "used": False, "excluded_reason": None}
        runs.append(row)

        def exclude(reason, row=row):
            row["excluded_reason"] = reason
            excluded.append({"name": row["name"], "reason": reason})

        if s is None:
            row["status"] = "unreadable"
            exclude(err)
            continue
        N = _num(s.params_total if params == "total" else s.params_non_embedding)
        D = _num(s.tokens)
        fpt = _flops_per_token(s, params, flops)
        fpt_exact = _num(s.flops_conventions.get("exact")) or _num(s.flops_per_token)
        loss = _num(getattr(s, loss_key))
        row.update(name=str(s.name or rel), status=s.status, reason=s.reason, sweep=s.sweep, group=s.group,
                   role=s.role, budget=_num(s.budget), N=N, D=D,
                   C=(D * fpt if D is not None and fpt else _num(s.compute)), loss=loss,
                   tokens_per_s=_num(s.tokens_per_s), wall_s=_num(s.wall_s), mfu=_num(s.mfu),
                   width=s.model.get("width"), depth=s.model.get("depth"), heads=s.model.get("heads"),
                   params_total=_num(s.params_total), params_non_embedding=_num(s.params_non_embedding))
        if s.status != "completed":
            exclude(f"status {s.status}" + (f": {s.reason}" if s.reason else ""))
            continue
        if s.role == "trunk":
            exclude("a cooldown trunk (constant learning rate, never annealed): its forks are the fit's points")
            continue
        if wanted is not None and s.sweep not in (wanted, None):
            exclude(f"sweep {s.sweep!r} not fitted (fitting the {wanted!r} runs)")
            continue
        if "above_uniform_loss" in s.flags:
            exclude("final loss above a uniform guess over the vocabulary: the run learned nothing")
            continue
        if majority and s.data.get("hash") and s.data["hash"] != majority:
            exclude(f"trained on other data than the sweep's majority (data hash {s.data['hash']} vs {majority})")
            continue
        if loss is None or loss <= 0:
            exclude(f"completed but {loss_key} is missing or not a positive number")
            continue
        if not N or N <= 0:
            exclude(f"params_{params} missing")
            continue
        if not D or D <= 0:
            exclude("tokens (D) missing")
            continue
        if not fpt or fpt <= 0:
            exclude(f"FLOPs per token missing for the {flops!r} convention")
            continue
        row["used"] = True
        names.append(row["name"])
        for k, v in (("N", N), ("D", D), ("C", D * fpt), ("loss", loss),
                     ("budget", row["budget"] if row["budget"] else np.nan), ("fpt", fpt),
                     ("steps", s.steps if s.steps else np.nan)):
            cols[k].append(v)
        c = _curve(d, row["name"], N, fpt, fpt_exact)
        if c is not None:
            curves.append(c)

    arr = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    notes = []
    if wanted:
        notes.append(f"fitted runs of sweep {wanted!r} (and runs without a sweep name)")
    return Dataset(kind="sweep", source=str(root.resolve()), N=arr["N"], D=arr["D"], C=arr["C"],
                   loss=arr["loss"], names=names, budget=arr["budget"], fpt=arr["fpt"],
                   params_convention=params, params_description=PARAMS_CONVENTIONS[params],
                   flops_convention=flops, flops_description=FLOPS_CONVENTIONS[flops],
                   runs=runs, excluded=excluded, curves=curves, notes=notes, steps=arr["steps"])


# -------------------------------------------------------------------------------------------- CSV
def load_csv(path, n_col="N", d_col="D", loss_col="loss", c_col="C", budget_col=None, where=()):
    """Read a CSV of runs.  D may be absent when C is given (then D = C / 6N), C may be absent (C = 6ND).

    where: ("COLUMN=VALUE", ...) keeps only the rows matching every one (e.g. one training set of a file that
    holds several).  Rows with a non-numeric or non-positive value are excluded with their line number.
    """
    path = Path(path)
    if not path.exists():
        raise FitInputError(f"{path}: no such file or directory")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FitInputError(f"{path}: cannot read as CSV ({e})") from None
    if not header:
        raise FitInputError(f"{path}: empty CSV (no header line)")
    have = set(header)
    shown = ", ".join(header)
    for flag, col in (("--n-col", n_col), ("--loss-col", loss_col)):
        if col not in have:
            raise FitInputError(f"{path}: no column {col!r} (columns: {shown}); map yours with {flag}")
    has_d, has_c = d_col in have, c_col in have
    if not has_d and not has_c:
        raise FitInputError(f"{path}: neither a D column {d_col!r} nor a C column {c_col!r} "
                            f"(columns: {shown}); map yours with --d-col / --c-col")
    if budget_col and budget_col not in have:
        raise FitInputError(f"{path}: no column {budget_col!r} (columns: {shown})")
    filters = []
    for w in where or ():
        col, sep, value = str(w).partition("=")
        if not sep or col not in have:
            raise FitInputError(f"--where {w!r}: expected COLUMN=VALUE with COLUMN one of: {shown}")
        filters.append((col, value))

    cols = {k: [] for k in ("N", "D", "C", "loss", "budget")}
    names, excluded = [], []
    kept = 0
    for i, r in enumerate(rows, start=2):  # line 1 is the header
        if any(r.get(col) != value for col, value in filters):
            continue
        kept += 1
        name = f"line{i}"
        N, L = _num(r.get(n_col)), _num(r.get(loss_col))
        D = _num(r.get(d_col)) if has_d else None
        C = _num(r.get(c_col)) if has_c else None
        if D is None and C is not None and N:
            D = C / (6.0 * N)
        if C is None and D is not None and N:
            C = 6.0 * N * D
        bad = [k for k, v in (("N", N), ("D", D), ("C", C), ("loss", L)) if v is None or v <= 0]
        if bad:
            excluded.append({"name": name, "reason": f"missing or non-positive {', '.join(bad)}"})
            continue
        names.append(name)
        cols["N"].append(N), cols["D"].append(D), cols["C"].append(C), cols["loss"].append(L)
        cols["budget"].append(_num(r.get(budget_col)) or np.nan if budget_col else np.nan)
    arr = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    if has_c:
        fdesc = f"C from column {c_col!r}" + ("" if has_d else f"; D = C / (6 N)")
    else:
        fdesc = "C = 6 N D (no C column)"
    return Dataset(kind="csv", source=str(path.resolve()), N=arr["N"], D=arr["D"], C=arr["C"],
                   loss=arr["loss"], names=names, budget=arr["budget"],
                   fpt=arr["C"] / arr["D"] if len(names) else arr["C"],
                   params_convention="as given", params_description=f"N from column {n_col!r}",
                   flops_convention="6n" if not has_c else "as given", flops_description=fdesc,
                   excluded=excluded,
                   notes=[f"rows where {' and '.join(f'{c}={v}' for c, v in filters)}: {kept} of {len(rows)}"]
                   if filters else [])
