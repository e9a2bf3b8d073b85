"""Where documents come from: one `Source` class per `data.source`, listed in `SOURCES` (the end of
this file). Adding a source is one class plus one registry entry.

A source, when constructed, scans its corpus cheaply and offline, for a content `fingerprint()`
(the cache key of the tokens, computed on every `prepare`); `open()` then does the slow or
networked part (hf: load the dataset) and `documents()` streams `Doc`s, each already assigned to
the train or val split, deterministically; `entries` (the manifest) counts what went in.

Split rule: a document goes to val when the first 8 bytes of the SHA-256 of its content, read
as a number in [0, 1), fall below `data.val_fraction`; so the split of a document never
depends on which other documents are in the corpus. pycode splits whole files this way; text
and hf split each document (a .txt paragraph, a .jsonl line, a parquet or dataset row).
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import platform
import site
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .config import DataConfig, DataError
from .shards import SPLITS, progress_bar
from .tokenizer import EOT_TEXT

TEXT_EXTS = (".txt", ".jsonl", ".parquet")
_CHUNK = 1 << 20


def split_of(digest: bytes, val_fraction: float) -> str:
    """'val' or 'train' from a content digest (see module docstring)."""
    return "val" if int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction else "train"


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).digest()


def digest_of(parts: Any) -> str:
    """A stable hex fingerprint of a JSON-able value."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def hash_file(path: Path) -> Tuple[str, int, bool]:
    """(sha256 hex, size, whether the file contains the end-of-text marker)."""
    h, size, found, tail = hashlib.sha256(), 0, False, b""
    marker = EOT_TEXT.encode()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
            found = found or marker in tail + chunk
            tail = chunk[-(len(marker) - 1):]
    return h.hexdigest(), size, found


def files_under(root: Path, keep: Callable[[str], bool], skip_dirs=(), follow_links: bool = False) -> List[str]:
    """Sorted relative paths ('/'-separated) of the files under `root` whose names `keep`; hidden
    files and folders (and folders named in `skip_dirs`) are left out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in skip_dirs]
        rel = Path(os.path.relpath(dirpath, root))
        out += [(rel / f).as_posix() for f in filenames
                if not f.startswith(".") and keep(f) and os.path.isfile(os.path.join(dirpath, f))]
    return sorted(out)


@dataclass
class Doc:
    text: str
    split: str  # "train" | "val"
    ref: int  # index of the manifest entry it came from
    advance: int = 0  # progress units consumed


class Source:
    """One corpus (see the module docstring). A subclass sets `required` when it needs a setting; scans
    in __init__, cheaply and offline, filling `entries` (made with new_entry), `skipped` and `total`;
    returns from fingerprint() a dict with "kind" (its data.source name) and "fingerprint" (a digest of
    the content); and yields Docs from documents(), each counted against entries[doc.ref]."""

    required: Optional[Tuple[str, str]] = None  # (data.KEY this source cannot do without, what it holds)
    unit = "B"  # what Doc.advance and `total` count, for the progress bar
    folder: Optional[Path] = None  # token shards made elsewhere, used in place (no documents)
    library: Optional[str] = None  # the package that reads it, for the versions in meta.json

    def __init__(self, cfg: DataConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.entries: List[Dict[str, Any]] = []  # the manifest, with per-split document counts
        self.skipped: List[Dict[str, Any]] = []
        self.total: Optional[int] = None

    def fingerprint(self) -> Dict[str, Any]:
        raise NotImplementedError

    def open(self) -> None:
        """Get ready to stream documents (the slow or networked part). Called once, before documents()."""

    def documents(self) -> Iterator[Doc]:
        raise NotImplementedError

    def split_rule(self) -> str:
        """How documents were assigned to train and val, in words, for meta.json."""
        return "val if sha256(document)[:8] / 2**64 < val_fraction"

    def manifest(self) -> List[Dict[str, Any]]:
        return [e for e in self.entries if sum(e["documents"].values()) > 0]

    def new_entry(self, **fields: Any) -> Dict[str, Any]:
        return {**fields, "documents": {s: 0 for s in SPLITS}}


def _existing_path(cfg: DataConfig, what: str) -> Path:
    p = Path(os.path.expanduser(cfg.path or "")).resolve()
    if not p.exists():
        raise DataError(f"data.path={cfg.path!r} does not exist ({p}); data.source={cfg.source} needs {what}")
    return p


# ---------------------------------------------------------------------------------- pycode


def decode_source(data: bytes) -> Tuple[Optional[str], str]:
    """Text of a Python source file, or (None, why it is skipped).

    Strict UTF-8 first; then the file's PEP 263 coding declaration; then UTF-8 with
    errors="replace" when under 1% of the characters had to be replaced."""
    if not data.strip():
        return None, "empty"
    if b"\x00" in data:
        return None, "binary (NUL byte)"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        enc, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        if enc.lower().replace("_", "-") not in ("utf-8", "utf-8-sig"):
            return data.decode(enc), enc
    except (SyntaxError, LookupError, UnicodeDecodeError):
        pass
    text = data.decode("utf-8", errors="replace")
    if text.count("\ufffd") > 0.01 * len(text):
        return None, "not text (invalid UTF-8)"
    return text, "utf-8 (replaced)"


def pycode_roots(site_packages: bool) -> List[Tuple[str, Path]]:
    """[(label, folder)]: the interpreter's stdlib, then (optionally) its site-packages folders."""
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    roots = [("stdlib", stdlib)]
    if site_packages:
        paths = sysconfig.get_paths()
        for c in [*getattr(site, "getsitepackages", list)(), paths["purelib"], paths["platlib"]]:
            p = Path(c).resolve()
            if p.is_dir() and p not in [r for _, r in roots]:
                roots.append(("site-packages" if len(roots) == 1 else f"site-packages-{len(roots)}", p))
    return roots


class PyCodeSource(Source):
    """The interpreter's standard library *.py files (and its site-packages with data.site_packages),
    deduplicated by content, each file one document."""

    def __init__(self, cfg: DataConfig, progress: bool = True) -> None:
        super().__init__(cfg, progress)
        self.roots = pycode_roots(cfg.site_packages)
        files = [(label, rel, root) for label, root in self.roots
                 for rel in files_under(root, lambda f: f.endswith(".py"),
                                        skip_dirs=("site-packages", "dist-packages", "__pycache__"))]
        if not files:
            raise DataError(f"data.source=pycode found no .py files under {self.roots[0][1]}")
        scanned = []
        for label, rel, root in progress_bar(progress, iterable=files, unit="files", desc="data: scanning .py files"):
            try:
                data = (root / rel).read_bytes()
            except OSError as e:
                self.skipped.append({"root": label, "path": rel, "reason": f"unreadable ({e.strerror})"})
                continue
            text, how = decode_source(data)
            scanned.append((label, rel, hashlib.sha256(data).digest(), len(data), text is not None, how, root))
        # Deterministic order: by (root, relative path), then content hash; dedup keeps the first.
        scanned.sort(key=lambda s: s[:3])
        self._all = [(f"{label}/{rel}", size, digest.hex()) for label, rel, digest, size, *_ in scanned]
        self._files: List[Tuple[Path, bytes]] = []
        seen: Dict[bytes, str] = {}
        for label, rel, digest, size, ok, how, root in scanned:
            reason = how if not ok else f"duplicate of {seen[digest]}" if digest in seen else None
            if reason:
                self.skipped.append({"root": label, "path": rel, "reason": reason})
                continue
            seen[digest] = f"{label}/{rel}"
            self.entries.append(self.new_entry(root=label, path=rel, sha256=digest.hex(), bytes=size,
                                               split=split_of(digest, cfg.val_fraction), encoding=how))
            self._files.append((root / rel, digest))
        self.total = sum(e["bytes"] for e in self.entries)

    def fingerprint(self) -> Dict[str, Any]:
        return {"kind": "pycode", "fingerprint": digest_of(self._all),
                "roots": {label: str(p) for label, p in self.roots}, "python": platform.python_version(),
                "files": len(self._all), "files_used": len(self.entries)}

    def split_rule(self) -> str:
        return super().split_rule() + " (whole files)"

    def documents(self) -> Iterator[Doc]:
        for i, (entry, (path, digest)) in enumerate(zip(self.entries, self._files)):
            data = path.read_bytes()
            if hashlib.sha256(data).digest() != digest:
                raise DataError(f"{path} changed while the dataset was being prepared; run again")
            yield Doc(decode_source(data)[0], entry["split"], i, len(data))


# ------------------------------------------------------------------------------------ text


class TextSource(Source):
    """Local files: .txt (paragraphs, or pieces between end-of-text lines), .jsonl (one document per
    line, key data.text_field), .parquet (column data.text_field); a file or a folder of them."""

    required = ("path", "a .txt/.jsonl/.parquet file or a folder of them")

    def __init__(self, cfg: DataConfig, progress: bool = True) -> None:
        super().__init__(cfg, progress)
        self.path = _existing_path(cfg, self.required[1])
        if self.path.is_file():
            if self.path.suffix.lower() not in TEXT_EXTS:
                raise DataError(f"data.path={cfg.path!r} is a {self.path.suffix or 'extension-less'} file; "
                                f"data.source=text reads {', '.join(TEXT_EXTS)} files (or a folder of them)")
            self.root, rels = self.path.parent, [self.path.name]
        else:
            self.root = self.path
            rels = files_under(self.path, lambda f: os.path.splitext(f)[1].lower() in TEXT_EXTS, follow_links=True)
            if not rels:
                raise DataError(f"data.path={cfg.path!r} is a folder without {', '.join(TEXT_EXTS)} files "
                                f"({self.path})")
        sizes = [(self.root / r).stat().st_size for r in rels]
        self.total = sum(sizes)
        with progress_bar(progress and self.total > (64 << 20), total=self.total, unit="B", unit_scale=True,
                          desc="data: hashing text files") as bar:
            for rel in rels:
                sha, size, has_marker = hash_file(self.root / rel)
                bar.update(size)
                self.entries.append(self.new_entry(path=rel, sha256=sha, bytes=size, eot_marker=has_marker,
                                                   format=os.path.splitext(rel)[1].lower().lstrip(".")))

    def fingerprint(self) -> Dict[str, Any]:
        return {"kind": "text", "fingerprint": digest_of([(e["path"], e["bytes"], e["sha256"]) for e in self.entries]),
                "path": str(self.path), "files": len(self.entries), "text_field": self.cfg.text_field}

    def documents(self) -> Iterator[Doc]:
        for i, e in enumerate(self.entries):
            path = self.root / e["path"]
            read = {"txt": lambda: _txt_documents(path, e["eot_marker"]), "jsonl": lambda: self._jsonl(path),
                    "parquet": lambda: self._parquet(path, e["bytes"])}[e["format"]]
            for text, advance in read():
                if text.strip():
                    yield Doc(text, split_of(text_digest(text), self.cfg.val_fraction), i, advance)

    def _text_value(self, value: Any, where: str) -> Optional[str]:
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: data.text_field={self.cfg.text_field!r} holds a {type(value).__name__}, "
                            "not text")
        return value

    def _jsonl(self, path: Path) -> Iterator[Tuple[str, int]]:
        field = self.cfg.text_field
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e})") from None
                if not isinstance(obj, dict) or field not in obj:
                    keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
                    raise DataError(f"{path}:{lineno}: no data.text_field={field!r} in this record (it has: "
                                    f"{keys}); set data.text_field to the key holding the text")
                value = self._text_value(obj[field], f"{path}:{lineno}")
                if value is not None:
                    yield value, len(raw)

    def _parquet(self, path: Path, size: int) -> Iterator[Tuple[str, int]]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError("reading .parquet files needs pyarrow: pip install pyarrow") from None
        field = self.cfg.text_field
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        if field not in pf.schema_arrow.names:
            raise DataError(f"{path}: no column data.text_field={field!r} (columns: "
                            f"{', '.join(pf.schema_arrow.names)}); set data.text_field to the column holding the text")
        rows = max(1, pf.metadata.num_rows)
        for batch in pf.iter_batches(batch_size=1024, columns=[field]):
            values = batch.column(0).to_pylist()
            step = size * len(values) // rows  # progress: the file's bytes, pro rata per batch
            for j, value in enumerate(values):
                if self._text_value(value, str(path)) is not None:
                    yield value, (step if j == 0 else 0)


def _txt_documents(path: Path, by_marker: bool) -> Iterator[Tuple[str, int]]:
    """(document, characters read) of a .txt file: the pieces between end-of-text markers when the
    file has any (on lines of their own or inside a line), else its paragraphs (blank-line separated)."""
    lines: List[str] = []
    size = 0
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
        for line in f:
            size += len(line)
            if (line.strip() == EOT_TEXT) if by_marker else not line.strip():  # a boundary line
                if lines:
                    yield "".join(lines).strip("\r\n"), size
                    size = 0
                lines = []
            elif by_marker and EOT_TEXT in line:
                first, *rest = line.split(EOT_TEXT)
                lines.append(first)
                for piece in rest:
                    yield "".join(lines).strip("\r\n"), size
                    size = 0
                    lines = [piece]
            else:
                lines.append(line)
    if lines:
        yield "".join(lines).strip("\r\n"), size


# -------------------------------------------------------------------------------------- hf


def _local_files(spec: Optional[str]) -> List[str]:
    """The local files a data_files pattern, or a dataset folder, stands for (none for URLs)."""
    if not spec or "://" in spec:
        return []
    p = os.path.expanduser(spec)
    if os.path.isdir(p):
        return [os.path.join(p, rel) for rel in files_under(Path(p), lambda f: True)]
    return sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))


class HFSource(Source):
    """A Hugging Face dataset (data.name: a Hub id, a local dataset folder, or a loader such as json
    with data.data_files). Local files go into the fingerprint by content; a Hub dataset is identified
    by name, config, split and revision (pin data.revision to keep the tokens of one version)."""

    required = ("name", "a Hugging Face dataset id such as roneneldan/TinyStories, or a local loader such as "
                        "json with data.data_files")
    unit = "rows"
    library = "datasets"

    def __init__(self, cfg: DataConfig, progress: bool = True) -> None:
        super().__init__(cfg, progress)
        self.data_files = cfg.data_files
        if self.data_files and "://" not in self.data_files:
            if not _local_files(self.data_files):
                raise DataError(f"data.data_files={self.data_files!r} matches no file")
            self.data_files = os.path.abspath(os.path.expanduser(self.data_files))
        local_folder = os.path.isdir(os.path.expanduser(cfg.name))
        self.name = os.path.abspath(os.path.expanduser(cfg.name)) if local_folder else cfg.name
        local = _local_files(self.data_files) + (_local_files(self.name) if local_folder else [])
        self.local_files = [(f, *hash_file(Path(f))[:2]) for f in local]
        self._datasets: List[Tuple[Optional[str], Any]] = []

    def _identity(self) -> Dict[str, Any]:
        c = self.cfg
        return {"name": self.name, "config_name": c.config_name, "split": c.split, "val_split": c.val_split,
                "data_files": self.data_files, "revision": c.revision, "text_field": c.text_field}

    def fingerprint(self) -> Dict[str, Any]:
        files = [(f, size, sha) for f, sha, size in self.local_files]
        return {"kind": "hf", "fingerprint": digest_of([self._identity(), files]), **self._identity()}

    def split_rule(self) -> str:
        c = self.cfg
        return f"train: split {c.split!r}; val: split {c.val_split!r}" if c.val_split else super().split_rule()

    def _load(self, split: str):
        c = self.cfg
        try:
            import datasets
        except ImportError:
            raise DataError("data.source=hf needs the Hugging Face datasets package: pip install 'scalelab[hf]' "
                            "(or pip install datasets)") from None
        kwargs: Dict[str, Any] = {"split": split, "streaming": False}
        if self.data_files:
            kwargs["data_files"] = self.data_files
        if c.revision:
            kwargs["revision"] = c.revision
        desc = f"data.name={c.name!r}" + (f" data.config_name={c.config_name!r}" if c.config_name else "")
        quiet = not self.progress and datasets.is_progress_bar_enabled()
        if quiet:
            datasets.disable_progress_bars()
        try:
            ds = datasets.load_dataset(self.name, c.config_name, **kwargs)
        except ConnectionError as e:
            raise DataError(
                f"cannot load the Hugging Face dataset {desc} split {split!r}: the Hub is unreachable or offline "
                f"mode is on ({type(e).__name__}: {e}). Load it once while online so it lands in the local cache "
                "(HF_HOME / HF_DATASETS_CACHE), or with HF_DATASETS_OFFLINE=1 use a cached copy; data.source=text "
                "reads local files; data.source=pycode needs nothing") from None
        except Exception as e:  # DatasetNotFoundError, bad config/split names, bad files, ...
            offline = os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
            hint = (" (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set: only datasets in the local cache can load)"
                    if offline else "")
            raise DataError(
                f"cannot load the Hugging Face dataset {desc} split {split!r}{hint}: {type(e).__name__}: "
                f"{str(e).rstrip('.')}. Check data.name, data.config_name, data.split and data.data_files") from None
        finally:
            if quiet:
                datasets.enable_progress_bars()
        if c.text_field not in ds.column_names:
            raise DataError(f"the Hugging Face dataset {desc} has no column data.text_field={c.text_field!r} "
                            f"(columns: {', '.join(ds.column_names)})")
        return ds

    def open(self) -> None:
        c = self.cfg
        for split, role in [(c.split, None)] + ([(c.val_split, "val")] if c.val_split else []):
            ds = self._load(split)
            self._datasets.append((role, ds))
            self.entries.append(self.new_entry(
                dataset=self.name, config=c.config_name, split=split,
                role=role or ("train" if c.val_split else "train+val by hash"), revision=c.revision,
                data_files=self.data_files, hf_fingerprint=getattr(ds, "_fingerprint", None), rows=len(ds)))
        self.total = sum(len(ds) for _, ds in self._datasets)

    def documents(self) -> Iterator[Doc]:
        field = self.cfg.text_field
        for i, (role, ds) in enumerate(self._datasets):
            for batch in ds.select_columns([field]).iter(batch_size=1000):
                for value in batch[field]:
                    if value is not None and not isinstance(value, str):
                        raise DataError(f"data.text_field={field!r} of the Hugging Face dataset holds "
                                        f"{type(value).__name__}, not text")
                    if not value or not value.strip():
                        continue
                    if role == "val" or self.cfg.val_split:  # train and val come from their own splits
                        split = role or "train"
                    else:
                        split = split_of(text_digest(value), self.cfg.val_fraction)
                    yield Doc(value, split, i, 1)


# -------------------------------------------------------------------------------------- bin


class BinShards(Source):
    """train.bin and val.bin made elsewhere (ours with meta.json, or raw nanoGPT uint16): nothing to
    tokenise, the folder is used in place (see shards.py for how it is read)."""

    required = ("path", "a folder holding train.bin and val.bin")

    def __init__(self, cfg: DataConfig, progress: bool = True) -> None:
        super().__init__(cfg, progress)
        self.folder = _existing_path(cfg, self.required[1])
        if not self.folder.is_dir():
            raise DataError(f"data.path={cfg.path!r} is a file; data.source=bin needs {self.required[1]}")
        missing = [f"{s}.bin" for s in SPLITS if not (self.folder / f"{s}.bin").is_file()]
        if missing:
            raise DataError(f"data.path={cfg.path!r}: the folder {self.folder} lacks {' and '.join(missing)}")


from .tasks import TaskSource  # noqa: E402 (it subclasses Source, defined above)

# The registry: data.source=NAME -> its class. A new source is a Source subclass (in its own module
# when it is large, imported here) and one entry.
SOURCES = {"pycode": PyCodeSource, "text": TextSource, "bin": BinShards, "hf": HFSource, "tasks": TaskSource}


def make_source(cfg: DataConfig, progress: bool = True) -> Source:
    return SOURCES[cfg.source](cfg, progress)
