"""`prepare(cfg)`: build (or find in the cache) a dataset folder with train.bin, val.bin and
meta.json (+ token_bytes.npy, and tokenizer.json for bpe).

The folder lives in the cache under `<source>-<tokenizer>-<key>`, where the key hashes the
source's content fingerprint and every setting that changes the tokens. Building happens in a
temporary folder beside it, renamed into place when complete, so a folder that exists is
whole. An exclusive `fcntl.flock` on `<cache>/.locks/<name>.lock` makes concurrent preparers
(sweep jobs, torchrun ranks) wait for the first one and reuse its result; where locks are not
supported the rename still decides: the loser discards its copy.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np

from .config import DataConfig, DataError
from .shards import FORMAT, META, SPLITS, TOKEN_BYTES, ShardWriter, check_dtype, dtype_for, write_json_atomic
from .sources import Doc, Source, digest_of, make_source
from .tokenizer import BPE_FILE, BPETokenizer, Tokenizer, check_available, get_tokenizer

log = logging.getLogger(__name__)

BUILDER_VERSION = 1  # bump when the way tokens are produced changes (invalidates caches)
_BATCH_BYTES = 4 << 20
_BATCH_DOCS = 4096
_VERIFY_MAX_TOKENS = 256 << 20


def as_config(cfg: Union[DataConfig, Mapping[str, Any], None]) -> DataConfig:
    if cfg is None:
        return DataConfig()
    if isinstance(cfg, DataConfig):
        return cfg.validate()
    return DataConfig.from_dict(dict(cfg.items()))


def tokenizer_settings(cfg: DataConfig) -> Dict[str, Any]:
    s: Dict[str, Any] = {"name": cfg.tokenizer}
    if cfg.tokenizer == "bpe":
        s["bpe_vocab_size"] = cfg.bpe_vocab_size
    return s


def cache_key(cfg: DataConfig, fingerprint: Dict[str, Any]) -> Dict[str, Any]:
    """Everything that decides the tokens of a prepared dataset."""
    return {
        "format": FORMAT,
        "builder": BUILDER_VERSION,
        "source": fingerprint["kind"],
        "fingerprint": fingerprint["fingerprint"],
        "tokenizer": tokenizer_settings(cfg),
        "val_fraction": cfg.val_fraction,
        "max_tokens": cfg.max_tokens,
        "text_field": cfg.text_field if cfg.source in ("text", "hf") else None,
    }


def dataset_name(cfg: DataConfig, key: Dict[str, Any]) -> str:
    tok = cfg.tokenizer + (str(cfg.bpe_vocab_size) if cfg.tokenizer == "bpe" else "")
    return f"{cfg.source}-{tok}-{digest_of(key)[:16]}"


def _complete(folder: Path) -> bool:
    return (folder / META).is_file()


def _bin_folder(cfg: DataConfig) -> Path:
    p = Path(os.path.expanduser(cfg.path or "")).resolve()
    if not p.exists():
        raise DataError(
            f"data.path={cfg.path!r} does not exist ({p}); data.source=bin needs a folder holding train.bin and val.bin"
        )
    if not p.is_dir():
        raise DataError(f"data.path={cfg.path!r} is a file; data.source=bin needs a folder holding train.bin and val.bin")
    missing = [f"{s}.bin" for s in SPLITS if not (p / f"{s}.bin").is_file()]
    if missing:
        raise DataError(f"data.path={cfg.path!r}: the folder {p} lacks {' and '.join(missing)}")
    return p


def _writable_cache(cfg: DataConfig) -> Path:
    cache = cfg.resolved_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(
            f"the data cache {cache} is not writable ({e.strerror or e}); set data.cache_dir or "
            "SCALELAB_CACHE to a writable folder"
        ) from None
    return cache


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on `path`; yields whether locking worked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX)
        yield False
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    locked = False
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            log.info("data: another process is preparing this dataset; waiting for it (%s)", path)
            t0 = time.time()
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            locked = True
            log.info("data: waited %.1f s for %s", time.time() - t0, path.name)
        except OSError as e:  # e.g. ENOLCK on some network file systems
            log.warning("data: cannot lock %s (%s); building without a lock", path, e)
        yield locked
    finally:
        if locked:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)
    except OSError:
        if _complete(final):  # another process got there first: keep theirs
            log.info("data: %s was built concurrently by another process; discarding this copy", final.name)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise


def prepare(cfg: Union[DataConfig, Mapping[str, Any], None] = None, progress: bool = True) -> Path:
    """Build or find the dataset folder for `cfg`; returns it. data.source=bin: the folder itself."""
    cfg = as_config(cfg)
    if cfg.source == "bin":
        return _bin_folder(cfg)
    check_available(cfg.tokenizer)
    source = make_source(cfg, progress)
    fp = source.fingerprint()
    key = cache_key(cfg, fp)
    name = dataset_name(cfg, key)
    cache = cfg.resolved_cache_dir()
    final = cache / name
    if _complete(final):
        log.info("data: using cached %s", final)
        return final
    cache = _writable_cache(cfg)
    with _locked(cache / ".locks" / f"{name}.lock") as locked:
        if _complete(final):
            log.info("data: using %s (prepared by another process)", final)
            return final
        if locked:  # nobody else is building this one: leftovers of killed builds can go
            for stale in cache.glob(f".tmp-{name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = cache / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        log.info("data: preparing %s in %s", name, cache)
        t0 = time.time()
        try:
            build(cfg, source, tmp, key, progress)
            _publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("data: prepared %s in %.1f s", final, time.time() - t0)
    return final


def _make_tokenizer(cfg: DataConfig, source: Source, out: Path, progress: bool) -> Tokenizer:
    if cfg.tokenizer != "bpe":
        return get_tokenizer(cfg.tokenizer)
    # Trained on the train split only. With data.max_tokens: on the train documents within the
    # first max_tokens bytes of the document stream (bytes >= byte-level BPE tokens).
    def train_texts() -> Iterator[str]:
        seen = 0
        for d in source.documents():
            if cfg.max_tokens is not None and seen >= cfg.max_tokens:
                return
            seen += len(d.text.encode("utf-8", errors="replace"))
            if d.split == "train":
                yield d.text

    if progress:
        log.info("data: training a byte-level BPE (vocab %d) on the train split", cfg.bpe_vocab_size)
    tok = BPETokenizer.train(train_texts(), cfg.bpe_vocab_size, progress=progress)
    tok.save(out / BPE_FILE)
    return tok


def build(cfg: DataConfig, source: Source, out: Path, key: Dict[str, Any], progress: bool = True) -> None:
    """Tokenise `source` into `out` (a new folder). meta.json is written last."""
    from tqdm.auto import tqdm

    out.mkdir(parents=True)
    source.open(progress)
    tok = _make_tokenizer(cfg, source, out, progress)
    dtype = dtype_for(tok.vocab_size)
    check_dtype(tok.vocab_size, dtype, f"tokenizer {tok.name}")
    sep = np.asarray(tok.separator_ids(), dtype=np.int64)
    sep_bytes = tok.separator_bytes()
    writers = {s: ShardWriter(out / f"{s}.bin", dtype) for s in SPLITS}
    stats = {s: {"tokens": 0, "bytes": 0, "documents": 0} for s in SPLITS}
    total = 0
    cap = cfg.max_tokens

    bar = tqdm(
        total=source.total, unit=source.unit, unit_scale=True, dynamic_ncols=True, mininterval=0.5,
        disable=not progress, desc=f"data: tokenising {cfg.source} ({tok.name})",
    )

    def flush(batch: List[Doc], sizes: List[int]) -> bool:
        """Write a batch; True once the cap is reached."""
        nonlocal total
        encoded = tok.encode_batch([d.text for d in batch])
        for d, n_bytes, ids in zip(batch, sizes, encoded):
            w = writers[d.split]
            w.write(ids)
            w.write(sep)
            st = stats[d.split]
            st["tokens"] += len(ids) + len(sep)
            st["bytes"] += n_bytes + sep_bytes
            st["documents"] += 1
            source.entries[d.ref]["documents"][d.split] += 1
            total += len(ids) + len(sep)
            bar.update(d.advance)
            if cap is not None and total >= cap:
                return True
        return False

    try:
        batch: List[Doc] = []
        sizes: List[int] = []
        pending = 0
        stopped = False
        for d in source.documents():
            try:
                n = len(d.text.encode("utf-8"))
            except UnicodeEncodeError:  # lone surrogates (e.g. from JSON escapes)
                d.text = d.text.encode("utf-8", errors="replace").decode("utf-8")
                n = len(d.text.encode("utf-8"))
            batch.append(d)
            sizes.append(n)
            pending += n
            if pending >= _BATCH_BYTES or len(batch) >= _BATCH_DOCS:
                stopped = flush(batch, sizes)
                batch, sizes, pending = [], [], 0
                if stopped:
                    break
        if batch and not stopped:
            flush(batch, sizes)
    finally:
        bar.close()
        for w in writers.values():
            w.close()

    if stats["train"]["tokens"] == 0:
        raise DataError(f"data.source={cfg.source}: no training documents were found (all empty, skipped or held out)")
    if stats["val"]["tokens"] == 0:
        raise DataError(
            f"data.source={cfg.source}: the validation split is empty ({stats['train']['documents']} documents, "
            f"data.val_fraction={cfg.val_fraction}); raise data.val_fraction or provide more documents"
            + (f" or raise data.max_tokens={cfg.max_tokens}" if cfg.max_tokens else "")
        )

    token_bytes = tok.token_bytes()
    np.save(out / TOKEN_BYTES, token_bytes)
    if total <= _VERIFY_MAX_TOKENS:
        for s in SPLITS:
            arr = np.memmap(out / f"{s}.bin", dtype=dtype, mode="r") if stats[s]["tokens"] else np.zeros(0, dtype)
            step = 16 << 20
            counted = sum(int(token_bytes[arr[i:i + step]].sum(dtype=np.int64)) for i in range(0, len(arr), step))
            del arr
            if counted != stats[s]["bytes"]:  # a lossy tokenizer: bpb would be off
                log.warning(
                    "data: the %s tokens stand for %d bytes, the text had %d; bits per byte uses the text",
                    s, counted, stats[s]["bytes"],
                )

    import platform

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    mods = {"bpe": "tokenizers", "gpt2": "tiktoken"}.get(cfg.tokenizer, ""), "datasets" if cfg.source == "hf" else ""
    for mod in filter(None, mods):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover
            pass
    split_rule = "val if sha256(document)[:8] / 2**64 < val_fraction" + (
        " (whole files)" if cfg.source == "pycode" else ""
    )
    if cfg.source == "hf" and cfg.val_split:
        split_rule = f"train: split {cfg.split!r}; val: split {cfg.val_split!r}"

    meta = {
        "format": FORMAT,
        "tokenizer": tok.to_dict(),
        "vocab_size": int(tok.vocab_size),
        "dtype": dtype.name,
        "splits": stats,
        "source": {**source.fingerprint(), "cache_key": digest_of(key)},
        "settings": {
            "val_fraction": cfg.val_fraction,
            "max_tokens": cfg.max_tokens,
            "text_field": key["text_field"],
            "tokenizer": tokenizer_settings(cfg),
            "capped": cap is not None and total >= cap,
        },
        "split_rule": split_rule,
        "versions": versions,
        "manifest": source.manifest(),
        "skipped": source.skipped,
    }
    write_json_atomic(out / META, meta)
