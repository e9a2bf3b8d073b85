"""A verifiable task corpus, generated offline: signed sums of single digits, with exact answers.

    from train.data.tasks import TaskSpec, training_documents, heldout_problems, prompt, check
    spec = TaskSpec()                                   # terms 2..16, mix ~ L^-1, 16 held-out per level
    docs = training_documents(spec, n=1000, seed=0)     # an iterator of training documents (str)
    for p in heldout_problems(spec):                    # fixed, labelled by difficulty
        text = prompt(p)                                # "\\n7-3+5="
        ok = check(p, completion)                       # completion "9\\n" -> True

Problem. A question is L single digits 0..9 joined by "+" or "-" (each sign a fair coin), e.g.
"7-3+5"; its answer is the integer value, e.g. 9 (range -9(L-1) .. 9L). The difficulty of a
problem is its number of terms L, from `min_terms` to `max_terms`. A problem is one line of text,
`<question>=<answer>\\n` ("7-3+5=9\\n", "3-8=-5\\n"): a byte-level GPT reads it one character at a
time, and for any tokenizer the newline marks the end of the answer.

Training documents are `problems_per_document` such lines (the data layer adds its own document
separator after each). Their difficulties follow a truncated power law, P(L) ~ L^(-alpha) on
min_terms..max_terms: alpha = 0 is uniform, larger alpha makes long problems rarer (alpha = 1,
the default, gives 21% two-term and 2.6% sixteen-term problems). Digits and signs are uniform.
No held-out question ever appears in a training document.

Held-out set: `heldout_per_level` distinct problems at every level (stratified, so every
difficulty bucket is populated), drawn from `heldout_seed` alone, so every run of a sweep is
evaluated on the same problems. Ids are "L<terms>-<index>", e.g. "L07-003".

Evaluation: the prompt is "\\n<question>=" (the leading newline puts the model at a line start, as
in training); the completion is read up to its first newline (or end-of-text marker); surrounding
spaces, a leading "+" and leading zeros are accepted; anything else that is not one integer counts
as no answer.

Why this task: the sum needs every term, so accuracy falls with length; models of 10k-500k
parameters trained for a few minutes on a CPU get per-problem success rates spread over (0, 1),
with a tail of rare successes on long problems (the regime where repeated sampling pays off).
Its text, answers and ids are a pure function of the spec and seeds (numpy's PCG64).

As a data source (`data=tasks`, i.e. data.source=tasks, registered in sources.py): `TaskSource`
generates data.task_documents training documents from data.task_seed with the spec made of the
data.task_* settings (`task_spec`); the data layer splits them into train and val by content hash
like any other source, so the loss-validation set is task text too, and the held-out problems
(never in either split) are what repeated sampling is evaluated on (train/testtime.py). The
source's fingerprint holds `fingerprint(spec)`, so every run record's data hash names the task.
The bytes tokenizer is required: prompts and answers are read one character at a time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .config import DataConfig, DataError
from .sources import Doc, Source, digest_of, split_of, text_digest
from .tokenizer import EOT_TEXT

FORMAT = "scalelab-tasks-v1"
ANSWER_END = "\n"
_ANSWER = re.compile(r"\s*\+?(-?\d{1,9})\s*")


class TaskError(DataError):
    """A task setting is invalid; the message names the setting, the value and what is valid."""


# The config key of each spec field (data.task_*), named in error messages; problems_per_document is not
# a config setting (the library's TaskSpec only).
_KEYS = {"min_terms": "data.task_min_terms", "max_terms": "data.task_max_terms", "alpha": "data.task_alpha",
         "heldout_per_level": "data.task_heldout_per_level", "heldout_seed": "data.task_seed",
         "problems_per_document": "TaskSpec.problems_per_document"}


@dataclass(frozen=True)
class TaskSpec:
    min_terms: int = 2
    max_terms: int = 16
    alpha: float = 1.0  # training mix: P(terms = L) ~ L^-alpha
    problems_per_document: int = 16
    heldout_per_level: int = 16
    heldout_seed: int = 1234

    def __post_init__(self):
        k = _KEYS
        for name in ("min_terms", "max_terms", "problems_per_document", "heldout_per_level"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TaskError(f"{k[name]} must be a positive integer, got {value!r}")
        if self.max_terms < self.min_terms:
            raise TaskError(f"{k['max_terms']}={self.max_terms} must be >= {k['min_terms']}={self.min_terms}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha < 100:
            raise TaskError(f"{k['alpha']} must be a number in [0, 100), got {self.alpha!r}")
        if not isinstance(self.heldout_seed, int) or isinstance(self.heldout_seed, bool):
            raise TaskError(f"{k['heldout_seed']} must be an integer, got {self.heldout_seed!r}")
        if self.heldout_per_level > _distinct(self.min_terms) // 2:
            raise TaskError(f"{k['heldout_per_level']}={self.heldout_per_level} is too many for "
                            f"{self.min_terms}-term problems (valid: 1 .. {_distinct(self.min_terms) // 2})")

    @property
    def levels(self) -> List[int]:
        return list(range(self.min_terms, self.max_terms + 1))

    def mix(self) -> np.ndarray:
        """Training probability of each level (same order as `levels`)."""
        w = np.array(self.levels, dtype=float) ** -float(self.alpha)
        return w / w.sum()


@dataclass(frozen=True)
class Problem:
    id: str
    difficulty: int  # number of terms
    question: str
    answer: int


def _distinct(terms: int) -> int:
    return 10 ** terms * 2 ** (terms - 1)


def _make(digits: np.ndarray, minus: np.ndarray) -> Tuple[str, int]:
    parts, value = [str(digits[0])], int(digits[0])
    for d, m in zip(digits[1:].tolist(), minus.tolist()):
        parts.append(("-" if m else "+") + str(d))
        value += -d if m else d
    return "".join(parts), value


def _draw(rng: np.random.Generator, terms: int) -> Tuple[str, int]:
    return _make(rng.integers(0, 10, size=terms), rng.integers(0, 2, size=terms - 1))


def heldout_problems(spec: TaskSpec) -> List[Problem]:
    """The fixed held-out set: heldout_per_level distinct problems per level, by level then index."""
    rng = np.random.default_rng([spec.heldout_seed, 0x7E57])
    out = []
    for level in spec.levels:
        seen: dict = {}
        while len(seen) < spec.heldout_per_level:
            q, a = _draw(rng, level)
            seen.setdefault(q, a)
        out += [Problem(f"L{level:02d}-{i:03d}", level, q, a) for i, (q, a) in enumerate(seen.items())]
    return out


def line(question: str, answer: int) -> str:
    return f"{question}={answer}{ANSWER_END}"


def training_documents(spec: TaskSpec, n: int, seed: int) -> Iterator[str]:
    """n training documents (problems_per_document lines each), a pure function of (spec, n, seed)."""
    if not isinstance(n, int) or n < 0:
        raise TaskError(f"the number of documents must be an integer >= 0, got {n!r}")
    held = {p.question for p in heldout_problems(spec)}
    rng = np.random.default_rng([seed, 0xDA7A])
    levels, mix = np.array(spec.levels), spec.mix()
    k = spec.problems_per_document
    for _ in range(n):
        terms = rng.choice(levels, size=k, p=mix)
        ends = np.cumsum(terms)
        digits, minus = rng.integers(0, 10, size=ends[-1]), rng.integers(0, 2, size=ends[-1])
        lines = []
        for L, end in zip(terms.tolist(), ends.tolist()):
            q, a = _make(digits[end - L:end], minus[end - L + 1:end])
            while q in held:  # redraw at the same level, so the mix is unchanged
                q, a = _draw(rng, L)
            lines.append(line(q, a))
        yield "".join(lines)


def prompt(problem: Problem) -> str:
    return f"\n{problem.question}="


def parse_answer(completion: str) -> Optional[int]:
    """The integer a completion states before its first newline / end-of-text marker, else None."""
    text = completion.split(ANSWER_END, 1)[0].split(EOT_TEXT, 1)[0]
    m = _ANSWER.fullmatch(text)
    return int(m.group(1)) if m else None


def check(problem: Problem, completion: str) -> bool:
    return parse_answer(completion) == problem.answer


def answer_distribution(terms: int) -> Dict[int, float]:
    """The exact distribution of the answer of a random `terms`-term problem (uniform digits, fair signs):
    what a sampler that knows only a problem's length, and nothing of its digits, can guess from."""
    digit = np.full(10, 0.1)
    signed = np.concatenate([digit[::-1], [0.0] * 9]) * 0.5  # -d: values -9..0, index 0 is -9
    signed[9:] += digit * 0.5  # +d: values 0..9
    p, low = digit, 0  # p[i] = P(value = low + i)
    for _ in range(terms - 1):
        p, low = np.convolve(p, signed), low - 9
    return {low + i: float(x) for i, x in enumerate(p) if x > 0}


def max_answer_chars(spec: TaskSpec) -> int:
    """Characters of the longest answer plus its newline: a sampler's max_new_tokens for bytes."""
    return max(len(str(-9 * (spec.max_terms - 1))), len(str(9 * spec.max_terms))) + len(ANSWER_END)


def fingerprint(spec: TaskSpec) -> str:
    """A stable digest of the format and the spec (what determines every document and problem)."""
    blob = json.dumps({"format": FORMAT, **asdict(spec)}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def max_prompt_chars(spec: TaskSpec) -> int:
    """Characters of the longest prompt ("\\n" + question + "=")."""
    return len(prompt(Problem("", spec.max_terms, "0" * (2 * spec.max_terms - 1), 0)))


# ------------------------------------------------------------------------------ as a data source

_SETTINGS = ("task_min_terms", "task_max_terms", "task_alpha", "task_heldout_per_level", "task_seed",
             "task_documents")


def task_spec(cfg: DataConfig) -> TaskSpec:
    """The spec the data.task_* settings describe (data.task_seed also seeds the held-out set)."""
    return TaskSpec(min_terms=cfg.task_min_terms, max_terms=cfg.task_max_terms, alpha=cfg.task_alpha,
                    heldout_per_level=cfg.task_heldout_per_level, heldout_seed=cfg.task_seed)


def check_settings(cfg: DataConfig) -> None:
    """DataConfig.validate's part for the task settings: they apply to data.source=tasks only, which
    needs the bytes tokenizer and a valid spec. Raises DataError (TaskError) naming the key."""
    if cfg.source != "tasks":
        defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}
        for key in _SETTINGS:
            if getattr(cfg, key) != defaults[key]:
                raise DataError(f"data.{key}={getattr(cfg, key)!r} applies only to data.source=tasks (data=tasks); "
                                f"with data.source={cfg.source} leave it at its default ({defaults[key]!r})")
        return
    if cfg.tokenizer != "bytes":
        raise DataError(f"data.source=tasks needs data.tokenizer=bytes, got {cfg.tokenizer!r}: prompts and answers "
                        "are read one character at a time, so a held-out prompt tokenises as in training")
    if cfg.task_documents < 1:
        raise DataError(f"data.task_documents={cfg.task_documents!r} must be a positive integer (training documents "
                        "of 16 problems each, e.g. 20000)")
    task_spec(cfg)


class TaskSource(Source):
    """data.source=tasks: data.task_documents generated documents (see the module docstring)."""

    unit = "docs"

    def __init__(self, cfg: DataConfig, progress: bool = True) -> None:
        super().__init__(cfg, progress)
        self.spec = task_spec(cfg)
        self.total = cfg.task_documents
        self.entries.append(self.new_entry(generator=FORMAT, spec=asdict(self.spec), seed=cfg.task_seed,
                                           generated=cfg.task_documents))

    def fingerprint(self) -> Dict[str, Any]:
        c = self.cfg
        return {"kind": "tasks", "tasks": fingerprint(self.spec), "spec": asdict(self.spec), "seed": c.task_seed,
                "generated": c.task_documents,
                "fingerprint": digest_of([fingerprint(self.spec), c.task_seed, c.task_documents])}

    def documents(self) -> Iterator[Doc]:
        for text in training_documents(self.spec, self.cfg.task_documents, self.cfg.task_seed):
            yield Doc(text, split_of(text_digest(text), self.cfg.val_fraction), 0, 1)
