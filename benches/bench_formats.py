"""Loading word2vec binary, word2vec text and fastText .bin files: vecfusion beside
gensim (``KeyedVectors.load_word2vec_format``, ``load_facebook_vectors``) and fastText
(``fasttext.load_model``), on the same 1,000,000 x 300 files.

Every load runs in its own subprocess, from a warm page cache, so that each gets its own
peak RSS (``VmHWM``); the table shows seconds, peak RSS, the RSS the load added over the
interpreter with its imports, that increase divided by the size of the loaded matrix,
and gensim's (or fastText's) time divided by vecfusion's.

    make bench-deps && python benches/bench_formats.py [--n 1000000] [--d 300] [--skip-gensim-text]

The data is generated once into benches/_data/ (see benches/_data.py). This script
measures and prints; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _data

CHILD = r"""
import json, resource, sys, time
kind, path = sys.argv[1], sys.argv[2]
def peak():
    # VmHWM: the peak RSS of this process image (ru_maxrss would carry the parent's
    # peak across fork + exec)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
if kind.startswith("vf"):
    import vecfusion as vf
elif kind.startswith("gensim"):
    from gensim.models import KeyedVectors
    from gensim.models.fasttext import load_facebook_vectors
else:
    import fasttext
    fasttext.FastText.eprint = lambda *a, **k: None
base = peak()
t = time.perf_counter()
if kind == "vf-w2v":
    e = vf.load_word2vec(path); n = len(e)
elif kind == "vf-w2v-raw":
    e = vf.load_word2vec(path, normalize=False); n = len(e)
elif kind == "vf-text":
    e = vf.load_text(path); n = len(e)
elif kind == "vf-fasttext":
    e = vf.load_fasttext(path); n = len(e)
elif kind == "gensim-w2v":
    e = KeyedVectors.load_word2vec_format(path, binary=True); n = len(e)
elif kind == "gensim-text":
    e = KeyedVectors.load_word2vec_format(path, binary=False); n = len(e)
elif kind == "gensim-fasttext":
    e = load_facebook_vectors(path); n = len(e)
elif kind == "fasttext":
    e = fasttext.load_model(path); n = len(e.words)
else:
    raise SystemExit("unknown kind " + kind)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "peak": peak(), "base": base, "words": n}))
"""


def warm(path: Path) -> None:
    """Read the file once so that every load starts from the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


def run(kind: str, path: Path, timeout: float) -> dict | None:
    warm(path)
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, kind, str(path)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:100]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=300)
    ap.add_argument("--buckets", type=int, default=1_000_000, help="fastText n-gram buckets")
    ap.add_argument("--skip-gensim-text", action="store_true", help="gensim's text load takes minutes")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    n, d = args.n, args.d

    t = time.perf_counter()
    w2v = _data.big_word2vec(n, d)
    txt = _data.big_text(n, d)
    ft = _data.big_fasttext(n, d, args.buckets)
    gen = time.perf_counter() - t
    import vecfusion as vf

    print(f"# vecfusion {vf.__version__} ({vf.build_profile}), {platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if gen > 1:
        print(f"# data generated in {gen:.0f} s")
    for p in (w2v, txt, ft):
        print(f"# {p.name}: {p.stat().st_size / 2**30:.2f} GiB")
    words_bytes = n * d * 4
    ft_bytes = (n + args.buckets) * d * 4
    rows = [
        ("word2vec binary", "vf-w2v", w2v, words_bytes, "gensim-w2v"),
        ("word2vec binary, raw", "vf-w2v-raw", w2v, words_bytes, None),
        ("text (word2vec text)", "vf-text", txt, words_bytes,
         None if args.skip_gensim_text else "gensim-text"),
        ("fastText .bin", "vf-fasttext", ft, ft_bytes, "fasttext"),
        ("fastText .bin", None, ft, ft_bytes, "gensim-fasttext"),
    ]
    results: dict[str, dict | None] = {}
    print()
    print("| load | library | seconds | peak RSS GiB | RSS added / matrix | peer time / vecfusion |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for label, mine, path, mbytes, peer in rows:
        for kind in (mine, peer):
            if kind is None:
                continue
            if kind.startswith("gensim") and not have("gensim"):
                print(f"| {label} | {kind} | not installed (make bench-deps) | | | |")
                continue
            if kind == "fasttext" and not have("fasttext"):
                print(f"| {label} | fasttext | not installed (make bench-deps) | | | |")
                continue
            if kind not in results:
                results[kind] = run(kind, path, args.timeout)
            r = results[kind]
            if r is None or "error" in r:
                print(f"| {label} | {kind} | {r and r.get('error')} | | | |")
                continue
            ratio = ""
            if not kind.startswith("vf"):
                ref = results.get(mine) if mine else results.get("vf-fasttext")
                if ref and "seconds" in ref:
                    ratio = f"{r['seconds'] / ref['seconds']:.1f}x"
            added = (r["peak"] - r["base"]) / mbytes
            print(f"| {label} | {kind} | {r['seconds']:.2f} | {r['peak'] / 2**30:.2f} | "
                  f"{added:.2f} | {ratio} |")
    print()
    print(f"matrix sizes: words {words_bytes / 2**30:.2f} GiB, fastText input matrix "
          f"{ft_bytes / 2**30:.2f} GiB")

    # writing (vecfusion only; in-process)
    emb = vf.load_word2vec(w2v)
    tmp = _data.DATA / "bench_formats.tmp"
    for label, fn in (("write word2vec", emb.write_word2vec), ("write text", emb.write_text)):
        t = time.perf_counter()
        fn(tmp)
        print(f"{label}: {time.perf_counter() - t:.2f} s")
    tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
