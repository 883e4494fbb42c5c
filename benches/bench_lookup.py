"""Foundation benchmark: open and lookup, vecfusion beside gensim 4 and finalfusion-python 0.7.1.

Data: 1,000,000 unique words x 300 (benches/_data.py), as word2vec binary (gensim reads it),
as .fifu with a SimpleVocab (1.2 GB) and as .fifu with a BucketSubwordVocab of 2^21 buckets.
Each open is measured in a fresh process (its own peak RSS); lookups are timed in that
process after the open. Prints a table with ratios (peer time / vecfusion time); asserts nothing.

    make bench-deps && .venv/bin/python benches/bench_lookup.py [--words N] [--dims D]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import DATA, big_files, words  # noqa: E402
from _measure import fmt_ratio, peak_rss_mb, rss_mb, run_worker  # noqa: E402

N_SINGLE = 200_000
N_BATCH = 100_000


def _timeit_per_call(fn, items) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, (time.perf_counter() - t) / len(items))
    return best


def _best(fn, repeat: int = 5) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def worker(lib: str, mode: str, path: str, n_words: int) -> dict:
    rng = random.Random(0)
    vocab_words = words(n_words)
    known = [vocab_words[rng.randrange(n_words)] for _ in range(N_SINGLE)]
    batch = [vocab_words[rng.randrange(n_words)] for _ in range(N_BATCH)]
    unknown = [w + "xq" + str(i % 97) for i, w in enumerate(known[:20_000])]
    rss0 = rss_mb()
    out: dict = {}
    if lib == "vecfusion":
        import vecfusion as vf

        if vf.build_profile != "release":
            raise SystemExit(f"benchmark a release build (make build), not {vf.build_profile}")
        t = time.perf_counter()
        emb = vf.load(path, mmap=(mode == "mmap"))
        out["open"] = time.perf_counter() - t
        out["rss_open"] = rss_mb() - rss0
        get = emb.__getitem__
        out["single"] = _timeit_per_call(get, known)
        out["batch"] = _best(lambda: emb.lookup(batch))
        import numpy as np

        buf = np.empty((len(batch), emb.dims), np.float32)
        emb.lookup(batch, out=buf)  # map the buffer's pages once, as a reused buffer is
        out["batch_out"] = _best(lambda: emb.lookup(batch, out=buf))
        if emb.vocab.min_n is not None:
            out["unknown"] = _timeit_per_call(get, unknown)
    elif lib == "gensim":
        from gensim.models import KeyedVectors

        t = time.perf_counter()
        if mode == "mmap":
            kv = KeyedVectors.load(path, mmap="r")
        else:
            kv = KeyedVectors.load_word2vec_format(path, binary=True)
        out["open"] = time.perf_counter() - t
        out["rss_open"] = rss_mb() - rss0
        out["single"] = _timeit_per_call(kv.__getitem__, known)
        out["batch"] = _best(lambda: kv[batch])
    elif lib == "finalfusion":
        import finalfusion

        t = time.perf_counter()
        emb = finalfusion.load_finalfusion(path, mmap=(mode == "mmap"))
        out["open"] = time.perf_counter() - t
        out["rss_open"] = rss_mb() - rss0
        out["single"] = _timeit_per_call(emb.__getitem__, known[:50_000])
        if hasattr(emb, "embedding_batch"):
            out["batch"] = _best(lambda: emb.embedding_batch(batch), repeat=2)
        else:
            out["batch"] = _best(lambda: [emb[w] for w in batch], repeat=2)
        if "Subword" in type(emb.vocab).__name__ or "Bucket" in type(emb.vocab).__name__:
            out["unknown"] = _timeit_per_call(emb.__getitem__, unknown[:5_000])
    out["peak_rss"] = peak_rss_mb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--words", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, default=300)
    ap.add_argument("--bucket-exp", type=int, default=21)
    ap.add_argument("--worker", nargs=4, metavar=("LIB", "MODE", "PATH", "N"))
    args = ap.parse_args()
    if args.worker:
        lib, mode, path, n = args.worker
        print(json.dumps(worker(lib, mode, path, int(n))))
        return

    t = time.perf_counter()
    paths = big_files(args.words, args.dims, args.bucket_exp)
    print(f"data ready in {time.perf_counter() - t:.0f} s under {DATA}")
    kv_path = DATA / f"big_{args.words}x{args.dims}.kv"
    have_gensim = have_ff = True
    try:
        import gensim  # noqa: F401
    except ImportError:
        have_gensim = False
    try:
        import finalfusion  # noqa: F401
    except ImportError:
        have_ff = False
    if have_gensim and not kv_path.exists():
        from gensim.models import KeyedVectors

        KeyedVectors.load_word2vec_format(str(paths["w2v"]), binary=True).save(str(kv_path))

    # Warm the page cache, so every library reads the same cached files.
    for p in [*paths.values(), kv_path]:
        if Path(p).exists():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass
    me = os.path.abspath(__file__)
    n = str(args.words)
    runs = {
        ("vecfusion", "read", "simple"): (paths["fifu"],),
        ("vecfusion", "mmap", "simple"): (paths["fifu"],),
        ("vecfusion", "read", "buckets"): (paths["buckets"],),
        ("vecfusion", "mmap", "buckets"): (paths["buckets"],),
    }
    if have_gensim:
        runs[("gensim", "read", "simple")] = (paths["w2v"],)
        runs[("gensim", "mmap", "simple")] = (kv_path,)
    if have_ff:
        runs[("finalfusion", "read", "simple")] = (paths["fifu"],)
        runs[("finalfusion", "mmap", "simple")] = (paths["fifu"],)
        runs[("finalfusion", "mmap", "buckets")] = (paths["buckets"],)
    res = {}
    for (lib, mode, kind), (path,) in runs.items():
        print(f"  measuring {lib} {mode} {kind} ...", flush=True)
        res[(lib, mode, kind)] = run_worker(me, lib, mode, str(path), n)

    def cell(key: tuple, field: str, scale: float, fmt: str) -> str:
        r = res.get(key)
        if r is None:
            return "not run"
        if "error" in r:
            return "error: " + " ".join(r["error"])[:40]
        v = r.get(field)
        return "n/a" if v is None else format(v * scale, fmt)

    print()
    print(f"{args.words:,} words x {args.dims}, SimpleVocab .fifu / word2vec; buckets: 2^{args.bucket_exp}")
    hdr = ["library", "mode", "vocab", "open", "RSS after open", "peak RSS", "known lookup", f"batch {N_BATCH // 1000}k", "vectors/s", "into out=", "unknown lookup"]
    rows = []
    for key in runs:
        lib, mode, kind = key
        r = res[key]
        vps = "n/a" if "batch" not in r else f"{N_BATCH / r['batch'] / 1e6:.2f} M"
        vps_out = "n/a" if "batch_out" not in r else f"{N_BATCH / r['batch_out'] / 1e6:.2f} M/s"
        rows.append([
            lib, mode, kind,
            cell(key, "open", 1e3, ".1f") + " ms",
            cell(key, "rss_open", 1, ".0f") + " MB",
            cell(key, "peak_rss", 1, ".0f") + " MB",
            cell(key, "single", 1e6, ".2f") + " µs",
            cell(key, "batch", 1e3, ".1f") + " ms",
            vps,
            vps_out,
            cell(key, "unknown", 1e6, ".2f") + " µs",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)]
    line = " | ".join(h.ljust(w) for h, w in zip(hdr, widths))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(x).ljust(w) for x, w in zip(r, widths)))

    print("\nratios (peer time / vecfusion time, same run; >1 means vecfusion is faster)")
    for peer in ("gensim", "finalfusion"):
        for mode in ("read", "mmap"):
            p, v = res.get((peer, mode, "simple")), res.get(("vecfusion", mode, "simple"))
            if not p or not v or "error" in p or "error" in v:
                continue
            print(f"  {peer:11s} {mode}: open {fmt_ratio(p.get('open'), v.get('open'))}, "
                  f"known lookup {fmt_ratio(p.get('single'), v.get('single'))}, "
                  f"batch {fmt_ratio(p.get('batch'), v.get('batch'))}")
    p, v = res.get(("finalfusion", "mmap", "buckets")), res.get(("vecfusion", "mmap", "buckets"))
    if p and v and "error" not in p and "error" not in v:
        print(f"  finalfusion buckets mmap: open {fmt_ratio(p.get('open'), v.get('open'))}, "
              f"unknown lookup {fmt_ratio(p.get('unknown'), v.get('unknown'))}")


if __name__ == "__main__":
    main()
