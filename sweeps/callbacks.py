"""Hydra callback for sweeps: once all jobs have ended, fit and report, and set the exit status.
A testtime sweep gets the test-time analysis (sweeps/testtime/report.py) instead of the loss fit.

The planned sweeper (sweeps/sweeper.py) writes <sweep dir>/sweep.json with every job's outcome.
Exit status: 2 when jobs were refused (their folders hold results made with other settings, or another
process trains them): nothing is fitted; 1 when no job completed or no approach could be fitted; else 0.
The analysis runs on the launching side and never loses the runs (`python -m sweeps.fit DIR` and
`python -m sweeps.report DIR` redo it standalone).
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from train.log import get_logger

log = get_logger("sweep")


class SweepCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from sweeps.sweeper import OUTCOME_FILE

        sweep = config.get("sweep") or {}
        if not sweep.get("name"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            jobs = json.loads((sweep_dir / OUTCOME_FILE).read_text())["jobs"]
        except (OSError, ValueError, KeyError):
            return  # the sweeper stopped before launching and has said why
        counts = {}
        for o in jobs.values():
            key = "refused" if o["exit"] == 2 else (o["status"] or "no record")
            counts[key] = counts.get(key, 0) + 1
        log.info("all jobs ended: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        if counts.get("refused"):
            refused = [name for name, o in jobs.items() if o["exit"] == 2]
            log.error(f"{len(refused)} jobs refused to run (e.g. {refused[0]}: see {sweep_dir / refused[0] / 'job.log'}): "
                      "their folders hold results made with other settings, or another process trains them. "
                      "Use a new folder (hydra.sweep.dir=...) or train.resume=never; nothing was fitted")
            sys.exit(2)
        if not counts.get("completed"):
            log.error(f"no job completed; nothing to fit (each job's reason is in its summary.json and job.log)")
            sys.exit(1)
        if not sweep.get("fit", True):
            return
        testtime = sweep.get("name") == "testtime"  # repeated sampling: pass@k, fits, train-vs-inference frontier
        log.info(f"{'analysing test-time compute' if testtime else 'fitting the frontier'} from {sweep_dir}")
        try:
            from sweeps.plan import preset_name

            preset = sweep.presets[preset_name(sweep)]
            wandb_options = {"wandb_group": config.logger.get("group"), "log": log.info,
                             "wandb_enabled": config.logger.get("kind") == "wandb"}
            if testtime:
                from sweeps.testtime.report import run_analysis

                status = run_analysis(sweep_dir, bootstrap=preset.get("bootstrap"), **wandb_options)
            else:
                from sweeps.report import run_analysis

                options = {k: preset[k] for k in ("bootstrap", "grid") if preset.get(k) is not None}
                status = run_analysis(sweep_dir, **wandb_options, **options)
        except Exception as e:  # the runs are safe on disk; the analysis can be redone standalone
            (sweep_dir / "analysis-error.txt").write_text(traceback.format_exc())
            redo = "sweeps.testtime.report" if testtime else "sweeps.report"
            log.error(f"end-of-sweep analysis failed ({type(e).__name__}: {e}; traceback in "
                      f"{sweep_dir / 'analysis-error.txt'}); rerun it with: python -m {redo} {sweep_dir}")
            sys.exit(1)
        if isinstance(status, dict) and not status.get("ok", True):
            sys.exit(1)
