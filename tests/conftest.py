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
