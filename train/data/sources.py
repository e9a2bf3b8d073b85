"""Where documents come from: `pycode`, `text` and `hf` (the `bin` source is read in place,
see shards.py). Each source gives a content fingerprint (cheap enough to compute on every
`prepare`, and not needing the network), then a deterministic stream of `Doc`s, each already
assigned to the train or val split, and a manifest of what went in.

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
import site
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .config import DataConfig, DataError

TEXT_EXTS = (".txt", ".jsonl", ".parquet")
EOT_MARKER = "<|endoftext|>"
_CHUNK = 1 << 20


def split_of(digest: bytes, val_fraction: float) -> str:
    """'val' or 'train' from a content digest (see module docstring)."""
    return "val" if int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction else "train"


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).digest()


def digest_of(parts: Any) -> str:
    """A stable hex fingerprint of a JSON-able value."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def hash_file(path: Path) -> Tuple[str, int, bool]:
    """(sha256 hex, size, whether the file contains the <|endoftext|> marker)."""
    h = hashlib.sha256()
    size = 0
    marker = EOT_MARKER.encode()
    has_marker = False
    tail = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
            if not has_marker:
                has_marker = marker in tail + chunk
                tail = chunk[-(len(marker) - 1):]
    return h.hexdigest(), size, has_marker


@dataclass
class Doc:
    text: str
    split: str  # "train" | "val"
    ref: int  # index of the manifest entry it came from
    advance: int = 0  # progress units consumed


def _bar(progress: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(disable=not progress, dynamic_ncols=True, mininterval=0.5, leave=False, **kw)


class Source:
    kind = "?"
    unit = "B"

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.entries: List[Dict[str, Any]] = []  # the manifest, with per-split document counts
        self.skipped: List[Dict[str, Any]] = []
        self.total: Optional[int] = None  # progress total in `unit`

    def fingerprint(self) -> Dict[str, Any]:
        raise NotImplementedError

    def open(self, progress: bool = True) -> None:
        """Get ready to stream documents (hf: load the dataset). Called before documents()."""

    def documents(self) -> Iterator[Doc]:
        raise NotImplementedError

    def manifest(self) -> List[Dict[str, Any]]:
        return [e for e in self.entries if sum(e["documents"].values()) > 0]


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
    """[(label, folder)]: the interpreter's stdlib, then (optionally) its site-packages."""
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    roots = [("stdlib", stdlib)]
    if site_packages:
        cands: List[str] = []
        try:
            cands += site.getsitepackages()
        except AttributeError:  # pragma: no cover (old virtualenv's site.py)
            pass
        paths = sysconfig.get_paths()
        cands += [paths["purelib"], paths["platlib"]]
        seen = {stdlib}
        n = 0
        for c in cands:
            p = Path(c).resolve()
            if p in seen or not p.is_dir():
                continue
            seen.add(p)
            n += 1
            roots.append(("site-packages" if n == 1 else f"site-packages-{n}", p))
    return roots


_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def _walk_py(root: Path) -> List[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS and not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        for f in filenames:
            if f.endswith(".py"):
                full = os.path.join(dirpath, f)
                if os.path.isfile(full):
                    out.append(f if rel == "." else os.path.join(rel, f).replace(os.sep, "/"))
    return out


class PyCodeSource(Source):
    kind = "pycode"
    unit = "B"

    def __init__(self, cfg: DataConfig, progress: bool = True) -> None:
        super().__init__(cfg)
        self.roots = pycode_roots(cfg.site_packages)
        files: List[Tuple[str, str, Path]] = []
        for label, root in self.roots:
            files += [(label, rel, root) for rel in _walk_py(root)]
        if not files:
            raise DataError(f"data.source=pycode found no .py files under {self.roots[0][1]}")
        scanned = []
        with _bar(progress, total=len(files), unit="files", desc="data: scanning .py files") as bar:
            for label, rel, root in files:
                try:
                    data = (root / rel).read_bytes()
                except OSError as e:
                    self.skipped.append({"root": label, "path": rel, "reason": f"unreadable ({e.strerror})"})
                    bar.update(1)
                    continue
                digest = hashlib.sha256(data).digest()
                text, how = decode_source(data)
                scanned.append((label, rel, digest, len(data), text is not None, how, root))
                bar.update(1)
        # Deterministic order: by (root, relative path), then content hash; dedup keeps the first.
        scanned.sort(key=lambda s: (s[0], s[1], s[2]))
        seen: Dict[bytes, str] = {}
        self._files: List[Tuple[Path, bytes]] = []
        self._all: List[Tuple[str, int, str]] = []
        for label, rel, digest, size, ok, how, root in scanned:
            self._all.append((f"{label}/{rel}", size, digest.hex()))
            if not ok:
                self.skipped.append({"root": label, "path": rel, "reason": how})
                continue
            if digest in seen:
                self.skipped.append({"root": label, "path": rel, "reason": f"duplicate of {seen[digest]}"})
                continue
            seen[digest] = f"{label}/{rel}"
            self.entries.append(
                {
                    "root": label,
                    "path": rel,
                    "sha256": digest.hex(),
                    "bytes": size,
                    "split": split_of(digest, cfg.val_fraction),
                    "encoding": how,
                    "documents": {"train": 0, "val": 0},
                }
            )
            self._files.append((root / rel, digest))
        self.total = sum(e["bytes"] for e in self.entries)

    def fingerprint(self) -> Dict[str, Any]:
        import platform

        return {
            "kind": "pycode",
            "fingerprint": digest_of(self._all),
            "roots": {label: str(p) for label, p in self.roots},
            "python": platform.python_version(),
            "files": len(self._all),
            "files_used": len(self.entries),
        }

    def documents(self) -> Iterator[Doc]:
        for i, (entry, (path, digest)) in enumerate(zip(self.entries, self._files)):
            data = path.read_bytes()
            if hashlib.sha256(data).digest() != digest:
                raise DataError(f"{path} changed while the dataset was being prepared; run again")
            text, _ = decode_source(data)
            assert text is not None
            yield Doc(text, entry["split"], i, len(data))


# ------------------------------------------------------------------------------------ text


class TextSource(Source):
    kind = "text"
    unit = "B"

    def __init__(self, cfg: DataConfig, progress: bool = True) -> None:
        super().__init__(cfg)
        root = Path(os.path.expanduser(cfg.path or "")).resolve()
        if not root.exists():
            raise DataError(
                f"data.path={cfg.path!r} does not exist ({root}); data.source=text needs a "
                ".txt/.jsonl/.parquet file or a folder of them"
            )
        if root.is_file():
            if root.suffix.lower() not in TEXT_EXTS:
                raise DataError(
                    f"data.path={cfg.path!r} is a {root.suffix or 'extension-less'} file; data.source=text "
                    f"reads {', '.join(TEXT_EXTS)} files (or a folder of them)"
                )
            self.root, rels = root.parent, [root.name]
        else:
            self.root, rels = root, []
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = os.path.relpath(dirpath, root)
                for f in filenames:
                    if not f.startswith(".") and os.path.splitext(f)[1].lower() in TEXT_EXTS:
                        rels.append(f if rel == "." else os.path.join(rel, f).replace(os.sep, "/"))
            rels.sort()
            if not rels:
                raise DataError(
                    f"data.path={cfg.path!r} is a folder without {', '.join(TEXT_EXTS)} files ({root})"
                )
        self.path = root
        sizes = [(self.root / r).stat().st_size for r in rels]
        with _bar(progress and sum(sizes) > (64 << 20), total=sum(sizes), unit="B", unit_scale=True,
                  desc="data: hashing text files") as bar:
            for rel, size in zip(rels, sizes):
                sha, size, has_marker = hash_file(self.root / rel)
                bar.update(size)
                self.entries.append(
                    {
                        "path": rel,
                        "sha256": sha,
                        "bytes": size,
                        "format": os.path.splitext(rel)[1].lower().lstrip("."),
                        "eot_marker": has_marker,
                        "documents": {"train": 0, "val": 0},
                    }
                )
        self.total = sum(sizes)

    def fingerprint(self) -> Dict[str, Any]:
        return {
            "kind": "text",
            "fingerprint": digest_of([(e["path"], e["bytes"], e["sha256"]) for e in self.entries]),
            "path": str(self.path),
            "files": len(self.entries),
            "text_field": self.cfg.text_field,
        }

    def documents(self) -> Iterator[Doc]:
        for i, e in enumerate(self.entries):
            path = self.root / e["path"]
            fmt = e["format"]
            if fmt == "txt":
                it = self._txt(path, e["eot_marker"])
            elif fmt == "jsonl":
                it = self._jsonl(path)
            else:
                it = self._parquet(path, e["bytes"])
            for text, advance in it:
                if text.strip():
                    yield Doc(text, split_of(text_digest(text), self.cfg.val_fraction), i, advance)

    @staticmethod
    def _txt(path: Path, by_marker: bool) -> Iterator[Tuple[str, int]]:
        """Documents of a .txt file: the pieces between lines reading <|endoftext|> when the file
        has such lines, else its paragraphs (separated by blank lines)."""
        lines: List[str] = []
        size = 0
        with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
            for line in f:
                size += len(line)
                stripped = line.strip()
                boundary = stripped == EOT_MARKER if by_marker else not stripped
                if boundary:
                    if lines:
                        yield "".join(lines).strip("\r\n"), size
                        size = 0
                    lines = []
                elif by_marker and EOT_MARKER in line:
                    # the marker inside a line: split there
                    parts = line.split(EOT_MARKER)
                    lines.append(parts[0])
                    for p in parts[1:]:
                        yield "".join(lines).strip("\r\n"), size
                        size = 0
                        lines = [p]
                else:
                    lines.append(line)
        if lines:
            yield "".join(lines).strip("\r\n"), size

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
                    raise DataError(
                        f"{path}:{lineno}: no data.text_field={field!r} in this record (it has: {keys}); "
                        "set data.text_field to the key holding the text"
                    )
                value = obj[field]
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise DataError(
                        f"{path}:{lineno}: data.text_field={field!r} holds a {type(value).__name__}, not text"
                    )
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
        names = pf.schema_arrow.names
        if field not in names:
            raise DataError(
                f"{path}: no column data.text_field={field!r} (columns: {', '.join(names)}); "
                "set data.text_field to the column holding the text"
            )
        rows = max(1, pf.metadata.num_rows)
        for batch in pf.iter_batches(batch_size=1024, columns=[field]):
            values = batch.column(0).to_pylist()
            step = size * len(values) // rows
            for j, value in enumerate(values):
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise DataError(f"{path}: column data.text_field={field!r} holds {type(value).__name__}, not text")
                yield value, (step if j == 0 else 0)


# -------------------------------------------------------------------------------------- hf


def _local_files(spec: Optional[str]) -> List[str]:
    if not spec or "://" in spec:
        return []
    p = os.path.expanduser(spec)
    if os.path.isdir(p):
        out = []
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".")]
        return sorted(out)
    return sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))


class HFSource(Source):
    kind = "hf"
    unit = "rows"

    def __init__(self, cfg: DataConfig, progress: bool = True) -> None:
        super().__init__(cfg)
        self._progress = progress
        self._datasets: List[Tuple[Optional[str], Any]] = []
        data_files = cfg.data_files
        if data_files and "://" not in data_files:
            matched = _local_files(data_files)
            if not matched:
                raise DataError(f"data.data_files={data_files!r} matches no file")
            data_files = os.path.abspath(os.path.expanduser(data_files))
        self.data_files = data_files
        # Local files behind the dataset (data_files, or a local dataset folder) go into the
        # fingerprint by content; a hub dataset is identified by name/config/split/revision.
        self.name = cfg.name
        if cfg.name and os.path.isdir(os.path.expanduser(cfg.name)):  # a local dataset folder
            self.name = os.path.abspath(os.path.expanduser(cfg.name))
        local = _local_files(self.data_files) + (_local_files(self.name) if self.name != cfg.name else [])
        self.local_files = [(f, *hash_file(Path(f))[:2]) for f in local]

    def fingerprint(self) -> Dict[str, Any]:
        c = self.cfg
        ident = {
            "name": self.name,
            "config_name": c.config_name,
            "split": c.split,
            "val_split": c.val_split,
            "data_files": self.data_files,
            "revision": c.revision,
            "text_field": c.text_field,
        }
        return {
            "kind": "hf",
            "fingerprint": digest_of([ident, [(f, size, sha) for f, sha, size in self.local_files]]),
            **ident,
        }

    def _load(self, split: str):
        c = self.cfg
        try:
            import datasets
        except ImportError:
            raise DataError(
                "data.source=hf needs the Hugging Face datasets package: pip install 'scalelab[hf]' "
                "(or pip install datasets)"
            ) from None
        kwargs: Dict[str, Any] = {"split": split, "streaming": False}
        if self.data_files:
            kwargs["data_files"] = self.data_files
        if c.revision:
            kwargs["revision"] = c.revision
        desc = f"data.name={c.name!r}" + (f" data.config_name={c.config_name!r}" if c.config_name else "")
        quiet = not self._progress and datasets.is_progress_bar_enabled()
        if quiet:
            datasets.disable_progress_bars()
        try:
            ds = datasets.load_dataset(self.name, c.config_name, **kwargs)
        except ConnectionError as e:
            raise DataError(
                f"cannot load the Hugging Face dataset {desc} split {split!r}: the Hub is unreachable or "
                f"offline mode is on ({type(e).__name__}: {e}). Load it once while online so it lands in "
                "the local cache (HF_HOME / HF_DATASETS_CACHE), or with HF_DATASETS_OFFLINE=1 use a cached "
                "copy; data.source=text reads local files; data.source=pycode needs nothing"
            ) from None
        except Exception as e:  # DatasetNotFoundError, bad config/split names, bad files, ...
            offline = os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
            hint = (
                " (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set: only datasets in the local cache can load)"
                if offline
                else ""
            )
            raise DataError(
                f"cannot load the Hugging Face dataset {desc} split {split!r}{hint}: {type(e).__name__}: {str(e).rstrip('.')}. "
                "Check data.name, data.config_name, data.split and data.data_files"
            ) from None
        finally:
            if quiet:
                datasets.enable_progress_bars()
        if c.text_field not in ds.column_names:
            raise DataError(
                f"the Hugging Face dataset {desc} has no column data.text_field={c.text_field!r} "
                f"(columns: {', '.join(ds.column_names)})"
            )
        return ds

    def open(self, progress: bool = True) -> None:
        c = self.cfg
        self._progress = progress
        splits = [(c.split, None)] + ([(c.val_split, "val")] if c.val_split else [])
        self._datasets = []
        self.entries = []
        for split, role in splits:
            ds = self._load(split)
            self._datasets.append((role, ds))
            self.entries.append(
                {
                    "dataset": self.name,
                    "config": c.config_name,
                    "split": split,
                    "role": role or ("train" if c.val_split else "train+val by hash"),
                    "revision": c.revision,
                    "data_files": self.data_files,
                    "hf_fingerprint": getattr(ds, "_fingerprint", None),
                    "rows": len(ds),
                    "documents": {"train": 0, "val": 0},
                }
            )
        self.total = sum(len(ds) for _, ds in self._datasets)

    def documents(self) -> Iterator[Doc]:
        if not self._datasets:
            self.open()
        field = self.cfg.text_field
        for i, (role, ds) in enumerate(self._datasets):
            for batch in ds.select_columns([field]).iter(batch_size=1000):
                for value in batch[field]:
                    if value is None:
                        continue
                    if not isinstance(value, str):
                        raise DataError(
                            f"data.text_field={field!r} of the Hugging Face dataset holds "
                            f"{type(value).__name__}, not text"
                        )
                    if not value.strip():
                        continue
                    if role == "val":
                        split = "val"
                    elif self.cfg.val_split:
                        split = "train"
                    else:
                        split = split_of(text_digest(value), self.cfg.val_fraction)
                    yield Doc(value, split, i, 1)


def make_source(cfg: DataConfig, progress: bool = True) -> Source:
    if cfg.source == "pycode":
        return PyCodeSource(cfg, progress)
    if cfg.source == "text":
        return TextSource(cfg, progress)
    if cfg.source == "hf":
        return HFSource(cfg, progress)
    raise DataError(f"data.source={cfg.source!r} has no document source (bin shards are read in place)")
