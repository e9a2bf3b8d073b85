"""`python -m train [overrides]`: one training run, or a sweep with `+sweep=NAME` (Hydra multirun)."""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from train import log as logs
from train import ranks
from train.config import check_override, register_configs, register_resolvers
from train.io_utils import check_writable

register_configs()
register_resolvers()
log = logs.get_logger()


def preflight(argv) -> None:
    """Mistakes Hydra would answer with a traceback or a raw message, caught first with one clear line:
    an output folder that cannot be written (Hydra creates it before any of our code runs), an unknown
    key or a value of the wrong type."""
    for arg in argv:
        problem = check_override(arg)
        if problem:
            log.error(problem)
            sys.exit(2)
    folders = [(a.split("=", 1)[0], a.split("=", 1)[1]) for a in argv
               if a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) and "${" not in a]
    sweep = any(a.startswith("+sweep=") for a in argv)
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    if not any(k == key for k, _ in folders):
        folders.append((key, "runs"))  # the default output folders live under runs/
    for key, folder in folders:
        problem = check_writable(folder)
        if problem:
            log.error(f"{problem}; choose another with {key}=PATH")
            sys.exit(2)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from train.run import execute  # torch is imported only once the config has composed

    hc = HydraConfig.get()
    code = execute(cfg, hc.runtime.output_dir, OmegaConf.to_yaml(cfg, resolve=True), tuple(hc.overrides.task))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    ranks.env_from_slurm()  # before Hydra resolves ${...}: every SLURM task must know its rank
    logs.setup(console=ranks.rank() == 0)
    preflight(sys.argv[1:])
    main()
