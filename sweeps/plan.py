"""The one sweep planner: from a sweep's preset to the job list, with its checks, before any training.

    python -m sweeps.plan chinchilla --preset cpu [--json] [overrides]     # what a sweep would run

chinchilla (IsoFLOP): for each compute budget C, a ladder of `points` shapes from one shape family,
  spaced `step_decades` in N and centred on a predicted N_opt(C) (the prior: `tokens_per_param` tokens
  per parameter, D = 20 N by default, or an earlier sweep's fit.json). With `sweep.schedule=forks` (the
  default; Hägele et al. 2024) each shape trains once, as a trunk at constant lr after warmup up to the
  largest branch point any budget needs, and each budget is a cooldown fork of it: branched from the
  trunk's checkpoint at that budget's decay start, it decays the lr to 0 over the last `cooldown` of
  the budget's steps (1 - sqrt shape). A fork equals a straight WSD run of that length. With
  `sweep.schedule=cosine` every (budget, shape) is one run with its own cosine schedule.
shape: at a fixed total parameter count, one shape per depth in `depths` (Kaplan's aspect-ratio check).
tokens: each of `sizes` (family shapes) at each of `multiples` tokens per parameter.
testtime: each of `sizes` (family shapes) trained at `tokens_per_param` tokens per parameter, then sampled
  on the task corpus's held-out problems (testtime.enabled=true for every job; sweeps/testtime). Not an
  IsoFLOP ladder on purpose: the question is whether a smaller model drawing more samples beats a bigger
  one at equal *total* (training + inference) compute, so training compute must grow with N; at a fixed
  D/N it grows as N^2 (C = D x FLOPs/token), as when model and data are scaled together. On an IsoFLOP
  ladder every model would cost the same to train, and only inference cost would tell them apart.

Hyperparameters follow train/rules.py for each shape and are passed to every job of that shape
explicitly, so a trunk and its forks cannot disagree. Every job is checked before anything trains
(enough optimizer steps, 1..max_tokens_per_param tokens per parameter, no repeated data, evaluation
at most 5% of the training FLOPs); a failed check refuses the sweep with the job and the fix.
N is the total parameter count (embeddings included), as in the fits' default convention.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

CONF = Path(__file__).resolve().parents[1] / "conf"
EVAL_SHARE_MAX = 0.05  # planned evaluation FLOPs at most this share of the training FLOPs


class PlanError(Exception):
    """The preset cannot be planned as asked. The message names the job or key and the fix."""


# ----------------------------------------------------------------------------------- presets


def detect_preset() -> str:
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def preset_name(sweep_cfg) -> str:
    """The preset a sweep config selects (`auto`: gpu when CUDA is visible, else cpu)."""
    name = sweep_cfg.get("preset", "auto")
    presets = sweep_cfg.get("presets") or {}
    if name == "auto":
        name = detect_preset()
    if name not in presets:
        raise PlanError(f"sweep.preset={name!r} is not a preset of sweep {sweep_cfg.get('name')!r}; "
                        f"valid: auto, {', '.join(presets)}")
    return name


def fmt_budget(value) -> str:
    """1e13 -> '1e13', 3.2e14 -> '3.2e14' (a stable, readable folder name)."""
    value = float(value)
    exponent = int(math.floor(math.log10(value)))
    mantissa = round(value / 10 ** exponent, 3)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:g}e{exponent}"


def register_resolvers() -> None:
    """${sweep_preset:} names the chosen preset (sweep folder names); registered by the Hydra plugin."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("sweep_preset", lambda *, _root_: preset_name(_root_.sweep), replace=True)


# ------------------------------------------------------------------------------- shape family


@dataclass(frozen=True)
class Shape:
    width: int
    depth: int
    heads: int
    params_total: int
    params_non_embedding: int
    flops_per_token: float  # exact convention, training

    @property
    def name(self) -> str:
        return f"{self.width}x{self.depth}x{self.heads}"


@functools.lru_cache(maxsize=None)
def make_shape(width: int, depth: int, heads: int, base) -> Shape:
    """The shape with its exact counts (model/flops.py) for a base GPTConfig (vocab, seq_len, mlp, ...)."""
    from model.flops import flops_per_token, param_counts

    cfg = base.replace(width=width, depth=depth, heads=heads)
    counts = param_counts(cfg)
    return Shape(width, depth, heads, counts.total, counts.non_embedding, flops_per_token(cfg).exact)


def heads_for(width: int, head_dim: int) -> int:
    """Heads giving a head dim near `head_dim` that divides the width evenly into even head dims."""
    heads = max(1, round(width / head_dim))
    while heads > 1 and (width % heads or (width // heads) % 2):
        heads -= 1
    return heads


def family_shape(n_target: float, family, base) -> Shape:
    """The family's shape with total parameters closest to n_target: the depth whose shape at the family's
    aspect ratio (width / depth) comes closest to n_target, then the width on the grid that does."""
    step = family.width_step

    def at(width: int, depth: int) -> Shape:
        return make_shape(width, depth, heads_for(width, family.head_dim), base)

    def miss(s: Shape) -> float:
        return abs(math.log(s.params_total / n_target))

    depth = min(range(family.min_depth, family.max_depth + 1),
                key=lambda d: miss(at(max(step, round(family.aspect * d / step) * step), d)))
    lo, hi = step, step * 4096
    while hi - lo > step:  # bisect the width that reaches n_target at this depth
        mid = (lo + hi) // 2 // step * step
        if at(mid, depth).params_total < n_target:
            lo = mid
        else:
            hi = mid
    return min((at(lo, depth), at(hi, depth)), key=miss)


def ladder(center: float, points: int, step_decades: float, family, base) -> List[Shape]:
    """`points` family shapes around `center` on a fixed grid of N (10^(k x step_decades)), so that
    neighbouring budgets share shapes (one trunk serves them all); strictly increasing in N (fewer
    shapes where the width grid is too coarse to tell neighbours apart)."""
    k0 = math.log10(center) / step_decades - (points - 1) / 2
    first = round(k0)
    shapes: List[Shape] = []
    for k in range(first, first + points):
        s = family_shape(10 ** (k * step_decades), family, base)
        if not shapes or s.params_total > shapes[-1].params_total:
            shapes.append(s)
    return shapes


def n_opt_prior(budget: float, tokens_per_param: float, family, base) -> float:
    """N with budget = D x FLOPs/token(N) and D = tokens_per_param x N, along the family (bisection)."""
    lo, hi = 1e3, 1e13
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        s = family_shape(mid, family, base)
        if tokens_per_param * s.params_total * s.flops_per_token < budget:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def n_opt_from_fit(path: str):
    """N_opt(C) from an earlier sweep's fit.json (approach 2's law N_coef C^a), when that law is `ok`."""
    from sweeps.results import load_fit

    fit, why = load_fit(path)
    if fit is None:
        raise PlanError(f"prior={path!r}: {why}; give the fit.json of an earlier sweep, or null for the "
                        "20-tokens-per-parameter prior")
    a2 = fit.approach2
    if a2.status != "ok" or a2.N_coef is None or a2.a is None:
        raise PlanError(f"prior={path!r}: its approach-2 law is {a2.status!r}"
                        f"{' (' + a2.reason + ')' if a2.reason else ''}, not one to plan from; "
                        "use null for the 20-tokens-per-parameter prior")
    coef, a = float(a2.N_coef), float(a2.a)
    return lambda c: coef * c ** a


# ------------------------------------------------------------------------------------- jobs


@dataclass
class Job:
    name: str
    role: str  # run | trunk | fork
    shape: Shape
    budget: Optional[float]
    tokens: int
    steps: int
    batch_tokens: int
    lr: float
    warmup_steps: int
    beta2: float
    flops_train: float  # the compute the run stands for (a fork: its whole schedule, trunk part included)
    flops_new: float  # the compute this job spends (a fork: its cooldown only)
    flops_eval: float
    min_steps: int
    trunk: Optional[str] = None  # forks: the trunk's job name
    branch_step: Optional[int] = None  # forks: the trunk step they start from
    keep_steps: List[int] = field(default_factory=list)  # trunks: checkpoints the forks need
    overrides: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "budget": self.budget, "shape": self.shape.name,
                "params_total": self.shape.params_total, "params_non_embedding": self.shape.params_non_embedding,
                "tokens": self.tokens, "tokens_per_param": self.tokens / self.shape.params_total,
                "steps": self.steps, "min_steps": self.min_steps, "lr": self.lr, "batch_tokens": self.batch_tokens,
                "warmup_steps": self.warmup_steps, "beta2": self.beta2, "flops_train": self.flops_train,
                "flops_new": self.flops_new, "flops_eval": self.flops_eval, "trunk": self.trunk,
                "branch_step": self.branch_step, "overrides": self.overrides}


@dataclass
class SweepPlan:
    sweep: str
    preset: str
    schedule: str
    jobs: List[Job]
    checks: List[dict]  # {"check", "ok", "detail"}
    problems: List[str]  # job-level failures: the sweep is refused while any remains
    data: dict  # vocab, unique train tokens, whether the vocab is exact

    def as_dict(self) -> dict:
        return {"sweep": self.sweep, "preset": self.preset, "schedule": self.schedule,
                "jobs": [j.as_dict() for j in self.jobs], "checks": self.checks, "problems": self.problems,
                "data": self.data,
                "totals": {"jobs": len(self.jobs), "flops_new": sum(j.flops_new for j in self.jobs),
                           "flops_eval": sum(j.flops_eval for j in self.jobs)}}


def _hyper(run, shape: Shape, tokens: float, world_size: int):
    """train/rules.py's plan for this shape at this length (lr, batch, warmup, beta2 as a job computes them)."""
    from train.rules import plan_run

    t = dataclasses.replace(run.train, tokens=int(tokens), budget=None, tokens_per_param=None)
    return plan_run(run.optim, t, run.model["seq_len"], world_size, shape.params_non_embedding,
                    shape.flops_per_token)


def _eval_flops(shape: Shape, evals: int, val_tokens: int, eval_tokens: Optional[int]) -> float:
    """Forward FLOPs of `evals` evaluations: the last on the full validation set, the others on the subset."""
    sub = val_tokens if eval_tokens is None else min(eval_tokens, val_tokens)
    return shape.flops_per_token / 3 * (val_tokens + max(0, evals - 1) * sub)


def _common(job_name: str, role: str, shape: Shape, hp, preset, evals: int) -> List[str]:
    ov = [f"sweep.job={job_name}", f"sweep.role={role}", f"model.shape={shape.name}",
          f"optim.lr={hp.lr!r}", f"train.batch_tokens={hp.batch_tokens}", f"optim.warmup={hp.warmup_steps}",
          f"optim.beta2={hp.beta2!r}", f"train.eval_points={evals}"]
    if preset.eval_tokens is not None:
        ov.append(f"train.eval_tokens={preset.eval_tokens}")
    return ov


def plan_sweep(run, sweep_name: str, preset_key: str, sweep_dir, vocab_size: int, unique_tokens: int,
               vocab_exact: bool = True, world_size: int = 1) -> SweepPlan:
    """The job list of one sweep preset. `run`: the validated RunConfig every job starts from (the preset's
    shared overrides and the command line applied); the data numbers come from the prepared corpus."""
    from train.optim import decay_start

    preset = run.sweep.presets[preset_key]
    schedule = run.sweep.schedule
    _check_preset(sweep_name, preset_key, preset)
    base = run.gpt_config(vocab_size)
    fam = preset.family
    sweep_dir = Path(sweep_dir).resolve()
    jobs: List[Job] = []

    def straight(name, shape, budget, tokens):
        hp = _hyper(run, shape, tokens, world_size)
        evals = preset.eval_points
        ov = _common(name, "run", shape, hp, preset, evals) + (
            [f"train.budget={budget!r}", "train.tokens=null"] if budget else [f"train.tokens={hp.tokens}"])
        ov += [f"optim.schedule={run.optim.schedule}"]
        flops = hp.tokens * shape.flops_per_token
        return Job(name, "run", shape, budget, hp.tokens, hp.steps, hp.batch_tokens, hp.lr, hp.warmup_steps,
                   hp.beta2, flops, flops, _eval_flops(shape, evals, run.data.val_tokens, preset.eval_tokens),
                   preset.min_steps, overrides=ov)

    if sweep_name == "chinchilla":
        prior = n_opt_from_fit(preset.prior) if preset.prior else (
            lambda c: n_opt_prior(c, preset.tokens_per_param, fam, base))
        grid = {}  # budget -> shapes
        for budget in sorted(preset.budgets):
            grid[budget] = ladder(prior(budget), preset.points, preset.step_decades, fam, base)
        if schedule == "cosine":
            for budget, shapes in grid.items():
                for s in shapes:
                    jobs.append(straight(f"C{fmt_budget(budget)}_{s.name}", s, budget, budget / s.flops_per_token))
        else:
            jobs = _forks(run, preset, grid, sweep_dir, world_size, decay_start)
    elif sweep_name == "shape":
        if not preset.target_params or not preset.depths:
            raise PlanError(f"sweep.presets.{preset_key}: the shape sweep needs target_params and depths")
        for depth in preset.depths:
            s = _shape_at_depth(preset.target_params, depth, fam, base)
            tokens = preset.tokens_per_param * s.params_total
            jobs.append(straight(s.name, s, None, tokens))
    elif sweep_name == "tokens":
        if not preset.sizes or not preset.multiples:
            raise PlanError(f"sweep.presets.{preset_key}: the tokens sweep needs sizes and multiples")
        for n in preset.sizes:
            s = family_shape(n, fam, base)
            for m in preset.multiples:
                jobs.append(straight(f"{s.name}_x{m:g}", s, None, m * s.params_total))
    elif sweep_name == "testtime":
        if not preset.sizes:
            raise PlanError(f"sweep.presets.{preset_key}.sizes: the testtime sweep needs a ladder of model sizes")
        shapes = [family_shape(n, fam, base) for n in sorted(preset.sizes)]
        for s, n in zip(shapes, sorted(preset.sizes)):
            if shapes.count(s) > 1:
                raise PlanError(f"sweep.presets.{preset_key}.sizes: {n:g} and another size give the same shape "
                                f"{s.name}; spread the sizes further apart (or use a finer family.width_step)")
            job = straight(s.name, s, None, preset.tokens_per_param * s.params_total)
            job.overrides.append("testtime.enabled=true")
            jobs.append(job)
        jobs.reverse()  # the largest first: it decides the wall time
    else:
        raise PlanError(f"no planner for sweep {sweep_name!r}")

    checks, problems = _checks(jobs, preset, preset_key, unique_tokens, sweep_name, schedule)
    return SweepPlan(sweep=sweep_name, preset=preset_key, schedule=schedule, jobs=jobs, checks=checks,
                     problems=problems, data={"vocab_size": vocab_size, "vocab_exact": vocab_exact,
                                              "unique_train_tokens": unique_tokens})


def _forks(run, preset, grid, sweep_dir: Path, world_size: int, decay_start) -> List[Job]:
    """One trunk per shape, one cooldown fork per (budget, shape); the trunk's hyperparameters for all."""
    by_shape = {}
    for budget, shapes in grid.items():
        for s in shapes:
            by_shape.setdefault(s, []).append(budget)
    trunks, forks = [], []
    for s, budgets in by_shape.items():
        hp = _hyper(run, s, max(budgets) / s.flops_per_token, world_size)  # rules at the longest use
        steps = {b: max(1, int(round(b / s.flops_per_token / hp.batch_tokens))) for b in budgets}
        warmup = min(hp.warmup_steps, min(steps.values()) // 4)
        hp = dataclasses.replace(hp, warmup_steps=warmup)
        branch = {b: decay_start(n, preset.cooldown) for b, n in steps.items()}
        trunk_steps = max(branch.values())
        tname = f"trunk_{s.name}"
        keep = sorted(set(branch.values()))
        t_ov = _common(tname, "trunk", s, hp, preset, preset.eval_points) + [
            f"train.tokens={trunk_steps * hp.batch_tokens}", "train.budget=null", "optim.schedule=constant",
            f"train.keep_ckpt_steps=[{','.join(map(str, keep))}]"]
        if preset.eval_tokens is None:  # a trunk's evaluations are for watching it: use a tenth of the set
            t_ov.append(f"train.eval_tokens={max(run.model['seq_len'], run.data.val_tokens // 10)}")
        trunk_tokens = trunk_steps * hp.batch_tokens
        t_eval = _eval_flops(s, preset.eval_points, run.data.val_tokens,
                             preset.eval_tokens or max(run.model["seq_len"], run.data.val_tokens // 10))
        trunks.append(Job(tname, "trunk", s, None, trunk_tokens, trunk_steps, hp.batch_tokens, hp.lr, warmup,
                          hp.beta2, trunk_tokens * s.flops_per_token, trunk_tokens * s.flops_per_token, t_eval,
                          preset.min_steps, keep_steps=keep, overrides=t_ov))
        for b in budgets:
            name = f"C{fmt_budget(b)}_{s.name}"
            ov = _common(name, "fork", s, hp, preset, 1) + [
                f"train.budget={b!r}", "train.tokens=null", "optim.schedule=wsd",
                f"optim.wsd_decay={preset.cooldown!r}", "optim.decay_shape=sqrt", "optim.min_lr_ratio=0.0",
                f"train.init_from={sweep_dir / tname}", f"train.init_step={branch[b]}"]
            tokens = steps[b] * hp.batch_tokens
            forks.append(Job(name, "fork", s, b, tokens, steps[b], hp.batch_tokens, hp.lr, warmup, hp.beta2,
                             tokens * s.flops_per_token, (steps[b] - branch[b]) * hp.batch_tokens * s.flops_per_token,
                             _eval_flops(s, 1, run.data.val_tokens, None), preset.min_steps, trunk=tname,
                             branch_step=branch[b], overrides=ov))
    # longest trunks first (they decide the wall time), then forks in the order their trunks reach them
    trunks.sort(key=lambda j: -j.flops_new)
    forks.sort(key=lambda j: (j.branch_step, j.name))
    return trunks + forks


def _shape_at_depth(n_target: float, depth: int, fam, base) -> Shape:
    """The width (on the family's grid) at this depth whose total parameters are closest to n_target."""
    best = None
    width = fam.width_step
    while width <= fam.width_step * 4096:
        s = make_shape(width, depth, heads_for(width, fam.head_dim), base)
        miss = abs(math.log(s.params_total / n_target))
        if best is None or miss < best[0]:
            best = (miss, s)
        if s.params_total > n_target:
            break
        width += fam.width_step
    return best[1]


def _check_preset(sweep: str, key: str, p) -> None:
    where = f"sweep.presets.{key}"
    if sweep == "chinchilla":
        if len(p.budgets) < 1 or any(not b > 0 for b in p.budgets):
            raise PlanError(f"{where}.budgets must list positive FLOP budgets, got {list(p.budgets)}")
        if p.points < 3:
            raise PlanError(f"{where}.points={p.points}: an IsoFLOP parabola needs at least 3 shapes per budget")
    if not 0 < p.step_decades <= 1:
        raise PlanError(f"{where}.step_decades={p.step_decades} must be in (0, 1]")
    if not 0 < p.cooldown < 1:
        raise PlanError(f"{where}.cooldown={p.cooldown} must be in (0, 1)")
    if p.eval_points < 1:
        raise PlanError(f"{where}.eval_points={p.eval_points} must be >= 1")
    if not 1 <= p.family.min_depth <= p.family.max_depth:
        raise PlanError(f"{where}.family.min_depth={p.family.min_depth} must be in [1, family.max_depth="
                        f"{p.family.max_depth}]")


def _checks(jobs: List[Job], preset, key: str, unique_tokens: int, sweep: str, schedule: str):
    checks, problems = [], []
    where = f"sweep.presets.{key}"
    for j in jobs:
        n = j.shape.params_total
        if j.steps < j.min_steps:
            problems.append(f"job {j.name}: {j.steps} optimizer steps of {j.batch_tokens} tokens < min_steps="
                            f"{j.min_steps}; fix: raise its budget (or drop the shape), or lower {where}.min_steps")
        if j.role == "fork" and j.steps - j.branch_step < 1:
            problems.append(f"job {j.name}: no cooldown step left; fix: a larger budget or {where}.cooldown")
        if j.role != "trunk" and not 1 <= j.tokens / n <= preset.max_tokens_per_param:
            problems.append(f"job {j.name}: {j.tokens / n:.2f} tokens per parameter, outside [1, "
                            f"{preset.max_tokens_per_param:g}]; fix: move the budget or the ladder "
                            f"({where}.budgets / step_decades) so its shapes stay in range")
        if j.tokens > unique_tokens:
            problems.append(f"job {j.name}: needs {j.tokens:,} tokens but the corpus holds {unique_tokens:,} "
                            "without repetition; fix: a larger corpus (data.site_packages=true, data=text "
                            "data.path=..., data=hf data.name=...) or smaller budgets")
    checks.append({"check": "every job: >= min_steps steps, 1..max tokens per parameter, no repeated data",
                   "ok": not problems, "detail": f"{len(problems)} problem(s)"})
    if sweep == "chinchilla":
        for budget in sorted({j.budget for j in jobs if j.budget}):
            ns = [j.shape.params_total for j in jobs if j.budget == budget]
            ref = math.sqrt(budget / 120)  # D = 20 N at C = 6 N D
            ok = min(ns) <= ref / 2 and max(ns) >= ref * 2
            checks.append({"check": f"budget {fmt_budget(budget)}: shapes bracket sqrt(C/120) = {ref:,.0f} "
                                    "parameters by >= 2x on each side",
                           "ok": ok, "detail": f"N from {min(ns):,} to {max(ns):,} ({len(ns)} shapes)"})
    train = sum(j.flops_new for j in jobs)
    evals = sum(j.flops_eval for j in jobs)
    share = evals / train if train else 0.0
    checks.append({"check": f"evaluation FLOPs <= {EVAL_SHARE_MAX:.0%} of training FLOPs",
                   "ok": share <= EVAL_SHARE_MAX, "detail": f"{share:.1%} ({evals:.3g} of {train:.3g})"})
    return checks, problems


# ------------------------------------------------------------------------- composing a sweep


def job_config(sweep: str, preset: Optional[str], overrides: List[str]):
    """Compose `python -m train +sweep=SWEEP` as Hydra would, with the preset's shared overrides (the
    command line's win), and validate it: (RunConfig, preset key, sweep dir, the shared overrides)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from train.config import register_configs, register_resolvers as train_resolvers, validate

    register_configs()
    train_resolvers()
    register_resolvers()
    base = [f"+sweep={sweep}"] + ([f"sweep.preset={preset}"] if preset else []) + list(overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=base, return_hydra_config=True)
        key = preset_name(cfg.sweep)
        shared = shared_overrides(cfg.sweep.presets[key].overrides, overrides)
        job = compose(config_name="config", overrides=base + shared, return_hydra_config=True)
    sweep_dir = OmegaConf.select(job, "hydra.sweep.dir")
    with open_dict(job):
        del job["hydra"]
    return validate(job), key, sweep_dir, shared


def shared_overrides(preset_overrides, command_line) -> List[str]:
    """The preset's overrides that the command line does not set itself (the command line wins)."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in command_line if "=" in o}
    return [o for o in preset_overrides if o.split("=", 1)[0].lstrip("+~") not in given]


def plan_from_config(run, sweep: str, key: str, sweep_dir, progress: bool = True) -> SweepPlan:
    """Prepare the data (once, cached for the jobs) and plan. A data problem (offline, missing files) is a
    PlanError that also names the preset that needs no network, when the sweep has one."""
    from train.data import DataError, TrainSequences, load

    try:
        data = load(run.data, progress=progress)
    except DataError as e:
        offline = f"{key}-offline"
        hint = (f"; without network access, sweep.preset={offline} trains on the embedded corpus"
                if offline in run.sweep.presets else "")
        raise PlanError(f"{str(e).rstrip('.')}{hint}") from None
    unique = TrainSequences(data.train, run.model["seq_len"], 0).unique_tokens
    return plan_sweep(run, sweep, key, sweep_dir, data.vocab_size, unique)


# ----------------------------------------------------------------------------------------- CLI


def format_plan(plan: SweepPlan) -> str:
    lines = [f"sweep {plan.sweep}, preset {plan.preset}, schedule {plan.schedule}: {len(plan.jobs)} jobs; "
             f"vocab {plan.data['vocab_size']}, {plan.data['unique_train_tokens']:,} training tokens"]
    lines.append(f"{'job':<24} {'role':<5} {'N total':>10} {'tokens':>12} {'D/N':>6} {'steps':>6} {'batch':>6} "
                 f"{'lr':>8} {'FLOPs':>9} {'new':>9} {'eval':>8}")
    for j in plan.jobs:
        lines.append(f"{j.name:<24} {j.role:<5} {j.shape.params_total:>10,} {j.tokens:>12,} "
                     f"{j.tokens / j.shape.params_total:>6.1f} {j.steps:>6} {j.batch_tokens:>6} {j.lr:>8.2e} "
                     f"{j.flops_train:>9.2e} {j.flops_new:>9.2e} {j.flops_eval:>8.1e}")
    d = plan.as_dict()["totals"]
    lines.append(f"{d['jobs']} jobs: {d['flops_new']:.3e} training FLOPs to spend, {d['flops_eval']:.2e} in evaluation")
    for c in plan.checks:
        lines.append(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}: {c['detail']}")
    for p in plan.problems:
        lines.append(f"  problem: {p}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from train.log import get_logger, setup

    setup(console=True)
    log = get_logger("plan")
    sweeps_ = sorted(f.stem for f in (CONF / "sweep").glob("*.yaml") if f.stem != "base")
    p = argparse.ArgumentParser(prog="python -m sweeps.plan", description="List the jobs of a sweep preset "
                                "and check them, without training.")
    p.add_argument("sweep", help="a sweep: " + ", ".join(sweeps_))
    p.add_argument("--preset", default=None, help="a preset of the sweep (default: its own, auto = by hardware)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m train (e.g. sweep.schedule=cosine)")
    args = p.parse_intermixed_args(argv)
    if args.sweep not in sweeps_:
        log.error(f"no sweep named {args.sweep!r}; valid: {', '.join(sweeps_)}")
        return 2
    from model.config import ConfigError
    from train.data import DataError

    try:
        run, key, sweep_dir, _ = job_config(args.sweep, args.preset, args.overrides)
        plan = plan_from_config(run, args.sweep, key, sweep_dir, progress=not args.json)
    except (PlanError, ConfigError, DataError) as e:
        log.error(str(e))
        return 2
    except Exception as e:  # Hydra's composition errors: their message is the useful part
        log.error(f"{type(e).__name__}: {e}".splitlines()[0])
        return 2
    if args.json:
        from train.io_utils import dumps

        print(dumps(plan.as_dict()))
    else:
        print(format_plan(plan))
    return 1 if plan.problems else 0


if __name__ == "__main__":
    sys.exit(main())
