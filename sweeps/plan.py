"""Sweep planning: presets, the IsoFLOP grid, and the OmegaConf resolvers the sweep configs use.

A sweep config (conf/sweep/*.yaml) lists its presets (smoke, cpu, gpu) under `sweep.presets`;
`sweep.preset=auto` picks gpu when CUDA is visible and cpu otherwise. The yaml reads preset values
through resolvers: `${preset:KEY}` (one value), `${preset_list:KEY}` (a list joined for Hydra's
sweeper), `${preset_shapes:}` (the preset's shapes, or a ladder at fixed N), `${preset_name:}`, and `${fmt_budget:X}` (1e13 -> "1e13" for job folder names).

`python -m sweeps.plan chinchilla [--preset cpu]` prints the jobs a sweep would run, their model
sizes, token counts and steps, without training anything.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

PRESETS = ("smoke", "cpu", "gpu")
CONF = Path(__file__).resolve().parents[1] / "conf"


def detect_preset() -> str:
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def preset_name(sweep_cfg) -> str:
    name = sweep_cfg.get("preset", "auto")
    if name == "auto":
        name = detect_preset()
    presets = sweep_cfg.get("presets") or {}
    if name not in presets:
        raise ValueError(f"sweep.preset={name!r} is not a preset of sweep {sweep_cfg.get('name')!r}; "
                         f"valid: auto, {', '.join(presets)}")
    return name


def preset_values(sweep_cfg) -> Any:
    return sweep_cfg["presets"][preset_name(sweep_cfg)]


def fmt_budget(value) -> str:
    """1e13 -> '1e13', 3.2e14 -> '3.2e14' (a stable, readable folder name)."""
    value = float(value)
    exponent = int(math.floor(math.log10(value)))
    mantissa = round(value / 10 ** exponent, 3)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    text = f"{mantissa:g}e{exponent}"
    return text


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    def preset(key, *, _root_):
        return preset_values(_root_.sweep)[key]

    def preset_list(key, *, _root_):
        return ",".join(str(v) for v in preset_values(_root_.sweep)[key])

    def name(*, _root_):
        return preset_name(_root_.sweep)

    def shapes(*, _root_):
        """The preset's `shapes`, or a fixed-N ladder from `target_params` and `depths`."""
        p = preset_values(_root_.sweep)
        if p.get("shapes"):
            return ",".join(str(v) for v in p["shapes"])
        tokenizer = _root_.data.tokenizer
        vocab = 256 if tokenizer == "bytes" else int(_root_.data.bpe_vocab_size)
        return ",".join(shape_for_params(float(p["target_params"]), int(d), vocab, int(p.get("head_dim", 32)))
                        for d in p["depths"])

    OmegaConf.register_new_resolver("preset", preset, replace=True)
    OmegaConf.register_new_resolver("preset_list", preset_list, replace=True)
    OmegaConf.register_new_resolver("preset_name", name, replace=True)
    OmegaConf.register_new_resolver("preset_shapes", shapes, replace=True)
    OmegaConf.register_new_resolver("fmt_budget", fmt_budget, replace=True)


# ----------------------------------------------------------------------------- shape ladders


def shape_for_params(target_non_embedding: float, depth: int, vocab_size: int, head_dim: int = 32,
                     mlp: str = "swiglu") -> str:
    """The WIDTHxDEPTHxHEADS with `depth` layers whose non-embedding parameter count is closest to
    the target: width a multiple of 8, heads giving an even head dim near `head_dim`. Used to build
    the shape sweep's fixed-N ladders."""
    from model.config import GPTConfig
    from model.flops import param_counts

    best = None
    for width in range(8, 8193, 8):
        heads = max(1, round(width / head_dim))
        while heads > 1 and (width % heads or (width // heads) % 2):
            heads -= 1
        cfg = GPTConfig(vocab_size=vocab_size, width=width, depth=depth, heads=heads, mlp=mlp)
        n = param_counts(cfg).non_embedding
        err = abs(math.log(n / target_non_embedding))
        if best is None or err < best[0]:
            best = (err, f"{width}x{depth}x{heads}")
        if n > target_non_embedding:
            break
    return best[1]


# ----------------------------------------------------------------------------- dry run


def describe(sweep: str, preset: str | None = None, overrides: list[str] | None = None) -> list[dict]:
    """Compose the sweep's config as Hydra would and list its jobs (no training)."""
    from hydra import compose, initialize_config_dir

    from model.flops import flops_per_token, param_counts
    from train.config import parse_shape, register_configs, register_resolvers as train_resolvers
    from train.rules import plan_run

    register_configs()
    train_resolvers()
    register_resolvers()
    ov = [f"+sweep={sweep}"] + ([f"sweep.preset={preset}"] if preset else []) + list(overrides or [])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=ov, return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    axes = {k: str(v).split(",") for k, v in params.items()}
    from itertools import product

    from model.config import GPTConfig
    from train.config import validate

    jobs = []
    for values in product(*axes.values()):
        job_ov = [f"{k}={v}" for k, v in zip(axes, values)]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            job = compose(config_name="config", overrides=ov + job_ov)
        run = validate(job)
        vocab = run.model["vocab_size"] or (256 if run.data.tokenizer == "bytes" else run.data.bpe_vocab_size)
        gpt = GPTConfig(**{**run.model, "vocab_size": vocab})
        counts, flops = param_counts(gpt), flops_per_token(gpt)
        plan = plan_run(run.optim, run.train, gpt.seq_len, 1, counts.non_embedding, flops.exact)
        jobs.append({"overrides": " ".join(job_ov), "shape": f"{gpt.width}x{gpt.depth}x{gpt.heads}",
                     "params_non_embedding": counts.non_embedding, "flops_per_token": flops.exact,
                     "tokens": plan.tokens, "steps": plan.steps, "batch_tokens": plan.batch_tokens,
                     "lr": plan.lr, "compute": plan.tokens * flops.exact,
                     "tokens_per_param": plan.tokens / counts.non_embedding})
    return jobs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sweeps.plan", description="List the jobs of a sweep preset.")
    p.add_argument("sweep", help="a sweep config name: " + ", ".join(sorted(f.stem for f in (CONF / "sweep").glob("*.yaml"))))
    p.add_argument("--preset", default=None, help="smoke | cpu | gpu (default: the sweep's own, auto = by hardware)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.seq_len=64")
    args = p.parse_args(argv)
    if not (CONF / "sweep" / f"{args.sweep}.yaml").exists():
        print(f"error: no sweep named {args.sweep!r} in {CONF / 'sweep'}", file=sys.stderr)
        return 2
    try:
        jobs = describe(args.sweep, args.preset, args.overrides)
    except Exception as e:  # composition errors carry their own message
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'job':<42} {'N (non-emb)':>12} {'tokens':>12} {'tok/param':>9} {'steps':>6} {'batch':>6} {'lr':>8} {'FLOPs':>9}")
    for j in jobs:
        print(f"{j['overrides']:<42} {j['params_non_embedding']:>12,} {j['tokens']:>12,} {j['tokens_per_param']:>9.1f} "
              f"{j['steps']:>6} {j['batch_tokens']:>6} {j['lr']:>8.2e} {j['compute']:>9.2e}")
    total = sum(j["compute"] for j in jobs)
    print(f"{len(jobs)} jobs, {total:.3e} FLOPs in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
