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

# The one tiny debug configuration reused by the end-to-end tests: a 2-layer model on a capped stdlib corpus.
TINY = [
    "model.width=32", "model.depth=2", "model.heads=2", "model.seq_len=32",
    "data.max_tokens=3000000", "data.val_tokens=4096",
    "train.tokens=40960", "train.batch_tokens=1024", "train.eval_every=20", "train.ckpt_every=10",
    "train.log_every=5", "train.min_steps=5", "optim.lr=3e-3",
]
REFDATA = Path(os.environ.get("SCALELAB_REFDATA", REPO.parent / "shared" / "refdata"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):  # the marker, not a parameter id that happens to say "gpu"
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


def run_train(args, run_dir, cache_dir, check=True, timeout=300, env_extra=None, wait=True):
    """`python -m train ARGS hydra.run.dir=RUN_DIR` through run_cli; raises on a non-zero exit with check."""
    return run_cli(["-m", "train", *args, f"hydra.run.dir={run_dir}"], cache_dir=cache_dir, env=env_extra,
                   timeout=timeout, check=check and wait, wait=wait)


def summary(run_dir) -> dict:
    """summary.json as a plain dict (the tests check the file users and tools read)."""
    import json

    return json.loads((Path(run_dir) / "summary.json").read_text())


def metrics(run_dir) -> list:
    import json

    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
