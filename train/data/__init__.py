"""Token data for training: sources, tokenizers, cached token shards, training and validation batches.

    from train.data import DataConfig, load, TrainSequences, val_batches
    ds = load(DataConfig())                      # prepare (or find cached) + open; pycode + bytes
    seqs = TrainSequences(ds.train, seq_len=256, seed=0)
    x, y = seqs.get(step * batch, batch)         # a pure function of the index
    val = val_batches(ds.val, 256, cfg.val_tokens, batch_size=32)
    bpb = loss_nats / math.log(2) / ds.bytes_per_token("val", targets=[y for _, y in val])

`load` is one pass: source (sources.py) -> tokenizer (tokenizer.py) -> shards (builder.py, in the
cache, built once) -> Dataset (here). Sources (`data.source`, registry `SOURCES`): `pycode` (the
interpreter's standard library *.py files, offline, the default; `data.site_packages=true` adds
site-packages), `text` (`data.path`: .txt/.jsonl/.parquet file or folder), `bin` (`data.path`: a
folder with train.bin/val.bin, ours or raw nanoGPT uint16, used in place), `hf` (a Hugging Face
dataset) and `tasks` (generated arithmetic problems with exact answers, tasks.py). Tokenizers (`data.tokenizer`, registry `TOKENIZERS`): `bytes` (vocab 256), `bpe`
(byte-level BPE trained on the train split, vocab `data.bpe_vocab_size`) and `gpt2` (tiktoken;
needs its cached files or network access once).

Documents are split into train and val by a hash of their content (pycode: whole files) and
each is followed by a separator: the end-of-text token for bpe/gpt2, "\\n\\n" for bytes.
A prepared folder holds train.bin, val.bin (flat uint16/uint32 token ids), meta.json (format
scalelab-tokens-v1: tokenizer, vocab_size, dtype, per-split tokens/bytes/documents, source
fingerprint, manifest), token_bytes.npy (bytes per token id) and, for bpe, tokenizer.json.
The cache folder is data.cache_dir, else $SCALELAB_CACHE, else ~/.cache/scalelab/data.
Imports neither hydra, omegaconf nor wandb; torch only when batches are made.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from .batches import VAL_SET, TrainSequences, val_batches, val_windows
from .builder import as_config, nominal_vocab_size, prepare
from .config import DataConfig, DataError
from .shards import META, SPLITS, TOKEN_BYTES, TokenShard, check_dtype, check_ids, raw_bin_meta, read_meta
from .sources import SOURCES, Source
from .tokenizer import TOKENIZERS, Tokenizer, get_tokenizer

__all__ = ["DataConfig", "DataError", "Dataset", "TokenShard", "TrainSequences", "Tokenizer", "Source",
           "get_tokenizer", "prepare", "load", "open_dataset", "nominal_vocab_size", "val_batches", "val_windows", "VAL_SET",
           "SOURCES", "TOKENIZERS"]


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

    def bytes_per_token(self, split: str = "val", targets=None) -> Optional[float]:
        """UTF-8 bytes per token (for bits per byte = nats per token / ln 2 / bytes_per_token).

        targets=None: over the whole split. targets (token ids: an array, tensor, or a list of them,
        e.g. the y of every val batch): over exactly those tokens, when the per-token byte table is
        known. None when bytes are unknown (raw bin)."""
        self.split(split)  # a bad name raises
        if targets is not None and self.token_bytes is not None:
            ids = np.concatenate([np.asarray(t).ravel() for t in (targets if isinstance(targets, list) else [targets])])
            if ids.size:
                return float(self.token_bytes[ids].sum(dtype=np.int64)) / ids.size
        info = self.meta["splits"][split]
        if info.get("bytes") is None or not info.get("tokens"):
            return None
        return float(info["bytes"]) / float(info["tokens"])

    def tokenizer(self) -> Optional[Tokenizer]:
        """The tokenizer that made the shards (None for raw nanoGPT shards)."""
        name = self.meta.get("tokenizer", {}).get("name")
        return get_tokenizer(name, self.dir) if name in TOKENIZERS else None

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

    def __repr__(self) -> str:
        return f"<Dataset {self.dir} vocab={self.vocab_size} train={len(self.train)} val={len(self.val)}>"


def open_dataset(folder: Union[str, Path], cfg: Optional[DataConfig] = None, progress: bool = True) -> Dataset:
    """Open a prepared folder (with meta.json) or raw nanoGPT shards, validating them."""
    folder = Path(folder)
    cfg = cfg or DataConfig(source="bin", path=str(folder))
    raw = not (folder / META).is_file()
    meta = raw_bin_meta(folder, cfg, progress) if raw else read_meta(folder)
    dtype, vocab = np.dtype(meta["dtype"]), int(meta["vocab_size"])
    check_dtype(vocab, dtype, str(folder) if raw else str(folder / META))
    if not raw and cfg.vocab_size is not None and cfg.vocab_size != vocab:
        raise DataError(f"data.vocab_size={cfg.vocab_size} disagrees with {folder / META} (vocab_size {vocab}); "
                        "leave data.vocab_size null for prepared folders")
    shards = {}
    for s in SPLITS:
        info = meta["splits"][s]
        shards[s] = TokenShard(folder / f"{s}.bin", dtype, s, expected_tokens=None if raw else int(info["tokens"]),
                               bytes=info.get("bytes"), documents=info.get("documents"))
        check_ids(shards[s], vocab)
    for s in SPLITS:
        if len(shards[s]) == 0:
            raise DataError(f"the {s} split in {folder} is empty")
    token_bytes = None
    if not raw and (folder / TOKEN_BYTES).is_file():
        token_bytes = np.load(folder / TOKEN_BYTES)
        if token_bytes.shape != (vocab,):
            raise DataError(f"{folder / TOKEN_BYTES} has {token_bytes.shape[0]} entries, expected {vocab}; "
                            "delete the folder to rebuild")
    return Dataset(folder, meta, shards["train"], shards["val"], token_bytes)


def load(cfg: Union[DataConfig, Mapping[str, Any], None] = None, progress: bool = True) -> Dataset:
    """The dataset for `cfg`: prepared (or found in the cache), then opened and validated."""
    cfg = as_config(cfg)
    return open_dataset(prepare(cfg, progress), cfg, progress)
