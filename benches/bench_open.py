"""Opening cost of a vocabulary: fst (automaton) vs standard finalfusion vocab vs peers.

For the 1M-word x 300 files of the foundation benchmark (SimpleVocab and 2^21 buckets) and a
3M-word vocabulary (4 dims: the vocabulary dominates), every contender opens the file in a
fresh subprocess; we report the open time (median of 3) and the RSS growth right after open.
Peers: gensim ``KeyedVectors.load(mmap='r')`` (a .kv saved from the word2vec file),
``fasttext.load_model`` (a fastText .bin written here with the same words, rows and buckets),
finalfusion-python ``load_finalfusion(mmap=True)``. Then known-word lookup through the fst vs
the in-memory hash map, and the size of the vocabulary chunks.

    make build && make bench-deps && .venv/bin/python benches/bench_open.py

Generated files are cached in benches/_data/ (about 15 GB in all; the first run takes a while).
Prints a table and ratios; asserts nothing.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _data  # noqa: E402

import vecfusion as vf  # noqa: E402

RUNS = 3
ONLY = sys.argv[1:]  # optional: names of data sets to run (substring match)

# --- data preparation (cached) -----------------------------------------------------------------


def fst_copy(src: Path) -> Path:
    dst = src.with_name(src.stem + ".fst.fifu")
    if not dst.exists():
        vf.load(src, mmap=True).write(dst, vocab="fst")
    return dst


def write_fasttext_bin(path: Path, words: list[str], matrix: np.ndarray, bucket: int, minn: int = 3, maxn: int = 6) -> None:
    """A fastText skipgram .bin (version 12) holding `matrix` (words + bucket rows) as input matrix."""
    if path.exists():
        return
    nwords, dim = len(words), matrix.shape[1]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<ii", 793712314, 12))
        # dim ws epoch minCount neg wordNgrams loss(ns=2) model(sg=2) bucket minn maxn lrUpdateRate t
        f.write(struct.pack("<12i", dim, 5, 5, 1, 5, 1, 2, 2, bucket, minn, maxn, 100))
        f.write(struct.pack("<d", 1e-4))
        f.write(struct.pack("<iiiqq", nwords, nwords, 0, nwords * 10, -1))
        f.write(b"".join(w.encode() + b"\0" + struct.pack("<qb", 10, 0) for w in words))
        f.write(b"\0")  # quant
        f.write(struct.pack("<qq", matrix.shape[0], dim))
        for s in range(0, matrix.shape[0], 200_000):
            f.write(np.ascontiguousarray(matrix[s : s + 200_000], dtype="<f4").tobytes())
        f.write(b"\0")  # quant output
        f.write(struct.pack("<qq", nwords, dim))
        zeros = np.zeros((min(nwords, 200_000), dim), "<f4").tobytes()
        for s in range(0, nwords, 200_000):
            f.write(zeros[: (min(nwords, s + 200_000) - s) * dim * 4])
    tmp.rename(path)


def gensim_kv(w2v: Path) -> Path | None:
    try:
        from gensim.models import KeyedVectors
    except ImportError:
        return None
    kv = w2v.with_suffix(".kv")
    if not kv.exists():
        KeyedVectors.load_word2vec_format(str(w2v), binary=True).save(str(kv))
    return kv


def prepare() -> dict[str, dict[str, Path]]:
    big = _data.big_files()
    sets: dict[str, dict[str, Path]] = {}
    sets["1M x 300 simple"] = {"std": big["fifu"], "fst": fst_copy(big["fifu"]), "w2v": big["w2v"]}
    sets["1M x 300, 2^21 buckets"] = {"std": big["buckets"], "fst": fst_copy(big["buckets"])}
    ws3 = None
    p3 = _data.DATA / "words3m_x4.fifu"
    w3 = _data.DATA / "words3m_x4.w2v.bin"
    if not p3.exists() or not w3.exists():
        ws3 = _data.words(3_000_000, seed=5)
        m3 = _data.matrix(3_000_000, 4, seed=6)
        if not w3.exists():
            _data.write_word2vec_binary(w3, ws3, m3)
        if not p3.exists():
            vf.Embeddings(ws3, m3).write(p3)
    sets["3M x 4 simple"] = {"std": p3, "fst": fst_copy(p3), "w2v": w3}
    for s in sets.values():
        if "w2v" in s:
            kv = gensim_kv(s["w2v"])
            if kv:
                s["gensim"] = kv
    try:
        import fasttext  # noqa: F401

        ft = _data.DATA / "big_1000000x300_b21.ft.bin"
        if not ft.exists():
            emb = vf.load(big["buckets"], mmap=True)
            write_fasttext_bin(ft, list(emb.vocab.words), emb.storage, bucket=1 << 21)
        sets["1M x 300, 2^21 buckets"]["fasttext"] = ft
    except ImportError:
        pass
    try:
        import finalfusion  # noqa: F401

        for s in sets.values():
            s["finalfusion"] = s["std"]
    except ImportError:
        pass
    return sets


# --- measurements in fresh subprocesses --------------------------------------------------------

OPEN = {
    "vecfusion fst+mmap": "import vecfusion as vf\ndef op(p): return vf.load(p, mmap=True)",
    "vecfusion std+mmap": "import vecfusion as vf\ndef op(p): return vf.load(p, mmap=True)",
    "vecfusion fst, mmap=False": "import vecfusion as vf\ndef op(p): return vf.load(p, mmap=False)",
    "gensim mmap='r'": "from gensim.models import KeyedVectors\ndef op(p): return KeyedVectors.load(p, mmap='r')",
    "fasttext.load_model": "import fasttext\ndef op(p): return fasttext.load_model(p)",
    "finalfusion-python mmap": "import finalfusion\ndef op(p): return finalfusion.load_finalfusion(p, mmap=True)",
}
FILE_OF = {
    "vecfusion fst+mmap": "fst",
    "vecfusion std+mmap": "std",
    "vecfusion fst, mmap=False": "fst",
    "gensim mmap='r'": "gensim",
    "fasttext.load_model": "fasttext",
    "finalfusion-python mmap": "finalfusion",
}

CHILD = r"""
import json, sys, time
def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
%s
import gc; gc.collect()
before = rss()
t = time.perf_counter()
obj = op(sys.argv[1])
dt = time.perf_counter() - t
print(json.dumps({"s": dt, "rss": rss() - before}))
"""


def measure_open(name: str, path: Path) -> tuple[float, int] | None:
    times, rsss = [], []
    for _ in range(RUNS):
        r = subprocess.run([sys.executable, "-c", CHILD % OPEN[name], str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"  {name}: failed: {r.stderr.strip().splitlines()[-1:]}")
            return None
        d = json.loads(r.stdout.strip().splitlines()[-1])
        times.append(d["s"])
        rsss.append(d["rss"])
    return statistics.median(times), int(statistics.median(rsss))


LOOKUP = r"""
import json, random, sys, time
import vecfusion as vf
emb = vf.load(sys.argv[1], mmap=sys.argv[2] == "mmap")
ws = emb.vocab.words
random.seed(0)
q = random.sample(ws, 200_000)
emb.lookup(q)  # warm: page in what the queries touch
best = 1e9
for _ in range(5):
    t = time.perf_counter(); emb.lookup(q); best = min(best, time.perf_counter() - t)
v = emb.vocab
best_py = 1e9
for _ in range(3):
    t = time.perf_counter()
    for w in q[:50_000]:
        v.index(w)
    best_py = min(best_py, time.perf_counter() - t)
print(json.dumps({"batch_ns": best / len(q) * 1e9, "index_ns": best_py / 50_000 * 1e9}))
"""


def measure_lookup(path: Path, mode: str) -> dict[str, float]:
    r = subprocess.run([sys.executable, "-c", LOOKUP, str(path), mode], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def rust_lookup(fst: Path, std: Path) -> None:
    """The vocabulary alone, from Rust (benches/vocab_lookup.rs)."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        ["cargo", "bench", "--quiet", "--bench", "vocab_lookup", "--", str(fst), str(std)],
        cwd=root, capture_output=True, text=True,
    )
    if r.returncode != 0:
        print(f"  Rust lookup benchmark failed: {r.stderr.strip().splitlines()[-1:]}")
        return
    for line in r.stdout.strip().splitlines():
        print(f"  Rust, vocabulary only: {line}")


def vocab_chunk_len(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(12)
        (n,) = struct.unpack_from("<I", head, 8)
        f.seek(12 + 4 * n)
        while True:
            cid, length = struct.unpack("<IQ", f.read(12))
            if cid in (1, 3, 7, 8) or cid >> 16 == 0x5646:
                return length
            f.seek(length, 1)


def main() -> None:
    print(f"vecfusion {vf.__version__} ({vf.build_profile}), Python {platform.python_version()}, "
          f"{platform.machine()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    sets = prepare()

    for label, files in sets.items():
        if ONLY and not any(o in label for o in ONLY):
            continue
        print(f"\n== {label}")
        print(f"  vocab chunk: standard {vocab_chunk_len(files['std']) / 1e6:.1f} MB, "
              f"fst {vocab_chunk_len(files['fst']) / 1e6:.1f} MB "
              f"({vocab_chunk_len(files['fst']) / vocab_chunk_len(files['std']):.2f}x)")
        base = None
        for name in OPEN:
            key = FILE_OF[name]
            if key not in files:
                print(f"  {name:26s} (not available)")
                continue
            res = measure_open(name, files[key])
            if res is None:
                continue
            t, rss = res
            if name == "vecfusion fst+mmap":
                base = t
            ratio = f"{t / base:8.1f}x" if base else ""
            print(f"  {name:26s} open {t * 1e3:10.2f} ms  RSS +{rss / 2**20:9.1f} MiB  {ratio}")
        # Both memory-mapped, so that only the vocabulary differs.
        fst = measure_lookup(files["fst"], "mmap")
        std = measure_lookup(files["std"], "mmap")
        print(f"  known-word emb.lookup (200k words, Python list in): fst {fst['batch_ns']:.0f} ns/word, "
              f"hash map {std['batch_ns']:.0f} ns/word ({fst['batch_ns'] / std['batch_ns']:.2f}x)")
        print(f"  vocab.index(w) called from Python: fst {fst['index_ns']:.0f} ns, "
              f"hash map {std['index_ns']:.0f} ns ({fst['index_ns'] / std['index_ns']:.2f}x)")
        rust_lookup(files["fst"], files["std"])


if __name__ == "__main__":
    main()
