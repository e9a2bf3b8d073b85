"""One training run, from a composed config to a run record. Used by `python -m train` (train/__main__.py).

Outcomes: completed, diverged (the divergence guard fired), skipped (the run cannot be done as
asked: more data than the corpus holds, too few steps) and failed (anything else, with the reason).
Every outcome is written to summary.json; only bad input exits non-zero outside a sweep.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import torch

from model.config import ConfigError
from model.flops import flops_per_token, mfu, param_counts
from model.gpt import GPT
from train import checkpoint
from train import distributed as D
from train.config import RunConfig, validate
from train.data import DataError, TrainSequences, load, val_batches
from train.loggers import make_logger
from train.loop import Trainer, micro_batch_size
from train.optim import build_optimizer
from train.record import RunRecord, check_writable, git_commit, read_summary, versions
from train.rules import plan_run

DONE = ("completed", "skipped")


def say(text: str, info: Optional[D.DistInfo] = None) -> None:
    if info is None or info.is_main:
        print(f"[scalelab] {text}", file=sys.stderr, flush=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def execute(cfg, run_dir: Path, yaml_text: str, in_sweep: bool) -> int:
    """Run one training job; returns the process exit code. In a sweep (a Hydra multirun, or a job
    process of sweeps.launcher) a failed or skipped run is recorded and exits 0, so the sweep goes on."""
    run_dir = Path(run_dir)
    in_sweep = in_sweep or os.environ.get("SCALELAB_IN_SWEEP") == "1"
    started = time.time()
    try:
        run = validate(cfg)
    except ConfigError as e:
        return _bad_input(str(e), run_dir, in_sweep)
    problem = check_writable(run_dir)
    if problem:
        return _bad_input(problem + "; choose another with hydra.run.dir=PATH", None, in_sweep)

    previous = read_summary(run_dir)
    if run.train.resume == "auto" and previous and previous.get("status") in DONE:
        say(f"{run_dir} already {previous['status']}; nothing to do (train.resume=never starts over)")
        return 0

    signal.signal(signal.SIGTERM, _terminated)  # torchrun / SLURM stop workers with SIGTERM
    info = D.setup(run.train.device, run.train.dist_timeout_s)
    agreed = D.broadcast_object(str(run_dir.resolve()))
    if agreed != str(run_dir.resolve()):
        raise RuntimeError(f"ranks disagree on the run dir: {agreed} vs {run_dir.resolve()}")
    record = RunRecord(run_dir, _base_summary(run, run_dir, info)) if info.is_main else None
    if record:
        record.write_config(yaml_text)
        record.write()
    try:
        return _train(run, run_dir, info, record, in_sweep, started)
    except (ConfigError, DataError) as e:
        if record:
            record.write("failed", str(e), wall_s=time.time() - started)
        return _bad_input(str(e), None, in_sweep)
    except KeyboardInterrupt:
        if record:
            record.write("failed", "interrupted (KeyboardInterrupt / SIGINT)", wall_s=time.time() - started)
        raise
    except Exception as e:
        tb = traceback.format_exc()
        if record:
            (run_dir / "error.txt").write_text(tb)
            record.write("failed", f"{type(e).__name__}: {e}", wall_s=time.time() - started)
        say(f"run failed: {type(e).__name__}: {e} (traceback in {run_dir / 'error.txt'})", info)
        print(tb, file=sys.stderr)
        return 0 if in_sweep else 1
    finally:
        D.teardown()


class Terminated(Exception):
    pass


def _terminated(signum, frame):
    raise Terminated("stopped by SIGTERM (another rank failed, or the job was cancelled or preempted)")


def _bad_input(message: str, run_dir: Optional[Path], in_sweep: bool) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if in_sweep and run_dir is not None:
        try:
            RunRecord(run_dir).write("failed", f"bad config: {message}")
        except OSError:
            pass
    return 0 if in_sweep else 2


def _base_summary(run: RunConfig, run_dir: Path, info: D.DistInfo) -> dict:
    return {
        "name": run.train.name or run_dir.name, "sweep": run.sweep.name, "group": run.logger.group,
        "seed": run.train.seed, "world_size": info.world_size, "device": device_name(info.device),
        "host": socket.gethostname(), "git_commit": git_commit(), "versions": versions(),
        "budget": run.train.budget,
    }


def _train(run: RunConfig, run_dir: Path, info: D.DistInfo, record: Optional[RunRecord], in_sweep: bool,
           started: float) -> int:
    t = run.train
    # rank 0 prepares (tokenises) the data; the others wait and then open the same shards
    if info.is_main:
        data = load(run.data, progress=True)
    D.barrier()
    if not info.is_main:
        data = load(run.data, progress=False)

    if run.model["vocab_size"] is not None and run.model["vocab_size"] < data.vocab_size:
        raise ConfigError(f"model.vocab_size={run.model['vocab_size']} is smaller than the data's vocabulary "
                          f"({data.vocab_size}); use null to take it from the data")
    gpt = run.gpt_config(data.vocab_size)
    counts, flops = param_counts(gpt), flops_per_token(gpt)
    plan = plan_run(run.optim, t, gpt.seq_len, info.world_size, counts.non_embedding, flops.exact)
    sequences = TrainSequences(data.train, gpt.seq_len, t.seed)
    if record:
        record.update(
            model={"width": gpt.width, "depth": gpt.depth, "heads": gpt.heads, "vocab_size": gpt.vocab_size,
                   "seq_len": gpt.seq_len, "mlp": gpt.mlp, "norm": gpt.norm, "hidden": gpt.hidden,
                   "tied_embeddings": gpt.tied_embeddings, "kernels": gpt.kernels},
            params_total=counts.total, params_non_embedding=counts.non_embedding,
            params_embedding=counts.embedding, flops_per_token=flops.exact, flops_per_token_6n=flops.six_n_total,
            flops_conventions=flops.as_dict(), tokens=plan.tokens, compute=plan.tokens * flops.exact,
            batch_tokens=plan.batch_tokens, steps=plan.steps, lr=plan.lr, beta2=plan.beta2,
            warmup_steps=plan.warmup_steps, data_unique_tokens=sequences.unique_tokens,
        )
    say(f"model {gpt.width}x{gpt.depth}x{gpt.heads} (width x depth x heads): {counts.total:,} params "
        f"({counts.non_embedding:,} non-embedding); {flops.exact:,.0f} FLOPs/token", info)
    say(f"plan: {plan.tokens:,} tokens = {plan.steps} steps x {plan.batch_tokens} tokens, lr {plan.lr:.2e}, "
        f"warmup {plan.warmup_steps} steps, beta2 {plan.beta2}, compute {plan.tokens * flops.exact:.3e} FLOPs", info)

    skip = _skip_reason(plan, t, sequences.unique_tokens)
    if skip:
        say(f"skipped: {skip}", info)
        if record:
            record.write("skipped", skip, wall_s=time.time() - started)
        return 0 if in_sweep else 3

    torch.manual_seed(t.seed)
    model = GPT(gpt)
    assert model.param_counts() == counts.__dict__, "analytic parameter count disagrees with the module"
    model.to(info.device)
    wrapped = D.wrap(model, info, t.parallel)
    optimizer = build_optimizer(wrapped, plan.lr, run.optim.beta1, plan.beta2, run.optim.eps, run.optim.weight_decay)
    if t.compile:
        wrapped = torch.compile(wrapped)

    resume_state = None
    latest = checkpoint.latest(run_dir) if t.resume == "auto" else None
    if latest is not None:
        resume_state = checkpoint.load(latest)
        say(f"resuming from {latest} (step {resume_state['loop']['step']})", info)
    elif t.resume == "never" and checkpoint.latest(run_dir) is not None and info.is_main:
        for old in checkpoint.ckpt_dir(run_dir).glob("step_*.pt"):
            old.unlink()
    resume_step = resume_state["loop"]["step"] if resume_state else 0
    wandb_id = resume_state.get("wandb_run_id") if resume_state else None
    logger = make_logger(run.logger, run_dir, info.rank, resume_step, _flat_config(run), run.train.name or run_dir.name,
                         resume_id=wandb_id)
    if record:
        record.update(wandb_run_id=logger.run_id)

    def on_checkpoint(state):
        state["wandb_run_id"] = logger.run_id

    micro = micro_batch_size(plan.batch_tokens // gpt.seq_len // info.world_size, gpt.seq_len, t.micro_batch,
                             info.device.type)
    val = val_batches(data.val, gpt.seq_len, run.data.val_tokens, micro)
    trainer = Trainer(model=wrapped, optimizer=optimizer, plan=plan, run=run, info=info, seq_len=gpt.seq_len, micro=micro,
                      sequences=sequences, val_batches=val,
                      bytes_per_token=data.bytes_per_token("val", n_tokens=sum(y.numel() for _, y in val)),
                      flops_per_token=flops.exact, device_name=device_name(info.device), logger=logger,
                      run_dir=run_dir, on_checkpoint=on_checkpoint)
    if resume_state:
        trainer.restore(resume_state)
        del resume_state
    say(f"training on {device_name(info.device)} x {info.world_size}: {trainer.accum} micro-steps of "
        f"{trainer.micro} sequences per process per step", info)

    result = trainer.fit()
    st = result.state
    tokens_per_s = st.step * plan.batch_tokens / st.train_seconds if st.train_seconds > 0 else None
    fields = dict(
        final_val_loss=st.final_val_loss, best_val_loss=st.best_val_loss if st.final_val_loss is not None else None,
        final_val_bpb=st.final_val_bpb, tokens_per_s=tokens_per_s,
        mfu=mfu(tokens_per_s, flops.exact, device_name(info.device), info.world_size) if tokens_per_s else None,
        wall_s=st.wall_seconds, steps_done=st.step, tokens_done=st.step * plan.batch_tokens,
    )
    logger.summary({**fields, "status": result.status})
    logger.close()
    if record:
        record.write(result.status, result.reason, **fields)
    verdict = f"{result.status}" + (f" ({result.reason})" if result.reason else "")
    say(f"{verdict}: final val loss {st.final_val_loss if st.final_val_loss is None else round(st.final_val_loss, 4)}"
        f" in {st.wall_seconds:.1f} s; record in {run_dir}", info)
    return 0


def _skip_reason(plan, t, unique_tokens: int) -> Optional[str]:
    if plan.steps < t.min_steps:
        return (f"only {plan.steps} optimizer steps of {plan.batch_tokens} tokens fit {plan.requested_tokens:,.0f} "
                f"tokens; train.min_steps={t.min_steps}")
    if plan.tokens > t.max_epochs * unique_tokens:
        return (f"needs {plan.tokens:,} tokens but the training data holds {unique_tokens:,} "
                f"(train.max_epochs={t.max_epochs}); use more data or a smaller budget")
    return None


def _flat_config(run: RunConfig) -> dict:
    import dataclasses

    out = {"model": run.model}
    for key in ("data", "optim", "train", "logger"):
        out[key] = dataclasses.asdict(getattr(run, key))
    return out
