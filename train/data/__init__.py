"""Token data for training: sources, tokenizers, cached token shards, training and validation batches.

    from train.data import DataConfig, load, TrainSequences, val_batches
    ds = load(DataConfig())                      # prepare (or find cached) + open; pycode + bytes
    seqs = TrainSequences(ds.train, seq_len=256, seed=0)
    x, y = seqs.get(step * batch, batch)         # a pure function of the index
    val = val_batches(ds.val, 256, cfg.val_tokens, batch_size=32)
    bpb = loss_nats / math.log(2) / ds.bytes_per_token("val", n_tokens=sum(y.numel() for _, y in val))

Sources (`data.source`): `pycode` (the interpreter's standard library *.py files, offline, the
default; `data.site_packages=true` adds site-packages), `text` (`data.path`: .txt/.jsonl/.parquet
file or folder), `bin` (`data.path`: a folder with train.bin/val.bin, ours or raw nanoGPT uint16,
used in place) and `hf` (a Hugging Face dataset). Tokenizers (`data.tokenizer`): `bytes`
(vocab 256), `bpe` (byte-level BPE trained on the train split, vocab `data.bpe_vocab_size`) and
`gpt2` (tiktoken; needs its cached files or network access once).

Documents are split into train and val by a hash of their content (pycode: whole files) and
each is followed by a separator: the end-of-text token for bpe/gpt2, "\\n\\n" for bytes.
A prepared folder holds train.bin, val.bin (flat uint16/uint32 token ids), meta.json (format
scalelab-tokens-v1: tokenizer, vocab_size, dtype, per-split tokens/bytes/documents, source
fingerprint, manifest), token_bytes.npy (bytes per token id) and, for bpe, tokenizer.json.
Imports neither hydra, omegaconf nor wandb; torch only when batches are made.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from .batches import TrainSequences, epoch_permutation, val_batches, val_windows
from .config import SOURCES, TOKENIZERS, DataConfig, DataError
from .builder import as_config, prepare
from .shards import (
    FORMAT,
    META,
    SPLITS,
    TOKEN_BYTES,
    TokenShard,
    check_dtype,
    check_ids,
    dtype_for,
    raw_bin_meta,
    read_meta,
)
from .tokenizer import BPETokenizer, ByteTokenizer, GPT2Tokenizer, Tokenizer, get_tokenizer

log = logging.getLogger(__name__)

__all__ = [
    "DataConfig",
    "DataError",
    "Dataset",
    "TokenShard",
    "TrainSequences",
    "Tokenizer",
    "ByteTokenizer",
    "BPETokenizer",
    "GPT2Tokenizer",
    "get_tokenizer",
    "prepare",
    "load",
    "open_dataset",
    "val_batches",
    "val_windows",
    "epoch_permutation",
    "dtype_for",
    "FORMAT",
    "SOURCES",
    "TOKENIZERS",
]


class Dataset:
    """An opened dataset folder: `.train`, `.val` (TokenShard), `.vocab_size`, `.meta`, `.dir`."""

    def __init__(self, folder: Path, meta: Dict[str, Any], train: TokenShard, val: TokenShard,
                 token_bytes: Optional[np.ndarray]) -> None:
        self.dir = Path(folder)
        self.meta = meta
        self.train = train
        self.val = val
        self.vocab_size = int(meta["vocab_size"])
        self.token_bytes = token_bytes

    def split(self, name: str) -> TokenShard:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self.train if name == "train" else self.val

    def bytes_per_token(self, split: str = "val", n_tokens: Optional[int] = None) -> Optional[float]:
        """UTF-8 bytes per token (for bits per byte = nats per token / ln 2 / bytes_per_token).

        n_tokens=None: over the whole split. n_tokens=k: over the targets of the first k
        predictions, tokens[1:k+1] (what val_batches scores when k = windows * seq_len),
        exact when the per-token byte table is known. None when bytes are unknown (raw bin)."""
        shard = self.split(split)
        if n_tokens is not None and self.token_bytes is not None and len(shard) > 1:
            k = max(1, min(int(n_tokens), len(shard) - 1))
            ids = np.asarray(shard.tokens[1:k + 1])
            return float(self.token_bytes[ids].sum(dtype=np.int64)) / k
        b = self.meta["splits"][split].get("bytes")
        t = self.meta["splits"][split].get("tokens")
        if b is None or not t:
            return None
        return float(b) / float(t)

    def tokenizer(self) -> Optional[Tokenizer]:
        """The tokenizer that made the shards (None for raw nanoGPT shards)."""
        name = self.meta.get("tokenizer", {}).get("name")
        if name in ("bytes", "gpt2"):
            return get_tokenizer(name)
        if name == "bpe":
            return BPETokenizer.load(self.dir)
        return None

    def fingerprint(self) -> Dict[str, Any]:
        """What identifies these tokens, for run records: two runs with equal fingerprints trained and
        validated on the same token streams. `hash` covers the source's content fingerprint, the
        tokenizer and the token counts (raw nanoGPT shards: their file fingerprint)."""
        src = self.meta.get("source", {})
        tok = self.meta.get("tokenizer", {})
        fp = {"source": src.get("kind"), "tokenizer": tok.get("name"), "vocab_size": self.vocab_size,
              "train_tokens": len(self.train), "val_tokens": len(self.val)}
        basis = json.dumps([src.get("fingerprint"), src.get("cache_key"), tok, fp], sort_keys=True, default=str)
        return {**fp, "hash": hashlib.sha256(basis.encode()).hexdigest()[:16]}

    def summary(self) -> Dict[str, Any]:
        """A compact description for run records."""
        src = self.meta.get("source", {})
        return {
            "dir": str(self.dir),
            "format": self.meta.get("format"),
            "source": src.get("kind"),
            "fingerprint": src.get("fingerprint"),
            "tokenizer": self.meta.get("tokenizer", {}).get("name"),
            "vocab_size": self.vocab_size,
            "dtype": self.meta.get("dtype"),
            "train_tokens": len(self.train),
            "val_tokens": len(self.val),
            "bytes_per_token_val": self.bytes_per_token("val"),
        }

    def __repr__(self) -> str:
        return f"<Dataset {self.dir} vocab={self.vocab_size} train={len(self.train)} val={len(self.val)}>"


def open_dataset(folder: Union[str, Path], cfg: Optional[DataConfig] = None, progress: bool = True) -> Dataset:
    """Open a prepared folder (with meta.json) or raw nanoGPT shards, validating them."""
    folder = Path(folder)
    cfg = cfg or DataConfig(source="bin", path=str(folder))
    if (folder / META).is_file():
        meta = read_meta(folder)
        raw = False
    else:
        meta = raw_bin_meta(folder, cfg, progress)
        raw = True
    dtype = np.dtype(meta["dtype"])
    vocab = int(meta["vocab_size"])
    check_dtype(vocab, dtype, str(folder / META) if not raw else str(folder))
    if not raw and cfg.vocab_size is not None and cfg.vocab_size != vocab:
        raise DataError(
            f"data.vocab_size={cfg.vocab_size} disagrees with {folder / META} (vocab_size {vocab}); "
            "leave data.vocab_size null for prepared folders"
        )
    shards = {}
    for s in SPLITS:
        info = meta["splits"][s]
        shards[s] = TokenShard(
            folder / f"{s}.bin", dtype, s,
            expected_tokens=None if raw else int(info["tokens"]),
            bytes=info.get("bytes"), documents=info.get("documents"),
        )
        check_ids(shards[s], vocab)
    for s in SPLITS:
        if len(shards[s]) == 0:
            raise DataError(f"the {s} split in {folder} is empty")
    token_bytes = None
    tb = folder / TOKEN_BYTES
    if not raw and tb.is_file():
        token_bytes = np.load(tb)
        if token_bytes.shape != (vocab,):
            raise DataError(f"{tb} has {token_bytes.shape[0]} entries, expected {vocab}; delete the folder to rebuild")
    return Dataset(folder, meta, shards["train"], shards["val"], token_bytes)


def load(cfg: Union[DataConfig, Mapping[str, Any], None] = None, progress: bool = True) -> Dataset:
    """prepare(cfg) then open and validate the shards."""
    cfg = as_config(cfg)
    folder = prepare(cfg, progress)
    return open_dataset(folder, cfg, progress)
