"""Test-time evaluation inside a run: the task corpus as a data source (`python -m train data=tasks`),
repeated sampling after training (on and off), the record's block and per-problem counts (recomputable
to pass@k), the metrics row, the run identity, and clear errors for bad settings."""
import json
import re

import numpy as np
import pytest

from model.config import ConfigError
from tests.conftest import metrics, run_train, summary
from tests.test_config import compose
from train import testtime
from train.config import validate
from train.data import DataConfig, load, tasks

# a tiny model on short problems (2-4 terms), trained just enough to answer some of them
TASKS = ["data=tasks", "data.task_documents=1000", "data.task_max_terms=4", "data.task_heldout_per_level=4",
         "data.val_tokens=2048", "model.width=32", "model.depth=1", "model.heads=4", "model.seq_len=48",
         "train.tokens=96000", "train.batch_tokens=960", "train.eval_every=0", "train.ckpt_every=0",
         "train.log_every=10", "train.min_steps=5", "optim.lr=1e-2"]
ON = ["testtime.enabled=true", "testtime.n_samples=8", "testtime.seed=3"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tasks-cache")


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("tt") / "run"
    run_train(TASKS + ON, run_dir, cache_dir)
    return run_dir


def test_the_task_corpus_is_a_data_source(tmp_path):
    cfg = DataConfig(source="tasks", task_documents=300, task_max_terms=9, cache_dir=str(tmp_path))
    ds = load(cfg, progress=False)
    assert ds.meta["source"]["tasks"] == tasks.fingerprint(tasks.task_spec(cfg))
    held = {p.question for p in tasks.heldout_problems(tasks.task_spec(cfg))}
    for split in (ds.train, ds.val):
        text = bytes(np.asarray(split.tokens, dtype=np.uint8)).decode()
        lines = [line for line in text.split("\n") if line]
        assert lines
        for line in lines:  # every line a problem with its exact answer, none of them held out
            question, answer = line.split("=")
            assert int(answer) == eval(question) and question not in held  # noqa: S307 (digits and signs)
            assert 2 <= question.count("+") + question.count("-") + 1 <= 9
    again = load(DataConfig(source="tasks", task_documents=300, task_max_terms=9, cache_dir=str(tmp_path)))
    assert again.dir == ds.dir and again.fingerprint() == ds.fingerprint()
    other = load(DataConfig(source="tasks", task_documents=300, task_max_terms=9, task_alpha=2.0,
                            cache_dir=str(tmp_path)), progress=False)
    assert other.fingerprint()["hash"] != ds.fingerprint()["hash"]


@pytest.mark.slow
def test_a_run_samples_after_training_and_keeps_per_problem_counts(sampled):
    s = summary(sampled)
    assert s["status"] == "completed" and s["data"]["source"] == "tasks"
    counts = json.loads((sampled / testtime.COUNTS_FILE).read_text())
    spec = tasks.task_spec(DataConfig(source="tasks", task_max_terms=4, task_heldout_per_level=4))
    assert [p["id"] for p in counts["problems"]] == [p.id for p in tasks.heldout_problems(spec)]
    assert counts["tasks"] == s["testtime"]["tasks"] == tasks.fingerprint(spec)
    for p in counts["problems"]:
        assert p["n"] == 8 and 0 <= p["c"] <= 8 and p["c"] + sum(p["wrong"]) + p["none"] == 8
    # it answers: some samples right, some wrong (so the numbers below are not all zeros)
    assert sum(p["c"] for p in counts["problems"]) > 0 and sum(sum(p["wrong"]) for p in counts["problems"]) > 0
    # the record's numbers are the estimators applied to the stored counts
    block = s["testtime"]
    assert list(block["pass_at_k"]) == ["1", "2", "4", "8"]
    n, c = [p["n"] for p in counts["problems"]], [p["c"] for p in counts["problems"]]
    for k, value in block["pass_at_k"].items():
        assert value == pytest.approx(testtime.pass_at_k(n, c, int(k)).mean())
    maj = np.mean([testtime.majority_at_k_curve(p["c"], p["wrong"], p["none"]) for p in counts["problems"]], axis=0)
    assert [block["majority_at_k"][k] for k in ("1", "8")] == pytest.approx([maj[0], maj[7]])
    assert block["majority_at_k"]["1"] == pytest.approx(block["pass_at_k"]["1"])  # one vote: the sample itself
    assert block["infer_flops_per_sample"] > block["prompt_flops_per_sample"] > 0
    # the metrics logger (and so wandb) gets the same numbers
    row = next(r for r in metrics(sampled) if "testtime/pass@1" in r)
    assert row["step"] == s["steps_done"] and row["testtime/pass@8"] == block["pass_at_k"]["8"]
    assert s["identity"]["testtime"] == {"enabled": True, "n_samples": 8, "temperature": 1.0, "top_k": None,
                                         "seed": 3}


@pytest.mark.slow
def test_without_testtime_a_run_does_not_sample(tmp_path, cache_dir):
    run_train(["data.source=tasks"] + TASKS[1:], tmp_path / "run", cache_dir)  # the source, without its group file
    s = summary(tmp_path / "run")
    assert s["status"] == "completed" and s["data"]["source"] == "tasks"
    assert s["testtime"] is None and "testtime" not in s["identity"]
    assert not (tmp_path / "run" / testtime.COUNTS_FILE).exists()
    assert not any(k.startswith("testtime/") for r in metrics(tmp_path / "run") for k in r)


@pytest.mark.slow
def test_other_sampling_settings_are_other_settings(sampled, cache_dir):
    before = (sampled / "summary.json").read_text()
    p = run_train(TASKS + ON[:-1] + ["testtime.seed=4"], sampled, cache_dir, check=False)
    assert p.returncode == 2 and "testtime.seed: 3 -> 4" in p.stderr and "Traceback" not in p.stderr
    assert (sampled / "summary.json").read_text() == before


@pytest.mark.parametrize("overrides, fragment", [
    (["testtime.enabled=true"], "needs data=tasks (data.source=tasks), got data.source=pycode"),
    (["data=tasks", "testtime.n_samples=0"], "testtime.n_samples must be a positive integer, got 0"),
    (["data=tasks", "testtime.n_samples=5000"], "testtime.n_samples=5000 is too many"),
    (["data=tasks", "testtime.temperature=-1"], "testtime.temperature must be a number >= 0"),
    (["data=tasks", "testtime.top_k=0"], "testtime.top_k must be a positive integer or null"),
    (["data=tasks", "testtime.enabled=true", "model.seq_len=32"], "model.seq_len=32 is too short for testtime"),
    (["data=tasks", "data.task_max_terms=1"], "data.task_max_terms=1 must be >= data.task_min_terms=2"),
    (["data=tasks", "data.task_heldout_per_level=500"], "data.task_heldout_per_level=500 is too many"),
    (["data=tasks", "data.task_documents=0"], "data.task_documents=0 must be a positive integer"),
    (["data=tasks", "data.tokenizer=bpe"], "data.source=tasks needs data.tokenizer=bytes"),
    (["data.task_alpha=2"], "data.task_alpha=2.0 applies only to data.source=tasks"),
])
def test_bad_settings_are_named(overrides, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        validate(compose(overrides))


def test_a_bad_setting_on_the_command_line_is_one_line(tmp_path):
    p = run_train(["data=tasks", "testtime.enabled=true", "testtime.temperature=-0.5"], tmp_path / "r", None,
                  check=False, timeout=120)
    assert p.returncode == 2 and "testtime.temperature must be a number >= 0" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "r").exists()
