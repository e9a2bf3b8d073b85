"""Hydra structured configs for `python -m train`, and their validation.

The schema is registered in Hydra's ConfigStore so that unknown keys and wrongly typed values are
rejected while the config is composed; `validate()` then checks values and their relations and
returns typed objects. Every error names the key, the bad value and what would be valid.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from pathlib import Path

from model.config import ConfigError, GPTConfig
from train import testtime
from train.data import DataConfig, DataError
from train.record import ROLES
from train.rules import RULES, init_std_rule


def _model_schema():
    """The `model` group's schema: GPTConfig's fields (one source of truth), with vocab_size
    optional (null: taken from the data), init_std nullable (null: train/rules.py's init_std_rule of
    the width) and `shape`, a "WIDTHxDEPTHxHEADS" shorthand for sweeps."""
    hints = typing.get_type_hints(GPTConfig)
    fields = []
    for f in dataclasses.fields(GPTConfig):
        if f.name == "vocab_size":
            fields.append((f.name, Optional[int], field(default=None)))
        elif f.name == "init_std":
            fields.append((f.name, Optional[float], field(default=None)))
        else:
            fields.append((f.name, hints[f.name], field(default=f.default)))
    fields.append(("shape", Optional[str], field(default=None)))
    return dataclasses.make_dataclass("ModelSchema", fields)


ModelSchema = _model_schema()

CONF = Path(__file__).resolve().parents[1] / "conf"
SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "sqrt")
SWEEP_SCHEDULES = ("forks", "cosine")
LR_RULES = BATCH_RULES = RULES
RESUME = ("auto", "never")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "bf16", "fp32")
PARALLEL = ("ddp", "fsdp")
LOGGERS = ("wandb", "jsonl", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")


@dataclass
class OptimConfig:
    lr: Optional[float] = 3e-3  # null: follow optim.lr_rule
    lr_rule: str = "size"  # used when lr is null; see train/rules.py
    schedule: str = "cosine"  # cosine | wsd | constant
    min_lr_ratio: float = 0.1  # cosine / wsd end at lr * min_lr_ratio
    warmup: Optional[float] = 0.05  # < 1: fraction of the run's steps; >= 1: steps; null: the rule (train/rules.py)
    wsd_decay: float = 0.2  # WSD: fraction of steps spent in the final decay
    decay_shape: str = "linear"  # WSD's final decay: linear, or sqrt (1 - sqrt, Hägele et al. 2024)
    beta1: float = 0.9
    beta2: Optional[float] = 0.95  # null: 0.99 up to 220M non-embedding params, 0.95 above (Porian et al.)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class TrainConfig:
    tokens: Optional[float] = 1_600_000  # tokens to train (a whole number; 1.6e6 is fine); ignored when budget or tokens_per_param is set
    budget: Optional[float] = None  # training FLOPs (exact convention); tokens = budget / FLOPs per token
    tokens_per_param: Optional[float] = None  # tokens = this x non-embedding params
    batch_tokens: Optional[int] = 8192  # global batch in tokens; null: follow train.batch_rule
    batch_rule: str = "size"  # used when batch_tokens is null
    micro_batch: Optional[int] = None  # sequences per device per micro-step; null: as many as fit a default cap
    seed: int = 0  # initial weights (and the data order unless data_seed is set)
    data_seed: Optional[int] = None  # order of the training sequences; null: train.seed
    resume: str = "auto"  # auto: continue from the run dir's latest checkpoint; never: start over
    eval_every: int = 50  # steps; 0: only at the end
    eval_points: Optional[int] = None  # if set: this many evaluations spread over the run (overrides eval_every)
    eval_tokens: Optional[int] = None  # intermediate evaluations use this many of the val tokens (null: all);
    # the final evaluation always uses the whole fixed validation set (data.val_tokens)
    ckpt_every: int = 100  # steps; 0: only at the end
    keep_ckpt_steps: List[int] = field(default_factory=list)  # checkpoints never pruned (a trunk's branch points)
    init_from: Optional[str] = None  # a cooldown fork: start from this run folder's checkpoint at init_step
    init_step: Optional[int] = None
    log_every: int = 10
    min_steps: int = 20  # a run with fewer optimizer steps is recorded as skipped
    max_epochs: float = 1.0  # a run needing more passes over the training tokens is recorded as skipped
    diverge_ratio: float = 2.0  # after warmup, train loss above this x its best so far (smoothed) ends the run
    compile: bool = False
    cuda_graphs: bool = False  # capture each training step in a CUDA graph (one process, one micro-batch per step)
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    parallel: str = "ddp"  # multi-process strategy under torchrun: ddp | fsdp (FSDP2 fully_shard)
    dist_timeout_s: int = 600  # collectives that wait longer end the run as failed instead of hanging
    name: Optional[str] = None  # run name (wandb, records); default: the run dir's name


@dataclass
class LoggerConfig:
    kind: str = "jsonl"  # wandb | jsonl | none  (metrics.jsonl is written unless none)
    project: str = "scalelab"
    entity: Optional[str] = None
    mode: str = "auto"  # wandb: auto = online when an API key is configured, else offline
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class TestTimeConfig:
    """Repeated sampling on the task corpus's held-out problems once training completed (train/testtime.py;
    needs data=tasks). Off by default; the testtime sweep switches it on for every job."""

    __test__ = False  # not a pytest test class
    enabled: bool = False
    n_samples: int = 32  # samples per held-out problem: pass@k and majority@k for k = 1..n_samples
    temperature: float = 1.0  # 0: greedy (every sample the same)
    top_k: Optional[int] = None  # sample among the top_k most likely tokens (null: all)
    seed: int = 0  # the sampler's random generator
    max_rows: int = 512  # sequences decoded together (memory vs speed; one problem's samples stay together)


@dataclass
class ShapeFamily:
    """Model shapes of one family (sweeps/plan.py): depth grows with width at a fixed aspect ratio
    (width / depth), heads of a fixed head dim, widths on a grid of `width_step`, depth within
    [min_depth, max_depth] (min_depth 2 keeps one-layer models, which cannot form induction heads, out)."""

    aspect: float = 32.0
    head_dim: int = 16
    width_step: int = 8
    min_depth: int = 1
    max_depth: int = 48


@dataclass
class PresetConfig:
    """One preset of a sweep (conf/sweep/*.yaml), what sweeps/plan.py plans from. Keys a sweep does not
    use keep their defaults; `python -m sweeps.plan SWEEP --preset P` shows the jobs a preset makes."""

    overrides: List[str] = field(default_factory=list)  # settings every job gets (model.seq_len=..., data=...)
    budgets: List[float] = field(default_factory=list)  # chinchilla: FLOP budgets (exact count)
    points: int = 9  # chinchilla: shapes per budget, centred on the predicted optimum
    step_decades: float = 0.125  # chinchilla: spacing of a budget's shapes in N (log10)
    prior: Optional[str] = None  # where N_opt(C) comes from: null = tokens_per_param; or a fit.json path
    tokens_per_param: float = 20.0  # the prior's D/N (chinchilla); the trained D/N (shape, testtime sweeps)
    sizes: List[float] = field(default_factory=list)  # tokens / testtime sweeps: total parameters per model
    multiples: List[float] = field(default_factory=list)  # tokens sweep: tokens per parameter
    target_params: Optional[float] = None  # shape sweep: the fixed total parameter count
    depths: List[int] = field(default_factory=list)  # shape sweep: the depths tried at target_params
    family: ShapeFamily = field(default_factory=ShapeFamily)
    cooldown: float = 0.2  # forks: the cooldown's share of each budget's steps (1 - sqrt shape, to 0)
    eval_points: int = 10  # evaluations per run (the curves approach 1 reads); the last on the full val set
    eval_tokens: Optional[int] = None  # tokens of the intermediate evaluations (null: the full val set)
    min_steps: int = 20
    max_tokens_per_param: float = 400.0
    bootstrap: Optional[int] = None  # end-of-sweep fit: bootstrap replicates (null: the fitter's default)
    grid: Optional[str] = None  # end-of-sweep fit: approach-3 grid (null: the fitter's default)


@dataclass
class SweepConfig:
    """Set by conf/sweep/*.yaml; empty for a single run."""

    name: Optional[str] = None
    preset: str = "auto"  # auto: gpu when CUDA is visible, else cpu
    presets: Dict[str, PresetConfig] = field(default_factory=dict)
    schedule: str = "forks"  # forks: one constant-lr trunk per shape, a cooldown fork per budget; cosine: one run each
    fit: bool = True  # run the fit and report when the sweep ends
    job: Optional[str] = None  # this job's name in the sweep (set by the sweep's planner)
    role: str = "run"  # run | trunk (a constant-lr run that cooldown forks branch from) | fork


@dataclass
class Config:
    model: ModelSchema = field(default_factory=ModelSchema)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    testtime: TestTimeConfig = field(default_factory=TestTimeConfig)


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    # The root schema types every group's node, so group files (conf/model/*.yaml, ...) merge into
    # typed configs and cannot add keys.
    cs.store(name="schema", node=Config)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    from train import ranks

    OmegaConf.register_new_resolver("run_stamp", ranks.run_stamp, use_cache=True, replace=True)
    # .hydra/ is written by rank 0 only (SLURM task variables are mapped to RANK before this resolves)
    OmegaConf.register_new_resolver("rank_zero_only", lambda value: value if ranks.rank() == 0 else None,
                                    replace=True)


# ----------------------------------------------------------------------------------- validation


def _one_of(key: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{key} must be one of {tuple(valid)}, got {value!r}")


def _positive(key: str, value, allow_none=False, integer=False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{key} must be {kind}{' or null' if allow_none else ''}, got {value!r}")


def _non_negative(key: str, value, integer=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        raise ConfigError(f"{key} must be >= 0, got {value!r}")


@dataclass(frozen=True)
class RunConfig:
    """Validated, typed settings of one run (model.vocab_size may still be None: from the data)."""

    model: dict
    data: DataConfig
    optim: OptimConfig
    train: TrainConfig
    logger: LoggerConfig
    sweep: SweepConfig
    testtime: TestTimeConfig = field(default_factory=TestTimeConfig)

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        return resolve_model(self.model, vocab_size)


def resolve_model(model: dict, vocab_size: int) -> GPTConfig:
    """The GPTConfig of a validated `model` dict: a null vocab_size from the data, a null init_std from the rule."""
    init_std = model["init_std"] if model["init_std"] is not None else init_std_rule(model["width"])
    return GPTConfig(**{**model, "vocab_size": model["vocab_size"] or vocab_size, "init_std": init_std})


def parse_shape(shape: str) -> dict:
    parts = shape.lower().split("x")
    try:
        width, depth, heads = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"model.shape must look like WIDTHxDEPTHxHEADS (e.g. 128x4x4), got {shape!r}") from None
    return {"width": width, "depth": depth, "heads": heads}


def _check_known_keys(cfg, schema, prefix: str = "") -> None:
    """Hydra's `+key=value` can add keys even to a structured config; reject any the schema lacks."""
    from omegaconf import DictConfig

    names = {f.name: f for f in dataclasses.fields(schema)}
    for key in cfg.keys():
        if key not in names:
            guess = difflib.get_close_matches(str(key), list(names), n=1)
            hint = f" (did you mean {prefix}{guess[0]}?)" if guess else ""
            raise ConfigError(f"unknown config key {prefix}{key}{hint}; valid keys under "
                              f"{prefix.rstrip('.') or 'the root'}: {', '.join(sorted(names))}")
        sub_schema = names[key].default_factory if dataclasses.is_dataclass(
            getattr(names[key], "default_factory", None)) else None
        node = cfg._get_node(key)
        if sub_schema is not None and isinstance(node, DictConfig):
            _check_known_keys(node, sub_schema, f"{prefix}{key}.")


def _scalar_kind(annotation) -> Optional[type]:
    """int, float or bool for a (possibly Optional) scalar field type, else None."""
    if typing.get_origin(annotation) not in (None, typing.Union):
        return None  # List[...], Dict[...]: Hydra's parser and the schema check them
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return args[0] if len(args) == 1 and args[0] in (int, float, bool) else None


def check_override(arg: str) -> Optional[str]:
    """The problem with one command-line override `key=value` for a schema key, or None. Hydra would
    reject the same mistakes, but with a raw message; this one names the key, the value and what is
    valid (and suggests the key meant). Group choices (`data=text`), `+`/`~` edits and hydra.* pass."""
    if "=" not in arg or arg[:1] in "+~" or arg.startswith(("hydra", "-")):
        return None
    key, value = arg.split("=", 1)
    parts = key.split(".")
    if "/" in key:
        return None
    if len(parts) == 1:  # a group choice such as data=text: the option must exist under conf/<group>/
        options = sorted(f.stem for f in (CONF / key).glob("*.yaml")) if (CONF / key).is_dir() else None
        if options and value not in options:
            return f"{key}={value} is not an option of {key}; valid: {', '.join(options)}"
        return None
    schema, depth = Config, 0
    while depth < len(parts):
        name = parts[depth]
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if name not in fields:
            prefix = ".".join(parts[:depth])
            guess = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean {prefix}.{guess[0]}?)" if guess else ""
            return (f"unknown config key {key}{hint}; valid keys under {prefix}: {', '.join(sorted(fields))}")
        hint = typing.get_type_hints(schema)[name]
        f = fields[name]
        if dataclasses.is_dataclass(getattr(f, "default_factory", None)):
            schema, depth = f.default_factory, depth + 1
            continue
        args = typing.get_args(hint)
        if typing.get_origin(hint) is dict and dataclasses.is_dataclass(args[1]) and depth + 2 < len(parts):
            schema, depth = args[1], depth + 2  # sweep.presets.<name>.<key>: the dict's values are typed
            continue
        if depth != len(parts) - 1:
            return None  # a free-form value
        kind = _scalar_kind(hint)
        if kind is None or value in ("null", "") or "${" in value or any(c in value for c in ",()["):
            return None  # lists, and Hydra's sweep syntax (0,1,2 / range(...) / choice(...)): checked per job
        try:
            if kind is bool:
                if value.lower() not in ("true", "false"):
                    raise ValueError
            elif kind is int:
                if not float(value).is_integer():
                    raise ValueError
            else:
                float(value)
        except ValueError:
            want = {bool: "true or false", int: "a whole number", float: "a number"}[kind]
            return f"{key} must be {want}, got {value!r}"
        return None
    return None


def validate(cfg) -> RunConfig:
    """Check a composed config (DictConfig or Config) and return a RunConfig. Raises ConfigError."""
    from omegaconf import OmegaConf

    if not isinstance(cfg, Config):
        _check_known_keys(cfg, Config)
    try:
        obj = OmegaConf.to_object(cfg) if not isinstance(cfg, Config) else cfg
    except DataError as e:
        raise ConfigError(str(e)) from None
    model = dataclasses.asdict(obj.model)
    shape = model.pop("shape")
    if shape:
        model.update(parse_shape(shape))
    if model["vocab_size"] is not None:
        _positive("model.vocab_size", model["vocab_size"], integer=True)
    resolve_model(model, 256)  # checks every model key now

    o, t, lg = obj.optim, obj.train, obj.logger
    _positive("optim.lr", o.lr, allow_none=True)
    _one_of("optim.lr_rule", o.lr_rule, LR_RULES)
    _one_of("optim.schedule", o.schedule, SCHEDULES)
    if not 0 <= o.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio!r}")
    if o.warmup is not None:
        _non_negative("optim.warmup", o.warmup)
    if not 0 < o.wsd_decay <= 1:
        raise ConfigError(f"optim.wsd_decay must be in (0, 1], got {o.wsd_decay!r}")
    for key, value in (("optim.beta1", o.beta1), ("optim.beta2", o.beta2)):
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {value!r}")
    _one_of("optim.decay_shape", o.decay_shape, DECAY_SHAPES)
    _positive("optim.eps", o.eps)
    _non_negative("optim.weight_decay", o.weight_decay)
    _non_negative("optim.grad_clip", o.grad_clip)

    if t.tokens is not None:  # typed as a float so 1e6 is accepted; it must still be a whole number
        if isinstance(t.tokens, float) and t.tokens.is_integer():
            t = dataclasses.replace(t, tokens=int(t.tokens))
        _positive("train.tokens", t.tokens, integer=True)
    _positive("train.budget", t.budget, allow_none=True)
    _positive("train.tokens_per_param", t.tokens_per_param, allow_none=True)
    if t.tokens is None and t.budget is None and t.tokens_per_param is None:
        raise ConfigError("set one of train.tokens, train.budget (FLOPs) or train.tokens_per_param")
    if t.budget is not None and t.tokens_per_param is not None:
        raise ConfigError("train.budget and train.tokens_per_param both set: choose one")
    if t.data_seed is not None:
        _non_negative("train.data_seed", t.data_seed, integer=True)
    _positive("train.batch_tokens", t.batch_tokens, allow_none=True, integer=True)
    _one_of("train.batch_rule", t.batch_rule, BATCH_RULES)
    _positive("train.micro_batch", t.micro_batch, allow_none=True, integer=True)
    _one_of("train.resume", t.resume, RESUME)
    for key in ("eval_every", "ckpt_every", "min_steps"):
        _non_negative(f"train.{key}", getattr(t, key), integer=True)
    _positive("train.eval_points", t.eval_points, allow_none=True, integer=True)
    _positive("train.eval_tokens", t.eval_tokens, allow_none=True, integer=True)
    for step in t.keep_ckpt_steps:
        _positive("train.keep_ckpt_steps[]", step, integer=True)
    if (t.init_from is None) != (t.init_step is None):
        raise ConfigError("train.init_from (a run folder) and train.init_step (its checkpoint's step) go together; "
                          f"got init_from={t.init_from!r}, init_step={t.init_step!r}")
    _positive("train.init_step", t.init_step, allow_none=True, integer=True)
    _positive("train.log_every", t.log_every, integer=True)
    _positive("train.max_epochs", t.max_epochs)
    if not t.diverge_ratio > 1:
        raise ConfigError(f"train.diverge_ratio must be > 1, got {t.diverge_ratio!r}")
    _one_of("train.device", t.device, DEVICES)
    _one_of("train.dtype", t.dtype, DTYPES)
    _one_of("train.parallel", t.parallel, PARALLEL)
    _positive("train.dist_timeout_s", t.dist_timeout_s, integer=True)
    _one_of("logger.kind", lg.kind, LOGGERS)
    _one_of("logger.mode", lg.mode, WANDB_MODES)
    sw = obj.sweep
    _one_of("sweep.role", sw.role, ROLES)
    _one_of("sweep.schedule", sw.schedule, SWEEP_SCHEDULES)
    if sw.name is None and (sw.preset != "auto" or sw.presets or sw.job):
        raise ConfigError(f"sweep settings given (sweep.preset={sw.preset!r}) but no sweep is chosen; "
                          "add +sweep=NAME (chinchilla, shape, tokens or testtime), e.g. "
                          "python -m train +sweep=chinchilla sweep.preset=smoke")
    testtime.check_settings(obj.testtime, obj.data, model["seq_len"])
    return RunConfig(model=model, data=obj.data, optim=o, train=t, logger=lg, sweep=sw, testtime=obj.testtime)
