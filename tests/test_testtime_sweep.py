"""The testtime sweep end to end on CPU (smoke preset, logged to wandb offline): every job trains on the task
corpus and samples, the end of the sweep writes testtime.json (the issue's keys, numbers recomputable from the
per-problem counts) and the report; the analysis again standalone; and the report's verdict sentences."""
import json

import pytest

from sweeps.testtime import report as R
from sweeps.testtime.record import read_testtime
from tests.conftest import run_cli
from train.record import load_summary
from train.testtime import COUNTS_FILE, majority_at_k_curve, pass_at_k


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("testtime-smoke")
    sweep_dir = root / "sweep"
    p = run_cli(["-m", "train", "+sweep=testtime", "sweep.preset=smoke", "logger=wandb", f"hydra.sweep.dir={sweep_dir}"],
                cache_dir=root / "cache", env={"WANDB_MODE": "offline"}, timeout=900)
    return sweep_dir, p


@pytest.mark.slow
def test_every_job_completes_and_samples(smoke):
    sweep_dir, p = smoke
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = json.loads((sweep_dir / "plan.json").read_text())["jobs"]
    assert len(jobs) == 2 and all("testtime.enabled=true" in j["overrides"] for j in jobs)
    for j in jobs:
        s, why = load_summary(sweep_dir / j["name"])
        assert s is not None and s.status == "completed", (j["name"], why or s.reason)
        assert s.testtime["n_samples"] == 16 and (sweep_dir / j["name"] / COUNTS_FILE).is_file()
        assert s.data["source"] == "tasks" and s.group == "testtime-smoke"
    assert p.stderr.count("analysing test-time compute") == 1


@pytest.mark.slow
def test_testtime_json_has_the_issue_keys_and_recomputable_numbers(smoke):
    sweep_dir, _ = smoke
    data = read_testtime(sweep_dir / "testtime.json")
    assert {"models", "frontier"} <= set(data) and data["frontier"]
    assert [m["params_total"] for m in data["models"]] == sorted(m["params_total"] for m in data["models"])
    for m in data["models"]:
        assert {"run", "params_total", "train_flops", "infer_flops_per_sample", "n_samples", "problems",
                "pass_at_k", "majority_at_k", "fit"} <= set(m)
        assert m["fit"] is None or ({"a", "b", "ci"} <= set(m["fit"]) and set(m["fit"]["ci"]) == {"a", "b"})
        s, _ = load_summary(sweep_dir / m["run"])
        assert m["params_total"] == s.params_total and m["train_flops"] == s.compute
        problems = m["problems"]
        assert len(problems) == 15 * 4 and all({"id", "difficulty", "n", "c"} <= set(p) for p in problems)
        n, c = [p["n"] for p in problems], [p["c"] for p in problems]
        assert sum(c) > 0  # some answers right (if only by luck): the check below is not 0 == 0
        assert list(m["pass_at_k"]) == [str(k) for k in range(1, 17)]
        for k in (1, 5, 16):  # anyone can recompute pass@k and majority@k from the stored counts
            assert m["pass_at_k"][str(k)] == pytest.approx(pass_at_k(n, c, k).mean())
        maj = sum(majority_at_k_curve(p["c"], p["wrong"], p["none"])[-1] for p in problems) / len(problems)
        assert m["majority_at_k"]["16"] == pytest.approx(maj)
        # and they are the run's own counts
        counts = json.loads((sweep_dir / m["run"] / COUNTS_FILE).read_text())
        assert [(p["id"], p["c"]) for p in counts["problems"]] == [(p["id"], p["c"]) for p in problems]


@pytest.mark.slow
def test_the_report_and_its_plots_are_written_and_logged_to_wandb(smoke):
    sweep_dir, p = smoke
    md = (sweep_dir / "testtime.md").read_text()
    for heading in ("## Verdict", "## pass@k per model", "## Majority vote vs pass@k", "## Train-vs-inference frontier"):
        assert heading in md
    assert "So at this scale sampling more" in md and "Fit quality:" in md
    for png in ("testtime_passk.png", "testtime_majority.png", "testtime_frontier.png"):
        assert (sweep_dir / png).stat().st_size > 10_000 and f"]({png})" in md
    assert "data:image/png;base64," in (sweep_dir / "testtime.html").read_text()
    assert "wandb: test-time analysis logged (offline" in p.stderr
    assert list((sweep_dir / "wandb").glob("offline-run-*"))  # the analysis run, beside the jobs' own runs


@pytest.mark.slow
def test_the_analysis_again_standalone(smoke, tmp_path):
    sweep_dir, _ = smoke
    p = run_cli(["-m", "sweeps.testtime.report", str(sweep_dir), "--out", str(tmp_path), "--bootstrap", "20",
                 "--queries", "1000"], timeout=300)
    assert p.returncode == 0, p.stderr
    data = read_testtime(tmp_path / "testtime.json")
    assert data["queries"] == 1000 and data["queries_rule"] == "given" and (tmp_path / "testtime.md").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run_cli(["-m", "sweeps.testtime.report", str(empty)], timeout=120)
    assert p.returncode == 1 and "no completed run with test-time counts" in p.stderr and "Traceback" not in p.stderr
    p = run_cli(["-m", "sweeps.testtime.report", str(tmp_path / "nowhere")], timeout=120)
    assert p.returncode == 2 and "not a folder" in p.stderr


def _row(metric, bucket, target, winner, break_even=None):
    best = {"run": "small", "k": 8, "compute": 1.0} if winner else None
    return {"metric": metric, "bucket": bucket, "target": target, "best": best, "largest": None, "winner": winner,
            "break_even_queries": break_even, "cheaper_at_any_queries": None}


@pytest.mark.parametrize("rows, expect", [
    ([_row("pass_at_k", "2-6", 0.5, "sample_more", 2e6), _row("majority_at_k", "2-6", 0.5, "largest")],
     ["only with a perfect verifier", "for 2-6 >= 50%", "becomes cheaper at 2-6 >= 50% beyond 2,000,000 queries"]),
    ([_row("pass_at_k", "all", 0.3, "sample_more"), _row("majority_at_k", "all", 0.3, "sample_more")],
     ["even without a verifier (majority vote) for all >= 30%"]),
    ([_row("pass_at_k", "all", 0.3, "largest"), _row("pass_at_k", "12-16", 0.9, None),
      _row("majority_at_k", "all", 0.3, "smaller_anyway")],
     ["does not beat training bigger", "no model reached 12-16 >= 90%", "not a test-time compute effect"]),
])
def test_the_verdict_says_who_wins(rows, expect):
    text = " ".join(R.verdict({"frontier": rows, "queries": 1e6}))
    for fragment in expect:
        assert fragment in text, text


def test_a_pass_at_k_win_that_blind_guessing_matches_is_no_learned_gain():
    rows = [_row("pass_at_k", "all", 0.3, "sample_more"), _row("pass_at_k", "all", 0.9, "sample_more"),
            _row("majority_at_k", "all", 0.3, "largest")]  # both won with k = 8
    guess = {"pass_at_k": {"1": 0.05, "8": 0.4}, "by_bucket": {"2-4": {"pass_at_k": {"1": 0.05, "8": 0.4}}}}
    text = " ".join(R.verdict({"frontier": rows, "queries": 1e6, "guessing": guess}))
    assert "but in 1 of these (all >= 30%) blind guessing with as many samples reaches the target" in text
    assert "only with a perfect verifier (pass@k: any correct sample counts) for all >= 90%;" in text
    text = " ".join(R.verdict({"frontier": rows[:1] + rows[2:], "queries": 1e6, "guessing": guess}))
    assert "only where blind guessing with as many samples does as well (all >= 30%)" in text
