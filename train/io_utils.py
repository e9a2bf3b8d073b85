"""The one set of file and environment helpers used by train/, sweeps/ and bench/.

- `atomic_open` / `atomic_write_text` / `write_json`: a reader sees the old file or the new one, never
  half (temp file in the same folder, fsync, rename); permissions follow the umask like any new file.
- `to_jsonable`: numpy scalars and arrays, tuples, Paths and dataclasses to JSON types; NaN/inf to null.
- `check_writable`, `versions`, `git_commit`, `wandb_mode`.

Standard library only at import time (torch and friends are imported inside `versions`), so kernel
benchmarks and the fitter can use it without the training stack.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse


@contextlib.contextmanager
def atomic_open(path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path` for writing; on a clean exit it is flushed, fsynced and
    renamed over `path`; on an exception it is removed and `path` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), got mode {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 lets the umask decide the permissions, as for any other file the user creates
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def to_jsonable(value: Any) -> Any:
    """JSON-ready copy of `value`. JSON has no NaN/inf: they become null (records say why elsewhere)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    # numpy scalars and arrays, without importing numpy here
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    return value


def dumps(obj: Any, indent: Optional[int] = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


def write_json(path, obj: Any, indent: Optional[int] = 2) -> Path:
    """Atomically write `obj` as JSON (see to_jsonable) with a trailing newline."""
    return atomic_write_text(path, dumps(obj, indent) + "\n")


def check_writable(folder) -> Optional[str]:
    """None if `folder` can be created and written, else what is wrong (for a one-line error)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return f"the output folder {folder} cannot be written ({e.strerror or e})"
    return None


def git_commit() -> Optional[str]:
    """HEAD of the checkout this code runs from, with "-dirty" when tracked files are modified."""
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions(libraries=("torch", "triton", "numpy", "hydra-core", "wandb")) -> dict:
    """Python and installed library versions for records and results (from the package metadata: nothing is
    imported for it, wandb's import alone takes a second); CUDA's version when torch is already loaded."""
    from importlib import metadata

    v = {"python": platform.python_version()}
    for name in libraries:
        try:
            v[name.removesuffix("-core")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
    return v


def wandb_api_key_configured() -> bool:
    """True when wandb could log in without asking: WANDB_API_KEY, or a netrc entry for the wandb host
    (WANDB_BASE_URL's host for a self-hosted server)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return host in netrc.read_text()
    except OSError:
        return False


def wandb_mode(requested: str = "auto") -> tuple[str, str]:
    """(mode, why): WANDB_MODE when set; else `requested` unless it is auto; else online when an API
    key is configured and offline otherwise (sync later with `wandb sync`)."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env, f"WANDB_MODE={env}"
    if requested != "auto":
        return requested, f"logger.mode={requested}"
    if wandb_api_key_configured():
        return "online", "an API key is configured"
    return "offline", "no API key configured (set WANDB_API_KEY or run `wandb login`)"
