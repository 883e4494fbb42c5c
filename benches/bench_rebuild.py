"""How a known word's quantized row is rebuilt, the two ways side by side (prints, asserts nothing).

OPQ quantizers of a 50,000 x 300 low-rank-plus-noise matrix (trained once, cached in
benches/_data/); for each M: one word again and again (its rows stay in cache), random words
one at a time (`emb[w]`), and a batch (`lookup`), in µs a row (best of 5). Each M is measured
in this process (the projected-centroid table where the cache-based limit allows it) and in a
child with ``VECFUSION_CENTROID_TABLE=off`` (always the product concat · Pᵀ), in the same run.

    .venv/bin/python benches/bench_rebuild.py [--subquantizers 50 150]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA  # noqa: E402

import vecfusion as vf  # noqa: E402

N, D = 50_000, 300


def quantized(m: int) -> Path:
    path = DATA / f"rebuild_opq{m}.fifu"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        basis = rng.standard_normal((64, D)).astype(np.float32)
        x = (rng.standard_normal((N, 64)).astype(np.float32) * np.linspace(3, 0.1, 64, dtype=np.float32)) @ basis
        x += 0.3 * rng.standard_normal((N, D)).astype(np.float32)
        e = vf.Embeddings([f"w{i}" for i in range(N)], x)
        e.quantize(n_subquantizers=m, bits=8, opq=True, n_iterations=4, sample=20_000, progress=False).write(path)
    return path


def measure(m: int) -> dict[str, float | str]:
    q = vf.load(quantized(m))
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in rng.integers(0, N, 20_000)]
    q["w1"]
    out: dict[str, float | str] = {"method": q.storage.rebuild_method}
    for label, ws in (("same word", ["w1"] * 20_000), ("random words", words)):
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for w in ws:
                q[w]
            best = min(best, (time.perf_counter() - t) / len(ws))
        out[label] = best * 1e6
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        q.lookup(words)
        best = min(best, (time.perf_counter() - t) / len(words))
    out["batch"] = best * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subquantizers", type=int, nargs="+", default=[50, 150])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    print(f"# bench_rebuild: vecfusion {vf.__version__} ({vf.build_profile}), {N} x {D} OPQ, 8 bits, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; µs a row")
    print(f"{'M':>4} {'method':16} {'same word':>10} {'random words':>13} {'batch':>8}")
    for m in args.subquantizers:
        quantized(m)
        rows = [measure(m)]
        env = dict(os.environ, VECFUSION_CENTROID_TABLE="off")
        child = subprocess.run([sys.executable, __file__, "--child", str(m)], env=env, capture_output=True,
                               text=True, check=True)
        rows.append(json.loads(child.stdout))
        for r in rows:
            print(f"{m:>4} {r['method']:16} {r['same word']:>10.2f} {r['random words']:>13.2f} {r['batch']:>8.2f}")


if __name__ == "__main__":
    main()
