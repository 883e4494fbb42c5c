"""Lookups from several Python threads at once are safe and give the same answers."""

from __future__ import annotations

import collections
import functools
import inspect
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import vecfusion as vf


@pytest.mark.parametrize("name", ["python/ff_buckets.fifu", "python/pq.fifu", "python/similarity.fifu"])
def test_concurrent_lookups(ff: Path, name: str) -> None:
    emb = vf.load(ff / name, mmap=True)
    words = list(emb) + ["tübingen", "unknown-word", "Berlin", ""] * 5
    want_batch = emb.lookup(words)
    want_single = [emb.embedding(w) for w in words]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(30):
                out, found = emb.lookup(words)
                np.testing.assert_array_equal(out, want_batch[0])
                np.testing.assert_array_equal(found, want_batch[1])
                for w, v in zip(words, want_single):
                    got = emb.embedding(w)
                    assert (got is None) == (v is None)
                    if v is not None:
                        np.testing.assert_array_equal(got, v)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_metadata_setter_from_threads(ff: Path) -> None:
    emb = vf.load(ff / "python/similarity.fifu")

    def work(i: int) -> None:
        for j in range(200):
            emb.metadata = {"thread": i, "j": j}
            m = emb.metadata
            assert set(m) == {"thread", "j"}

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert emb.metadata["j"] == 199


_FORK_SCRIPT = r'''
import json, os, numpy as np, vecfusion as vf
words = [f"w{i}" for i in range(30000)]
emb = vf.Embeddings(words, np.random.default_rng(0).standard_normal((30000, 64)).astype(np.float32))
small = vf.Embeddings(words[:2000], np.random.default_rng(1).standard_normal((2000, 16)).astype(np.float32))

def work():
    q = small.quantize(n_subquantizers=4, bits=4, n_iterations=2, progress=False)
    return [emb.most_similar("w1", topn=3), float(emb.lookup(words[:20000])[0].sum()),
            emb.vocab.indices_batch(words[:6000])[1].tolist()[-1], q.storage.codes[:50].tolist()]

def in_child(depth):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        res = work()
        if depth > 1:
            res = [res, in_child(depth - 1)]
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data)

ref = json.loads(json.dumps(work()))  # the parent's thread pool is running now
print("ok" if in_child(2) == [ref, ref] else "mismatch")
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
@pytest.mark.parametrize("threads", [None, "1"])
def test_parallel_calls_work_in_forked_children(threads: str | None) -> None:
    """rayon's pool does not survive fork(): a child's (and a grandchild's) large lookup,
    query, batch of indices or quantize waited forever for threads that do not exist. Run in
    a subprocess, so that a regression fails on the timeout instead of hanging the suite.
    With one thread per pool too (quantize's progress poll must not take the only one)."""
    env = dict(os.environ)
    if threads is not None:
        env["RAYON_NUM_THREADS"] = threads
    out = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, timeout=180, env=env
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


_FIRST_CALLS_IN_FORK_SCRIPT = r'''
import os, sys, threading, numpy as np, vecfusion as vf
p, q = sys.argv[1], sys.argv[2]
n, d = 200_000, 32
m = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
nr = np.linalg.norm(m, axis=1); m /= nr[:, None]
emb = vf.Embeddings([f"w{i}" for i in range(n)], m, norms=nr.astype(np.float32))
emb.write(p)
emb.quantize(n_subquantizers=8, bits=4, n_iterations=1, sample=4000, progress=False).write(q)
if os.fork() == 0:  # a server's preloaded, forked, threaded worker
    for attempt in range(6):
        for path in (p, q):
            e = vf.load(path)  # nothing decided yet: unit rows, quantized row lengths
            ts = [threading.Thread(target=e.most_similar, args=("w1",), daemon=True) for _ in range(4)]
            for t in ts: t.start()
            for t in ts: t.join(30)
            if any(t.is_alive() for t in ts):
                print("hung", path, attempt, flush=True); os._exit(1)
    os._exit(0)
print(os.waitstatus_to_exitcode(os.wait()[1]))
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_first_concurrent_queries_in_a_forked_child(tmp_path: Path) -> None:
    """The first most_similar of a file decides once whether its rows are unit vectors (and a
    quantized file its rows' lengths), in parallel: inside the cell's lock a rayon worker that
    waited on that pass could take another thread's query, which then waited on the same cell
    on the same thread. In a forked child, whose calls run on the pool's workers, four
    threads' first queries hung forever."""
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_CALLS_IN_FORK_SCRIPT, str(tmp_path / "u.fifu"), str(tmp_path / "q.fifu")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0 and out.stdout.strip() == "0", (out.stdout, out.stderr)


_SIGINT_SCRIPT = r'''
import os, signal, sys, threading, numpy as np, vecfusion as vf, pathlib
rng = np.random.default_rng(0)
n, d = 300_000, 64
emb = vf.Embeddings([f"w{i}" for i in range(n)], rng.standard_normal((n, d)).astype(np.float32))
tmp = pathlib.Path(sys.argv[1])
emb.write_word2vec(tmp / "full.bin")
queries = rng.standard_normal((4000, d)).astype(np.float32)

def interrupted(f):
    threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        f()
    except KeyboardInterrupt:
        return True
    return False

# calls in another thread meanwhile are not stopped by the main thread's Ctrl-C
small = vf.Embeddings(["a", "b", "c"], np.eye(3, dtype=np.float32))
errors, done = [], threading.Event()
def background():
    while not done.is_set():
        try:
            small.similar_batch(np.eye(3, dtype=np.float32), 2)
            small.write_word2vec(tmp / "bg" / "small.bin")
        except BaseException as e:
            errors.append(repr(e))
(tmp / "bg").mkdir()
bg = threading.Thread(target=background)
bg.start()
print(interrupted(lambda: emb.write_text(tmp / "x.txt")), interrupted(lambda: emb.similar_batch(queries, 10)),
      interrupted(lambda: vf.load_word2vec(tmp / "full.bin")))
done.set()
bg.join()
print(sorted(os.listdir(tmp)), errors)
print(emb.similar_batch(queries[:2], 3)[0].shape)  # later calls run
'''


@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_long_calls(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) during a long write, batch query or load raises KeyboardInterrupt once
    the work stops at its next block, instead of when it ends (the signal was only seen
    after the call returned); an interrupted write leaves neither the file nor its temporary
    file; calls running in another thread meanwhile are not stopped. (Each call takes about
    a second here; the signal comes 50 ms in.)"""
    out = subprocess.run([sys.executable, "-c", _SIGINT_SCRIPT, str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == ["True True True", "['bg', 'full.bin'] []", "(2, 3)"], out.stdout


_SIGINT_WITHIN_SCAN_SCRIPT = r'''
import os, signal, threading, time, numpy as np, vecfusion as vf
rng = np.random.default_rng(0)
n, d = 400_000, 64
emb = vf.Embeddings([f"w{i}" for i in range(n)], rng.standard_normal((n, d)).astype(np.float32))
queries = rng.standard_normal((2000, d)).astype(np.float32)  # one chunk of queries
t = time.perf_counter()
emb.similar_batch(queries, 10)
full = time.perf_counter() - t
threading.Timer(full / 20, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
t = time.perf_counter()
try:
    emb.similar_batch(queries, 10)
    print("not interrupted")
except KeyboardInterrupt:
    print("stopped early" if time.perf_counter() - t < full / 2 else f"stopped late {time.perf_counter() - t} of {full}")
'''


@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_a_batch_query_within_its_scan(tmp_path: Path) -> None:
    """The stop was checked between chunks of 2048 queries, each a whole scan of the matrix:
    a batch of one chunk ran to its end before KeyboardInterrupt (seconds on a large
    matrix). The scan's row blocks now check it: the call stops well before its end."""
    out = subprocess.run([sys.executable, "-c", _SIGINT_WITHIN_SCAN_SCRIPT],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stopped early", out.stdout


def _released_during(method, args: list) -> bool:  # type: ignore[no-untyped-def]
    """Whether `method(arg)` (a native method), called for each of `args` in a loop that runs
    no Python bytecode (`deque(map(...))`), let a waiting Python thread run before the loop
    ended: a thread that waited longer than the switch interval takes the GIL at the next
    release (CPython hands it over then), and a thread that never gets it runs only after."""
    go, seen = threading.Event(), []
    it = iter(args)

    def waiter() -> None:
        go.wait()
        seen.append(it.__length_hint__())  # calls left when this thread first ran

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        t = threading.Thread(target=waiter)
        t.start()
        go.set()
        collections.deque(map(method, it), maxlen=0)
        t.join()
    finally:
        sys.setswitchinterval(old)
    return seen[0] > 0


def test_small_calls_keep_the_gil_and_large_ones_release_it() -> None:
    """A small lookup or query released the GIL and, next to a busy Python thread, waited up
    to the switch interval (5 ms) to take it back (1.2 µs -> 105 µs for ten words): small
    calls keep it, as numpy does; large ones still release it."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(3000)]
    emb = vf.Embeddings(words, rng.standard_normal((3000, 50)).astype(np.float32))
    small = vf.Embeddings(words[:100], rng.standard_normal((100, 50)).astype(np.float32))
    assert not _released_during(emb.lookup, [words[:10]] * 20000)
    assert not _released_during(emb.vocab.indices_batch, [words[:10]] * 20000)
    assert not _released_during(emb.vocab.indices_batch, [words[:1500]] * 100)
    assert not _released_during(small.similar, ["w1"] * 5000)
    # (loops of some 0.1-0.2 s: the waiting thread must have been scheduled, on a busy machine)
    assert _released_during(emb.lookup, [words] * 2000)
    assert _released_during(emb.similar, ["w1"] * 2000)
    assert _released_during(emb.most_similar, ["w1"] * 2000)


_FORKED_SMALL_CALLS = r'''
import collections, os, sys, threading, numpy as np, vecfusion as vf
{released_during}
words = [f"w{{i}}" for i in range(3000)]
emb = vf.Embeddings(words, np.random.default_rng(0).standard_normal((3000, 50)).astype(np.float32))
parent = _released_during(emb.lookup, [words[:10]] * 20000)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, b"1" if _released_during(emb.lookup, [words[:10]] * 20000) else b"0")
    os._exit(0)
os.close(w)
child = os.read(r, 1) == b"1"
os.waitpid(pid, 0)
print(parent, child)
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_small_calls_in_a_forked_child_release_the_gil() -> None:
    """In a forked child every call runs in the child's own thread pool, where a small call
    may wait behind another thread's long one: holding the GIL there stalled every Python
    thread (a ticker's gaps went from 16 ms to 110 ms), so small calls release it in a
    child, while the parent's run on the calling thread and keep it."""
    script = _FORKED_SMALL_CALLS.format(released_during=inspect.getsource(_released_during))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr


def test_calls_on_long_words_release_the_gil() -> None:
    """An unknown word reads a row for each of its n-grams: one word of 60 kB is some
    15 million values to add up, yet the work estimates counted words, not their length, and
    such a call kept the GIL for its whole length (0.15-0.3 s for a megabyte)."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(100)]
    e = vf.Embeddings(words, rng.standard_normal((100 + 1024, 64)).astype(np.float32), vocab="fasttext", buckets=1024)
    long, short = "x" * 60_000, "xyzzy"
    assert _released_during(e.lookup, [[long]] * 3)
    assert _released_during(e.vocab.indices_batch, [[long]] * 3)
    assert _released_during(functools.partial(e.similarity, "w1"), [long] * 3)
    assert _released_during(e.similar, [long] * 3)
    assert _released_during(e.most_similar, [long] * 3)
    assert _released_during(e.fasttext_vector, [long] * 3)
    assert _released_during(e.embedding_with_norm, [long] * 3)
    # words of everyday length still keep it
    assert not _released_during(e.lookup, [[short]] * 5000)
    assert not _released_during(functools.partial(e.similarity, "w1"), [short] * 5000)


def test_first_query_on_a_rotated_quantized_storage_releases_the_gil() -> None:
    """The first cosine query on OPQ storage checks that its rotation is orthogonal (d³ of
    work, now a matrix product) before it learns the rows' lengths; on a small vocabulary
    the call kept the GIL for all of it (0.4 s at 1024 dims). Later calls are small."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(50)]
    e = vf.Embeddings(words, rng.standard_normal((50 + 256, 512)).astype(np.float32), vocab="fasttext", buckets=256)
    q = e.quantize(n_subquantizers=8, bits=4, opq=True, n_iterations=1, progress=False)
    # (dot-product queries need no row lengths: small ones keep the GIL from the start)
    assert not _released_during(q.similar, ["w1"] * 200)
    assert _released_during(q.most_similar, ["w1", "w1"])
    assert not _released_during(q.most_similar, ["w1"] * 200)
