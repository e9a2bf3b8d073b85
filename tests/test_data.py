"""train.data: tokenizers, sources, cached shards, validation of shards, training/validation batches."""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from train.data import (
    DataConfig,
    DataError,
    TrainSequences,
    get_tokenizer,
    load,
    nominal_vocab_size,
    open_dataset,
    prepare,
    val_batches,
)
from train.data import batches
from train.data import builder as prepare_mod
from train.data import tokenizer as tokmod
from train.data.sources import SOURCES, Doc, Source, split_of, text_digest
from train.data.tokenizer import BPETokenizer, ByteTokenizer
from tests.conftest import REPO, run_cli
SUBSET = 400_000  # pycode tokens for the quick tests (the first files in sorted order)

SAMPLE = "def f(x):\n    return x ** 2  # héllo wörld ✓ 🙂\n\n\tTabs,   spaces\r\nand CRLF. 日本語\n"


def pycode_cfg(cache: Path, **kw) -> DataConfig:
    return DataConfig(source="pycode", cache_dir=str(cache), max_tokens=SUBSET, val_fraction=0.2, **kw)


@pytest.fixture(scope="module")
def pycode_small(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    return prepare(pycode_cfg(cache), progress=False)


@pytest.fixture
def data_log(caplog, monkeypatch):
    """caplog for the data layer's `scalelab.data` logger, attached to it directly: the `scalelab`
    logger does not propagate to the root (where caplog listens) once train.log.setup() ran."""
    from train.log import get_logger

    monkeypatch.setattr(get_logger(), "propagate", False)  # each record once, whatever ran before
    get_logger().addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="scalelab.data")
    yield caplog
    get_logger().removeHandler(caplog.handler)


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"source": "web"}, ["data.source", "'web'", "pycode", "text", "bin", "hf"]),
        ({"tokenizer": "sentencepiece"}, ["data.tokenizer", "bytes", "bpe", "gpt2"]),
        ({"source": "text"}, ["data.path is required", "data.source=text"]),
        ({"source": "bin"}, ["data.path is required", "data.source=bin"]),
        ({"source": "hf"}, ["data.name is required"]),
        ({"val_fraction": 1.5}, ["data.val_fraction", "1.5", "between 0 and 1"]),
        ({"val_fraction": 0.0}, ["data.val_fraction"]),
        ({"val_tokens": 0}, ["data.val_tokens", "positive"]),
        ({"max_tokens": -5}, ["data.max_tokens", "-5"]),
        ({"bpe_vocab_size": 100}, ["data.bpe_vocab_size", "100", "257"]),
        ({"vocab_size": 500}, ["data.vocab_size", "data.source=bin"]),
        ({"val_tokens": "many"}, ["data.val_tokens", "'many'", "integer"]),
        ({"site_packages": "yes"}, ["data.site_packages", "true or false"]),
    ],
)
def test_config_errors_name_the_key(kw, words):
    with pytest.raises(DataError) as e:
        DataConfig(**kw)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert isinstance(e.value, ValueError)


def test_config_from_dict_rejects_unknown_keys():
    assert DataConfig.from_dict({"tokenizer": "bpe"}).tokenizer == "bpe"
    with pytest.raises(DataError, match=r"data\.tokenzer is not a data setting.*tokenizer"):
        DataConfig.from_dict({"tokenzer": "bpe"})


def test_yaml_group_files_hold_only_what_differs_from_the_schema():
    import dataclasses

    yaml = pytest.importorskip("yaml")
    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    files = sorted((REPO / "conf" / "data").glob("*.yaml"))
    assert {f.stem for f in files} == set(SOURCES)  # one group option per source
    for f in files:
        values = yaml.safe_load(f.read_text()) or {}
        assert set(values) <= set(defaults), (f.name, set(values) - set(defaults))
        same = {k for k, v in values.items() if v == defaults[k]}
        assert not same, f"{f.name} repeats the schema's defaults for {sorted(same)}"
        merged = {**defaults, **values}
        assert merged["source"] == f.stem
        if SOURCES[f.stem].required is None:
            DataConfig(**values)  # pycode (the default) and tasks are complete as they stand
        else:  # the others need a path or name, and say so
            with pytest.raises(DataError, match="is required"):
                DataConfig(**values)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path / "env"))
    assert DataConfig().resolved_cache_dir() == (tmp_path / "env").resolve()
    assert DataConfig(cache_dir=str(tmp_path / "x")).resolved_cache_dir() == (tmp_path / "x").resolve()
    monkeypatch.delenv("SCALELAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert DataConfig().resolved_cache_dir() == (tmp_path / "xdg").resolve() / "scalelab" / "data"


def test_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=r"cannot be written.*data cache.*data\.cache_dir"):
        prepare(pycode_cfg(blocker / "cache"), progress=False)


# -------------------------------------------------------------------------- tokenizers


def test_bytes_tokenizer_roundtrip():
    tok = get_tokenizer("bytes")
    ids = tok.encode(SAMPLE)
    assert ids == list(SAMPLE.encode("utf-8"))
    assert max(ids) < tok.vocab_size == 256
    assert tok.decode(ids) == SAMPLE
    assert tok.separator_ids() == [10, 10] and tok.separator_bytes() == 2
    assert (tok.token_bytes() == 1).all()
    assert tok.to_dict()["name"] == "bytes"


def _made_up_corpus(n: int = 400) -> list:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "naïve", "café", "λx", "🙂", "return",
             "def", "    ", "\n", "(x)", "+=", "1234"]
    return [" ".join(rng.choice(words, size=30)) for _ in range(n)]


def test_bpe_trains_roundtrips_and_respects_its_vocab(tmp_path):
    corpus = _made_up_corpus()
    tok = BPETokenizer.train(iter(corpus), 300, progress=False)
    assert 257 <= tok.vocab_size <= 300
    assert tok.eot is not None and tok.separator_ids() == [tok.eot] and tok.separator_bytes() == 0
    tb = tok.token_bytes()
    assert tb.shape == (tok.vocab_size,) and tb[tok.eot] == 0
    for text in corpus[:20] + [SAMPLE, "", "zzz unseen ☃ text\x00\x7f"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
        assert int(tb[ids].sum()) == len(text.encode("utf-8"))  # exact bytes for bits per byte
    # merges learned: the corpus compresses well below one token per byte
    assert len(tok.encode(corpus[0])) < 0.5 * len(corpus[0].encode())
    tok.save(tmp_path / "tokenizer.json")
    again = get_tokenizer("bpe", directory=tmp_path)
    assert again.encode(SAMPLE) == tok.encode(SAMPLE) and again.vocab_size == tok.vocab_size
    batch = tok.encode_batch(corpus[:5])
    assert [list(b) for b in batch] == [tok.encode(t) for t in corpus[:5]]


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any attempt to reach the network (sockets or tiktoken's own fetch)."""
    import socket

    attempts = []

    def boom(*a, **k):
        attempts.append(a)
        raise AssertionError("a network call was attempted")

    monkeypatch.setattr(socket.socket, "connect", boom)
    monkeypatch.setattr(socket, "create_connection", boom)
    monkeypatch.setattr(tokmod, "_fetch", boom)
    import tiktoken.load

    monkeypatch.setattr(tiktoken.load, "read_file", boom)
    yield attempts
    assert not attempts, f"network calls were attempted: {attempts}"


def test_gpt2_without_cached_files_offline_is_a_clear_error(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        get_tokenizer("gpt2")
    msg = str(e.value)
    for w in ("data.tokenizer=gpt2", "network access once", str(tmp_path / "empty"), "data.tokenizer=bpe",
              "data.tokenizer=bytes", "TIKTOKEN_CACHE_DIR"):
        assert w in msg, (w, msg)
    # the same through prepare, before any tokenising
    with pytest.raises(DataError, match="data.tokenizer=gpt2 is unavailable"):
        prepare(pycode_cfg(tmp_path / "cache", tokenizer="gpt2"), progress=False)


def test_gpt2_download_failure_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    for k in tokmod.OFFLINE_SWITCHES:
        monkeypatch.delenv(k, raising=False)
    calls = []

    def unreachable(url, timeout):
        calls.append((url, timeout))
        raise OSError("Name or service not known")

    monkeypatch.setattr(tokmod, "_fetch", unreachable)
    with pytest.raises(DataError, match=r"could not download .*vocab\.bpe.*Name or service not known"):
        get_tokenizer("gpt2")
    assert len(calls) == 1 and calls[0][1] <= 10  # one short-timeout try, no retries

    monkeypatch.setattr(tokmod, "_fetch", lambda url, timeout: b"not the real file")
    with pytest.raises(DataError, match="does not match its expected sha256"):
        get_tokenizer("gpt2")
    assert not list((tmp_path / "empty").glob("*"))  # nothing bad was cached


@pytest.fixture
def stand_in_gpt2(monkeypatch):
    """tiktoken with a made-up encoding in place of GPT-2's (whose files need the network):
    256 bytes + every byte pair + end-of-text = 65793 ids, so the shards must be uint32."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({bytes([a, b]): 256 + a * 256 + b for a in range(256) for b in range(256)})
    enc = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": len(ranks)})
    monkeypatch.setattr(tokmod, "ensure_gpt2_files", lambda: None)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: enc)
    return enc


def test_gpt2_path_and_uint32_shards(tmp_path, stand_in_gpt2):
    tok = get_tokenizer("gpt2")
    assert tok.vocab_size == 65793 and tok.eot == 65792 and tok.separator_ids() == [65792]
    ids = tok.encode(SAMPLE)
    assert tok.decode(ids) == SAMPLE and int(tok.token_bytes()[ids].sum()) == len(SAMPLE.encode())
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    ds = load(DataConfig(source="text", path=str(f), tokenizer="gpt2", val_fraction=0.25,
                         cache_dir=str(tmp_path / "c")), progress=False)
    assert ds.meta["dtype"] == "uint32" and ds.train.tokens.dtype == np.uint32
    assert (ds.dir / "train.bin").stat().st_size == 4 * len(ds.train)
    assert int(np.asarray(ds.train.tokens).max()) == 65792  # the end-of-text ids survive
    assert int(ds.token_bytes[np.asarray(ds.val.tokens)].sum()) == ds.meta["splits"]["val"]["bytes"]
    x, y = TrainSequences(ds.train, 8, 0).get(0, 3)
    assert x.shape == (3, 8) and int(x.max()) < ds.vocab_size


# ------------------------------------------------------------------------------ pycode


def test_pycode_prepare_is_deterministic_cached_and_split_by_file(tmp_path, monkeypatch, capfd):
    a = prepare(pycode_cfg(tmp_path / "a"), progress=True)
    out, err = capfd.readouterr()
    assert out == ""  # progress goes to stderr
    b = prepare(pycode_cfg(tmp_path / "b"), progress=False)
    assert a.name == b.name and a != b
    for f in ("train.bin", "val.bin", "meta.json", "token_bytes.npy"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f

    # cache hit: nothing is built the second time
    def no_build(*args, **kw):
        raise AssertionError("rebuilt a cached dataset")

    monkeypatch.setattr(prepare_mod, "build", no_build)
    mtime = (a / "train.bin").stat().st_mtime_ns
    assert prepare(pycode_cfg(tmp_path / "a"), progress=False) == a
    assert (a / "train.bin").stat().st_mtime_ns == mtime
    assert not list((tmp_path / "a").glob(".tmp-*"))

    meta = json.loads((a / "meta.json").read_text())
    assert meta["format"] == "scalelab-tokens-v1" and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == 256 and meta["tokenizer"]["name"] == "bytes"
    assert meta["source"]["kind"] == "pycode" and len(meta["source"]["fingerprint"]) == 64
    assert meta["settings"]["capped"] is True
    man = meta["manifest"]
    assert man, "the manifest lists the files that went in"
    paths = [(e["root"], e["path"]) for e in man]
    assert paths == sorted(paths) and len(set(paths)) == len(paths)
    assert len({e["sha256"] for e in man}) == len(man)  # deduplicated
    train_files = {e["path"] for e in man if e["split"] == "train"}
    val_files = {e["path"] for e in man if e["split"] == "val"}
    assert train_files and val_files and not train_files & val_files
    for e in man:  # each file wholly in its split, chosen by its hash
        other = "val" if e["split"] == "train" else "train"
        assert e["documents"][e["split"]] == 1 and e["documents"][other] == 0
        assert e["split"] == split_of(bytes.fromhex(e["sha256"]), 0.2)
    for s in ("train", "val"):
        st = meta["splits"][s]
        assert st["tokens"] == st["bytes"] == (a / f"{s}.bin").stat().st_size // 2
        assert st["documents"] == len(train_files if s == "train" else val_files)
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] >= SUBSET

    # the train shard is the train files in manifest order, each followed by "\n\n"
    stdlib = Path(meta["source"]["roots"]["stdlib"])
    first = next(e for e in man if e["split"] == "train")
    want = (stdlib / first["path"]).read_bytes() + b"\n\n"
    got = np.fromfile(a / "train.bin", dtype=np.uint16)[: len(want)].astype(np.uint8).tobytes()
    assert got == want


def test_pycode_settings_change_the_cache_key(tmp_path, pycode_small):
    other = prepare(DataConfig(cache_dir=str(tmp_path), max_tokens=SUBSET, val_fraction=0.3), progress=False)
    assert other.name != pycode_small.name
    m1 = json.loads((pycode_small / "meta.json").read_text())
    m2 = json.loads((other / "meta.json").read_text())
    assert m1["source"]["fingerprint"] == m2["source"]["fingerprint"]  # same files
    assert m1["source"]["cache_key"] != m2["source"]["cache_key"]


def test_pycode_full_stdlib_bytes(tmp_path, monkeypatch):
    # What keeps a full build quick, checked without a clock: every .py file is read once to
    # fingerprint and once more (if used) to tokenise, and documents are encoded in large batches.
    reads, encoded = [], []
    read_bytes, encode_batch = Path.read_bytes, ByteTokenizer.encode_batch
    monkeypatch.setattr(Path, "read_bytes", lambda p: reads.append(p) or read_bytes(p))
    monkeypatch.setattr(ByteTokenizer, "encode_batch", lambda self, texts: encoded.append(len(texts))
                        or encode_batch(self, texts))
    ds = load(DataConfig(cache_dir=str(tmp_path)), progress=False)
    m = ds.meta
    assert m["source"]["files_used"] > 500 and len(m["manifest"]) == m["source"]["files_used"]
    assert len([p for p in reads if p.suffix == ".py"]) == m["source"]["files"] + m["source"]["files_used"]
    docs = m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    text_bytes = m["splits"]["train"]["bytes"] + m["splits"]["val"]["bytes"]
    assert sum(encoded) == docs  # each document encoded once, in batches that each reach one of the limits
    assert len(encoded) - 1 <= text_bytes / prepare_mod._BATCH_BYTES + docs / prepare_mod._BATCH_DOCS
    assert len(encoded) * 50 <= docs  # large batches: hundreds of stdlib files each
    assert len(ds.train) > 1_000_000 and len(ds.val) > DataConfig().val_tokens
    assert ds.bytes_per_token("val") == 1.0
    reasons = {s["reason"].split(" ")[0] for s in m["skipped"]}
    assert reasons <= {"empty", "duplicate", "binary", "not", "unreadable"}


# ---------------------------------------------------------------------------- load / open


def test_load_opens_and_validates(pycode_small, tmp_path):
    ds = load(pycode_cfg(pycode_small.parent), progress=False)
    assert ds.dir == pycode_small and ds.vocab_size == 256
    assert isinstance(ds.train.tokens, np.memmap) and ds.train.tokens.dtype == np.uint16
    assert len(ds.train) == ds.meta["splits"]["train"]["tokens"]
    assert ds.bytes_per_token("val") == 1.0 and ds.bytes_per_token("val", targets=ds.val.tokens[:1000]) == 1.0
    assert ds.tokenizer().name == "bytes"
    assert ds.fingerprint()["train_tokens"] == len(ds.train)
    # data=bin on our own folder: used in place
    ds2 = load(DataConfig(source="bin", path=str(pycode_small)), progress=False)
    assert ds2.dir == pycode_small and ds2.meta == ds.meta


def test_truncated_or_corrupt_shard_is_a_data_error(pycode_small, tmp_path):
    bad = _copy(pycode_small, tmp_path / "bad")
    size = (bad / "train.bin").stat().st_size
    with open(bad / "train.bin", "r+b") as f:
        f.truncate(size - 2)
    with pytest.raises(DataError) as e:
        open_dataset(bad)
    msg = str(e.value)
    assert str(bad / "train.bin") in msg and str(size) in msg and str(size - 2) in msg and "truncated" in msg
    with open(bad / "train.bin", "r+b") as f:
        f.truncate(size - 1)
    with pytest.raises(DataError, match=r"not a whole number of uint16 tokens"):
        open_dataset(bad)
    shutil.copy(pycode_small / "train.bin", bad / "train.bin")
    open_dataset(bad)  # whole again
    os.remove(bad / "val.bin")
    with pytest.raises(DataError, match=r"data\.path=.*lacks val\.bin"):
        load(DataConfig(source="bin", path=str(bad)), progress=False)
    with pytest.raises(DataError, match=r"val\.bin is missing"):
        open_dataset(bad)


def test_vocab_too_large_for_the_shard_dtype(pycode_small, tmp_path):
    bad = _copy(pycode_small, tmp_path / "bad")
    meta = json.loads((bad / "meta.json").read_text())
    meta["vocab_size"] = 70000  # a tokenizer that needs uint32, declared with uint16 shards
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"70000 tokens does not fit uint16"):
        open_dataset(bad)


def test_token_ids_beyond_the_vocab_are_caught(pycode_small, tmp_path):
    bad = _copy(pycode_small, tmp_path / "bad")
    meta = json.loads((bad / "meta.json").read_text())
    meta["vocab_size"] = 100  # the shards hold bytes >= 100
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"token id \d+, not below the vocabulary size 100"):
        open_dataset(bad)


def test_nonexistent_paths_name_data_path(tmp_path):
    missing = tmp_path / "nowhere" / "corpus.txt"
    for source in ("text", "bin"):
        with pytest.raises(DataError) as e:
            prepare(DataConfig(source=source, path=str(missing), cache_dir=str(tmp_path)), progress=False)
        assert "data.path" in str(e.value) and str(missing) in str(e.value) and "does not exist" in str(e.value)


# ---------------------------------------------------------------------------- raw nanoGPT


def test_nanogpt_raw_uint16_shards(tmp_path, data_log):
    folder = tmp_path / "shakespeare_char"
    folder.mkdir()
    rng = np.random.default_rng(1)
    train = rng.integers(0, 65, size=5000).astype(np.uint16)
    val = rng.integers(0, 65, size=700).astype(np.uint16)
    train[17] = 64
    train.tofile(folder / "train.bin")
    val.tofile(folder / "val.bin")
    before = sorted(p.name for p in folder.iterdir())

    ds = load(DataConfig(source="bin", path=str(folder)), progress=False)
    assert ds.dir == folder and ds.vocab_size == 65 and "inferred" in ds.meta["vocab_source"]
    assert "max token id + 1" in data_log.text
    assert ds.bytes_per_token("val") is None and ds.bytes_per_token("val", targets=np.arange(100)) is None
    assert np.array_equal(ds.train.tokens, train) and len(ds.val) == 700
    assert sorted(p.name for p in folder.iterdir()) == before  # used in place, nothing written
    x, y = TrainSequences(ds.train, 64, seed=0).get(0, 4)
    assert x.shape == (4, 64)

    ds = load(DataConfig(source="bin", path=str(folder), vocab_size=96), progress=False)
    assert ds.vocab_size == 96 and ds.meta["vocab_source"] == "data.vocab_size"
    with pytest.raises(DataError, match="not below the vocabulary size 50"):
        load(DataConfig(source="bin", path=str(folder), vocab_size=50), progress=False)
    with pytest.raises(DataError, match="70000 tokens does not fit uint16"):
        load(DataConfig(source="bin", path=str(folder), vocab_size=70000), progress=False)

    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 65, "itos": {i: chr(32 + i) for i in range(65)}}, f)
    ds = load(DataConfig(source="bin", path=str(folder)), progress=False)
    assert ds.vocab_size == 65 and ds.meta["vocab_source"] == "meta.pkl"

    (folder / "train.bin").write_bytes(b"\x01\x00\x02")  # odd size: not uint16 tokens
    with pytest.raises(DataError, match=r"train\.bin is corrupt: 3 bytes"):
        load(DataConfig(source="bin", path=str(folder)), progress=False)


# ---------------------------------------------------------------------------- text source


DOCS = [
    "The first document.\nIt has two lines.",
    "Second: ünïcödé ✓ and emoji 🙂.",
    "    indented text\n\twith a tab",
] + [f"Filler document number {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(60)]


def _check_text_dataset(ds, docs):
    m = ds.meta
    sep = 2  # bytes tokenizer: each document is followed by "\n\n"
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(docs)
    assert sum(m["splits"][s]["bytes"] for s in ("train", "val")) == sum(len(d.encode()) + sep for d in docs)
    tok = ds.tokenizer()
    for s in ("train", "val"):
        text = tok.decode(np.asarray(ds.split(s).tokens))
        mine = [d for d in docs if split_of(text_digest(d), ds.meta["settings"]["val_fraction"]) == s]
        assert text == "".join(d + "\n\n" for d in mine)


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_text_source_files(tmp_path, fmt):
    f = tmp_path / f"corpus.{fmt}"
    if fmt == "txt":
        f.write_text("\n\n\n".join(DOCS) + "\n")
    elif fmt == "jsonl":
        f.write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(DOCS)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"body": DOCS, "n": list(range(len(DOCS)))}), f, row_group_size=16)
    field = "text" if fmt == "txt" else "body"
    cfg = DataConfig(source="text", path=str(f), text_field=field, val_fraction=0.25, cache_dir=str(tmp_path / "c"))
    ds = load(cfg, progress=False)
    _check_text_dataset(ds, DOCS)
    assert ds.meta["manifest"][0]["path"] == f.name
    assert ds.meta["source"]["kind"] == "text"
    # the cache key follows the content
    assert prepare(cfg, progress=False) == ds.dir
    if fmt == "txt":
        f.write_text("\n\n".join(DOCS[:-1]) + "\n")
        assert prepare(cfg, progress=False) != ds.dir


def test_text_source_folder_and_eot_markers(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("story one\n\nstill story one\n<|endoftext|>\nstory two\n<|endoftext|>\n")
    (root / "sub" / "b.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n\n")
    (root / "notes.md").write_text("ignored")
    (root / ".hidden.txt").write_text("ignored too")
    ds = load(DataConfig(source="text", path=str(root), val_fraction=0.5, cache_dir=str(tmp_path / "c")),
              progress=False)
    assert [e["path"] for e in ds.meta["manifest"]] == ["a.txt", "sub/b.jsonl"]
    _check_text_dataset(ds, ["story one\n\nstill story one", "story two", "from jsonl"])


def test_text_source_errors(tmp_path):
    c = str(tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data\.path=.*folder without \.txt, \.jsonl, \.parquet files"):
        prepare(DataConfig(source="text", path=str(tmp_path / "empty"), cache_dir=c), progress=False)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"data\.path=.*\.csv file"):
        prepare(DataConfig(source="text", path=str(tmp_path / "x.csv"), cache_dir=c), progress=False)
    (tmp_path / "d.jsonl").write_text(json.dumps({"content": "hi"}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: no data\.text_field='text'.*content"):
        prepare(DataConfig(source="text", path=str(tmp_path / "d.jsonl"), cache_dir=c), progress=False)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        prepare(DataConfig(source="text", path=str(tmp_path / "bad.jsonl"), cache_dir=c), progress=False)
    (tmp_path / "one.txt").write_text("a single paragraph")
    with pytest.raises(DataError, match=r"split is empty.*data\.val_fraction"):
        prepare(DataConfig(source="text", path=str(tmp_path / "one.txt"), cache_dir=c, val_fraction=0.01),
                progress=False)
    assert not list(Path(c).glob(".tmp-*"))  # failed builds leave nothing behind


def test_bpe_dataset_trains_on_train_split_only(tmp_path):
    rng = np.random.default_rng(3)
    docs = [f"doc {i}: " + " ".join(rng.choice(["apple", "banana", "cherry", "lemon"], size=40)) for i in range(80)]
    # a document that lands in val and is full of one otherwise-unseen word
    k = 0
    while split_of(text_digest(f"secret {k} " + "zqxv " * 200), 0.2) != "val":
        k += 1
    docs.append(f"secret {k} " + "zqxv " * 200)
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    ds = load(DataConfig(source="text", path=str(f), tokenizer="bpe", bpe_vocab_size=320, val_fraction=0.2,
                         cache_dir=str(tmp_path / "c")), progress=False)
    tok = ds.tokenizer()
    assert (ds.dir / "tokenizer.json").is_file() and ds.meta["tokenizer"]["name"] == "bpe"
    assert ds.vocab_size == tok.vocab_size <= 320
    vocab = [tok.decode([i]) for i in range(tok.vocab_size)]
    assert any("banana" in v for v in vocab)  # learned from train
    assert not any("zq" in v or "qx" in v or "xv" in v for v in vocab)  # val never seen
    assert int(np.asarray(ds.val.tokens).max()) < ds.vocab_size
    eot = tok.eot
    for s in ("train", "val"):
        arr = np.asarray(ds.split(s).tokens)
        assert int((arr == eot).sum()) == ds.meta["splits"][s]["documents"]  # one EOT after each document
        assert int(ds.token_bytes[arr].sum()) == ds.meta["splits"][s]["bytes"]
    assert ds.bytes_per_token("val") > 1.5
    # over given targets (what the run scores: the y of each val batch), exactly those tokens' bytes
    arr = np.asarray(ds.val.tokens)
    parts = [arr[:7], arr[20:23].reshape(1, 3)]
    want = (ds.token_bytes[arr[:7]].sum() + ds.token_bytes[arr[20:23]].sum()) / 10
    assert ds.bytes_per_token("val", targets=parts) == pytest.approx(want)
    assert ds.bytes_per_token("val", targets=arr[:7]) == pytest.approx(ds.token_bytes[arr[:7]].mean())


# ----------------------------------------------------------------------------- batches


def test_train_sequences_are_a_pure_function_of_the_index():
    n, L = 1001, 10  # tokens = their own positions: window w holds w*L .. w*L+L
    shard = np.arange(n, dtype=np.uint16)
    s = TrainSequences(shard, L, seed=7)
    assert s.count == (n - 1) // L == 100 and s.unique_tokens == 1000
    x, y = s.get(0, 250)  # two and a half epochs
    assert x.dtype.is_floating_point is False and str(x.dtype) == "torch.int64"
    assert x.shape == y.shape == (250, L)
    xa, ya = x.numpy(), y.numpy()
    assert (ya[:, :-1] == xa[:, 1:]).all() and (ya[:, -1] == xa[:, -1] + 1).all()  # y = x shifted by one
    assert (xa[:, 0] % L == 0).all() and (np.diff(xa, axis=1) == 1).all()  # whole windows at multiples of L
    for e in range(2):  # each epoch visits every window exactly once, in its own order
        assert sorted(xa[e * 100:(e + 1) * 100, 0] // L) == list(range(100))
    assert not (xa[:100, 0] == xa[100:200, 0]).all()
    # deterministic, and get(start, n) == concatenation of smaller gets (any split points)
    s2 = TrainSequences(shard, L, seed=7)
    parts = [s2.get(a, b - a)[0] for a, b in [(0, 3), (3, 99), (99, 101), (101, 250)]]
    import torch

    assert torch.equal(torch.cat(parts), x)
    assert torch.equal(TrainSequences(shard, L, seed=7).get(137, 5)[0], x[137:142])
    assert not torch.equal(TrainSequences(shard, L, seed=8).get(0, 100)[0], x[:100])
    # the order is pinned (argsort of raw PCG64 words, which NumPy keeps stable), so resumes survive
    # NumPy upgrades: a change in the generator or in how it is seeded fails here
    assert batches.epoch_permutation(5, 0, 0).tolist() == [3, 2, 1, 0, 4]
    assert batches.epoch_permutation(12, 7, 3).tolist() == [11, 2, 10, 4, 7, 3, 5, 1, 8, 9, 0, 6]
    first = TrainSequences(np.arange(51, dtype=np.uint16), 10, 0).get(0, 10)[0][:, 0] // 10
    assert first.tolist() == [3, 2, 1, 0, 4, 4, 1, 2, 0, 3]  # epoch 0 then epoch 1 of the 5 windows


class _CountingTokens:
    """A token array that counts the elements read from it."""

    def __init__(self, tokens):
        self.tokens, self.shape, self.read = tokens, tokens.shape, 0

    def __getitem__(self, index):
        out = self.tokens[index]
        self.read += np.size(out)
        return out


def test_train_sequences_on_a_memmap_read_only_their_windows(pycode_small, monkeypatch):
    # What keeps batches cheap on a large memmap, checked without a clock: a get reads the windows
    # it returns and nothing else, and each epoch's permutation is computed once, not per get.
    ds = open_dataset(pycode_small)
    assert isinstance(ds.train.tokens, np.memmap)
    perms = []
    permutation = batches.epoch_permutation
    monkeypatch.setattr(batches, "epoch_permutation", lambda *a: perms.append(a) or permutation(*a))
    counting = _CountingTokens(ds.train.tokens)
    s = TrainSequences(type("Shard", (), {"tokens": counting})(), 256, seed=1)
    for i in range(20):
        x, y = s.get(i * 64, 64)
    assert counting.read == 20 * 64 * 257
    assert perms == [(s.count, 1, e) for e in range((20 * 64 - 1) // s.count + 1)]
    raw = np.asarray(ds.train.tokens)
    w = s.windows(19 * 64, 1)[0]  # the first sequence of the last get
    assert np.array_equal(x[0].numpy(), raw[w * 256:(w + 1) * 256])
    with pytest.raises(DataError, match=r"fewer than model\.seq_len \+ 1"):
        TrainSequences(np.arange(10, dtype=np.uint16), 16, 0)
    with pytest.raises(DataError, match=r"train\.seed"):
        TrainSequences(ds.train, 16, -1)


def test_val_batches_are_fixed(pycode_small):
    ds = open_dataset(pycode_small)
    a = val_batches(ds.val, 128, 4096, 8)
    b = val_batches(ds.val, 128, 4096, 8)
    assert len(a) == len(b) == 4 and all(x.shape == (8, 128) for x, _ in a)
    import torch

    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    flat = torch.cat([torch.cat([x[:, :1], y], 1) for x, y in a]).numpy()
    raw = np.asarray(ds.val.tokens)
    n_windows = (len(raw) - 1) // 128
    assert n_windows > 4 * 32  # the split is much longer than the val set, so spreading it is visible
    starts = [next(w for w in range(n_windows) if np.array_equal(row, raw[w * 128:w * 128 + 129])) for row in flat]
    assert starts == list(batches.val_windows(len(raw), 128, 32))
    # evenly spaced over the whole split (not its first documents), each window once
    gaps = np.diff(sorted(starts))
    assert len(set(starts)) == 32 and gaps.min() >= n_windows // 32 - 1 and gaps.max() <= n_windows // 32 + 1
    assert sorted(starts)[-1] >= n_windows * 31 // 32 - 1
    # a prefix (the intermediate evaluations' subset) is spread too, not the split's start
    assert max(starts[:8]) - min(starts[:8]) > n_windows // 2
    c = val_batches(ds.val, 100, 1000, 3)  # 10 windows: batches of 3, 3, 3, 1
    assert [x.shape[0] for x, _ in c] == [3, 3, 3, 1]


def test_val_batches_short_split_warns_or_fails(data_log):
    shard = np.arange(300, dtype=np.uint16)
    v = val_batches(shard, 64, 10000, 2)
    assert [r.levelname for r in data_log.records] == ["WARNING"]
    assert "fewer than data.val_tokens=10000; validating on the 256 target tokens" in data_log.text
    assert sum(x.shape[0] for x, _ in v) == (300 - 1) // 64
    with pytest.raises(DataError, match=r"val split has 300 tokens, fewer than model\.seq_len \+ 1"):
        val_batches(shard, 512, 10000, 2)
    with pytest.raises(DataError, match=r"data\.val_tokens=32 is smaller than model\.seq_len=64"):
        val_batches(shard, 64, 32, 2)


# ------------------------------------------------------------------------- concurrency


def test_concurrent_prepare_yields_one_consistent_folder(tmp_path):
    cache = tmp_path / "cache"
    code = textwrap.dedent(f"""
        from train.data import DataConfig, load
        ds = load(DataConfig(max_tokens={SUBSET}, val_fraction=0.2), progress=False)  # cache: $SCALELAB_CACHE
        print(ds.dir, len(ds.train), len(ds.val))
    """)
    procs = [run_cli(["-c", code], cache_dir=cache, wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    lines = {o.strip().splitlines()[-1] for o in outs}
    assert len(lines) == 1, lines
    folders = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and not list(cache.glob(".tmp-*"))
    ds = open_dataset(folders[0])
    assert str(ds.dir) == lines.pop().split()[0]


def test_losing_a_publish_race_keeps_the_winner(tmp_path, pycode_small):
    final = _copy(pycode_small, tmp_path / "final")
    tmp = tmp_path / ".tmp-x"
    tmp.mkdir()
    (tmp / "train.bin").write_bytes(b"other copy")
    prepare_mod.publish(tmp, final)
    assert not tmp.exists() and open_dataset(final).meta == open_dataset(pycode_small).meta


# ------------------------------------------------------------------------------ hf source


def test_hf_source_on_a_local_json_file(tmp_path):
    pytest.importorskip("datasets")
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"text": d, "i": i}) + "\n" for i, d in enumerate(DOCS)))
    code = textwrap.dedent(f"""
        import json
        from train.data import DataConfig, DataError, load
        ds = load(DataConfig(source="hf", name="json", data_files={str(f)!r}, val_fraction=0.25,
                             cache_dir={str(tmp_path / "c")!r}), progress=False)
        out = {{"dir": str(ds.dir), "meta": ds.meta,
               "val_text": ds.tokenizer().decode(ds.val.tokens.tolist())}}
        folder = {str(tmp_path / "local_ds")!r}
        ds2 = load(DataConfig(source="hf", name=folder, val_split="validation", cache_dir={str(tmp_path / "c")!r}),
                   progress=False)
        out["val_split"] = {{"meta": ds2.meta, "val_text": ds2.tokenizer().decode(ds2.val.tokens.tolist())}}
        with open(folder + "/train.jsonl", "a") as fh:  # the folder's content is part of the cache key
            fh.write(json.dumps({{"text": "one more document"}}) + "\\n")
        ds3 = load(DataConfig(source="hf", name=folder, val_split="validation", cache_dir={str(tmp_path / "c")!r}),
                   progress=False)
        out["edited"] = {{"dirs": [str(ds2.dir), str(ds3.dir)],
                         "train_documents": ds3.meta["splits"]["train"]["documents"]}}
        try:
            load(DataConfig(source="hf", name="no-such-user/no-such-dataset", cache_dir={str(tmp_path / "c")!r}),
                 progress=False)
        except DataError as e:
            out["error"] = str(e)
        print(json.dumps(out))
    """)
    (tmp_path / "local_ds").mkdir()  # a local dataset folder with two splits
    for split, docs in (("train", DOCS[:10]), ("validation", DOCS[10:13])):
        (tmp_path / "local_ds" / f"{split}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    env = dict(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"))
    r = run_cli(["-c", code], env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    m = out["meta"]
    assert m["source"]["kind"] == "hf" and m["source"]["name"] == "json"
    assert m["tokenizer"]["name"] == "bytes"
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(DOCS)
    val_docs = [d for d in DOCS if split_of(text_digest(d), 0.25) == "val"]
    assert val_docs and out["val_text"] == "".join(d + "\n\n" for d in val_docs)
    (entry,) = m["manifest"]
    assert entry["dataset"] == "json" and entry["rows"] == len(DOCS) and entry["split"] == "train"
    v = out["val_split"]
    assert v["val_text"] == "".join(d + "\n\n" for d in DOCS[10:13])  # val is the validation split
    assert v["meta"]["splits"]["train"]["documents"] == 10 and v["meta"]["splits"]["val"]["documents"] == 3
    assert [e["split"] for e in v["meta"]["manifest"]] == ["train", "validation"]
    e = out["edited"]
    assert e["dirs"][0] != e["dirs"][1] and e["train_documents"] == 11  # rebuilt from the edited folder
    assert "Generating" not in r.stderr  # progress=False silences the datasets library's bars too
    assert "no-such-user/no-such-dataset" in out["error"] and "HF_DATASETS_OFFLINE" in out["error"]


# ------------------------------------------------------------------- vocabulary for the planner


def test_nominal_vocab_size_of_fixed_tokenizers_needs_no_corpus_or_network(tmp_path, no_network, monkeypatch):
    def no_scan(*a, **k):
        raise AssertionError("the corpus was read")

    monkeypatch.setattr(prepare_mod, "make_source", no_scan)
    assert nominal_vocab_size(DataConfig(tokenizer="bytes")) == (256, True)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))  # no tiktoken files: not needed
    assert nominal_vocab_size({"tokenizer": "gpt2", "source": "text", "path": "/nowhere"}) == (50257, True)


def test_nominal_vocab_size_of_bpe_is_exact_once_prepared(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    cfg = DataConfig(source="text", path=str(f), tokenizer="bpe", bpe_vocab_size=1000, val_fraction=0.25,
                     cache_dir=str(tmp_path / "c"))
    assert nominal_vocab_size(cfg) == (1000, False)  # not prepared yet: the requested size, an upper bound
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # nothing was built
    ds = load(cfg, progress=False)
    assert ds.vocab_size < 1000  # the small corpus has fewer merges to learn than requested
    assert nominal_vocab_size(cfg) == (ds.vocab_size, True)
    other = DataConfig(**{**cfg.__dict__, "val_fraction": 0.3})  # other tokens: not prepared
    assert nominal_vocab_size(other) == (1000, False)
    f.write_text(f.read_text() + json.dumps({"text": "an edit"}) + "\n")  # other content: not prepared
    assert nominal_vocab_size(cfg) == (1000, False)
    missing = DataConfig(**{**cfg.__dict__, "path": str(tmp_path / "gone.jsonl")})
    assert nominal_vocab_size(missing) == (1000, False)  # unreadable here: the upper bound, no error


def test_nominal_vocab_size_of_bin_shards(tmp_path, pycode_small):
    assert nominal_vocab_size(DataConfig(source="bin", path=str(pycode_small))) == (256, True)  # meta.json
    folder = tmp_path / "raw"
    folder.mkdir()
    np.array([1, 64, 3] * 50, dtype=np.uint16).tofile(folder / "train.bin")
    np.array([2, 5] * 50, dtype=np.uint16).tofile(folder / "val.bin")
    assert nominal_vocab_size(DataConfig(source="bin", path=str(folder))) == (65, True)  # max id + 1, as a run
    assert nominal_vocab_size(DataConfig(source="bin", path=str(folder), vocab_size=96)) == (96, True)
    with open(folder / "meta.pkl", "wb") as fh:
        pickle.dump({"vocab_size": 80}, fh)
    assert nominal_vocab_size(DataConfig(source="bin", path=str(folder))) == (80, True)
    assert load(DataConfig(source="bin", path=str(folder)), progress=False).vocab_size == 80
    with pytest.raises(DataError, match=r"data\.path=.*does not exist"):
        nominal_vocab_size(DataConfig(source="bin", path=str(tmp_path / "nowhere")))


# ---------------------------------------------------------------------------- a new source


def test_a_new_source_is_one_class_and_one_registry_entry(tmp_path, monkeypatch):
    class Numbers(Source):
        """Made-up documents: "n = <i>" for i < 200."""

        def __init__(self, cfg, progress=True):
            super().__init__(cfg, progress)
            self.entries = [self.new_entry(name="numbers")]
            self.total = 200

        def fingerprint(self):
            return {"kind": "numbers", "fingerprint": "v1"}

        def documents(self):
            for i in range(200):
                text = f"n = {i}"
                yield Doc(text, split_of(text_digest(text), self.cfg.val_fraction), 0, 1)

    monkeypatch.setitem(SOURCES, "numbers", Numbers)
    ds = load(DataConfig(source="numbers", val_fraction=0.2, cache_dir=str(tmp_path)), progress=False)
    assert ds.dir.name.startswith("numbers-bytes-") and ds.fingerprint()["source"] == "numbers"
    _check_text_dataset(ds, [f"n = {i}" for i in range(200)])
    assert ds.meta["manifest"] == [{"name": "numbers", "documents": {"train": ds.meta["splits"]["train"]["documents"],
                                                                      "val": ds.meta["splits"]["val"]["documents"]}}]
    monkeypatch.delitem(SOURCES, "numbers")
    with pytest.raises(DataError, match="data.source='numbers' is not a known source"):
        DataConfig(source="numbers")
