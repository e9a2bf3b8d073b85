"""`prepare(cfg)`: the folder of token shards for `cfg`, built once and then found in the cache.

One pass: the source scans its corpus (cheap, offline) for a content fingerprint -> the cache
folder `<source>-<tokenizer>-<key>`, the key hashing that fingerprint and every setting that
changes the tokens -> if the folder is absent: open the source, make the tokenizer (bpe: train it
on the train split), write the shards, then meta.json last, in a temporary folder beside it that is
renamed into place when complete, so a folder that exists is whole.

Several processes may prepare the same data at once (sweep jobs, torchrun ranks): an exclusive
`fcntl.flock` on `<cache>/.locks/<name>.lock` makes the others wait for the first and reuse its
result; where locks are not supported the rename still decides: the loser discards its copy.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Mapping, Tuple, Union

import numpy as np

from train.io_utils import atomic_open, check_writable, versions, write_json
from train.log import get_logger

from .config import DataConfig, DataError
from .shards import (FORMAT, META, SPLITS, TOKEN_BYTES, check_dtype, dtype_for, progress_bar, raw_vocab,
                     read_meta)
from .sources import Doc, Source, digest_of, make_source
from .tokenizer import BPE_FILE, TOKENIZERS, BPETokenizer, Tokenizer, get_tokenizer

log = get_logger("data")

BUILDER_VERSION = 1  # bump when the way tokens are produced changes (invalidates caches)
_BATCH_BYTES = 4 << 20  # documents are encoded in batches of about this many bytes ...
_BATCH_DOCS = 4096  # ... or this many documents
_VERIFY_MAX_TOKENS = 256 << 20  # recount the bytes behind the tokens of corpora up to this size


def as_config(cfg: Union[DataConfig, Mapping[str, Any], None]) -> DataConfig:
    if cfg is None:
        return DataConfig()
    if isinstance(cfg, DataConfig):
        return cfg.validate()
    return DataConfig.from_dict(dict(cfg.items()))


def prepare(cfg: Union[DataConfig, Mapping[str, Any], None] = None, progress: bool = True) -> Path:
    """The dataset folder for `cfg`, built if it is not in the cache. data.source=bin: its own folder."""
    cfg = as_config(cfg)
    source = make_source(cfg, progress)
    if source.folder is not None:  # token shards already
        return source.folder
    key = cache_key(cfg, source)
    folder = cache_folder(cfg, key)
    if (folder / META).is_file():
        log.info("data: using cached %s", folder)
        return folder
    problem = check_writable(folder.parent)
    if problem:
        raise DataError(f"{problem}: it is the data cache; set data.cache_dir or SCALELAB_CACHE to a writable folder")
    with _lock(folder.parent / ".locks" / f"{folder.name}.lock") as alone:
        if (folder / META).is_file():
            log.info("data: using %s (prepared by another process)", folder)
            return folder
        if alone:  # nobody else is building this one: leftovers of killed builds can go
            for stale in folder.parent.glob(f".tmp-{folder.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        log.info("data: preparing %s in %s", folder.name, folder.parent)
        t0 = time.time()
        try:
            build(cfg, source, key, tmp, progress)
            publish(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("data: prepared %s in %.1f s", folder, time.time() - t0)
    return folder


def cache_key(cfg: DataConfig, source: Source) -> Dict[str, Any]:
    """Everything that decides the tokens of a prepared dataset."""
    fp = source.fingerprint()
    tokenizer = {"name": cfg.tokenizer, **({"bpe_vocab_size": cfg.bpe_vocab_size} if cfg.tokenizer == "bpe" else {})}
    return {"format": FORMAT, "builder": BUILDER_VERSION, "source": fp["kind"], "fingerprint": fp["fingerprint"],
            "tokenizer": tokenizer, "val_fraction": cfg.val_fraction, "max_tokens": cfg.max_tokens,
            "text_field": fp.get("text_field")}


def cache_folder(cfg: DataConfig, key: Dict[str, Any]) -> Path:
    tok = cfg.tokenizer + (str(cfg.bpe_vocab_size) if cfg.tokenizer == "bpe" else "")
    return cfg.resolved_cache_dir() / f"{cfg.source}-{tok}-{digest_of(key)[:16]}"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on `path`, waiting for another holder; yields whether it is held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:  # closing the file releases the lock
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            log.info("data: another process is preparing this dataset; waiting for it (%s)", path)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            held = True
        except OSError as e:  # e.g. ENOLCK on some network file systems
            log.warning("data: cannot lock %s (%s); building without a lock", path, e)
            held = False
        yield held


def publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; when another process got there first, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / META).is_file():
            raise
        log.info("data: %s was built concurrently by another process; discarding this copy", final.name)
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------- the build


def build(cfg: DataConfig, source: Source, key: Dict[str, Any], out: Path, progress: bool = True) -> None:
    """Tokenise `source` into `out` (a new folder): tokenizer, shards, token_bytes.npy, meta.json last."""
    out.mkdir(parents=True)
    TOKENIZERS[cfg.tokenizer].ensure_available()  # before the source is opened (hf: loaded)
    source.open()
    tok = make_tokenizer(cfg, source, out, progress)
    splits, capped = write_shards(cfg, source, tok, out, progress)
    token_bytes = tok.token_bytes()
    with atomic_open(out / TOKEN_BYTES, "wb") as f:
        np.save(f, token_bytes)
    if sum(s["tokens"] for s in splits.values()) <= _VERIFY_MAX_TOKENS:
        _check_bytes(out, tok, splits, token_bytes)
    tok_info = tok.to_dict()
    write_json(out / META, {
        "format": FORMAT,
        "tokenizer": tok_info,
        "vocab_size": int(tok.vocab_size),
        "dtype": dtype_for(tok.vocab_size).name,
        "splits": splits,
        "source": {**source.fingerprint(), "cache_key": digest_of(key)},
        "settings": {**{k: key[k] for k in ("val_fraction", "max_tokens", "text_field", "tokenizer")},
                     "capped": capped},
        "split_rule": source.split_rule(),
        "versions": versions(tuple(filter(None, ("numpy", tok_info.get("library"), source.library)))),
        "manifest": source.manifest(),
        "skipped": source.skipped,
    })


def make_tokenizer(cfg: DataConfig, source: Source, out: Path, progress: bool) -> Tokenizer:
    if cfg.tokenizer != "bpe":
        return get_tokenizer(cfg.tokenizer)

    # Trained on the train split only; with data.max_tokens, on the train documents within the
    # first max_tokens bytes of the document stream (bytes >= byte-level BPE tokens).
    def train_texts() -> Iterator[str]:
        seen = 0
        for d in source.documents():
            if cfg.max_tokens is not None and seen >= cfg.max_tokens:
                return
            seen += len(d.text.encode("utf-8", errors="replace"))
            if d.split == "train":
                yield d.text

    log.info("data: training a byte-level BPE (vocab %d) on the train split", cfg.bpe_vocab_size)
    tok = BPETokenizer.train(train_texts(), cfg.bpe_vocab_size, progress=progress)
    tok.save(out / BPE_FILE)
    return tok


def write_shards(cfg: DataConfig, source: Source, tok: Tokenizer, out: Path,
                 progress: bool) -> Tuple[Dict[str, Dict[str, int]], bool]:
    """Write each document's ids, then the separator, to its split's .bin, in document order, until
    data.max_tokens. Returns per-split {tokens, bytes, documents} and whether the cap was reached."""
    dtype = dtype_for(tok.vocab_size)
    check_dtype(tok.vocab_size, dtype, f"tokenizer {tok.name}")
    sep, sep_bytes = np.asarray(tok.separator_ids(), dtype=dtype), tok.separator_bytes()
    stats = {s: {"tokens": 0, "bytes": 0, "documents": 0} for s in SPLITS}
    total, cap = 0, cfg.max_tokens
    with contextlib.ExitStack() as stack:
        files: Dict[str, IO[bytes]] = {s: stack.enter_context(atomic_open(out / f"{s}.bin", "wb")) for s in SPLITS}
        bar = stack.enter_context(progress_bar(progress, total=source.total, unit=source.unit, unit_scale=True,
                                               leave=True, desc=f"data: tokenising {cfg.source} ({tok.name})"))
        for d, n_bytes, ids in _encoded(tok, source.documents()):
            files[d.split].write(memoryview(np.ascontiguousarray(ids, dtype=dtype)).cast("B"))
            files[d.split].write(memoryview(sep).cast("B"))
            st = stats[d.split]
            st["tokens"] += len(ids) + len(sep)
            st["bytes"] += n_bytes + sep_bytes
            st["documents"] += 1
            source.entries[d.ref]["documents"][d.split] += 1
            total += len(ids) + len(sep)
            bar.update(d.advance)
            if cap is not None and total >= cap:
                break
    if stats["train"]["tokens"] == 0:
        raise DataError(f"data.source={cfg.source}: no training documents were found (all empty, skipped or held out)")
    if stats["val"]["tokens"] == 0:
        raise DataError(
            f"data.source={cfg.source}: the validation split is empty ({stats['train']['documents']} documents, "
            f"data.val_fraction={cfg.val_fraction}); raise data.val_fraction or provide more documents"
            + (f" or raise data.max_tokens={cfg.max_tokens}" if cfg.max_tokens else ""))
    return stats, cap is not None and total >= cap


def _encoded(tok: Tokenizer, docs: Iterator[Doc]) -> Iterator[Tuple[Doc, int, np.ndarray]]:
    """(document, its UTF-8 size, its token ids), encoded in batches of about _BATCH_BYTES or
    _BATCH_DOCS documents (much faster than one at a time)."""
    batch: List[Tuple[Doc, int]] = []
    pending = 0
    for d in docs:
        try:
            n = len(d.text.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates (e.g. from JSON escapes)
            d.text = d.text.encode("utf-8", errors="replace").decode("utf-8")
            n = len(d.text.encode("utf-8"))
        batch.append((d, n))
        pending += n
        if pending >= _BATCH_BYTES or len(batch) >= _BATCH_DOCS:
            yield from _encode(tok, batch)
            batch, pending = [], 0
    yield from _encode(tok, batch)


def _encode(tok: Tokenizer, batch: List[Tuple[Doc, int]]) -> Iterator[Tuple[Doc, int, np.ndarray]]:
    if batch:
        for (d, n), ids in zip(batch, tok.encode_batch([d.text for d, _ in batch])):
            yield d, n, ids


def _check_bytes(out: Path, tok: Tokenizer, splits: Dict[str, Dict[str, int]], token_bytes: np.ndarray) -> None:
    """Warn when the tokens stand for other bytes than the text had (a lossy tokenizer: bpb would be off)."""
    for s in SPLITS:
        arr = np.memmap(out / f"{s}.bin", dtype=dtype_for(tok.vocab_size), mode="r")
        step = 16 << 20
        counted = sum(int(token_bytes[arr[i:i + step]].sum(dtype=np.int64)) for i in range(0, len(arr), step))
        del arr
        if counted != splits[s]["bytes"]:
            log.warning("data: the %s tokens stand for %d bytes, the text had %d; bits per byte uses the text",
                        s, counted, splits[s]["bytes"])


# ------------------------------------------------------------------------- for the planner


def nominal_vocab_size(cfg: Union[DataConfig, Mapping[str, Any], None] = None) -> Tuple[int, bool]:
    """(vocab_size, exact) for planning, without tokenising anything. exact=True: the vocabulary a
    run with `cfg` gets: bytes 256; gpt2 50257; bpe the trained vocabulary when this exact data is
    already prepared; bin the shards' meta.json, data.vocab_size, a nanoGPT meta.pkl or, failing
    those, the largest token id + 1 (a full scan, as the run does). exact=False: bpe not prepared
    yet (or its corpus unreadable here): data.bpe_vocab_size, an upper bound."""
    cfg = as_config(cfg)
    if cfg.source == "bin":
        folder = make_source(cfg, progress=False).folder
        if (folder / META).is_file():
            return int(read_meta(folder)["vocab_size"]), True
        return raw_vocab(folder, cfg)[0], True
    fixed = TOKENIZERS[cfg.tokenizer].vocab_size
    if fixed is not None:
        return fixed, True
    try:
        folder = cache_folder(cfg, cache_key(cfg, make_source(cfg, progress=False)))
    except DataError:  # the corpus is not readable here; the run will say why
        return cfg.bpe_vocab_size, False
    if (folder / META).is_file():
        return int(read_meta(folder)["vocab_size"]), True
    return cfg.bpe_vocab_size, False
