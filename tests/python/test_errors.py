"""Broken files: every one raises vf.FormatError naming the problem, never crashes,
never hangs and never allocates far more than its own size."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import vecfusion as vf

from conftest import PEERS

GOLDEN = [
    "python/embeddings.fifu",
    "python/ff_buckets.fifu",
    "python/similarity.fifu",
    "python/pq.fifu",
    "python/simple_vocab.fifu",
    "rust/quantized.fifu",
]


def test_exception_tree() -> None:
    assert issubclass(vf.FormatError, vf.VecfusionError)
    assert issubclass(vf.VecfusionError, Exception)
    # a malformed file is a bad value too: code written for other readers catches ValueError
    assert issubclass(vf.FormatError, ValueError) and not issubclass(vf.VecfusionError, ValueError)
    with pytest.raises(ValueError, match="magic"):
        vf.load(PEERS / "w2v.bin")
    mod = __import__(vf.FormatError.__module__, fromlist=["FormatError"])
    assert mod.FormatError is vf.FormatError


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.fifu"):
        vf.load(tmp_path / "nope.fifu")
    with pytest.raises(IsADirectoryError):
        vf.load(tmp_path)


def _write(tmp_path: Path, data: bytes, name: str = "bad.fifu") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("mmap", [False, True])
def test_named_errors(tmp_path: Path, ff: Path, mmap: bool) -> None:
    good = (ff / "python/similarity.fifu").read_bytes()
    cases = {
        "magic": b"XiFu" + good[4:],
        "version": good[:4] + struct.pack("<I", 7) + good[8:],
        "unknown chunk id 99": good[:12] + struct.pack("<I", 99) + good[16:],
        "truncated": good[: len(good) // 2],
        "empty": b"",
    }
    # a vocabulary claiming 2^60 words
    vocab_at = 12 + 4 * 2
    cases["huge"] = good[: vocab_at + 12] + struct.pack("<Q", 1 << 60) + good[vocab_at + 20 :]
    # storage rows x cols that disagree with the file size
    storage_at = vocab_at + 12 + struct.unpack("<Q", good[vocab_at + 4 : vocab_at + 12])[0]
    cases["rows"] = good[: storage_at + 12] + struct.pack("<Q", 42) + good[storage_at + 20 :]
    cases["cols"] = good[: storage_at + 20] + struct.pack("<I", 1000) + good[storage_at + 24 :]
    expect = {
        "magic": "magic",
        "version": "version 7",
        "unknown chunk id 99": "unknown chunk id 99",
        "truncated": "truncated",
        "empty": "truncated magic",
        "huge": "truncated vocabulary words",
        "rows": "truncated matrix|41|42",
        "cols": "truncated matrix",
    }
    for name, data in cases.items():
        with pytest.raises(vf.FormatError, match=expect[name]):
            vf.load(_write(tmp_path, data), mmap=mmap)


def test_rows_disagree_with_vocab(tmp_path: Path) -> None:
    # a vocabulary of 3 words with a 2-row matrix, written by hand
    def s(w: str) -> bytes:
        return struct.pack("<I", len(w)) + w.encode()

    vocab = struct.pack("<Q", 3) + s("a") + s("b") + s("c")
    body = bytearray()
    body += struct.pack("<4sII", b"FiFu", 0, 2) + struct.pack("<II", 1, 2)
    body += struct.pack("<IQ", 1, len(vocab)) + vocab
    start = len(body) + 12 + 16
    pad = 4 - start % 4
    mat = np.ones((2, 2), dtype="<f4").tobytes()
    body += struct.pack("<IQ", 2, 16 + pad + len(mat)) + struct.pack("<QII", 2, 2, 10) + b"\0" * pad + mat
    with pytest.raises(vf.FormatError, match="2 rows, but the SimpleVocab needs 3"):
        vf.load(_write(tmp_path, bytes(body)))


CORPUS_SCRIPT = textwrap.dedent(
    """
    import random, resource, sys
    import vecfusion as vf
    from pathlib import Path

    # Cap the address space: a file may not make us allocate far more than its size.
    # (The interpreter, numpy and the extension need ~1 GiB of address space already.)
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    ff, tmp = Path(sys.argv[1]), Path(sys.argv[2])
    files = sys.argv[3:]
    rng = random.Random(1234)
    n_ok = n_err = 0
    for name in files:
        good = (ff / name).read_bytes()
        variants = [good[:k] for k in range(len(good))]
        for _ in range(200):
            b = bytearray(good)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            variants.append(bytes(b))
        for _ in range(100):  # huge length fields anywhere 8-aligned
            b = bytearray(good)
            at = rng.randrange(0, len(b) - 8)
            b[at:at + 8] = rng.choice([2**63 - 1, 2**32 + 5, 2**40]).to_bytes(8, "little")
            variants.append(bytes(b))
        for i, data in enumerate(variants):
            p = tmp / f"v{i}.fifu"
            p.write_bytes(data)
            for mmap in (False, True):
                try:
                    e = vf.load(p, mmap=mmap)
                    # whatever parses must be usable without crashing
                    for w in list(e)[:3]:
                        e.embedding(w)
                    e.lookup(["x", "tübingen"])
                    n_ok += 1
                except vf.FormatError as ex:
                    assert str(ex), "empty message"
                    n_err += 1
            p.unlink()
    print(n_ok, n_err)
    """
)


def test_corruption_corpus(tmp_path: Path, ff: Path) -> None:
    """Truncations at every length, random byte flips and huge length fields."""
    r = subprocess.run(
        [sys.executable, "-c", CORPUS_SCRIPT, str(ff), str(tmp_path), *GOLDEN],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAYON_NUM_THREADS": "2"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    n_ok, n_err = map(int, r.stdout.split())
    assert n_err > 10 * len(GOLDEN)


@pytest.mark.parametrize("mmap", [False, True])
def test_nothing_may_follow_the_norms(tmp_path: Path, ff: Path, mmap: bool) -> None:
    """After the storage only a norms chunk may come, and after it nothing: a rewrite
    would silently drop whatever it is."""
    good = (ff / "python/embeddings.fifu").read_bytes()  # ends with an (unlisted) NdNorms chunk
    vf.load(_write(tmp_path, good), mmap=mmap)
    for tail in (b"xyz", struct.pack("<IQ", 6, 0), b"\xff" * 4096):
        with pytest.raises(vf.FormatError, match=f"{len(tail)} bytes follow the norms chunk"):
            vf.load(_write(tmp_path, good + tail), mmap=mmap)


def test_vocab_index_out_of_any_range() -> None:
    emb = vf.Embeddings(["a", "b"], np.zeros((2, 3), np.float32))
    for i in (2, -3, 2**70, -(2**70)):
        with pytest.raises(IndexError, match="out of range for 2 words"):
            emb.vocab[i]
    with pytest.raises(TypeError):
        emb.vocab[1.0]


OOM_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import vecfusion as vf

    tmp = sys.argv[1]
    # (the files were written by another process: threads that ran here would have left
    # malloc arenas, reserved address space a load could use under the limit)
    # a little more address space than is in use now: no file fits any more
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (24 << 20), resource.RLIM_INFINITY))
    for load, name in [(vf.load, "big.fifu"), (vf.load_word2vec, "big.bin"), (vf.load_text, "big.txt"),
                       (vf.load_text, "big.glove.txt"), (vf.load_fasttext, "big.ftbin"),
                       # a small file whose vocabulary needs more than the limit (1M words, 0 dims)
                       (lambda p: vf.load(p, mmap=True), "words.fifu")]:
        try:
            load(f"{tmp}/{name}")
        except MemoryError as ex:
            print(name, "MemoryError", ex)
        except Exception as ex:  # a clean error naming the allocation is acceptable too
            print(name, type(ex).__name__, ex)
        else:
            print(name, "loaded")
    # the CLI says so in one line (no traceback) and exits 1
    import contextlib, io
    from vecfusion import cli
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(["similar", f"{tmp}/big.bin", "w1"])
    text = err.getvalue().strip()
    print("cli", "MemoryError" if rc == 1 and "Traceback" not in text and len(text.splitlines()) == 1 else "", text)
    """
)


def test_out_of_memory_is_an_exception(tmp_path: Path) -> None:
    """A file too big for the memory left gives MemoryError, not an abort of the process
    (nor a FormatError: the file is fine)."""
    rows, dims = 60_000, 256  # 61 MB of floats per file
    e = vf.Embeddings([f"w{i}" for i in range(rows)], np.ones((rows, dims), np.float32))
    e.write(tmp_path / "big.fifu")
    e.write_word2vec(tmp_path / "big.bin")
    e.write_text(tmp_path / "big.txt")
    e.write_text(tmp_path / "big.glove.txt", dims=False)
    e.write_fasttext(tmp_path / "big.ftbin")
    n = 1_000_000
    vf.Embeddings([f"w{i}" for i in range(n)], np.zeros((n, 0), np.float32)).write(tmp_path / "words.fifu")
    del e
    r = subprocess.run(
        [sys.executable, "-c", OOM_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAYON_NUM_THREADS": "2"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 7, r.stdout
    for line in lines:
        assert "MemoryError" in line and "not enough memory" in line, line


SWEEP_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import vecfusion as vf

    path, glove = sys.argv[1], sys.argv[2]
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    loads = {"header": lambda: vf.load_text(path), "limit": lambda: vf.load_text(path, limit=15_000),
             "glove": lambda: vf.load_text(glove, dims=False)}
    for name, load in loads.items():
        for extra in range(0, 128, 8):
            resource.setrlimit(resource.RLIMIT_AS, (vm + (extra << 20), resource.RLIM_INFINITY))
            try:
                e = load()
            except MemoryError:
                print(name, extra, "MemoryError")
            else:
                print(name, extra, "loaded", len(e))
                del e
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    """
)


def test_out_of_memory_at_any_point_of_a_text_load(tmp_path: Path) -> None:
    """Whatever the memory left, a text load succeeds or raises MemoryError: the parsing
    pieces' buffers aborted the process (Rust's infallible allocation) and a first parallel
    loop that could not start rayon's threads raised a PanicException (a BaseException)."""
    rows, dims = 20_000, 128  # values "1": far more values per byte than parsing expects
    e = vf.Embeddings([f"w{i}" for i in range(rows)], np.ones((rows, dims), np.float32))
    e.write_text(tmp_path / "t.txt")
    e.write_text(tmp_path / "g.txt", dims=False)
    r = subprocess.run(
        [sys.executable, "-c", SWEEP_SCRIPT, str(tmp_path / "t.txt"), str(tmp_path / "g.txt")],
        capture_output=True, text=True, timeout=300,
        # one malloc arena: a new thread's first allocation (glibc's thread-local data for
        # this module) then needs no 64 MiB arena of its own, which glibc, not vecfusion,
        # turns into an abort when the address space is nearly all used
        env={**os.environ, "MALLOC_ARENA_MAX": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("header", "limit", "glove"):
        results = [line.split()[2] for line in r.stdout.splitlines() if line.startswith(name + " ")]
        assert len(results) == 16 and set(results) <= {"MemoryError", "loaded"}, r.stdout
        assert results[-1] == "loaded", r.stdout
        # the whole file does not fit the smallest limits (`limit` reads three quarters of it
        # line by line, in what the earlier loads left free)
        assert name == "limit" or results[0] == "MemoryError", r.stdout


@pytest.mark.parametrize("binary", [True, False])
def test_huge_width_without_rows_is_refused(tmp_path: Path, binary: bool) -> None:
    """A header of 0 words and 10^12 dimensions has nothing to contradict it: refused at
    load (every lookup or write would allocate a row of that width: an abort)."""
    p = tmp_path / "w.txt"
    p.write_bytes(b"0 1000000000000\n")
    load = vf.load_word2vec if binary else vf.load_text
    with pytest.raises(vf.FormatError, match="0 rows of 1000000000000 dimensions"):
        load(p)
    p.write_bytes(b"5 1000000000000\n")
    with pytest.raises(vf.FormatError, match="0 rows of 1000000000000 dimensions"):
        load(p, limit=0)
    with pytest.raises(ValueError, match="0 rows of 33554432 dimensions"):
        vf.Embeddings([], np.zeros((0, 1 << 25), np.float32))
    # wide but plausible: fine
    e = vf.Embeddings([], np.zeros((0, 1 << 20), np.float32))
    assert e.embedding("x") is None and e.dims == 1 << 20


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_pipes_and_devices_are_refused_before_they_are_opened(tmp_path: Path) -> None:
    """A FIFO without a writer would block open() forever, and a pipe has no size to read by:
    every loader refuses what is not a regular file, naming it, before opening it (run in a
    child process so that a regression fails the test instead of hanging it)."""
    fifo = tmp_path / "pipe.fifu"
    os.mkfifo(fifo)
    code = textwrap.dedent(
        f"""
        import vecfusion as vf
        from vecfusion.convert import detect_format
        for f in (vf.load, vf.load_text, vf.load_word2vec, vf.load_fasttext, detect_format):
            try:
                f({str(fifo)!r})
            except OSError as e:
                assert "not a regular file" in str(e), (f, e)
                assert not isinstance(e, vf.FormatError), (f, e)
            else:
                raise AssertionError(f"{{f}} read a pipe")
        try:
            vf.load("/dev/null")
        except OSError as e:
            assert "not a regular file" in str(e), e
        else:
            raise AssertionError("read /dev/null")
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_metadata_that_contains_itself_or_nests_too_deeply_is_a_value_error() -> None:
    """Writing metadata recursed without a bound: a dict containing itself, or nesting a few
    thousand levels deep, overflowed the stack (a segfault)."""
    words, mat = ["a"], np.ones((1, 2), np.float32)
    d: dict = {}
    d["a"] = d
    lst: list = []
    lst.append(lst)
    deep: dict = {"leaf": 1}
    for _ in range(6000):
        deep = {"k": deep}
    for bad in (d, {"x": lst}, deep):
        with pytest.raises(ValueError, match="nest more than 64 levels"):
            vf.Embeddings(words, mat, metadata=bad)
        e = vf.Embeddings(words, mat, metadata={"ok": 1})
        with pytest.raises(ValueError, match="nest more than 64 levels"):
            e.metadata = bad
        assert e.metadata == {"ok": 1}
    # nesting within the bound still round-trips
    fine: dict = {"leaf": [[1], [[2], [[3]]]]}
    for _ in range(40):
        fine = {"k": fine}
    assert vf.Embeddings(words, mat, metadata=fine).metadata == fine


def test_invalid_metadata_toml_is_a_one_line_error(tmp_path: Path) -> None:
    """The TOML parser's error drew an excerpt of the source over several lines under the
    message (the CLI printed it as is); it is one line: where, and what."""
    p = tmp_path / "m.fifu"
    vf.Embeddings(["a", "b"], np.eye(2, dtype=np.float32), metadata={"changed": True}).write(p)
    data = p.read_bytes()
    assert data.count(b"changed = true") == 1
    p.write_bytes(data.replace(b"changed = true", b"changed = tru!"))
    with pytest.raises(vf.FormatError) as e:
        vf.load(p)
    msg = str(e.value)
    assert "\n" not in msg and "line 1, column 11" in msg and "invalid boolean" in msg, msg


def _fifu(vocab_id: int, vocab_body: bytes, rows: int, cols: int, data: bytes = b"") -> bytes:
    """A finalfusion file: header, one vocabulary chunk, one NdArray chunk (FORMAT.md)."""
    head = b"FiFu" + struct.pack("<5I", 0, 2, vocab_id, 2, 9) + struct.pack("<Q", len(vocab_body)) + vocab_body
    pad = b"\0" * ((4 - (len(head) + 4 + 8 + 16) % 4) % 4)
    body = struct.pack("<QII", rows, cols, 10) + pad + data
    return head + struct.pack("<IQ", 2, len(body)) + body


def _floret_vocab(n_buckets: int, bow: bytes = b"<", eow: bytes = b">", min_n: int = 3, max_n: int = 5) -> bytes:
    return (struct.pack("<IIQII", min_n, max_n, n_buckets, 2, 7) + struct.pack("<I", len(bow)) + bow
            + struct.pack("<I", len(eow)) + eow)


def test_a_matrix_of_no_columns_and_too_many_rows_is_refused(tmp_path: Path) -> None:
    """No data bound the rows of a matrix without columns: a 96-byte floret file claiming
    2^63 - 1 buckets of 0 columns loaded, and its storage view crashed the interpreter
    (numpy made no array of 2^61 rows or more)."""
    p = tmp_path / "huge.fifu"
    for n in (2**61, 2**63 - 1):
        p.write_bytes(_fifu(9, _floret_vocab(n), n, 0))
        for mmap in (False, True):
            with pytest.raises(vf.FormatError, match="more than an array can hold"):
                vf.load(p, mmap=mmap)
    p.write_bytes(_fifu(9, _floret_vocab(5), 5, 0))  # a few rows of no columns still read
    assert vf.load(p).storage.shape == (5, 0)


def test_a_long_floret_marker_is_refused(tmp_path: Path) -> None:
    """floret's bow/eow markers are part of every unknown word: a 20 kB marker made each
    lookup take seconds and `vocab.ngrams` minutes, from a 20 kB file."""
    data = np.ones((16, 4), "<f4").tobytes()
    p = tmp_path / "bow.fifu"
    p.write_bytes(_fifu(9, _floret_vocab(16, bow=b"<" * 20000, min_n=1, max_n=1024), 16, 4, data))
    with pytest.raises(vf.FormatError, match="floret bow.*20000 bytes"):
        vf.load(p)
    p.write_bytes(_fifu(9, _floret_vocab(16, eow=b">" * 65), 16, 4, data))
    with pytest.raises(vf.FormatError, match="floret eow"):
        vf.load(p)
    p.write_bytes(_fifu(9, _floret_vocab(16, bow=b"<" * 64), 16, 4, data))
    assert vf.load(p)["x"].shape == (4,)
