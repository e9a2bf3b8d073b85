"""The training loop: gradient accumulation to a global batch, schedule, evaluation, checkpoints,
divergence guard and progress output. The data position is a pure function of the step, so a
resumed run (on any world size) reads exactly the batches an uninterrupted one would."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from model.config import ConfigError
from model.flops import mfu as compute_mfu
from train import checkpoint
from train import distributed as D
from train.optim import lr_at

LN2 = math.log(2)


@dataclass
class LoopState:
    """Everything besides weights and optimizer moments that a resumed run must get back."""

    step: int = 0
    best_val_loss: float = float("inf")
    final_val_loss: Optional[float] = None
    final_val_bpb: Optional[float] = None
    loss_ema: Optional[float] = None
    best_loss_ema: float = float("inf")
    train_seconds: float = 0.0  # time in training steps (for tokens/s), across resumptions
    wall_seconds: float = 0.0  # whole wall time across resumptions
    extra: dict = field(default_factory=dict)


@dataclass
class LoopResult:
    status: str
    reason: Optional[str]
    state: LoopState


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Trainer:
    def __init__(self, *, model, optimizer, plan, run, info: D.DistInfo, seq_len: int, micro: int, sequences, val_batches,
                 bytes_per_token, flops_per_token, device_name, logger, run_dir, on_checkpoint=None):
        self.model, self.optimizer, self.plan, self.run, self.info = model, optimizer, plan, run, info
        self.sequences, self.val_batches = sequences, val_batches
        self.bytes_per_token, self.flops_per_token, self.device_name = bytes_per_token, flops_per_token, device_name
        self.logger, self.run_dir, self.on_checkpoint = logger, run_dir, on_checkpoint
        t = run.train
        self.batch_seqs = plan.batch_tokens // seq_len
        self.rank_seqs = self.batch_seqs // info.world_size
        self.micro = micro  # sequences per micro-step (micro_batch_size; val batches use the same size)
        self.accum = self.rank_seqs // self.micro
        use_bf16 = t.dtype == "bf16" or (t.dtype == "auto" and info.device.type == "cuda")
        # sweeps ask for a number of evaluations per run, so curves have the same resolution at any length
        self.eval_every = max(1, plan.steps // t.eval_points) if t.eval_points else t.eval_every
        self.autocast = (torch.autocast(info.device.type, dtype=torch.bfloat16) if use_bf16
                         else contextlib.nullcontext())
        self.state = LoopState()

    # ------------------------------------------------------------------ pieces

    def _micro_batches(self, step: int):
        first = step * self.batch_seqs + self.info.rank * self.rank_seqs
        for i in range(self.accum):
            x, y = self.sequences.get(first + i * self.micro, self.micro)
            yield x.to(self.info.device, non_blocking=True), y.to(self.info.device, non_blocking=True)

    def _train_step(self, step: int, lr: float):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.info.device)
        for i, (x, y) in enumerate(self._micro_batches(step)):
            last = i == self.accum - 1
            # DDP all-reduces gradients only on the last micro-step
            sync = self.model.no_sync() if (not last and hasattr(self.model, "no_sync")) else contextlib.nullcontext()
            with sync, self.autocast:
                loss = self.model(x, y) / self.accum
            with sync:
                loss.backward()
            total += loss.detach()
        clip = self.run.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return D.all_reduce_sum(total) / self.info.world_size, grad_norm

    @torch.no_grad()
    def evaluate(self) -> tuple[float, Optional[float]]:
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.info.device)
        world, n = self.info.world_size, len(self.val_batches)
        # every rank runs the same number of forwards (FSDP gathers weights collectively in each):
        # a rank with no batch left repeats batch 0 and gives it weight 0
        for i in range(self.info.rank, -(-n // world) * world, world):
            x, y = self.val_batches[i if i < n else 0]
            with self.autocast:
                loss = self.model(x.to(self.info.device), y.to(self.info.device))
            if i < n:
                sums[0] += loss.double() * y.numel()
                sums[1] += y.numel()
        D.all_reduce_sum(sums)
        self.model.train()
        val = (sums[0] / sums[1]).item()
        bpb = val / LN2 / self.bytes_per_token if self.bytes_per_token else None
        return val, bpb

    def _save(self, step: int):
        model_state, optim_state = D.full_state(self.model, self.optimizer, self.run.train.parallel, self.info.enabled)
        if self.info.is_main:
            state = {"model": model_state, "optimizer": optim_state, "loop": self.state.__dict__.copy(),
                     "rng": checkpoint.rng_state(), "world_size": self.info.world_size,
                     "batch_tokens": self.plan.batch_tokens, "steps": self.plan.steps}
            if self.on_checkpoint:
                self.on_checkpoint(state)
            checkpoint.save(self.run_dir, step, state)
        D.barrier()

    def restore(self, state: dict) -> None:
        if state.get("batch_tokens") != self.plan.batch_tokens or state.get("steps") != self.plan.steps:
            raise RuntimeError(
                f"checkpoint was made for batch_tokens={state.get('batch_tokens')}, steps={state.get('steps')}; "
                f"this run plans batch_tokens={self.plan.batch_tokens}, steps={self.plan.steps}. "
                "Resume with the same config, or train.resume=never to start over."
            )
        D.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"],
                          self.run.train.parallel, self.info.enabled)
        self.state = LoopState(**state["loop"])
        checkpoint.set_rng_state(state["rng"])

    def _log(self, row: dict) -> None:
        self.logger.log(row)

    def _print(self, text: str) -> None:
        if self.info.is_main:
            print(text, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ loop

    def fit(self) -> LoopResult:
        t, o, plan = self.run.train, self.run.optim, self.plan
        st = self.state
        started = time.perf_counter()
        wall_before = st.wall_seconds
        window_loss, window_steps, window_time = torch.zeros((), device=self.info.device), 0, 0.0
        status, reason = "completed", None
        self.model.train()
        step = st.step
        while step < plan.steps:
            lr = lr_at(step, plan.steps, plan.warmup_steps, plan.lr, o.schedule, o.min_lr_ratio, o.wsd_decay)
            t0 = time.perf_counter()
            loss, grad_norm = self._train_step(step, lr)
            window_loss += loss
            window_steps += 1
            step += 1
            st.step = step
            last = step == plan.steps

            if step % t.log_every == 0 or last:
                train_loss = (window_loss / window_steps).item()  # host sync: once per log interval
                if self.info.device.type == "cuda":
                    torch.cuda.synchronize()
                window_time += time.perf_counter() - t0
                st.train_seconds += window_time
                tokens_per_s = window_steps * plan.batch_tokens / max(window_time, 1e-9)
                u = compute_mfu(tokens_per_s, self.flops_per_token, self.device_name, self.info.world_size)
                tokens = step * plan.batch_tokens
                self._log({"step": step, "tokens": tokens, "flops": tokens * self.flops_per_token,
                           "train_loss": train_loss, "lr": lr, "grad_norm": float(grad_norm),
                           "tokens_per_s": tokens_per_s, "mfu": u})
                eta = (plan.steps - step) * window_time / window_steps
                self._print(f"step {step:>6}/{plan.steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                            f"{tokens_per_s / 1e3:,.1f}k tok/s" + (f" | mfu {u:.1%}" if u is not None else "")
                            + f" | eta {format_eta(eta)}")
                window_loss.zero_()
                window_steps, window_time = 0, 0.0
                reason = self._divergence(train_loss, step)
                if reason:
                    status = "diverged"
                    break
            else:
                window_time += time.perf_counter() - t0

            if (self.eval_every and step % self.eval_every == 0) or last:
                val, bpb = self.evaluate()
                st.final_val_loss, st.final_val_bpb = val, bpb
                st.best_val_loss = min(st.best_val_loss, val)
                tokens = step * plan.batch_tokens
                self._log({"step": step, "tokens": tokens, "flops": tokens * self.flops_per_token,
                           "val_loss": val, "val_bpb": bpb})
                self._print(f"step {step:>6}/{plan.steps} | val loss {val:.4f}" +
                            (f" | val bpb {bpb:.4f}" if bpb is not None else ""))
                if not math.isfinite(val):
                    status, reason = "diverged", f"validation loss is {val} at step {step}"
                    break
            if (t.ckpt_every and step % t.ckpt_every == 0) or last:
                st.wall_seconds = wall_before + time.perf_counter() - started
                self._save(step)
        st.wall_seconds = wall_before + time.perf_counter() - started
        return LoopResult(status, reason, st)

    def _divergence(self, loss: float, step: int) -> Optional[str]:
        st = self.state
        if not math.isfinite(loss):
            return f"training loss is {loss} at step {step}"
        st.loss_ema = loss if st.loss_ema is None else 0.7 * st.loss_ema + 0.3 * loss
        if step <= self.plan.warmup_steps:
            return None
        st.best_loss_ema = min(st.best_loss_ema, st.loss_ema)
        if st.loss_ema > self.run.train.diverge_ratio * st.best_loss_ema:
            return (f"training loss ran away at step {step}: smoothed {st.loss_ema:.3f} > "
                    f"{self.run.train.diverge_ratio} x best {st.best_loss_ema:.3f} (train.diverge_ratio)")
        return None


def micro_batch_size(rank_seqs: int, seq_len: int, requested: Optional[int], device_type: str) -> int:
    """Sequences per micro-step: the requested number, or the largest divisor of the per-rank batch
    under a token cap (activation memory grows with it; larger steps are faster per token)."""
    if requested is not None:
        if rank_seqs % requested:
            divisors = [d for d in range(1, rank_seqs + 1) if rank_seqs % d == 0]
            raise ConfigError(f"train.micro_batch={requested} must divide the per-process batch of {rank_seqs} "
                             f"sequences; valid: {divisors}")
        return requested
    cap_tokens = 32768 if device_type == "cuda" else 16384
    cap = max(1, cap_tokens // seq_len)
    return max(d for d in range(1, min(rank_seqs, cap) + 1) if rank_seqs % d == 0)
