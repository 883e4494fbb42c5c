"""Quantized query benchmark (issue 4, fast scan): single and batch similarity queries on
the 1M x 300 PQ file (50 subquantizers x 256 centroids) made by bench_query.py.

Times ``emb.similar(word, k)`` (median over random words, wall and process CPU time) and
one ``emb.similar_batch(Q, k)`` of ``--batch`` queries (per query), and the floor: the
codes' bytes / memory bandwidth, measured as bench_query.py does (a numpy copy of a 1M x 300
f32 matrix into a pre-touched buffer, read + write bytes, best of 3). Run it twice to compare the filter with the exact scan: ``VECFUSION_FASTSCAN=off``
turns the filter off. Prints; asserts nothing.

    python benches/bench_fastscan.py [--file PATH] [--singles 20] [--batch 1000] [-k 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import vecfusion as vf

DEFAULT = Path(__file__).resolve().parent / "_data" / "big_1000000x300_pq50x256.fifu"


def timed(f, *args, **kw):
    t, c = time.perf_counter(), time.process_time()
    out = f(*args, **kw)
    return time.perf_counter() - t, time.process_time() - c, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=str(DEFAULT))
    ap.add_argument("--singles", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not Path(args.file).exists():
        print(f"{args.file} is missing: run benches/bench_query.py once to make it", file=sys.stderr)
        return 1

    emb = vf.load(args.file, mmap=False)
    storage = emb.storage
    codes_bytes = np.asarray(storage.codes).nbytes
    rng = np.random.default_rng(args.seed)
    n_words = len(emb)
    words = [emb.vocab[int(i)] for i in rng.integers(0, n_words, args.singles)]

    matrix_bytes = 1_000_000 * 300 * 4
    src = np.ones(matrix_bytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    copy = min(timed(np.copyto, dst, src)[0] for _ in range(3))
    del src, dst
    bandwidth = 2 * matrix_bytes / copy
    floor_ms = 1e3 * codes_bytes / bandwidth

    emb.similar(words[0], k=args.k)  # warm up (threads, pages)
    single = [timed(emb.similar, w, k=args.k)[:2] for w in words]
    wall = statistics.median(s[0] for s in single) * 1e3
    cpu = statistics.median(s[1] for s in single) * 1e3

    queries = np.stack([emb[w] for w in (emb.vocab[int(i)] for i in rng.integers(0, n_words, args.batch))])
    bw, bc, _ = timed(emb.similar_batch, queries, k=args.k)
    fastscan = os.environ.get("VECFUSION_FASTSCAN", "on")
    print(f"# bench_fastscan: vecfusion {vf.__version__} ({vf.build_profile})")
    print(f"{args.file}: {len(emb)} rows, {codes_bytes / 1e6:.0f} MB of codes; VECFUSION_FASTSCAN={fastscan}")
    print(f"floor: {floor_ms:.2f} ms ({bandwidth / 1e9:.1f} GB/s numpy copy)")
    print(f"similar (k={args.k}, median of {args.singles}): wall {wall:.2f} ms ({wall / floor_ms:.2f}x floor), "
          f"cpu {cpu:.2f} ms")
    print(f"similar_batch ({args.batch} queries): wall {bw * 1e3 / args.batch:.3f} ms/query, "
          f"cpu {bc * 1e3 / args.batch:.3f} ms/query (total {bw:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
