"""Registers scalelab's pool launcher with Hydra (`hydra/launcher=pool`); the code is sweeps/launcher.py.
Hydra accepts plugin classes defined under hydra_plugins only, hence the subclass."""
from sweeps import launcher


class PoolLauncher(launcher.PoolLauncher):
    pass


launcher.register()
