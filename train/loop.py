"""The training loop: steps (train/step.py), schedule, evaluation, checkpoints, divergence guard,
a graceful stop on request, and progress lines. The data position is a pure function of the step,
so a resumed run (on any world size) reads exactly the batches an uninterrupted one would."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch

from model.config import ConfigError
from model.flops import mfu as compute_mfu
from train import checkpoint
from train import distributed as D
from train.log import PLAIN, get_logger
from train.optim import Schedule
from train.step import TrainStep, autocast_for

LN2 = math.log(2)
log = get_logger("train")


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


@dataclass
class LoopResult:
    status: str  # completed | diverged | stopped
    reason: Optional[str]
    state: LoopState


@dataclass(frozen=True)
class LoopSettings:
    schedule: Schedule
    grad_clip: float
    log_every: int
    eval_every: int  # 0: only at the end
    ckpt_every: int  # 0: only at the end
    diverge_ratio: float
    bf16: bool
    parallel: str = "ddp"
    cuda_graphs: bool = False
    keep_steps: tuple = ()  # checkpoints kept whatever the retention (a trunk's branch points)


@dataclass
class TrainData:
    sequences: object  # train.data.TrainSequences
    val_batches: list  # the full fixed validation set: the final evaluation
    val_subset: int  # how many of val_batches the intermediate evaluations use (a fixed prefix)
    bytes_per_token: Optional[float]  # over the full validation set, for bits per byte
    micro: int  # sequences per micro-step


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Trainer:
    def __init__(self, *, model, optimizer, plan, settings: LoopSettings, data: TrainData, info: D.DistInfo,
                 logger, checkpointer: checkpoint.Checkpointer, flops_per_token: float, device_name: str,
                 extra_state: Optional[Callable[[], dict]] = None):
        self.model, self.optimizer, self.plan, self.settings = model, optimizer, plan, settings
        self.data, self.info, self.logger, self.checkpointer = data, info, logger, checkpointer
        self.flops_per_token, self.device_name = flops_per_token, device_name
        self.extra_state = extra_state  # more entries for each checkpoint (identity, wandb id)
        self.batch_seqs = plan.batch_tokens // data.sequences.seq_len
        self.rank_seqs = self.batch_seqs // info.world_size
        self.accum = self.rank_seqs // data.micro
        self.step_fn = TrainStep(model, optimizer, self.accum, settings.grad_clip,
                                 autocast_for(info.device, settings.bf16, settings.cuda_graphs), settings.cuda_graphs)
        self.autocast = autocast_for(info.device, settings.bf16)
        self.state = LoopState()
        self.stop_requested: Callable[[], Optional[str]] = lambda: None  # run.py installs the signal check

    # ------------------------------------------------------------------ pieces

    def _micro_batches(self, step: int):
        first = step * self.batch_seqs + self.info.rank * self.rank_seqs
        micro = self.data.micro
        for i in range(self.accum):
            x, y = self.data.sequences.get(first + i * micro, micro)
            yield x.to(self.info.device, non_blocking=True), y.to(self.info.device, non_blocking=True)

    @torch.no_grad()
    def evaluate(self, full: bool = True) -> tuple[float, Optional[float]]:
        """Mean validation loss (nats/token) and bits per byte, on the full fixed set or its fixed subset."""
        self.model.eval()
        batches = self.data.val_batches if full else self.data.val_batches[:self.data.val_subset]
        sums = torch.zeros(3, dtype=torch.float64, device=self.info.device)
        world, n = self.info.world_size, len(batches)
        # every rank runs the same number of forwards (FSDP gathers weights collectively in each):
        # a rank with no batch left repeats batch 0 and gives it weight 0
        for i in range(self.info.rank, -(-n // world) * world, world):
            x, y = batches[i if i < n else 0]
            with self.autocast:
                loss = self.model(x.to(self.info.device), y.to(self.info.device))
            if i < n:
                sums[0] += loss.double() * y.numel()
                sums[1] += y.numel()
        D.all_reduce_sum(sums)
        self.model.train()
        val = (sums[0] / sums[1]).item()
        bpb = val / LN2 / self.data.bytes_per_token if (self.data.bytes_per_token and full) else None
        return val, bpb

    def _save(self, step: int):
        model_state, optim_state = D.full_state(self.model, self.optimizer, self.settings.parallel, self.info.enabled)
        if self.info.is_main:
            state = {"model": model_state, "optimizer": optim_state, "loop": self.state.__dict__.copy(),
                     "rng": checkpoint.rng_state(), "world_size": self.info.world_size,
                     "batch_tokens": self.plan.batch_tokens, "steps": self.plan.steps}
            if self.extra_state:
                state.update(self.extra_state())
            self.checkpointer.save(step, state)
        D.barrier()

    def restore(self, state: dict, step: Optional[int] = None) -> None:
        """Continue from a checkpoint's weights, optimizer and loop state. `step`: a fork's branch point
        (its trunk's checkpoint): the loop state starts there, the rest of the trunk's state is dropped."""
        D.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"],
                          self.settings.parallel, self.info.enabled)
        if step is None:
            self.state = LoopState(**state["loop"])
        else:
            loop = state["loop"]
            self.state = LoopState(step=step, loss_ema=loop.get("loss_ema"), best_loss_ema=loop.get("best_loss_ema"),
                                   train_seconds=0.0, wall_seconds=0.0)
        checkpoint.set_rng_state(state["rng"])

    def _line(self, text: str) -> None:
        if self.info.is_main:
            log.info(text, extra=PLAIN)

    # ------------------------------------------------------------------ loop

    def fit(self) -> LoopResult:
        s, plan, st = self.settings, self.plan, self.state
        started = time.perf_counter()
        wall_before = st.wall_seconds
        window_loss, window_steps, window_time = torch.zeros((), device=self.info.device), 0, 0.0
        status, reason = "completed", None
        self.model.train()
        step = st.step
        while step < plan.steps:
            lr = s.schedule(step)
            t0 = time.perf_counter()
            loss, grad_norm = self.step_fn(self._micro_batches(step), lr)
            window_loss += loss
            window_steps += 1
            step += 1
            st.step = step
            last = step == plan.steps

            if step % s.log_every == 0 or last:
                train_loss = (D.all_reduce_sum(window_loss) / self.info.world_size / window_steps).item()
                if self.info.device.type == "cuda":
                    torch.cuda.synchronize()
                window_time += time.perf_counter() - t0
                st.train_seconds += window_time
                tokens_per_s = window_steps * plan.batch_tokens / max(window_time, 1e-9)
                u = compute_mfu(tokens_per_s, self.flops_per_token, self.device_name, self.info.world_size)
                tokens = step * plan.batch_tokens
                self.logger.log({"step": step, "tokens": tokens, "flops": tokens * self.flops_per_token,
                                 "train_loss": train_loss, "lr": lr, "grad_norm": float(grad_norm),
                                 "tokens_per_s": tokens_per_s, "mfu": u})
                eta = (plan.steps - step) * window_time / window_steps
                self._line(f"step {step:>6}/{plan.steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
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

            if (s.eval_every and step % s.eval_every == 0) or last:
                full = last or self.data.val_subset >= len(self.data.val_batches)
                val, bpb = self.evaluate(full=full)
                if full:  # the final and best losses are always on the full fixed validation set
                    st.final_val_loss, st.final_val_bpb = val, bpb
                    st.best_val_loss = min(st.best_val_loss, val)
                tokens = step * plan.batch_tokens
                self.logger.log({"step": step, "tokens": tokens, "flops": tokens * self.flops_per_token,
                                 "val_loss": val, "val_bpb": bpb, "val_full": full})
                self._line(f"step {step:>6}/{plan.steps} | val loss {val:.4f}" +
                           (f" | val bpb {bpb:.4f}" if bpb is not None else ""))
                if not math.isfinite(val):
                    status, reason = "diverged", f"validation loss is {val} at step {step}"
                    break
            stop = self._stop_requested(step, last or step % s.log_every == 0)
            if (s.ckpt_every and step % s.ckpt_every == 0) or last or step in s.keep_steps or stop:
                st.wall_seconds = wall_before + time.perf_counter() - started
                self._save(step)
            if stop and not last:
                status, reason = "stopped", stop
                break
        st.wall_seconds = wall_before + time.perf_counter() - started
        return LoopResult(status, reason, st)

    def _stop_requested(self, step: int, synced: bool) -> Optional[str]:
        """A signal asked the run to stop. One process checks every step; several agree at log steps
        (where they synchronise anyway), so every rank leaves the loop at the same step."""
        why = self.stop_requested()
        if not self.info.enabled:
            return why
        if not synced:
            return None
        flag = torch.tensor([1.0 if why else 0.0], device=self.info.device)
        D.all_reduce_sum(flag)
        return (why or "another rank was asked to stop") if flag.item() > 0 else None

    def _divergence(self, loss: float, step: int) -> Optional[str]:
        st = self.state
        if not math.isfinite(loss):
            return f"training loss is {loss} at step {step}"
        st.loss_ema = loss if st.loss_ema is None else 0.7 * st.loss_ema + 0.3 * loss
        if step <= self.plan.warmup_steps:
            return None
        st.best_loss_ema = min(st.best_loss_ema, st.loss_ema)
        if st.loss_ema > self.settings.diverge_ratio * st.best_loss_ema:
            return (f"training loss ran away at step {step}: smoothed {st.loss_ema:.3f} > "
                    f"{self.settings.diverge_ratio} x best {st.best_loss_ema:.3f} (train.diverge_ratio)")
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
