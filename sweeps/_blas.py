"""Run the fitters with single-threaded OpenBLAS.

scipy's L-BFGS-B makes many tiny BLAS calls; with OpenBLAS threads on a busy 2-core machine each
call pays for waking (and spinning) the worker threads, which made the 4,500-start grid ~50x
slower than single-threaded.  Environment variables only help before numpy is imported, and the
end-of-sweep callback runs inside a process that already imported it, so this sets the thread
count of every OpenBLAS already loaded (numpy's and scipy's) through its C API, then restores it.
A no-op where no such library is found (non-Linux, MKL builds).
"""
from __future__ import annotations

import ctypes
from contextlib import contextmanager

_NAMES = [(f"{p}openblas_get_num_threads{s}", f"{p}openblas_set_num_threads{s}")
          for p in ("", "scipy_") for s in ("", "64_")]


def _loaded_openblas():
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and "openblas" in parts[-1].lower() and parts[-1] not in paths:
                    paths.append(parts[-1])
    except OSError:
        return []
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _NAMES:
            get_f, set_f = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get_f is not None and set_f is not None:
                get_f.restype = ctypes.c_int
                set_f.argtypes = [ctypes.c_int]
                found.append((get_f, set_f))
                break
    return found


@contextmanager
def single_threaded_blas():
    """Context manager: OpenBLAS uses one thread inside, its previous setting afterwards."""
    try:
        libs = _loaded_openblas()
        saved = [(get_f(), set_f) for get_f, set_f in libs]
        for _, set_f in saved:
            set_f(1)
    except Exception:  # never let a tuning helper break a fit
        saved = []
    try:
        yield
    finally:
        for n, set_f in saved:
            try:
                set_f(int(n))
            except Exception:
                pass
