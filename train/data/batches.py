"""Training sequences and the fixed validation batches.

`TrainSequences` makes the training stream a pure function of the sequence index: window w of
the train shard is tokens[w*seq_len : w*seq_len + seq_len + 1] (consecutive windows share one
token, so every token but the first is a target exactly once per epoch); sequence i of the
infinite stream is window perm_e[i % count] of epoch e = i // count, where perm_e is a
permutation seeded by (seed, e). Resuming at step k, or giving rank r of R the sequences
r, r+R, ..., needs no state beyond the index.

The permutation comes from the raw output of a PCG64 generator seeded with SeedSequence
([seed, epoch]) (argsort of its 64-bit words), which NumPy keeps stable across versions, so a
run resumes to the same batches after an upgrade.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from train.log import get_logger

from .config import DataError

log = get_logger("data")


def _tokens(shard: Any) -> np.ndarray:
    return shard.tokens if hasattr(shard, "tokens") else np.asarray(shard)


def _to_tensors(arr: np.ndarray):
    import torch

    a = torch.from_numpy(arr.astype(np.int64, copy=False))
    return a[:, :-1].contiguous(), a[:, 1:].contiguous()


def epoch_permutation(count: int, seed: int, epoch: int) -> np.ndarray:
    bits = np.random.PCG64(np.random.SeedSequence([seed, epoch]))
    return np.argsort(bits.random_raw(count), kind="stable")


class TrainSequences:
    """Non-overlapping training windows of `seq_len + 1` tokens, visited in a seeded permutation
    per epoch. `get(start, n)` returns sequences start..start+n-1 as int64 CPU tensors (x, y) of
    shape (n, seq_len), y being x shifted by one token."""

    _KEEP_EPOCHS = 2

    def __init__(self, shard: Any, seq_len: int, seed: int = 0) -> None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise DataError(f"model.seq_len must be a positive integer, got {seq_len!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DataError(f"train.seed must be a non-negative integer, got {seed!r}")
        self.shard = shard
        self.tokens = _tokens(shard)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        n = int(self.tokens.shape[0])
        self.count = (n - 1) // self.seq_len if n > 0 else 0
        if self.count < 1:
            raise DataError(
                f"the train split has {n} tokens, fewer than model.seq_len + 1 = {self.seq_len + 1}: "
                "use a larger corpus or a shorter model.seq_len"
            )
        self._offsets = np.arange(self.seq_len + 1, dtype=np.int64)
        self._perms: Dict[int, np.ndarray] = {}

    @property
    def unique_tokens(self) -> int:
        """Target tokens one epoch covers: what a run trains on before repeating data."""
        return self.count * self.seq_len

    def __len__(self) -> int:
        return self.count

    def permutation(self, epoch: int) -> np.ndarray:
        p = self._perms.get(epoch)
        if p is None:
            p = epoch_permutation(self.count, self.seed, epoch)
            while len(self._perms) >= self._KEEP_EPOCHS:
                self._perms.pop(next(iter(self._perms)))
            self._perms[epoch] = p
        return p

    def windows(self, start: int, n: int) -> np.ndarray:
        """Window indices of sequences start..start+n-1."""
        if start < 0 or n < 0:
            raise ValueError(f"start and n must be non-negative, got start={start}, n={n}")
        idx = np.arange(start, start + n, dtype=np.int64)
        epochs = idx // self.count
        pos = idx % self.count
        out = np.empty(n, dtype=np.int64)
        for e in np.unique(epochs):
            m = epochs == e
            out[m] = self.permutation(int(e))[pos[m]]
        return out

    def get_numpy(self, start: int, n: int) -> np.ndarray:
        """(n, seq_len + 1) array of the windows of sequences start..start+n-1 (shard dtype)."""
        w = self.windows(start, n)
        return np.asarray(self.tokens[w[:, None] * self.seq_len + self._offsets[None, :]])

    def get(self, start: int, n: int):
        return _to_tensors(self.get_numpy(start, n))


# Which windows make the validation set; part of every run record's identity (train/run.py), so a result
# scored on another validation set is never reused. "prefix": the first val_tokens of the split (before
# 2026-11-26); "spread": evenly spaced windows over the whole split.
VAL_SET = "spread"


def val_windows(n_tokens: int, seq_len: int, count: int) -> np.ndarray:
    """Window indices (window w = tokens[w*seq_len : w*seq_len + seq_len + 1]) of the validation set:
    `count` windows evenly spaced over all (n_tokens - 1) // seq_len windows of the split, in a fixed
    shuffled order. Spread, because the split's first tokens are a handful of documents (pycode: two or
    three files), and a loss on so few documents describes them, not the corpus (5% above it on pycode);
    shuffled, so that any prefix (the intermediate evaluations' subset) is spread over the split as well."""
    n_windows = (n_tokens - 1) // seq_len
    count = min(count, n_windows)
    spread = np.arange(count, dtype=np.int64) * n_windows // count
    return spread[epoch_permutation(count, seed=0x7A1, epoch=0)]


def val_batches(shard: Any, seq_len: int, val_tokens: int, batch_size: int) -> List[Tuple[Any, Any]]:
    """The fixed validation set: val_tokens // seq_len windows of seq_len + 1 tokens (starting at
    multiples of seq_len, as for training) spread over the whole val split (`val_windows`), grouped
    into batches of `batch_size` windows (the last may be smaller). Identical for every run with the
    same data and seq_len."""
    if seq_len < 1 or batch_size < 1 or val_tokens < 1:
        raise DataError(f"val_batches needs positive seq_len, val_tokens and batch_size; got {seq_len}, "
                        f"{val_tokens}, {batch_size}")
    toks = _tokens(shard)
    n = int(toks.shape[0])
    if n < seq_len + 1:
        raise DataError(f"the val split has {n} tokens, fewer than model.seq_len + 1 = {seq_len + 1}: raise "
                        "data.val_fraction, use a larger corpus or a shorter model.seq_len")
    if val_tokens < seq_len:
        raise DataError(f"data.val_tokens={val_tokens} is smaller than model.seq_len={seq_len}: the validation "
                        "set would hold no whole window; raise data.val_tokens")
    count = (min(val_tokens + 1, n) - 1) // seq_len
    if n < val_tokens + 1:
        log.warning("data: the val split has %d tokens, fewer than data.val_tokens=%d; validating on the %d target "
                    "tokens there are", n, val_tokens, count * seq_len)
    windows = val_windows(n, seq_len, count)
    offsets = np.arange(seq_len + 1, dtype=np.int64)
    return [_to_tensors(np.asarray(toks[windows[b:b + batch_size, None] * seq_len + offsets[None, :]]))
            for b in range(0, count, batch_size)]
