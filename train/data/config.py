"""`DataConfig` (the `data.*` settings) and `DataError`.

A plain dataclass, so the package imports without hydra/omegaconf and the Hydra config can use it
as the schema of the `data` group (field types are ones OmegaConf accepts). `__post_init__` (which
OmegaConf's `to_object` calls too) validates, raising `DataError` with a message that names the key
as `data.<field>`, the bad value and what would be valid.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

BPE_MIN_VOCAB = 257  # 256 byte symbols + the end-of-text token
BPE_MAX_VOCAB = 1 << 20
MAX_VOCAB = 1 << 32  # what a uint32 shard can hold


class DataError(ValueError):
    """A data problem the user can fix: bad `data.*` setting, missing path, corrupt shard, ..."""


@dataclass
class DataConfig:
    """Where the tokens come from and how they are made. See train/data/__init__.py."""

    # pycode: the Python standard library's *.py files (offline default); text: data.path is a
    # .txt/.jsonl/.parquet file or a folder of them; bin: data.path is a folder with train.bin and
    # val.bin (ours, with meta.json, or raw nanoGPT uint16); hf: a Hugging Face dataset (data.name);
    # tasks: generated arithmetic problems with exact answers (the task_* settings below)
    source: str = "pycode"
    path: Optional[str] = None
    # hf only: dataset name (or local loader such as "json"), its config, split, files, revision
    name: Optional[str] = None
    config_name: Optional[str] = None
    split: str = "train"
    val_split: Optional[str] = None  # hf: take validation documents from this split (else by hash)
    data_files: Optional[str] = None
    revision: Optional[str] = None
    text_field: str = "text"  # jsonl key / parquet column / hf column holding the text
    tokenizer: str = "bytes"  # bytes (vocab 256) | bpe (trained on the train split) | gpt2 (tiktoken)
    bpe_vocab_size: int = 4096
    site_packages: bool = False  # pycode: add the interpreter's site-packages to the stdlib
    val_fraction: float = 0.05  # share of documents (by content hash) held out for validation
    val_tokens: int = 131072  # the fixed validation set: this many tokens in windows spread over the val split
    max_tokens: Optional[int] = None  # cap on the corpus size (documents taken in order)
    vocab_size: Optional[int] = None  # bin only: vocabulary of raw nanoGPT shards without meta
    # None: the SCALELAB_CACHE environment variable when set, else $XDG_CACHE_HOME (or ~/.cache)/scalelab/data
    cache_dir: Optional[str] = None
    # tasks only (train/data/tasks.py): signed digit sums of task_min_terms..task_max_terms terms, the
    # number of terms drawn ~ terms^-task_alpha, task_heldout_per_level held-out problems per length for
    # repeated sampling, and task_documents generated training documents of 16 problems; task_seed
    # seeds both the documents and the held-out set
    task_min_terms: int = 2
    task_max_terms: int = 16
    task_alpha: float = 1.0
    task_heldout_per_level: int = 16
    task_seed: int = 0
    task_documents: int = 20000

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "DataConfig":
        """Raise DataError on the first bad setting; return self."""
        from .sources import SOURCES  # the registries import this module
        from .tasks import check_settings as check_task_settings
        from .tokenizer import TOKENIZERS

        _check_types(self)
        if self.source not in SOURCES:
            raise DataError(f"data.source={self.source!r} is not a known source; valid: {', '.join(SOURCES)}")
        if self.tokenizer not in TOKENIZERS:
            raise DataError(
                f"data.tokenizer={self.tokenizer!r} is not a known tokenizer; valid: {', '.join(TOKENIZERS)}")
        required = SOURCES[self.source].required
        if required and not getattr(self, required[0]):
            key, what = required
            raise DataError(f"data.{key} is required for data.source={self.source} ({what}); "
                            f"got {getattr(self, key)!r}")
        if not BPE_MIN_VOCAB <= self.bpe_vocab_size <= BPE_MAX_VOCAB:
            raise DataError(f"data.bpe_vocab_size={self.bpe_vocab_size!r} is out of range; valid: "
                            f"{BPE_MIN_VOCAB} (256 bytes + end-of-text) to {BPE_MAX_VOCAB}")
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"data.val_fraction={self.val_fraction!r} must be strictly between 0 and 1 (e.g. 0.05)")
        if self.val_tokens < 1:
            raise DataError(f"data.val_tokens={self.val_tokens!r} must be a positive integer (e.g. 131072)")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise DataError(f"data.max_tokens={self.max_tokens!r} must be a positive integer or null (no cap)")
        if self.vocab_size is not None:
            if self.source != "bin":
                raise DataError(
                    f"data.vocab_size={self.vocab_size!r} applies only to data.source=bin (raw nanoGPT shards "
                    f"without meta); with data.source={self.source} the vocabulary comes from data.tokenizer: "
                    "leave data.vocab_size null")
            if not 1 <= self.vocab_size <= MAX_VOCAB:
                raise DataError(f"data.vocab_size={self.vocab_size!r} must be between 1 and {MAX_VOCAB}, or null")
        for key in ("split", "text_field"):
            if not getattr(self, key):
                raise DataError(f"data.{key} must be a non-empty string, got {getattr(self, key)!r}")
        check_task_settings(self)
        return self

    @classmethod
    def from_dict(cls, values: Optional[Mapping[str, Any]] = None, **overrides: Any) -> "DataConfig":
        """Build from a mapping (a dict or an OmegaConf DictConfig), rejecting unknown keys."""
        merged = {**dict(values or {}), **overrides}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(merged) - set(names))
        if unknown:
            raise DataError(f"data.{unknown[0]} is not a data setting; valid: {', '.join(sorted(names))}")
        return cls(**merged)

    def resolved_cache_dir(self) -> Path:
        """data.cache_dir, else $SCALELAB_CACHE, else $XDG_CACHE_HOME (or ~/.cache) + scalelab/data."""
        chosen = self.cache_dir or os.environ.get("SCALELAB_CACHE")
        if chosen:
            return Path(chosen).expanduser().resolve()
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base).resolve() / "scalelab" / "data"


_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check_types(cfg: DataConfig) -> None:
    for name, hint in typing.get_type_hints(DataConfig).items():
        value = getattr(cfg, name)
        kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]  # Optional[X] -> X
        optional = hint is not kinds[0]
        if value is None and optional:
            continue
        kind = kinds[0]
        if kind is float:  # an integer is a fine number; a bool is not
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if value is None:
            raise DataError(f"data.{name} must not be null")
        if not ok:
            raise DataError(f"data.{name}={value!r} must be {_TYPE_WORDS[kind]}{' or null' if optional else ''}")
