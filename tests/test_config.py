"""The shipped configuration: every YAML group option composes and validates, the YAML files hold only what
differs from the typed schema (one source of defaults), and command-line mistakes are named up front."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from train.config import Config, check_override, validate

CONF = REPO / "conf"
GROUPS = ["model", "data", "optim", "train", "logger"]
# settings an option needs before it validates (placeholders: composing checks types and relations only)
NEEDS = {("data", "text"): ["data.path=/placeholder/corpus.txt"], ("data", "bin"): ["data.path=/placeholder/shards"],
         ("data", "hf"): ["data.name=placeholder/dataset"]}


def options():
    return [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    from train.config import register_configs, register_resolvers

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("group, option", options(), ids=lambda v: str(v))
def test_every_group_option_composes_and_validates(group, option):
    run = validate(compose([f"{group}={option}", *NEEDS.get((group, option), [])]))
    assert run.model["width"] > 0


def _schema_defaults(group):
    node = {f.name: f for f in dataclasses.fields(Config)}[group].default_factory()
    return dataclasses.asdict(node)


@pytest.mark.parametrize("group, option", options(), ids=lambda v: str(v))
def test_yaml_holds_only_what_differs_from_the_schema(group, option):
    values = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    defaults = _schema_defaults(group)
    same = {k: v for k, v in values.items() if k in defaults and defaults[k] == v}
    assert not same, f"conf/{group}/{option}.yaml repeats schema defaults: {same}"


def test_defaults_are_the_documented_ones():
    run = validate(compose([]))
    assert (run.model["width"], run.model["depth"], run.model["heads"], run.model["seq_len"]) == (128, 4, 4, 128)
    assert (run.train.tokens, run.train.batch_tokens, run.train.eval_every, run.train.ckpt_every) == \
        (1_600_000, 8192, 50, 100)
    assert (run.optim.lr, run.optim.schedule, run.optim.warmup) == (3e-3, "cosine", 0.05)
    assert run.data.source == "pycode" and run.data.tokenizer == "bytes" and run.logger.kind == "jsonl"


@pytest.mark.parametrize("arg, fragment", [
    ("train.tokens=abc", "train.tokens must be a number, got 'abc'"),
    ("model.width=64.5", "model.width must be a whole number"),
    ("train.compile=yes", "train.compile must be true or false"),
    ("model.wdth=64", "did you mean model.width"),
    ("logger=tensorboard", "valid: jsonl, none, wandb"),
    ("sweep.presets.cpu.pointz=3", "did you mean sweep.presets.cpu.points"),
    ("sweep.presets.cpu.family.aspect=x", "sweep.presets.cpu.family.aspect must be a number"),
])
def test_overrides_are_checked_before_hydra(arg, fragment):
    assert fragment in (check_override(arg) or "")


@pytest.mark.parametrize("arg", ["train.tokens=1e6", "train.seed=0,1,2", "data=text", "+sweep=chinchilla",
                                 "hydra.run.dir=/x", "sweep.presets.cpu.budgets=[1e10,1e11]", "optim.lr=null"])
def test_valid_overrides_pass(arg):
    assert check_override(arg) is None


def test_train_tokens_accepts_scientific_notation_for_whole_numbers():
    assert validate(compose(["train.tokens=1e6"])).train.tokens == 1_000_000
    with pytest.raises(Exception, match="train.tokens"):
        validate(compose(["train.tokens=1.5"]))
