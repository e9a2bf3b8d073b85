"""The task corpus: format, exact answers, the difficulty mix, the held-out set and the checker."""
import re
from collections import Counter

import numpy as np
import pytest

from train.data import tasks
from train.data.tasks import Problem, TaskError, TaskSpec

LINE = re.compile(r"([0-9](?:[+-][0-9])*)=(-?[0-9]+)")


def reference_value(question: str) -> int:
    """An independent evaluation: Python's own arithmetic on a checked digits-and-signs string."""
    assert re.fullmatch(r"[0-9](?:[+-][0-9])*", question), question
    return eval(question)  # noqa: S307 (only digits and +/- reach here)


def lines_of(docs):
    for doc in docs:
        assert doc.endswith("\n")
        yield from doc[:-1].split("\n")


def test_training_lines_have_the_format_and_exact_answers():
    spec = TaskSpec(problems_per_document=5)
    docs = list(tasks.training_documents(spec, 400, seed=3))
    assert len(docs) == 400
    lines = list(lines_of(docs))
    assert len(lines) == 2000
    for ln in lines:
        m = LINE.fullmatch(ln)
        assert m, ln
        assert int(m.group(2)) == reference_value(m.group(1))
        assert spec.min_terms <= len(m.group(1)) // 2 + 1 <= spec.max_terms


def test_documents_are_deterministic_from_the_seed():
    spec = TaskSpec()
    a = list(tasks.training_documents(spec, 50, seed=7))
    assert a == list(tasks.training_documents(spec, 50, seed=7))
    assert a != list(tasks.training_documents(spec, 50, seed=8))
    assert list(tasks.training_documents(spec, 0, seed=7)) == []


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_difficulty_mix_follows_the_power_law(alpha):
    spec = TaskSpec(min_terms=2, max_terms=9, alpha=alpha)
    terms = [len(LINE.fullmatch(ln).group(1)) // 2 + 1 for ln in lines_of(tasks.training_documents(spec, 1500, seed=1))]
    counts = Counter(terms)
    total = len(terms)
    expected = np.array([L ** -alpha for L in spec.levels])
    expected /= expected.sum()
    for L, p in zip(spec.levels, expected):
        sd = np.sqrt(total * p * (1 - p))
        assert abs(counts[L] - total * p) < 4 * sd, (L, counts[L], total * p)


def test_heldout_set_is_fixed_stratified_distinct_and_correct():
    spec = TaskSpec(min_terms=2, max_terms=8, heldout_per_level=10)
    held = tasks.heldout_problems(spec)
    assert held == tasks.heldout_problems(spec)  # a pure function of the spec
    assert Counter(p.difficulty for p in held) == {L: 10 for L in spec.levels}
    assert len({p.id for p in held}) == len({p.question for p in held}) == len(held)
    for p in held:
        assert p.answer == reference_value(p.question)
        assert len(p.question) // 2 + 1 == p.difficulty
        assert re.fullmatch(rf"L{p.difficulty:02d}-\d{{3}}", p.id)
    # the training seed does not move it; the held-out seed does
    other = tasks.heldout_problems(TaskSpec(min_terms=2, max_terms=8, heldout_per_level=10, heldout_seed=99))
    assert [p.question for p in other] != [p.question for p in held]


def test_no_heldout_question_is_trained_on():
    # two-term problems: 200 distinct questions, 50 held out, so a leak would show quickly
    spec = TaskSpec(min_terms=2, max_terms=2, heldout_per_level=50)
    held = {p.question for p in tasks.heldout_problems(spec)}
    seen = {LINE.fullmatch(ln).group(1) for ln in lines_of(tasks.training_documents(spec, 300, seed=0))}
    assert len(seen) == 150 and not seen & held


def test_prompt_plus_true_answer_is_a_training_line():
    spec = TaskSpec(max_terms=5, heldout_per_level=3)
    for p in tasks.heldout_problems(spec):
        assert tasks.prompt(p) + f"{p.answer}\n" == "\n" + tasks.line(p.question, p.answer)
        assert tasks.check(p, f"{p.answer}\n")


def test_max_answer_chars_covers_the_extremes():
    spec = TaskSpec(max_terms=12)
    longest = max(len(f"{v}\n") for v in (9 * 12, -9 * 11))
    assert tasks.max_answer_chars(spec) == longest


P = Problem("L03-000", 3, "2-9+2", -5)


@pytest.mark.parametrize("completion, ok", [
    ("-5\n", True), ("-5", True), (" -5 \n", True), ("-5\n7+7=14\n", True), ("-5<|endoftext|>", True),
    ("-05\n", True),
    ("5\n", False), ("-5x\n", False), ("- 5\n", False), ("--5\n", False), ("\n-5\n", False),
    ("", False), ("minus five\n", False), ("-5.0\n", False), ("-5-\n", False),
])
def test_checker_parses_answers(completion, ok):
    assert tasks.check(P, completion) is ok


def test_parse_answer_accepts_a_plus_sign_and_rejects_non_answers():
    assert tasks.parse_answer("+7\n") == 7
    assert tasks.parse_answer("12 \n") == 12
    assert tasks.parse_answer("1 2\n") is None
    assert tasks.parse_answer("\n") is None


@pytest.mark.parametrize("bad, fragment", [
    (dict(min_terms=0), "data.task_min_terms"),
    (dict(max_terms=1, min_terms=3), "data.task_max_terms=1"),
    (dict(alpha=-1.0), "data.task_alpha"),
    (dict(problems_per_document=0), "TaskSpec.problems_per_document"),
    (dict(heldout_per_level=200), "data.task_heldout_per_level=200"),
    (dict(heldout_seed="x"), "data.task_seed"),
])
def test_spec_rejects_bad_values(bad, fragment):
    with pytest.raises(TaskError, match=re.escape(fragment)):
        TaskSpec(**bad)


def test_fingerprint_follows_the_spec():
    assert tasks.fingerprint(TaskSpec()) == tasks.fingerprint(TaskSpec())
    assert tasks.fingerprint(TaskSpec()) != tasks.fingerprint(TaskSpec(alpha=1.5))
