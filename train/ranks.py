"""Which process of a launch this is, from the environment, without importing torch.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; under SLURM's srun without torchrun, SLURM's task
variables are mapped onto them first (`env_from_slurm`, called once at start-up, before Hydra
resolves the config, so every rank names itself correctly for .hydra and its log file).
"""
from __future__ import annotations

import os
import time


def env_from_slurm() -> None:
    """Under `srun` without torchrun (one task per GPU), derive torchrun's variables from SLURM's."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST", "localhost")
        # the first host of a nodelist like "gpu[01-04],cpu7" (scontrol would need a subprocess)
        first = nodes.split(",")[0]
        if "[" in first:
            prefix, rest = first.split("[", 1)
            first = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
        os.environ["MASTER_ADDR"] = first
    os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_stamp() -> str:
    """A run-dir name every process of one launch agrees on: torchrun gives all its workers the
    same TORCHELASTIC_RUN_ID and SLURM the same job id; a lone process uses the time."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return time.strftime("%Y-%m-%d") + "_torchrun-" + run_id[:12]
    if os.environ.get("SLURM_JOB_ID"):
        return "slurm-" + os.environ["SLURM_JOB_ID"] + "-" + os.environ.get("SLURM_ARRAY_TASK_ID", "0")
    return time.strftime("%Y-%m-%d_%H-%M-%S")
