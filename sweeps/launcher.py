"""A Hydra launcher for sweeps on one machine: each job is its own `python -m train` process, run
K at a time, each on its own GPU(s) or CPU threads.

Why not Hydra's basic launcher: it runs jobs one after the other inside the launching process
(one crash ends the sweep, one GPU only). Submitit's local executor starts every job at once on
the same devices. This one keeps a pool of slots:
- GPUs: `gpus_per_job` GPUs per job (>1 runs the job under torchrun), `jobs_per_gpu` jobs packed
  on one GPU (for small models that cannot fill it), so len(GPUs) * jobs_per_gpu / gpus_per_job slots.
- CPU: `threads_per_job` threads per job and cores // threads_per_job slots (tiny models train
  faster as two 1-thread jobs than one 2-thread job).
A job's output goes to <job dir>/job.log; the console gets one line when a job starts (and where)
and one when it ends (its status from summary.json). Job failures never stop the sweep: the run
record says what happened, and the end-of-sweep fit tolerates them.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

from train.log import get_logger
from train.record import load_summary

log = get_logger("sweep")


@dataclass
class PoolLauncherConf:
    _target_: str = "hydra_plugins.scalelab_launcher.PoolLauncher"  # Hydra loads launchers from hydra_plugins
    gpus: Optional[List[int]] = None  # GPU ids to use; null: all visible (none: CPU jobs)
    gpus_per_job: int = 1
    jobs_per_gpu: int = 1
    threads_per_job: int = 1  # CPU jobs only
    max_parallel: Optional[int] = None  # cap on jobs at a time; null: as many as slots
    poll_s: float = 0.5


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="hydra/launcher", name="pool", node=PoolLauncherConf, provider="scalelab")


def visible_gpus() -> List[int]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except ImportError:
        return []


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_slots(gpus: Sequence[int], gpus_per_job: int, jobs_per_gpu: int, threads_per_job: int,
               max_parallel: Optional[int]) -> List[dict]:
    """Each slot is where one job runs: {"gpus": [...]} or {"threads": n}."""
    if gpus_per_job < 1 or jobs_per_gpu < 1 or threads_per_job < 1:
        raise ValueError("hydra.launcher.gpus_per_job, jobs_per_gpu and threads_per_job must be >= 1")
    if gpus:
        if jobs_per_gpu > 1 and gpus_per_job > 1:
            raise ValueError("hydra.launcher.jobs_per_gpu > 1 packs small jobs; it needs gpus_per_job=1")
        if gpus_per_job > len(gpus):
            raise ValueError(f"hydra.launcher.gpus_per_job={gpus_per_job} but only {len(gpus)} GPUs: {list(gpus)}")
        groups = [list(gpus[i:i + gpus_per_job]) for i in range(0, len(gpus) - gpus_per_job + 1, gpus_per_job)]
        slots = [{"gpus": g} for g in groups for _ in range(jobs_per_gpu)]
    else:
        slots = [{"threads": threads_per_job} for _ in range(max(1, cpu_count() // threads_per_job))]
    return slots[:max_parallel] if max_parallel else slots


def job_command(overrides: Sequence[str], job_dir: Path, slot: dict) -> List[str]:
    args = [*overrides, "hydra.mode=RUN", f"hydra.run.dir={job_dir}"]
    n = len(slot.get("gpus", []))
    if n > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                "-m", "train", *args]
    return [sys.executable, "-m", "train", *args]


def job_env(slot: dict) -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if "gpus" in slot:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in slot["gpus"])
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(slot["threads"])
    return env


def where(slot: dict) -> str:
    if "gpus" in slot:
        return "GPU " + ",".join(str(g) for g in slot["gpus"])
    return f"CPU x{slot['threads']} thread{'s' if slot['threads'] > 1 else ''}"


def outcome(job_dir: Path, returncode: int) -> str:
    s, _ = load_summary(job_dir)
    if s is None:
        return f"no record (exit {returncode}; see {job_dir / 'job.log'})"
    text = s.status
    if s.final_val_loss is not None:
        text += f", val loss {s.final_val_loss:.4f}"
    if s.reason:
        text += f" ({s.reason[:120]})"
    return text


class PoolLauncher(Launcher):
    understands_forks = True  # the planned sweeper may hand it trunks and forks in one batch

    def __init__(self, gpus=None, gpus_per_job=1, jobs_per_gpu=1, threads_per_job=1, max_parallel=None,
                 poll_s=0.5) -> None:
        self.options = dict(gpus=gpus, gpus_per_job=gpus_per_job, jobs_per_gpu=jobs_per_gpu,
                            threads_per_job=threads_per_job, max_parallel=max_parallel)
        self.poll_s = poll_s
        self.config: Optional[DictConfig] = None
        self.hydra_context = None
        self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _job_dir(self, overrides: Sequence[str], idx: int):
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"job{idx}"
            sweep_config.hydra.job.num = idx
        return Path(sweep_config.hydra.sweep.dir) / str(sweep_config.hydra.sweep.subdir), sweep_config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        opts = dict(self.options)
        gpus = opts.pop("gpus")
        gpus = visible_gpus() if gpus is None else list(gpus)
        slots = make_slots(gpus, **opts)
        total = len(job_overrides)
        log.info(f"launching {total} jobs, {len(slots)} at a time ({', '.join(where(s) for s in slots)})")
        pending = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            job_dir, job_cfg = self._job_dir(overrides, idx)
            pending.append((idx, list(overrides), job_dir, job_cfg))
        running: dict = {}  # slot index -> (idx, proc, job_dir, started, job log, overrides, job config)
        returns: dict = {}
        free = list(range(len(slots)))
        stop = _StopRequest()
        self.interrupted = None
        with stop.installed():
            while pending or running:
                while pending and free and not stop.signum:
                    ready = next((p for p in pending if _ready(p[1], pending, running)), None)
                    if ready is None:
                        break  # every pending job waits for a trunk that is still running
                    pending.remove(ready)
                    idx, overrides, job_dir, job_cfg = ready
                    s = free.pop(0)
                    job_dir.mkdir(parents=True, exist_ok=True)
                    job_log = open(job_dir / "job.log", "a")
                    shown = " ".join(filter_overrides(overrides))
                    log.info(f"[{idx + 1}/{total}] {job_dir.name} on {where(slots[s])}: {shown}")
                    proc = subprocess.Popen(job_command(overrides, job_dir, slots[s]), cwd=os.getcwd(),
                                            env=job_env(slots[s]), stdout=job_log, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=_die_with_parent)
                    running[s] = (idx, proc, job_dir, time.time(), job_log, overrides, job_cfg)
                if stop.signum and not stop.forwarded:
                    stop.forward([r[1] for r in running.values()])
                time.sleep(self.poll_s)
                for s, (idx, proc, job_dir, started, job_log, overrides, job_cfg) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    job_log.close()
                    del running[s]
                    free.append(s)
                    log.info(f"[{idx + 1}/{total}] {job_dir.name} ended in {time.time() - started:.0f} s: "
                             f"{outcome(job_dir, proc.returncode)}")
                    ret = JobReturn(overrides=list(overrides), cfg=job_cfg, hydra_cfg=self.config,
                                    working_dir=str(job_dir), task_name=str(self.config.hydra.job.name))
                    # completed from Hydra's point of view even when the run failed: the run record
                    # says what happened, and a failed run must not stop the sweep
                    ret.status = JobStatus.COMPLETED
                    ret.return_value = proc.returncode
                    returns[idx] = ret
                if stop.signum and not running:
                    self.interrupted = (stop.signum, len(stop.forwarded_to), len(pending))
                    break
        return [returns[i] for i in sorted(returns)]


def _init_from(overrides: Sequence[str]):
    """(trunk folder, branch step) of a cooldown fork's overrides, else None."""
    values = dict(o.split("=", 1) for o in overrides if o.startswith(("train.init_from=", "train.init_step=")))
    if "train.init_from" in values and "train.init_step" in values:
        return Path(values["train.init_from"]), int(values["train.init_step"])
    return None


def _ready(overrides, pending, running) -> bool:
    """A fork can start once its trunk saved the branch checkpoint, or once its trunk is not (or no
    longer) part of this launch (then the fork itself says what is missing)."""
    dep = _init_from(overrides)
    if dep is None:
        return True
    trunk, step = dep
    if (trunk / "ckpt" / f"step_{step:08d}.pt").is_file():
        return True
    busy = {p[2].resolve() for p in pending} | {r[2].resolve() for r in running.values()}
    return trunk.resolve() not in busy


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher dies (even by SIGKILL), so no job runs on orphaned.
    Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


class _StopRequest:
    """SIGINT/SIGTERM to the launcher: start nothing more, forward the signal once to the running jobs
    (each saves a checkpoint and stops), wait for them. Jobs run in their own session, so a Ctrl-C at
    the terminal reaches them only through this forwarding, once."""

    def __init__(self):
        self.signum = None
        self.forwarded = False
        self.forwarded_to = []

    @contextlib.contextmanager
    def installed(self):
        old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            log.info(f"signal {signum}: stopping the running jobs after their current step (they save a "
                     "checkpoint); a second signal stops them at once")
        else:
            self.forwarded = False  # forward again: a second signal stops the jobs at once

    def forward(self, procs) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(self.signum)
                if proc not in self.forwarded_to:
                    self.forwarded_to.append(proc)
        self.forwarded = True
