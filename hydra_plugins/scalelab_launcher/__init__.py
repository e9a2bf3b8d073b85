"""Registers scalelab's Hydra plugins: the planned sweeper (`hydra/sweeper=planned`, sweeps/sweeper.py),
the pool launcher (`hydra/launcher=pool`, sweeps/launcher.py) and the ${sweep_preset:} resolver
(sweeps/plan.py). Hydra imports its plugins before composing a config, so `python -m train` needs no
import of sweeps. Hydra accepts plugin classes defined under hydra_plugins only, hence the subclasses."""
from sweeps import launcher, plan, sweeper

plan.register_resolvers()


class PoolLauncher(launcher.PoolLauncher):
    pass


class PlannedSweeper(sweeper.PlannedSweeper):
    pass


launcher.register()
sweeper.register()
