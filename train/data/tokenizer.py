"""Tokenizers: `bytes` (UTF-8 bytes, vocab 256), `bpe` (byte-level BPE trained with the `tokenizers`
library on the train split) and `gpt2` (tiktoken, from its cached encoding files).

Every tokenizer has `.name`, `.vocab_size`, `.eot` (end-of-text id or None), `.encode(text)`,
`.encode_batch(texts)`, `.decode(ids)`, `.to_dict()` (for meta.json) and `.token_bytes()`: the
number of UTF-8 bytes each token id stands for (0 for special tokens), so the bytes behind any
run of tokens, and hence bits per byte, can be counted exactly. A class-level `vocab_size` is the
vocabulary known before any text is seen (None for bpe: it is trained).

Document separator: each document is followed by `separator_ids()`: the end-of-text token where
the tokenizer has one (bpe, gpt2; it stands for 0 bytes), else the encoding of "\\n\\n" (bytes;
2 bytes, counted in the split's byte total).

gpt2's files come from tiktoken's cache (TIKTOKEN_CACHE_DIR or DATA_GYM_CACHE_DIR, tiktoken's own
variables); when missing they are downloaded once with a short timeout, unless HF_HUB_OFFLINE or
HF_DATASETS_OFFLINE (the Hugging Face offline switches) is set.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np

from train.io_utils import atomic_open, atomic_write_text

from .config import DataError

EOT_TEXT = "<|endoftext|>"  # the end-of-text marker: a special token, and a document boundary in .txt files
TEXT_SEPARATOR = "\n\n"
BPE_FILE = "tokenizer.json"


class Tokenizer:
    name: str = "?"
    vocab_size: Optional[int] = None
    eot: Optional[int] = None

    @classmethod
    def ensure_available(cls) -> None:
        """Raise DataError now, before any corpus work, when this tokenizer cannot be had."""

    def encode(self, text: str) -> List[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        return [np.asarray(self.encode(t), dtype=np.int64) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_bytes(self) -> np.ndarray:
        raise NotImplementedError

    def separator_ids(self) -> List[int]:
        return [self.eot] if self.eot is not None else self.encode(TEXT_SEPARATOR)

    def separator_bytes(self) -> int:
        return 0 if self.eot is not None else len(TEXT_SEPARATOR.encode("utf-8"))

    def to_dict(self) -> dict:
        sep = {"token": self.eot, "text": EOT_TEXT} if self.eot is not None else {"text": TEXT_SEPARATOR}
        return {"name": self.name, "vocab_size": self.vocab_size, "eot": self.eot, "separator": sep}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} vocab={self.vocab_size}>"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: token id = byte value."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        return np.ones(256, dtype=np.uint16)


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style pre-tokenisation) from the `tokenizers` library."""

    name = "bpe"

    def __init__(self, tok, requested_vocab: Optional[int] = None):
        self._tok = tok
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        self.eot = tok.token_to_id(EOT_TEXT)
        self.requested_vocab = requested_vocab

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, progress: bool = True) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT_TEXT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=progress)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, requested_vocab=vocab_size)

    @classmethod
    def load(cls, path: Path) -> "BPETokenizer":
        """From a tokenizer.json, or the dataset folder holding one."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        path = path / BPE_FILE if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"BPE tokenizer file {path} is missing (the dataset folder is incomplete: delete it)")
        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        atomic_write_text(path, self._tok.to_str(pretty=True))

    def encode(self, text: str) -> List[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        fast = getattr(self._tok, "encode_batch_fast", None)  # tokenizers >= 0.20: no offsets
        encs = (fast or self._tok.encode_batch)(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        # Byte-level tokens are strings over a 256-symbol alphabet, one symbol per byte.
        out = np.zeros(self.vocab_size, dtype=np.uint16)
        special = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        for token, idx in self._tok.get_vocab(with_added_tokens=True).items():
            out[idx] = 0 if token in special else len(token)
        return out

    def to_dict(self) -> dict:
        import tokenizers

        return {**super().to_dict(), "file": BPE_FILE, "requested_vocab_size": self.requested_vocab,
                "library": "tokenizers", "library_version": tokenizers.__version__}


# ------------------------------------------------------------------------------------ gpt2

# tiktoken's GPT-2 files: (url, sha256). tiktoken caches a download as sha1(url) in its cache folder.
GPT2_FILES = (
    ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
     "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
)
FETCH_TIMEOUT_S = 10.0
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def tiktoken_cache_dir() -> Optional[Path]:
    """Where tiktoken looks for cached encoding files, as tiktoken decides it (None: caching disabled)."""
    d = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if d is None:
        d = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return Path(d) if d else None


def _fetch(url: str, timeout: float) -> bytes:
    """Download with a short timeout (tiktoken itself uses none). Replaced in tests."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (fixed https URL)
        return r.read()


def _gpt2_unavailable(reason: str, cache: Optional[Path]) -> DataError:
    where = str(cache) if cache else "(caching disabled: TIKTOKEN_CACHE_DIR is empty)"
    names = ", ".join(f"{hashlib.sha1(u.encode()).hexdigest()} (= {u.rsplit('/', 1)[1]})" for u, _ in GPT2_FILES)
    return DataError(
        f"data.tokenizer=gpt2 is unavailable: {reason}. tiktoken needs network access once to fetch the "
        f"GPT-2 encoding files, or the cached files {names} in {where} (set TIKTOKEN_CACHE_DIR to a folder "
        "holding them). Offline, use data.tokenizer=bpe (trained on the corpus) or data.tokenizer=bytes.")


def ensure_gpt2_files(fetch: Optional[Callable[[str, float], bytes]] = None) -> Path:
    """Make sure tiktoken's GPT-2 files are in its cache, fetching them (short timeout) only when
    missing and not offline. Never lets tiktoken reach for the network itself."""
    cache = tiktoken_cache_dir()
    if cache is None:
        raise _gpt2_unavailable("tiktoken caching is disabled", None)

    def cached(url: str, sha: str) -> bool:
        try:
            return hashlib.sha256((cache / hashlib.sha1(url.encode()).hexdigest()).read_bytes()).hexdigest() == sha
        except OSError:
            return False

    missing = [(url, sha) for url, sha in GPT2_FILES if not cached(url, sha)]
    offline = [k for k in OFFLINE_SWITCHES if os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")]
    if missing and offline:
        raise _gpt2_unavailable(f"its encoding files are not cached and {offline[0]} is set", cache)
    for url, sha in missing:
        try:
            data = (fetch or _fetch)(url, FETCH_TIMEOUT_S)
        except Exception as e:  # URLError, timeouts, DNS failures, ...
            raise _gpt2_unavailable(f"could not download {url} ({type(e).__name__}: {e})", cache) from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise _gpt2_unavailable(f"the download of {url} does not match its expected sha256", cache)
        try:
            with atomic_open(cache / hashlib.sha1(url.encode()).hexdigest(), "wb") as f:
                f.write(data)
        except OSError as e:
            raise _gpt2_unavailable(f"cannot write the tiktoken cache ({e})", cache) from None
    return cache


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE through tiktoken (vocab 50257, end-of-text 50256)."""

    name = "gpt2"
    vocab_size = 50257

    @classmethod
    def ensure_available(cls) -> None:
        try:
            import tiktoken  # noqa: F401
        except ImportError:
            raise DataError("data.tokenizer=gpt2 needs the tiktoken package (pip install tiktoken)") from None
        ensure_gpt2_files()

    def __init__(self) -> None:
        self.ensure_available()
        import tiktoken

        self._enc = tiktoken.get_encoding("gpt2")
        self.vocab_size = int(self._enc.n_vocab)
        self.eot = int(self._enc.eot_token)

    def encode(self, text: str) -> List[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        out = self._enc.encode_ordinary_batch(list(texts), num_threads=max(1, os.cpu_count() or 1))
        return [np.asarray(ids, dtype=np.int64) for ids in out]

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.uint16)
        special = set(self._enc.special_tokens_set)
        for i in range(self.vocab_size):
            b = self._enc.decode_single_token_bytes(i)
            out[i] = 0 if b.decode("utf-8", "replace") in special else len(b)
        return out

    def to_dict(self) -> dict:
        return {**super().to_dict(), "library": "tiktoken"}


# The registry: data.tokenizer=NAME -> its class.
TOKENIZERS = {"bytes": ByteTokenizer, "bpe": BPETokenizer, "gpt2": GPT2Tokenizer}


def get_tokenizer(name: str, directory: Optional[Path] = None) -> Tokenizer:
    """A ready tokenizer by name. `bpe` is loaded from `directory`/tokenizer.json (a prepared
    dataset folder); a new one is trained by prepare()."""
    if name not in TOKENIZERS:
        raise DataError(f"data.tokenizer={name!r} is not a known tokenizer; valid: {', '.join(TOKENIZERS)}")
    if name != "bpe":
        return TOKENIZERS[name]()
    if directory is None:
        raise DataError("the bpe tokenizer is trained by prepare(); pass the dataset folder to load it")
    return BPETokenizer.load(Path(directory))
