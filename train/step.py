"""One optimizer step, shared by the trainer (train/loop.py) and the throughput benchmark
(bench/train.py), so the benchmark times exactly the step `python -m train` runs.

A step: forward + backward over `accum` micro-batches (DDP all-reduces gradients on the last one
only), gradient clipping, AdamW, zero the gradients. With `cuda_graphs` the whole step is captured
once in a CUDA graph and replayed from static input buffers (one process, one micro-batch per step,
fused capturable AdamW); the learning rate lives on the device so a captured step follows the schedule.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterable, Optional, Tuple

import torch

from model.config import ConfigError


def autocast_for(device: torch.device, bf16: bool, cuda_graphs: bool = False):
    if not bf16:
        return contextlib.nullcontext()
    # The autocast weight-cast cache must not outlive a graph capture.
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not cuda_graphs)


class TrainStep:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, accum: int, grad_clip: float,
                 autocast, cuda_graphs: bool = False):
        self.model, self.optimizer, self.accum = model, optimizer, accum
        self.clip = grad_clip if grad_clip > 0 else float("inf")
        self.autocast = autocast
        self.cuda_graphs = cuda_graphs
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        if cuda_graphs:
            if accum != 1:
                raise ConfigError(f"train.cuda_graphs needs one micro-batch per step, but this step has {accum}; "
                                  "set train.micro_batch to the whole per-process batch, or train.cuda_graphs=false")
            for group in optimizer.param_groups:
                group["capturable"] = True  # step counters on the device: no host sync inside step()
                group["lr"] = torch.tensor(float(group["lr"]), device=next(model.parameters()).device)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def _eager(self, micro_batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], zero_grad: bool = True):
        total = None
        for i, (x, y) in enumerate(micro_batches):
            last = i == self.accum - 1
            # DDP all-reduces gradients only on the last micro-step
            sync = self.model.no_sync() if (not last and hasattr(self.model, "no_sync")) else contextlib.nullcontext()
            with sync:
                with self.autocast:
                    loss = self.model(x, y) / self.accum
                loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        return total, grad_norm

    def __call__(self, micro_batches, lr: float):
        """Run one step; returns (mean loss over the micro-batches, gradient norm before clipping) as
        device tensors (no host synchronisation)."""
        self.set_lr(lr)
        if not self.cuda_graphs:
            return self._eager(micro_batches)
        (x, y), = list(micro_batches)
        if self._graph is None:
            return self._capture(x, y)
        self._x.copy_(x)
        self._y.copy_(y)
        self._graph.replay()
        return self._out

    def _capture(self, x, y):
        # Warm up on a side stream (capture requires it), then capture a step whose gradients start
        # as None, so backward allocates them in the graph's memory pool.
        warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
        self._x, self._y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self._eager([(self._x, self._y)])
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            # no zero_grad inside: each replay's backward writes the gradients afresh at the same addresses
            self._out = self._eager([(self._x, self._y)], zero_grad=False)
        return out
