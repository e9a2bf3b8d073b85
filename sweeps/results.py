"""The fit result (fit.json): typed, versioned dataclasses, and the one loader.

Written by sweeps.fit, read by the CLI table, the report, the plots, wandb and bench/ through
:func:`load_fit`.  Conventions that hold for every approach:

- ``status``: "ok" (an estimate with an interval that has a stated method), "indicative" (an estimate whose
  interval cannot be backed, with the reason), "not_identified" (the data cannot pin the law or the frontier
  down: the numbers are kept for inspection, never reported as a result) or "skipped" (with the reason);
- intervals: ``ci: {name: [lo, hi]}`` at ``interval.level``; how they were made, how many replicates were
  valid and how long they took is in ``interval`` (an :class:`Interval`);
- predictions beyond one decade of the fitted compute carry ``extrapolation`` (a sentence).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from train.io_utils import to_jsonable, write_json

SCHEMA = "scalelab.fit/3"  # 3: approach 3 may fit a subset of the points; each point row says if ("approach3")
FIT_JSON = "fit.json"
STATUSES = ("ok", "indicative", "not_identified", "skipped")
# The whole fit: "ok" when approach 2 or 3 is ok, else "indicative" when one is indicative, else
# "not_identified" when one was fitted but is not identified, else "failed" (nothing could be fitted).
FIT_STATUSES = ("ok", "indicative", "not_identified", "failed")
APPROACHES = ("approach1", "approach2", "approach3")


def _build(cls, data):
    """cls(**data) keeping only its fields (newer minor additions are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Interval:
    """How an approach's intervals were made."""

    method: str
    level: float = 0.95
    replicates: int = 0  # 0 for an analytic interval
    valid: int = 0
    seconds: Optional[float] = None
    seed: Optional[int] = None
    withheld: Optional[str] = None  # why no interval is given
    coverage: Optional[str] = None  # what simulation measured for this method

    @property
    def valid_fraction(self) -> Optional[float]:
        return self.valid / self.replicates if self.replicates else None

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["valid_fraction"] = self.valid_fraction
        return d


@dataclass
class Prediction:
    """The frontier at one compute budget."""

    C: float
    N_opt: float
    D_opt: float
    tokens_per_param: float
    loss: Optional[float] = None
    ci: Dict[str, List[float]] = field(default_factory=dict)  # N_opt, D_opt, tokens_per_param, loss
    extrapolation: Optional[str] = None


@dataclass
class ApproachResult:
    """What every approach reports."""

    status: str = "skipped"
    reason: Optional[str] = None  # why skipped, indicative or not identified
    method: str = ""
    a: Optional[float] = None  # N_opt ~ C^a
    b: Optional[float] = None  # D_opt ~ C^b
    ci: Dict[str, List[float]] = field(default_factory=dict)
    interval: Optional[Interval] = None
    warnings: List[str] = field(default_factory=list)
    predictions: List[Prediction] = field(default_factory=list)

    @property
    def fitted(self) -> bool:
        return self.a is not None and self.status != "skipped"

    @classmethod
    def skipped(cls, reason, **kw):
        return cls(status="skipped", reason=reason, **kw)

    def to_dict(self):
        d = to_jsonable(dataclasses.asdict(self))
        if self.interval is not None:
            d["interval"] = to_jsonable(self.interval.to_dict())
        return d

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        if data.get("interval"):
            data["interval"] = _build(Interval, data["interval"])
        data["predictions"] = [_build(Prediction, p) for p in data.get("predictions") or []]
        return _build(cls, data)


@dataclass
class Approach1Result(ApproachResult):
    """The lower envelope of loss against compute."""

    points_used: str = "annealed"  # "annealed" (each run's final loss) or "curves" (every full evaluation)
    n_runs: int = 0
    n_points: int = 0
    N_coef: Optional[float] = None
    D_coef: Optional[float] = None
    envelope: List[Dict[str, Any]] = field(default_factory=list)  # {"C", "loss", "run", "N", "D", "used"}


@dataclass
class Budget:
    """One IsoFLOP budget of approach 2."""

    C: float
    n_points: int
    points: List[str]
    N: List[float]
    loss: List[float]
    budget: Optional[float] = None  # the requested budget (sweeps)
    compute_spread: Optional[List[float]] = None  # [min, max] of the runs' C over the budget's C
    excluded: Optional[str] = None
    N_opt: Optional[float] = None
    N_opt_sd_log: Optional[float] = None  # sd of ln N_opt from the parabola (delta method)
    D_opt: Optional[float] = None
    loss_opt: Optional[float] = None
    tokens_per_param: Optional[float] = None
    parabola_lnN: Optional[List[float]] = None
    fitted: Optional[List[str]] = None
    fitted_N_range: Optional[List[float]] = None


@dataclass
class Approach2Result(ApproachResult):
    """IsoFLOP parabolas and the power laws through their vertices."""

    window_decades: Optional[float] = None
    grouping: str = ""
    n_points: int = 0
    n_budgets: int = 0
    n_budgets_used: int = 0
    N_coef: Optional[float] = None
    D_coef: Optional[float] = None
    budgets: List[Budget] = field(default_factory=list)
    lines: Dict[str, Any] = field(default_factory=dict)  # {"N": Line.to_dict(), "D": ...}
    window_sensitivity: List[Dict[str, Any]] = field(default_factory=list)  # {"window", "a", "b", "budgets_used"}

    @classmethod
    def from_dict(cls, data):
        obj = super().from_dict(data)
        obj.budgets = [_build(Budget, b) for b in data.get("budgets") or []]
        return obj


@dataclass
class Approach3Result(ApproachResult):
    """The parametric law L(N, D) = E + A/N^alpha + B/D^beta."""

    law_form: str = "free"
    n_points: int = 0
    E: Optional[float] = None
    A: Optional[float] = None
    B: Optional[float] = None
    alpha: Optional[float] = None
    beta: Optional[float] = None
    a_closed_form: Optional[float] = None  # beta/(alpha+beta): N_opt's exponent under C = k N D, one k
    objective: Optional[float] = None
    huber_delta: Optional[float] = None
    grid: Optional[str] = None
    grid_starts: int = 0
    best_start: Dict[str, float] = field(default_factory=dict)
    flops_relation: Dict[str, Any] = field(default_factory=dict)
    residuals_log: List[float] = field(default_factory=list)
    rmse_log: Optional[float] = None
    noise: Dict[str, Any] = field(default_factory=dict)  # the two-level noise model the intervals draw
    se: Dict[str, Optional[float]] = field(default_factory=dict)
    samples: Dict[str, List[float]] = field(default_factory=dict)  # bootstrap replicates (for the plot bands)
    fitted_C_range: Optional[List[float]] = None
    timing_s: Dict[str, float] = field(default_factory=dict)

    @property
    def law(self) -> Optional[dict]:
        if self.E is None:
            return None
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}


@dataclass
class HoldoutPoint:
    name: str
    N: float
    D: float
    C: float
    loss: float
    predicted: float
    rel_error: float
    interval: Optional[List[float]] = None
    inside: Optional[bool] = None


@dataclass
class Holdout:
    """Fit on the points a rule leaves, predict the ones it holds out."""

    rule: str
    approach: str = "approach 3"
    status: str = "ok"  # "ok" or "skipped" (with reason)
    reason: Optional[str] = None
    law_form: Optional[str] = None
    law_choice: Dict[str, Any] = field(default_factory=dict)  # how the law form was chosen
    n_train: int = 0
    n_heldout: int = 0
    points: List[HoldoutPoint] = field(default_factory=list)
    max_abs_rel_error: Optional[float] = None
    mean_abs_rel_error: Optional[float] = None
    coverage: Optional[float] = None  # share of held-out losses inside their 95% prediction interval
    interval: Optional[Interval] = None
    extrapolation: Optional[str] = None
    budgets: List[Dict[str, Any]] = field(default_factory=list)  # held-out IsoFLOP budgets: optimum vs prediction
    fit: Optional[Approach3Result] = None  # the law fitted on the training points

    def to_dict(self):
        d = to_jsonable(dataclasses.asdict(self))
        if self.interval is not None:
            d["interval"] = to_jsonable(self.interval.to_dict())
        if self.fit is not None:
            d["fit"] = self.fit.to_dict()
        return d

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        data["points"] = [_build(HoldoutPoint, p) for p in data.get("points") or []]
        if data.get("interval"):
            data["interval"] = _build(Interval, data["interval"])
        if data.get("fit"):
            data["fit"] = Approach3Result.from_dict(data["fit"])
        return _build(cls, data)


_APPROACH_CLASSES = {"approach1": Approach1Result, "approach2": Approach2Result, "approach3": Approach3Result}


@dataclass
class FitResult:
    """fit.json."""

    schema: str = SCHEMA
    created: str = ""
    input: str = ""
    input_kind: str = ""
    params_convention: str = ""
    params_convention_description: str = ""
    flops_convention: str = ""
    flops_convention_description: str = ""
    notes: List[str] = field(default_factory=list)
    n_points: int = 0
    n_excluded: int = 0
    settings: Dict[str, Any] = field(default_factory=dict)
    collect_options: Dict[str, Any] = field(default_factory=dict)
    fitted_C_range: Optional[List[float]] = None
    approach1: Approach1Result = field(default_factory=lambda: Approach1Result.skipped("not run"))
    approach2: Approach2Result = field(default_factory=lambda: Approach2Result.skipped("not run"))
    approach3: Approach3Result = field(default_factory=lambda: Approach3Result.skipped("not run"))
    holdout: Optional[Holdout] = None
    status: str = "ok"  # see FIT_STATUSES
    problem: Optional[str] = None
    points: List[Dict[str, Any]] = field(default_factory=list)
    excluded: List[Dict[str, Any]] = field(default_factory=list)
    runs: List[Dict[str, Any]] = field(default_factory=list)
    versions: Dict[str, str] = field(default_factory=dict)
    wall_s: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def approaches(self) -> List[Tuple[str, ApproachResult]]:
        return [(k, getattr(self, k)) for k in APPROACHES]

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in APPROACHES:
            d[k] = getattr(self, k).to_dict()
        d["holdout"] = self.holdout.to_dict() if self.holdout else None
        d["ok"] = self.ok
        return to_jsonable(d)

    @classmethod
    def from_dict(cls, data: dict) -> "FitResult":
        """Raises ValueError for a fit.json this code cannot read."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r} is not {SCHEMA!r} (refit with this version: "
                             "python -m sweeps.fit)")
        data = dict(data)
        for k, c in _APPROACH_CLASSES.items():
            data[k] = c.from_dict(data.get(k) or {"status": "skipped", "reason": "not in fit.json"})
        data["holdout"] = Holdout.from_dict(data["holdout"]) if data.get("holdout") else None
        try:
            return _build(cls, data)
        except TypeError as e:
            raise ValueError(str(e)) from None

    def write(self, folder) -> Path:
        return write_json(Path(folder) / FIT_JSON, self.to_dict(), indent=1)


# ------------------------------------------------------------------ presentation (table, report, plots)
def fmt(v, spec=".4g"):
    """A number for a table ('-' for None)."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def fmt_ci(ci, spec=".3f"):
    """'[lo, hi]', in .3g when the values are large or tiny for spec; '-' when there is none."""
    if not ci or ci[0] is None or ci[1] is None:
        return "-"
    big = max(abs(ci[0]), abs(ci[1]))
    if big >= 1e4 or (0 < big < 1e-2):
        spec = ".3g"
    return f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def load_fit(path) -> Tuple[Optional[FitResult], Optional[str]]:
    """(fit, None) from a fit.json or a folder holding one; (None, why) when missing, malformed or of
    another schema."""
    p = Path(path)
    if p.is_dir():
        p = p / FIT_JSON
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None, f"{p}: not found"
    except OSError as e:
        return None, f"{p}: unreadable ({e})"
    try:
        return FitResult.from_dict(json.loads(text)), None
    except (ValueError, TypeError) as e:
        return None, f"{p}: {e}"
