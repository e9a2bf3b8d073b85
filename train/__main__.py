"""`python -m train [overrides]`: one training run, or a sweep with `+sweep=NAME` (Hydra multirun)."""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweeps.plan import register_resolvers as register_sweep_resolvers
from train.config import register_configs, register_resolvers
from train.record import check_writable

register_configs()
register_resolvers()
register_sweep_resolvers()


def preflight(argv) -> None:
    """Hydra creates the output folder before any of our code runs and answers a failure with a
    traceback; check an explicitly given folder first, so the user gets one clear line instead."""
    for arg in argv:
        for key in ("hydra.run.dir=", "hydra.sweep.dir="):
            if arg.startswith(key) and "${" not in arg:
                problem = check_writable(arg[len(key):])
                if problem:
                    print(f"error: {problem}; choose another with {key}PATH", file=sys.stderr)
                    sys.exit(2)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from train.run import execute  # torch is imported only once the config has composed

    hc = HydraConfig.get()
    in_sweep = hc.mode == RunMode.MULTIRUN
    code = execute(cfg, hc.runtime.output_dir, OmegaConf.to_yaml(cfg, resolve=True), in_sweep)
    if code and not in_sweep:
        sys.exit(code)


if __name__ == "__main__":
    preflight(sys.argv[1:])
    main()
