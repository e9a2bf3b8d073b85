"""The Hydra sweeper of every scalelab sweep (`hydra/sweeper=planned`): the job list comes from the
planner (sweeps/plan.py), not from a Cartesian product.

Before any job starts it validates the settings all jobs share and prepares the data once (one
clear message and exit 2 for a bad setting, offline data or a failed check), and writes the plan to
<sweep dir>/plan.json. Comma lists on the command line (`train.seed=0,1,2`) repeat the whole plan
once per value, with the value in each job's name. Jobs go to the launcher in one batch when it
understands cooldown forks' dependencies (the pool launcher starts a fork once its trunk has saved
the branch checkpoint), else trunks first, then forks. Afterwards each trunk's checkpoints are
deleted once all its forks completed, and <sweep dir>/sweep.json records every job's outcome, which
the end-of-sweep callback turns into the exit status.
"""
from __future__ import annotations

import itertools
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import open_dict

from train.io_utils import write_json
from train.log import get_logger
from train.record import load_summary

from . import plan as planner

log = get_logger("sweep")
PLAN_FILE, OUTCOME_FILE = "plan.json", "sweep.json"


@dataclass
class PlannedSweeperConf:
    _target_: str = "hydra_plugins.scalelab_launcher.PlannedSweeper"


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="hydra/sweeper", name="planned", node=PlannedSweeperConf, provider="scalelab")


class SweepInterrupted(Exception):
    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class PlannedSweeper(Sweeper):
    def __init__(self) -> None:
        self.config = None
        self.hydra_context = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        try:
            return self._sweep(arguments)
        except planner.PlanError as e:
            log.error(str(e))
            sys.exit(2)
        except SweepInterrupted as e:
            log.error(str(e))
            sys.exit(128 + e.signum)

    def _sweep(self, arguments: List[str]) -> Any:
        from model.config import ConfigError
        from train.config import validate
        from train.data import DataError

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides(arguments)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
                for o in parsed if o.is_sweep_override()]
        combos = list(itertools.product(*axes)) if axes else [()]

        sweep_cfg = self.config.sweep
        key = planner.preset_name(sweep_cfg)
        shared = planner.shared_overrides(list(sweep_cfg.presets[key].overrides), arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            run = validate(self._job_config(fixed + list(combos[0]) + shared))
            plan = planner.plan_from_config(run, sweep_cfg.name, key, sweep_dir)
        except (ConfigError, DataError) as e:
            raise planner.PlanError(str(e)) from None
        if plan.problems:
            raise planner.PlanError("the sweep cannot run as planned:\n  " + "\n  ".join(plan.problems))
        for c in plan.checks:
            if not c["ok"]:
                log.warning(f"plan check failed: {c['check']}: {c['detail']}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_json(sweep_dir / PLAN_FILE, plan.as_dict())
        totals = plan.as_dict()["totals"]
        log.info(f"sweep {plan.sweep}, preset {key} ({'chosen' if sweep_cfg.preset != 'auto' else 'picked from the hardware; set sweep.preset to choose'}), "
                 f"schedule {plan.schedule}: {len(plan.jobs) * len(combos)} jobs, {totals['flops_new'] * len(combos):.3g} "
                 f"training FLOPs, into {sweep_dir} (python -m sweeps.plan {plan.sweep} --preset {key} lists them)")

        jobs = []  # (job, overrides)
        for combo in combos:
            suffix = "".join(f"_{c.split('=', 1)[0].split('.')[-1]}{c.split('=', 1)[1]}" for c in combo)
            for job in plan.jobs:
                ov = [o for o in job.overrides]
                if suffix:
                    ov = [_suffixed(o, suffix, sweep_dir) for o in ov]
                jobs.append((job, fixed + list(combo) + shared + ov))

        returns = []
        idx = 0
        if getattr(self.launcher, "understands_forks", False):
            batches = [jobs]
        else:  # another launcher (submitit, SLURM): trunks first, then the rest
            batches = [[j for j in jobs if j[0].role == "trunk"], [j for j in jobs if j[0].role != "trunk"]]
        for batch in batches:
            if not batch:
                continue
            results = self.launcher.launch([ov for _, ov in batch], initial_job_idx=idx)
            idx += len(batch)
            returns.append(results)
            if getattr(self.launcher, "interrupted", None):
                signum, n_stopped, n_left = self.launcher.interrupted
                raise SweepInterrupted(signum, f"sweep stopped by signal {signum}: {n_stopped} running jobs "
                                               f"saved a checkpoint and stopped, {n_left} never started; relaunch "
                                               "the same command to resume")
        self._finish(jobs, returns, sweep_dir)
        return returns

    def _job_config(self, overrides: List[str]):
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    def _finish(self, jobs, returns, sweep_dir: Path) -> None:
        codes = [r.return_value for batch in returns for r in batch]
        outcomes = {}
        for (job, ov), code in zip(jobs, codes):
            name = next(o.split("=", 1)[1] for o in ov if o.startswith("sweep.job="))
            s, why = load_summary(sweep_dir / name)
            outcomes[name] = {"role": job.role, "exit": code, "status": s.status if s else None,
                              "reason": (s.reason if s else why) if code != 2 else "refused (see its job.log)"}
        # a trunk's checkpoints are needed until every fork of it completed
        for name, o in outcomes.items():
            if o["role"] != "trunk":
                continue
            forks = [f for f, fo in outcomes.items() if fo["role"] == "fork" and _trunk_of(jobs, f) == name]
            if o["status"] == "completed" and forks and all(outcomes[f]["status"] == "completed" for f in forks):
                shutil.rmtree(sweep_dir / name / "ckpt", ignore_errors=True)
        write_json(sweep_dir / OUTCOME_FILE, {"jobs": outcomes})


def _trunk_of(jobs, fork_name: str):
    for job, ov in jobs:
        if job.role == "fork" and any(o == f"sweep.job={fork_name}" for o in ov):
            init = next(o.split("=", 1)[1] for o in ov if o.startswith("train.init_from="))
            return Path(init).name
    return None


def _suffixed(override: str, suffix: str, sweep_dir: Path) -> str:
    """A job's override with the repetition's suffix on its name and on its trunk's folder."""
    key, _, value = override.partition("=")
    if key == "sweep.job":
        return f"{key}={value}{suffix}"
    if key == "train.init_from":
        return f"{key}={value}{suffix}"
    return override
