"""Benchmark data shared by the scripts in benches/ (generated once, cached in benches/_data/).

``big_files()`` makes the 1,000,000-word x 300 embedding of the foundation benchmark:
- ``big.w2v.bin``: word2vec binary (what gensim and the converters read),
- ``big.fifu``: finalfusion, SimpleVocab + NdArray + NdNorms (1.2 GB),
- ``big_buckets.fifu``: finalfusion, BucketSubwordVocab (2^21 buckets) + NdArray (3.7 GB).

Words are unique pseudo-words built from syllables, with a realistic length distribution
(short words first, as in a frequency-sorted vocabulary) and a sprinkling of non-ASCII.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("VECFUSION_BENCH_DATA", Path(__file__).resolve().parent / "_data"))

_SYLLABLES = (
    "a e i o u an en in on un ar er ir or ur al el il ol ul as es is os us at et it ot ut "
    "ba be bi bo bu da de di do du fa fe fi fo fu ga ge gi go gu ha he hi ho hu ka ke ki ko ku "
    "la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru sa se si so su "
    "ta te ti to tu va ve vi vo vu wa we wi wo za ze zi zo zu sch str tion ment ness ing ed ly "
    "ü ö ä é è ñ ç ß"
).split()


def words(n: int, seed: int = 0) -> list[str]:
    """``n`` unique pseudo-words, shorter ones first (like a frequency-sorted vocabulary)."""
    rng = np.random.default_rng(seed)
    syl = np.array(_SYLLABLES, dtype=object)
    out: list[str] = []
    seen: set[str] = set()
    n_syl = 1
    while len(out) < n:
        need = n - len(out)
        batch = max(1024, need * 2)
        picks = rng.integers(0, len(syl), size=(batch, n_syl))
        for row in picks:
            w = "".join(syl[row])
            if w not in seen:
                seen.add(w)
                out.append(w)
                if len(out) == n:
                    break
        n_syl += 1
    return out


def matrix(n: int, d: int, seed: int = 1) -> np.ndarray:
    """A float32 matrix with the spectrum of real embeddings (low rank + noise)."""
    rng = np.random.default_rng(seed)
    rank = min(d, 32)
    basis = rng.standard_normal((rank, d)).astype(np.float32)
    scale = (1.0 / np.arange(1, rank + 1, dtype=np.float32)) ** 0.5
    m = np.empty((n, d), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        e = min(n, s + step)
        coef = rng.standard_normal((e - s, rank)).astype(np.float32) * scale
        m[s:e] = coef @ basis + 0.3 * rng.standard_normal((e - s, d)).astype(np.float32)
    return m


def write_word2vec_binary(path: Path, ws: list[str], m: np.ndarray) -> None:
    """Plain word2vec binary: ``"n d\\n"`` then ``word<space><d float32 LE>\\n`` per row."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(f"{m.shape[0]} {m.shape[1]}\n".encode())
        for w, row in zip(ws, m):
            f.write(w.encode() + b" " + row.astype("<f4").tobytes() + b"\n")
    tmp.rename(path)


def big_files(n: int = 1_000_000, d: int = 300, bucket_exp: int = 21) -> dict[str, Path]:
    """Generate (once) the foundation benchmark files and return their paths."""
    import vecfusion as vf

    DATA.mkdir(parents=True, exist_ok=True)
    paths = {
        "w2v": DATA / f"big_{n}x{d}.w2v.bin",
        "fifu": DATA / f"big_{n}x{d}.fifu",
        "buckets": DATA / f"big_{n}x{d}_b{bucket_exp}.fifu",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    ws = words(n)
    m = matrix(n, d)
    if not paths["w2v"].exists():
        write_word2vec_binary(paths["w2v"], ws, m)
    norms = np.linalg.norm(m, axis=1).astype(np.float32)
    unit = m / norms[:, None]
    if not paths["fifu"].exists():
        vf.Embeddings(ws, unit, norms=norms).write(paths["fifu"])
    if not paths["buckets"].exists():
        rng = np.random.default_rng(2)
        full = np.empty((n + (1 << bucket_exp), d), dtype=np.float32)
        full[:n] = unit
        for s in range(n, full.shape[0], 200_000):
            e = min(full.shape[0], s + 200_000)
            full[s:e] = 0.1 * rng.standard_normal((e - s, d)).astype(np.float32)
        vf.Embeddings(ws, full, norms=norms, vocab="bucket", buckets=bucket_exp).write(paths["buckets"])
        del full
    return paths


# --- issue 5: word2vec / text / fastText benchmark files (bench_formats.py) ---


def big_word2vec(n: int = 1_000_000, d: int = 300) -> Path:
    """Only the word2vec binary of :func:`big_files` (same path, shared cache)."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"big_{n}x{d}.w2v.bin"
    if not path.exists():
        write_word2vec_binary(path, words(n), matrix(n, d))
    return path


def big_text(n: int = 1_000_000, d: int = 300) -> Path:
    """The same vectors as word2vec text (``"n d"`` header, shortest exact digits)."""
    import vecfusion as vf

    path = DATA / f"big_{n}x{d}.txt"
    if not path.exists():
        vf.load_word2vec(big_word2vec(n, d), normalize=False).write_text(path)
    return path


def big_fasttext(n: int = 1_000_000, d: int = 300, buckets: int = 1_000_000) -> Path:
    """A fastText skipgram ``.bin`` with the same words, ``buckets`` n-gram rows
    (minn 3, maxn 6) and its zero output matrix; written by vecfusion's fastText writer
    (fastText's own pretrained models have 2M words and 2M buckets)."""
    import vecfusion as vf

    path = DATA / f"big_{n}x{d}_ft{buckets}.bin"
    if not path.exists():
        src = vf.load_word2vec(big_word2vec(n, d))
        full = np.empty((n + buckets, d), dtype=np.float32)
        full[:n] = np.asarray(src.storage)
        norms = np.asarray(src.norms).copy()
        del src
        rng = np.random.default_rng(3)
        for s in range(n, n + buckets, 200_000):
            e = min(n + buckets, s + 200_000)
            full[s:e] = 0.3 * rng.standard_normal((e - s, d)).astype(np.float32)
        emb = vf.Embeddings(words(n), full, norms=norms, vocab="fasttext", buckets=buckets)
        del full
        emb.write_fasttext(path)
    return path
