"""One live process per run folder: an advisory lock on <run_dir>/.lock.

The lock is an flock held by the training process (rank 0) for the whole run. The kernel releases it
when that process dies, however it dies (SIGKILL, OOM, a lost node on a local file system), so a
stale lock never blocks a relaunch. The file says who holds it, for the message a second process gets.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Optional

LOCK = ".lock"


class LockedError(Exception):
    """Another live process trains this folder. The message says which."""


class RunLock:
    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.path.parent} is being trained by {holder}; wait for it to end, stop it, "
                              "or use another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (harmless, reused next time)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
