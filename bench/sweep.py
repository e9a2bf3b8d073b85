"""Wall time of a whole IsoFLOP sweep, how busy it kept the GPU, and the exponent it found.

    python bench/sweep.py                   # GPU: the gpu preset; writes bench/results/sweep-<gpu-slug>.json
    python bench/sweep.py --preset cpu      # the CPU preset on this machine (JSON to --out, not bench/results)
    python bench/sweep.py --smoke --out /tmp/s.json

Runs `python -m train +sweep=chinchilla sweep.preset=PRESET hydra.sweep.dir=DIR` as a child process
(so the numbers are what a user gets, launcher and end-of-sweep fit included) while a sampler
thread reads GPU utilisation from nvidia-smi every second. GPU-busy fraction = mean utilisation,
which nvidia-smi defines as the fraction of each sample period in which a kernel was running.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.timing import command_line, device_info, slug, write_results  # noqa: E402


class GpuSampler(threading.Thread):
    """Polls `nvidia-smi` for utilisation of every visible GPU until stopped."""

    def __init__(self, period_s: float = 1.0):
        super().__init__(daemon=True)
        self.period_s, self.samples, self._stop = period_s, [], threading.Event()

    def run(self):
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
                self.samples.append([float(x) for x in out.split()])
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.period_s)

    def stop(self) -> float | None:
        self._stop.set()
        self.join(timeout=5)
        values = [v for row in self.samples for v in row]
        return sum(values) / len(values) / 100 if values else None


def sweep_outcome(sweep_dir: Path) -> dict:
    """Run statuses (through train.record's loader) and the fit's exponents (through sweeps.results')."""
    from sweeps.collect import find_run_dirs
    from sweeps.results import load_fit
    from train.record import load_summary

    statuses: dict[str, int] = {}
    for run_dir in find_run_dirs(sweep_dir):
        summary, _ = load_summary(run_dir)
        status = summary.status if summary else "unreadable"
        statuses[status] = statuses.get(status, 0) + 1
    out = {"runs": sum(statuses.values()), "statuses": statuses, "a_approach2": None, "a_approach3": None}
    fit, _ = load_fit(sweep_dir)
    if fit is None:
        return out
    out["fit_status"] = fit.status
    for key in ("approach2", "approach3"):
        r = getattr(fit, key)
        out[f"a_{key}"] = r.a
        out[f"{key}_status"] = r.status
        if r.ci.get("a"):
            out[f"a_{key}_ci"] = r.ci["a"]
    if fit.holdout is not None:
        out["holdout_max_abs_rel_error"] = fit.holdout.max_abs_rel_error
    out["params_convention"] = fit.params_convention
    out["flops_convention"] = fit.flops_convention
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=None, help="sweep preset: smoke | cpu | gpu (default: gpu, smoke with --smoke)")
    p.add_argument("--smoke", action="store_true", help="the smoke preset on CPU; results to --out only")
    p.add_argument("--out", default=None, help="result JSON path (default: bench/results/sweep-<gpu>.json on a GPU)")
    p.add_argument("--sweep-dir", default=None, help="where the sweep's runs go (default: a fresh temporary folder)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for the sweep")
    args = p.parse_args(argv)

    import torch

    preset = args.preset or ("smoke" if args.smoke else "gpu")
    on_gpu = torch.cuda.is_available()
    if preset == "gpu" and not on_gpu:
        p.error("the gpu preset needs a CUDA device; use --preset cpu or --smoke here")
    if args.out:
        out = Path(args.out)
    elif on_gpu and not args.smoke:
        out = REPO / "bench" / "results" / f"sweep-{slug(torch.cuda.get_device_name())}.json"
    else:
        out = Path(tempfile.mkdtemp(prefix="scalelab-bench-")) / "sweep.json"
    sweep_dir = Path(args.sweep_dir or tempfile.mkdtemp(prefix="scalelab-sweep-")) / f"chinchilla-{preset}"
    if sweep_dir.exists():
        shutil.rmtree(sweep_dir)  # a bench measures a fresh sweep, never a resumed one

    cmd = [sys.executable, "-m", "train", "+sweep=chinchilla", f"sweep.preset={preset}",
           f"hydra.sweep.dir={sweep_dir}", *args.overrides]
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    sampler = GpuSampler() if on_gpu and shutil.which("nvidia-smi") else None
    if sampler:
        sampler.start()
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    wall = time.perf_counter() - started
    busy = sampler.stop() if sampler else None

    info = device_info(None if on_gpu else "cpu (smoke)" if args.smoke else "cpu")
    result = {**info, "command": command_line(), "preset": preset, "sweep_dir": str(sweep_dir),
              "exit_code": proc.returncode, "wall_s": round(wall, 1), "gpu_busy_fraction": busy,
              **sweep_outcome(sweep_dir)}
    write_results(out, result)
    busy_text = "-" if busy is None else f"{busy:.0%}"
    print(f"preset {preset}: {result['runs']} runs {result['statuses']} in {wall:.0f} s; GPU busy {busy_text}; "
          f"a (approach 2) = {result['a_approach2']}, a (approach 3) = {result['a_approach3']}  -> {out}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
