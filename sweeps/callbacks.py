"""Hydra callback for sweeps: says which preset runs, and fits + reports once all jobs have ended.

The end-of-sweep analysis is a convenience: it runs on the launching side after every job,
whatever the jobs' outcomes, and never fails the sweep (`python -m sweeps.fit DIR` and
`python -m sweeps.report DIR` do the same work standalone).
"""
from __future__ import annotations

import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from train.log import get_logger

log = get_logger("sweep")


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from sweeps.plan import preset_name

        sweep = config.get("sweep") or {}
        if not sweep.get("name"):
            return
        requested = sweep.get("preset", "auto")
        chosen = preset_name(sweep)
        why = "chosen" if requested != "auto" else "picked from the hardware (set sweep.preset to choose)"
        params = config.hydra.sweeper.params or {}
        n_jobs = 1
        for value in params.values():
            n_jobs *= len(str(value).split(","))
        log.info(f"sweep {sweep.name}: preset {chosen} ({why}); {n_jobs} jobs into {config.hydra.sweep.dir}")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = config.get("sweep") or {}
        if not sweep.get("name") or not sweep.get("fit", True):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        log.info(f"all jobs ended; fitting the frontier from {sweep_dir}")
        try:
            from sweeps.plan import preset_values
            from sweeps.report import run_analysis

            preset = preset_values(sweep)
            # presets may make the fit cheaper (the smoke preset does, for the tests)
            options = {k: preset[k] for k in ("bootstrap", "grid") if k in preset}
            run_analysis(sweep_dir, wandb_group=config.logger.get("group"),
                         wandb_enabled=config.logger.get("kind") == "wandb", **options)
        except Exception as e:  # the runs are safe on disk; the analysis can be redone standalone
            traceback.print_exc()
            log.info(f"end-of-sweep analysis failed ({type(e).__name__}: {e}); "
                 f"rerun it with: python -m sweeps.report {sweep_dir}")
