"""Token shards: flat `.bin` arrays of token ids (uint16 when vocab_size <= 65536, else uint32)
read through `np.memmap`, described by `meta.json`; or raw nanoGPT uint16 `train.bin`/`val.bin`
without meta (vocab from data.vocab_size, a nanoGPT meta.pkl, or max id + 1).

Opening a shard checks that its size is a whole number of tokens and matches meta's count,
that the vocabulary fits the dtype, and that token ids on a sample lie below vocab_size.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from train.log import get_logger

from .config import DataConfig, DataError

log = get_logger("data")

FORMAT = "scalelab-tokens-v1"
META = "meta.json"
SPLITS = ("train", "val")
TOKEN_BYTES = "token_bytes.npy"
RAW_DTYPE = np.dtype(np.uint16)  # nanoGPT's shards
_FULL_CHECK_TOKENS = 64 << 20  # check every id of shards up to this size; sample larger ones
_SAMPLE_BLOCKS = 256
_SAMPLE_BLOCK = 1 << 16


def progress_bar(progress: bool, **kw):
    """A tqdm bar on stderr, shown only when `progress` (the data layer's one kind of bar)."""
    from tqdm.auto import tqdm

    return tqdm(**{"disable": not progress, "dynamic_ncols": True, "mininterval": 0.5, "leave": False, **kw})


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class TokenShard:
    """One split: `.tokens` (a read-only memmap, or an empty array), `len()`, `.path`,
    `.bytes` (UTF-8 bytes behind the tokens, None when unknown) and `.documents`."""

    def __init__(self, path: Path, dtype: np.dtype, split: str, expected_tokens: Optional[int] = None,
                 bytes: Optional[int] = None, documents: Optional[int] = None) -> None:
        self.path, self.dtype, self.split = Path(path), np.dtype(dtype), split
        self.bytes, self.documents = bytes, documents
        if not self.path.is_file():
            raise DataError(f"shard {self.path} is missing (expected the {split} split's tokens there)")
        size, item = self.path.stat().st_size, self.dtype.itemsize
        if size % item:
            raise DataError(f"shard {self.path} is corrupt: {size} bytes is not a whole number of {self.dtype.name} "
                            f"tokens ({item} bytes each); delete the dataset folder to rebuild it")
        n = size // item
        if expected_tokens is not None and n != expected_tokens:
            raise DataError(f"shard {self.path} is truncated or corrupt: meta.json says {expected_tokens} tokens "
                            f"= {expected_tokens * item} bytes, the file has {size} bytes ({n} tokens); "
                            "delete the dataset folder to rebuild it")
        # np.memmap cannot map an empty file
        self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(n,)) if n else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __repr__(self) -> str:
        return f"<TokenShard {self.split} {len(self)} tokens {self.dtype.name} {self.path}>"

    def max_id(self, full: bool = False, progress: bool = False) -> int:
        """Largest token id: over the whole shard when small (or full=True), else over a sample
        of evenly spaced blocks plus the first and last blocks."""
        n = len(self)
        if n == 0:
            return -1
        if full or n <= _FULL_CHECK_TOKENS:
            step = 16 << 20
            chunks = progress_bar(progress and n > step, iterable=range(0, n, step), unit="chunk",
                                  desc=f"data: scanning {self.path.name}")
            return max(int(self.tokens[i:i + step].max()) for i in chunks)
        starts = np.linspace(0, n - _SAMPLE_BLOCK, _SAMPLE_BLOCKS).astype(np.int64)
        return max(int(self.tokens[s:s + _SAMPLE_BLOCK].max()) for s in starts)


def check_ids(shard: TokenShard, vocab_size: int) -> None:
    m = shard.max_id()
    if m >= vocab_size:
        raise DataError(f"shard {shard.path} holds token id {m}, not below the vocabulary size {vocab_size}: the "
                        "shard and its meta do not match (delete and rebuild it, or for raw nanoGPT shards set "
                        "data.vocab_size correctly)")


def check_dtype(vocab_size: int, dtype: np.dtype, where: str) -> None:
    limit = np.iinfo(dtype).max + 1
    if vocab_size > limit:
        raise DataError(f"{where}: a vocabulary of {vocab_size} tokens does not fit {np.dtype(dtype).name} shards "
                        f"(at most {limit} ids); such a tokenizer needs uint32 shards")


def read_meta(folder: Path) -> Dict[str, Any]:
    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable or not JSON ({e}); delete the dataset folder to rebuild it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DataError(f"{path} is not a {FORMAT} meta file (format={found!r})")
    for key in ("vocab_size", "dtype", "splits", "tokenizer"):
        if key not in meta:
            raise DataError(f"{path} lacks the key {key!r}; delete the dataset folder to rebuild it")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise DataError(f"{path}: dtype {meta['dtype']!r} is not uint16 or uint32")
    for s in SPLITS:
        if s not in meta["splits"] or "tokens" not in meta["splits"][s]:
            raise DataError(f"{path} lacks the token count of the {s} split")
    return meta


# --------------------------------------------------------------------------- raw nanoGPT


class _SafeUnpickler(pickle.Unpickler):
    """nanoGPT's meta.pkl is a plain dict; refuse anything that would import code."""

    def find_class(self, module: str, name: str):  # noqa: D401
        raise pickle.UnpicklingError(f"meta.pkl refers to {module}.{name}; only plain data is read")


def read_meta_pkl(path: Path) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f).load()
    except Exception as e:
        log.warning("data: ignoring %s (%s)", path, e)
        return None
    return obj if isinstance(obj, dict) else None


def quick_fingerprint(folder: Path) -> str:
    """Sizes and first/last MiB of train.bin and val.bin (cheap on multi-GB shards)."""
    h = hashlib.sha256()
    for s in SPLITS:
        p = Path(folder) / f"{s}.bin"
        size = p.stat().st_size
        h.update(f"{s}:{size};".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read(1 << 20))
    return h.hexdigest()


def raw_vocab(folder: Path, cfg: DataConfig, progress: bool = False) -> Tuple[int, str, Dict[str, Any]]:
    """(vocab_size, where it came from, tokenizer description) of raw nanoGPT uint16 shards:
    data.vocab_size, else a nanoGPT meta.pkl, else the largest token id + 1 (a full scan)."""
    folder = Path(folder)
    if cfg.vocab_size is not None:
        check_dtype(cfg.vocab_size, RAW_DTYPE, f"data.vocab_size={cfg.vocab_size} with raw nanoGPT uint16 shards "
                                               f"in {folder}")
        return cfg.vocab_size, "data.vocab_size", {"name": "unknown"}
    pkl = read_meta_pkl(folder / "meta.pkl") if (folder / "meta.pkl").is_file() else None
    if pkl and isinstance(pkl.get("vocab_size"), int):
        vocab = int(pkl["vocab_size"])
        check_dtype(vocab, RAW_DTYPE, f"{folder / 'meta.pkl'} (vocab_size {vocab}) with uint16 shards")
        return vocab, "meta.pkl", {"name": "char", "from": "meta.pkl"} if "itos" in pkl else {"name": "unknown"}
    how = "inferred as max token id + 1"
    vocab = max(TokenShard(folder / f"{s}.bin", RAW_DTYPE, s).max_id(full=True, progress=progress)
                for s in SPLITS) + 1
    log.warning("data: %s has no meta.json or meta.pkl and data.vocab_size is unset: vocab_size=%d %s "
                "(set data.vocab_size to be exact, e.g. 50257 for GPT-2 tokens)", folder, vocab, how)
    return vocab, how, {"name": "unknown"}


def raw_bin_meta(folder: Path, cfg: DataConfig, progress: bool = True) -> Dict[str, Any]:
    """meta for raw nanoGPT uint16 shards (nothing is written into the user's folder)."""
    folder = Path(folder)
    tokens = {s: len(TokenShard(folder / f"{s}.bin", RAW_DTYPE, s)) for s in SPLITS}  # checks whole tokens
    vocab, how, tokenizer = raw_vocab(folder, cfg, progress)
    return {
        "format": "nanogpt-raw",
        "tokenizer": {**tokenizer, "vocab_size": vocab},
        "vocab_size": int(vocab),
        "vocab_source": how,
        "dtype": RAW_DTYPE.name,
        "splits": {s: {"tokens": tokens[s], "bytes": None, "documents": None} for s in SPLITS},
        "source": {"kind": "bin", "path": str(folder), "fingerprint": quick_fingerprint(folder)},
        "manifest": [{"path": f"{s}.bin", "split": s} for s in SPLITS],
    }
