"""Sweeps: planning IsoFLOP grids, collecting run records, fitting the compute-optimal frontier, reports.

Importing this package is cheap (no numpy, scipy, matplotlib, wandb or torch at import time).
The analysis entry points are loaded on first use:

    from sweeps import run_analysis            # collect -> fit -> report, never raises on bad runs
    run_analysis("outputs/multirun/2026-01-01/12-00-00")

Command lines:  ``python -m sweeps.fit INPUT``  and  ``python -m sweeps.report DIR``.
"""

__all__ = ["run_analysis"]


def run_analysis(sweep_dir, out_dir=None, **kwargs):
    """Collect the runs under ``sweep_dir``, fit the three approaches, write fit.json, plots and reports.

    A thin lazy wrapper around :func:`sweeps.report.run_analysis` (see there for the options).
    """
    from .report import run_analysis as _run_analysis

    return _run_analysis(sweep_dir, out_dir=out_dir, **kwargs)
