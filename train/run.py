"""One training run, from a composed config to a run record. Used by `python -m train` (train/__main__.py).

    execute: validate -> set up processes and logging -> lock the folder -> prepare (data, model
             shape, plan, identity) -> decide (train, resume, nothing to do, or refuse) -> build ->
             train -> report

Outcomes (summary.json `status`): completed; diverged (the divergence guard fired); skipped (the run
cannot be done as asked: more data than the corpus holds, too few steps); failed (anything else, with
the reason; also an interrupted run, which a relaunch resumes). A run's identity (the settings that
determine its result) is recorded, and a relaunch into a folder made with other settings is refused.

Exit codes outside a sweep: 0 done, 1 failed, 2 bad input or refused, 3 skipped, 128+signal when
stopped by SIGINT/SIGTERM. A sweep's job records failures and skips and exits 0, so the sweep goes on.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from model.config import ConfigError, GPTConfig
from model.flops import FlopCounts, ParamCounts, flops_per_token, mfu, param_counts
from model.gpt import GPT
from train import distributed as D
from train import log as logs
from train import testtime
from train.checkpoint import Checkpointer, CheckpointError, load_step
from train.config import RunConfig, validate
from train.data import VAL_SET, DataError, Dataset, TrainSequences, load, val_batches
from train.io_utils import check_writable, git_commit, versions
from train.lock import LockedError, RunLock
from train.loggers import make_logger
from train.loop import LoopSettings, Trainer, TrainData, micro_batch_size
from train.optim import Schedule, build_optimizer
from train.record import METRICS, RunRecord, RunSummary, load_summary
from train.rules import Plan, plan_run

log = logs.get_logger("run")
DONE = ("completed", "diverged")  # final outcomes for their settings: a relaunch has nothing to do
ERROR_FILE = "error.txt"
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_SKIPPED = 1, 2, 3


class Refused(Exception):
    """The run folder holds a result made with other settings, or another process trains it."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM outside the training loop (inside it, the loop stops at the next step)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT/SIGTERM: inside the training loop, ask it to stop after the current step (it then saves a
    checkpoint); outside it, or at a second signal, stop at once."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.in_loop = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # torchrun and SLURM stop workers with SIGTERM
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.in_loop and self.signum is None:
            self.signum = signum
            return
        raise Interrupted(signum)

    def requested(self) -> Optional[str]:
        return f"stopped by {signal.Signals(self.signum).name}" if self.signum else None


@dataclass
class Prepared:
    """What a run is, decided before any weight exists."""

    data: Dataset
    gpt: GPTConfig
    counts: ParamCounts
    flops: FlopCounts
    plan: Plan
    sequences: TrainSequences
    micro: int  # sequences per micro-step
    identity: dict
    skip: Optional[str]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def log_file_name(rank: int) -> str:
    return "train.log" if rank == 0 else f"train.rank{rank}.log"


# ------------------------------------------------------------------------------------------ entry


def execute(cfg, run_dir, yaml_text: str, overrides: tuple = ()) -> int:
    """Run one training job; returns the process exit code. `yaml_text`: the resolved config, and
    `overrides`: the command line's overrides, both saved with the record."""
    run_dir = Path(run_dir)
    in_sweep = bool((cfg.get("sweep") or {}).get("name"))
    started = time.time()
    signals = StopSignals()
    signals.install()
    try:
        run = validate(cfg)
        problem = check_writable(run_dir)
        if problem:
            raise ConfigError(problem + "; choose another with hydra.run.dir=PATH")
        info = D.setup(run.train.device, run.train.dist_timeout_s)
    except ConfigError as e:
        return _bad_input(str(e), run_dir, in_sweep)
    except Interrupted as e:
        log.error(f"interrupted by {e} before the run started; nothing was written")
        return 128 + e.signum

    logs.setup(console=info.is_main, file=run_dir / log_file_name(info.rank))
    lock = RunLock(run_dir)
    record: Optional[RunRecord] = None
    try:
        if info.is_main:
            lock.acquire()
        _check_device(run, info)
        prep = _prepare(run, info)
        kind = _decide(run, run_dir, prep, info)
        if kind in ("done", "skipped"):
            return EXIT_SKIPPED if kind == "skipped" and not in_sweep else 0
        if info.is_main:
            record = RunRecord(run_dir, _summary(run, run_dir, prep, info))
            record.write_config(yaml_text, overrides)
            record.write()
        return _train(run, run_dir, prep, info, record, signals)
    except (ConfigError, DataError, CheckpointError) as e:
        if record:
            record.write("failed", str(e), wall_s=time.time() - started)
        return _bad_input(str(e), run_dir, in_sweep, recorded=record is not None)
    except (Refused, LockedError) as e:
        log.error(str(e))
        return EXIT_BAD_INPUT
    except Interrupted as e:
        if record:
            record.write("failed", f"interrupted by {e} before training started", wall_s=time.time() - started)
        log.error(f"interrupted by {e} before training started; relaunch the same command to start")
        return 128 + e.signum
    except Exception as e:
        where = ""
        if info.is_main:
            (run_dir / ERROR_FILE).write_text(traceback.format_exc())
            where = f" (traceback in {run_dir / ERROR_FILE})"
        if record:
            record.write("failed", f"{type(e).__name__}: {e}", wall_s=time.time() - started)
        log.error(f"run failed: {type(e).__name__}: {e}{where}")
        return 0 if in_sweep else EXIT_FAILED
    finally:
        lock.release()
        D.teardown()
        logs.close_file()


def _bad_input(message: str, run_dir: Path, in_sweep: bool, recorded: bool = False) -> int:
    """One line, no traceback. In a sweep the job's folder gets a failed record (the sweep goes on);
    a single run leaves behind no folder that was made only for this attempt."""
    log.error(message)
    if in_sweep:
        if not recorded and load_summary(run_dir)[0] is None:  # never over a record of an earlier attempt
            try:
                RunRecord(run_dir).write("failed", f"bad config: {message}")
            except OSError:
                pass
        return 0
    if not recorded:
        _remove_if_untouched(run_dir)
    return EXIT_BAD_INPUT


def _remove_if_untouched(run_dir: Path) -> None:
    try:
        entries = {p.name for p in run_dir.iterdir()}
    except OSError:
        return
    if entries <= {".hydra", ".lock", log_file_name(0)}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _check_device(run: RunConfig, info: D.DistInfo) -> None:
    from kernels.dispatch import interpreter_on

    if run.model["kernels"] == "triton" and info.device.type != "cuda" and not interpreter_on():
        raise ConfigError("model.kernels=triton needs a CUDA device (this run is on the CPU); use model.kernels=auto "
                          "(Triton on CUDA, PyTorch elsewhere) or torch, or set TRITON_INTERPRET=1 (slow, for tests)")
    if run.train.cuda_graphs and (info.device.type != "cuda" or info.enabled):
        raise ConfigError("train.cuda_graphs=true needs one process on a CUDA device "
                          f"(this run: {info.device.type}, {info.world_size} processes)")


# ---------------------------------------------------------------------------------------- prepare


def _prepare(run: RunConfig, info: D.DistInfo) -> Prepared:
    t = run.train
    # rank 0 prepares (tokenises) the data; the others wait and then open the same shards
    data = load(run.data, progress=info.is_main) if info.is_main else None
    D.barrier()
    if data is None:
        data = load(run.data, progress=False)
    if run.model["vocab_size"] is not None and run.model["vocab_size"] < data.vocab_size:
        raise ConfigError(f"model.vocab_size={run.model['vocab_size']} is smaller than the data's vocabulary "
                          f"({data.vocab_size}); use null to take it from the data")
    gpt = run.gpt_config(data.vocab_size)
    counts, flops = param_counts(gpt), flops_per_token(gpt)
    plan = plan_run(run.optim, t, gpt.seq_len, info.world_size, counts.non_embedding, flops.exact)
    sequences = TrainSequences(data.train, gpt.seq_len, data_seed(t))
    micro = micro_batch_size(plan.batch_tokens // gpt.seq_len // info.world_size, gpt.seq_len, t.micro_batch,
                             info.device.type)
    return Prepared(data=data, gpt=gpt, counts=counts, flops=flops, plan=plan, sequences=sequences, micro=micro,
                    identity=run_identity(run, gpt, plan, data.fingerprint(), info),
                    skip=_skip_reason(plan, t, sequences.unique_tokens))


def run_identity(run: RunConfig, gpt: GPTConfig, plan: Plan, data_fingerprint: dict, info: D.DistInfo) -> dict:
    """The settings that determine a run's result. Not in it: how it is executed (kernels backend,
    compile, world size, evaluation and checkpoint cadence), which changes numbers only at rounding level."""
    o, t = run.optim, run.train
    return {
        "model": {k: v for k, v in dataclasses.asdict(gpt).items() if k != "kernels"},
        "data": data_fingerprint,
        "val_tokens": run.data.val_tokens,
        "val_set": VAL_SET,
        "optim": {"lr": plan.lr, "beta1": o.beta1, "beta2": plan.beta2, "eps": o.eps,
                  "weight_decay": o.weight_decay, "grad_clip": o.grad_clip, "warmup_steps": plan.warmup_steps,
                  "schedule": o.schedule, "min_lr_ratio": o.min_lr_ratio, "wsd_decay": o.wsd_decay,
                  "decay_shape": o.decay_shape},
        "batch_tokens": plan.batch_tokens, "steps": plan.steps, "tokens": plan.tokens, "seed": t.seed,
        "precision": "bf16" if _bf16(run, info) else "fp32",
        "init": {"from": str(Path(t.init_from).resolve()), "step": t.init_step} if t.init_from else None,
        # only when it differs from seed, so records made before train.data_seed existed keep their identity
        **({"data_seed": data_seed(t)} if data_seed(t) != t.seed else {}),
        # the sampling after training is part of the result when enabled (max_rows only groups the work)
        **({"testtime": {k: v for k, v in dataclasses.asdict(run.testtime).items() if k != "max_rows"}}
           if run.testtime.enabled else {}),
    }


def data_seed(t) -> int:
    """The seed of the training data order: train.data_seed, or train.seed when that is null."""
    return t.seed if t.data_seed is None else t.data_seed


# What a cooldown fork shares with its trunk: everything but the schedule's end and the run's length.
_FORK_FREE = ("optim.schedule", "optim.min_lr_ratio", "optim.wsd_decay", "optim.decay_shape", "steps", "tokens",
              "init", "testtime")


def legacy_identity(s: RunSummary) -> dict:
    return {"model": {k: s.model.get(k) for k in ("width", "depth", "heads", "vocab_size", "seq_len")},
            "optim": {"lr": s.lr, "beta2": s.beta2, "warmup_steps": s.warmup_steps},
            "batch_tokens": s.batch_tokens, "tokens": s.tokens, "seed": s.seed}


def identity_diff(old: dict, new: dict, ignore=(), only_old_keys: bool = False) -> list[str]:
    """'key: old -> new' for every differing leaf (dotted keys), leaving out `ignore` prefixes
    (and keys `old` lacks, with only_old_keys)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    a, b = flat(old), flat(new)
    keys = sorted(k for k in (set(a) if only_old_keys else set(a) | set(b))
                  if not any(k == i or k.startswith(i + ".") for i in ignore))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _skip_reason(plan: Plan, t, unique_tokens: int) -> Optional[str]:
    if plan.steps < t.min_steps:
        return (f"only {plan.steps} optimizer steps of {plan.batch_tokens} tokens fit {plan.requested_tokens:,.0f} "
                f"tokens; train.min_steps={t.min_steps}")
    if plan.tokens > t.max_epochs * unique_tokens:
        return (f"needs {plan.tokens:,} tokens but the training data holds {unique_tokens:,} "
                f"(train.max_epochs={t.max_epochs}); use more data or a smaller budget")
    return None


def _bf16(run: RunConfig, info: D.DistInfo) -> bool:
    return run.train.dtype == "bf16" or (run.train.dtype == "auto" and info.device.type == "cuda")


# ----------------------------------------------------------------------------------------- decide


def _decide(run: RunConfig, run_dir: Path, prep: Prepared, info: D.DistInfo) -> str:
    """"fresh", "resume", "done" (nothing to do) or "skipped"; raises Refused. Rank 0 decides, the
    others follow its answer."""
    verdict = None
    if info.is_main:
        try:
            verdict = _verdict(run, run_dir, prep)
        except Refused as e:
            verdict = ("refused", str(e))
    kind, text = D.broadcast_object(verdict)
    if kind == "refused":
        raise Refused(text)
    if kind == "done":
        log.info(text)
        return kind
    if prep.skip:
        log.info(f"skipped: {prep.skip}")
        if info.is_main:
            RunRecord(run_dir, _summary(run, run_dir, prep, info)).write("skipped", prep.skip)
        return "skipped"
    if kind == "fresh" and info.is_main:
        Checkpointer(run_dir).clear()
        for stale in (ERROR_FILE, METRICS):
            (run_dir / stale).unlink(missing_ok=True)
    return kind


def _verdict(run: RunConfig, run_dir: Path, prep: Prepared) -> tuple[str, str]:
    """("fresh" | "resume" | "done", message) for this folder and these settings."""
    if run.train.resume == "never":
        return "fresh", "train.resume=never: starting over"
    previous, _ = load_summary(run_dir)
    if previous is None or previous.status == "skipped":
        # a skip is decided again from the new settings (it holds no result to protect)
        return "fresh", "new run"
    if previous.identity:
        changed = identity_diff(previous.identity, prep.identity)
    else:  # a record of schema 1 has no identity: compare what it does record
        changed = identity_diff(legacy_identity(previous), prep.identity, only_old_keys=True)
    if changed:
        what = "a completed run" if previous.status == "completed" else f"a {previous.status} run"
        raise Refused(f"{run_dir} holds {what} made with other settings ({'; '.join(changed[:8])}"
                      f"{'; ...' if len(changed) > 8 else ''}). Use a new folder (hydra.run.dir=..., or "
                      "hydra.sweep.dir=... for a sweep), or train.resume=never to train this folder again "
                      "with the new settings")
    if previous.status in DONE:
        return "done", f"{run_dir} already {previous.status}; nothing to do (train.resume=never starts over)"
    return "resume", "resuming"


def _summary(run: RunConfig, run_dir: Path, prep: Prepared, info: D.DistInfo) -> RunSummary:
    gpt, counts, flops, plan = prep.gpt, prep.counts, prep.flops, prep.plan
    return RunSummary(
        name=run.train.name or run_dir.name, sweep=run.sweep.name, group=run.logger.group, role=run.sweep.role,
        fork={"trunk": prep.identity["init"]["from"], "step": run.train.init_step} if run.train.init_from else None,
        identity=prep.identity, seed=run.train.seed, budget=run.train.budget,
        model={"width": gpt.width, "depth": gpt.depth, "heads": gpt.heads, "vocab_size": gpt.vocab_size,
               "seq_len": gpt.seq_len, "mlp": gpt.mlp, "norm": gpt.norm, "hidden": gpt.hidden,
               "tied_embeddings": gpt.tied_embeddings, "kernels": gpt.kernels},
        data=prep.identity["data"],
        params_total=counts.total, params_non_embedding=counts.non_embedding, params_embedding=counts.embedding,
        flops_per_token=flops.exact, flops_per_token_6n=flops.six_n_total, flops_conventions=flops.as_dict(),
        tokens=plan.tokens, compute=plan.tokens * flops.exact, batch_tokens=plan.batch_tokens, steps=plan.steps,
        lr=plan.lr, beta2=plan.beta2, warmup_steps=plan.warmup_steps,
        data_unique_tokens=prep.sequences.unique_tokens,
        world_size=info.world_size, device=device_name(info.device), host=socket.gethostname(),
        git_commit=git_commit(), versions=versions())


# ------------------------------------------------------------------------------------------ train


def _train(run: RunConfig, run_dir: Path, prep: Prepared, info: D.DistInfo, record: Optional[RunRecord],
           signals: StopSignals) -> int:
    t, gpt, plan = run.train, prep.gpt, prep.plan
    log.info(f"model {gpt.width}x{gpt.depth}x{gpt.heads} (width x depth x heads): {prep.counts.total:,} params "
             f"({prep.counts.non_embedding:,} non-embedding); {prep.flops.exact:,.0f} FLOPs/token")
    log.info(f"plan: {plan.tokens:,} tokens = {plan.steps} steps x {plan.batch_tokens} tokens, lr {plan.lr:.2e}, "
             f"warmup {plan.warmup_steps} steps, beta2 {plan.beta2}, compute {plan.tokens * prep.flops.exact:.3e} FLOPs")

    wrapped, optimizer = _build(run, gpt, prep, info)
    checkpointer = Checkpointer(run_dir, keep_steps=t.keep_ckpt_steps)
    state, origin, origin_path = _start_state(run, run_dir, prep, checkpointer)

    logger = make_logger(run.logger, run_dir, info.rank, state["loop"]["step"] if state and not t.init_from else 0,
                         _flat_config(run), t.name or run_dir.name,
                         resume_id=state.get("wandb_run_id") if state and origin == "resume" else None)
    micro = prep.micro
    val = val_batches(prep.data.val, gpt.seq_len, run.data.val_tokens, micro)
    subset = len(val) if t.eval_tokens is None else max(1, min(len(val), -(-t.eval_tokens // (micro * gpt.seq_len))))
    data = TrainData(sequences=prep.sequences, val_batches=val, val_subset=subset, micro=micro,
                     bytes_per_token=prep.data.bytes_per_token("val", targets=[y for _, y in val]))
    settings = _loop_settings(run, plan, info)
    trainer = Trainer(model=wrapped, optimizer=optimizer, plan=plan, settings=settings, data=data, info=info,
                      logger=logger, checkpointer=checkpointer, flops_per_token=prep.flops.exact,
                      device_name=device_name(info.device),
                      extra_state=lambda: {"identity": prep.identity, "wandb_run_id": logger.run_id})
    if state is not None:
        trainer.restore(state, step=t.init_step if origin == "fork" else None)
        del state
    if record:
        record.write(wandb_run_id=logger.run_id, resumed_from=origin_path)
    log.info(f"training on {device_name(info.device)} x {info.world_size}: {trainer.accum} micro-steps of "
             f"{micro} sequences per process per step")

    trainer.stop_requested = signals.requested
    signals.in_loop = True
    try:
        result = trainer.fit()
    finally:
        signals.in_loop = False
    return _report(run, run_dir, prep, info, record, result, logger, signals, wrapped)


def _build(run: RunConfig, gpt: GPTConfig, prep: Prepared, info: D.DistInfo):
    """(the model as the loop calls it: wrapped for DDP/FSDP, maybe compiled; its optimizer)."""
    torch.manual_seed(run.train.seed)
    model = GPT(gpt)
    assert model.param_counts() == prep.counts.__dict__, "analytic parameter count disagrees with the module"
    model.to(info.device)
    wrapped = D.wrap(model, info, run.train.parallel)
    o = run.optim
    optimizer = build_optimizer(wrapped, prep.plan.lr, o.beta1, prep.plan.beta2, o.eps, o.weight_decay)
    if run.train.compile:
        wrapped = torch.compile(wrapped)
    return wrapped, optimizer


def _start_state(run: RunConfig, run_dir: Path, prep: Prepared, checkpointer: Checkpointer):
    """(state, origin, path): this folder's newest readable checkpoint ("resume"), a fork's branch point
    in its trunk ("fork"), or (None, None, None) to start from the initial weights."""
    t = run.train
    if t.resume == "auto":
        state, path, problems = checkpointer.load_latest()
        for p in problems:
            log.warning(f"{p}; trying an older checkpoint")
        if state is not None:
            if state.get("identity") and identity_diff(state["identity"], prep.identity):
                raise Refused(f"{path} was made with other settings ({'; '.join(identity_diff(state['identity'], prep.identity)[:8])}); "
                              "train.resume=never starts over")
            log.info(f"resuming from {path} (step {state['loop']['step']})")
            return state, "resume", str(path)
        if problems:
            log.warning("no readable checkpoint is left; starting from the beginning")
    if t.init_from:
        trunk = Path(t.init_from)
        try:
            state = load_step(trunk, t.init_step)
        except CheckpointError as e:
            trunk_summary, _ = load_summary(trunk)
            status = f" (its record says {trunk_summary.status}: {trunk_summary.reason})" if trunk_summary else ""
            raise CheckpointError(f"cannot branch from trunk {trunk} at step {t.init_step}: {e}{status}") from None
        changed = identity_diff(state.get("identity") or {}, prep.identity, ignore=_FORK_FREE)
        if changed:
            raise Refused(f"trunk {trunk} was trained with other settings than this fork's stable phase "
                          f"({'; '.join(changed[:8])})")
        path = Checkpointer.path_for(trunk, t.init_step)
        log.info(f"branching from {path} (step {t.init_step})")
        return state, "fork", str(path)
    return None, None, None


def _loop_settings(run: RunConfig, plan: Plan, info: D.DistInfo) -> LoopSettings:
    o, t = run.optim, run.train
    schedule = Schedule(o.schedule, plan.lr, plan.steps, plan.warmup_steps, o.min_lr_ratio, o.wsd_decay,
                        o.decay_shape)
    # sweeps ask for a number of evaluations per run, so curves have the same resolution at any length
    eval_every = max(1, plan.steps // t.eval_points) if t.eval_points else t.eval_every
    return LoopSettings(schedule=schedule, grad_clip=o.grad_clip, log_every=t.log_every, eval_every=eval_every,
                        ckpt_every=t.ckpt_every, diverge_ratio=t.diverge_ratio, bf16=_bf16(run, info),
                        parallel=t.parallel, cuda_graphs=t.cuda_graphs, keep_steps=tuple(t.keep_ckpt_steps))


# ----------------------------------------------------------------------------------------- report


def _report(run: RunConfig, run_dir: Path, prep: Prepared, info: D.DistInfo, record: Optional[RunRecord], result,
            logger, signals: StopSignals, model) -> int:
    st, plan, fpt = result.state, prep.plan, prep.flops.exact
    tokens_per_s = st.step * plan.batch_tokens / st.train_seconds if st.train_seconds > 0 else None
    fields: dict[str, Any] = dict(
        final_val_loss=st.final_val_loss, best_val_loss=st.best_val_loss if st.final_val_loss is not None else None,
        final_val_bpb=st.final_val_bpb, tokens_per_s=tokens_per_s,
        mfu=mfu(tokens_per_s, fpt, device_name(info.device), info.world_size) if tokens_per_s else None,
        wall_s=st.wall_seconds, steps_done=st.step, tokens_done=st.step * plan.batch_tokens,
    )
    status, reason = result.status, result.reason
    uniform = math.log(prep.gpt.vocab_size)
    flags = []
    if status == "completed" and st.final_val_loss is not None and st.final_val_loss > uniform:
        flags.append("above_uniform_loss")
        log.warning(f"final val loss {st.final_val_loss:.4f} is above a uniform guess over the vocabulary "
                    f"(ln {prep.gpt.vocab_size} = {uniform:.4f}): the run learned nothing; fits leave it out")
    if status == "stopped":
        status = "failed"
        reason = (f"interrupted ({result.reason}) at step {st.step} of {plan.steps}; a checkpoint was saved, "
                  "relaunch the same command to resume")
    if run.testtime.enabled and status == "completed":  # if it fails, the run fails: a relaunch samples again
        fields["testtime"] = testtime.evaluate_run(run, run_dir, model, prep.data, info, logger, st.step,
                                                   _bf16(run, info))
    logger.summary({**fields, "status": status})
    logger.close()
    if record:
        record.write(status, reason, flags=flags, **fields)
        if status == "completed":
            (run_dir / ERROR_FILE).unlink(missing_ok=True)
    if result.status == "stopped":
        log.error(f"{reason} (record in {run_dir})")
        return 128 + (signals.signum or signal.SIGTERM)
    verdict = status + (f" ({reason})" if reason else "")
    loss = st.final_val_loss if st.final_val_loss is None else round(st.final_val_loss, 4)
    log.info(f"{verdict}: final val loss {loss} in {st.wall_seconds:.1f} s; record in {run_dir}")
    return 0


def _flat_config(run: RunConfig) -> dict:
    out = {"model": run.model}
    for key in ("data", "optim", "train", "logger", "testtime"):
        out[key] = dataclasses.asdict(getattr(run, key))
    return out
