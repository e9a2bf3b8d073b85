"""Registers scalelab's pool launcher with Hydra (`hydra/launcher=pool`) and the resolvers the sweep
configs use (${preset:...}, ...); the code is sweeps/launcher.py and sweeps/plan.py. Hydra imports its
plugins before composing a config, so `python -m train` needs no import of sweeps. Hydra accepts plugin
classes defined under hydra_plugins only, hence the subclass."""
from sweeps import launcher, plan

plan.register_resolvers()


class PoolLauncher(launcher.PoolLauncher):
    pass


launcher.register()
