"""Shared test set-up: CPU by default, Triton kernels through the interpreter, wandb never online."""
import os
from pathlib import Path

import pytest
import torch

# Must be set before any @triton.jit function is defined (kernels/ is imported lazily by tests).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

REPO = Path(__file__).resolve().parents[1]
REFDATA = Path(os.environ.get("SCALELAB_REFDATA", REPO.parent / "shared" / "refdata"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def refdata() -> Path:
    """../shared/refdata, or skip with the reason when this checkout has no such folder beside it."""
    if not REFDATA.is_dir():
        pytest.skip(f"reference data folder {REFDATA} is absent (it lives beside the checkout, in "
                    "../shared/refdata; or point SCALELAB_REFDATA at it)")
    return REFDATA


def run_cli(args, *, cache_dir=None, env=None, cwd=REPO, timeout=600, check=False, wait=True):
    """Run `python ARGS...` (e.g. ["-m", "train", ...]) as a user would: the repo as working folder, wandb
    disabled, unbuffered output, one thread, the Triton interpreter off (real runs pick kernels themselves),
    and the data cache in `cache_dir`. Returns the CompletedProcess (a Popen with wait=False); with check,
    raises with the whole output on a non-zero exit. The one subprocess helper of the test suite."""
    import subprocess
    import sys

    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    full_env.pop("TRITON_INTERPRET", None)
    if cache_dir is not None:
        full_env["SCALELAB_CACHE"] = str(cache_dir)
    full_env.update(env or {})
    cmd = [sys.executable, *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {' '.join(cmd)}\nSTDOUT:\n{p.stdout}\nSTDERR:\n{p.stderr}")
    return p
