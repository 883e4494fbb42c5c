"""gensim's cosine helpers, vecfusion beside gensim 4 on the same vectors (prints, asserts nothing).

`most_similar` on rows that are not unit vectors (`vf.Embeddings(words, matrix)`, files read
with ``normalize=False``), ``restrict_vocab``, ``topn=None`` and `most_similar_cosmul` divide
each dot product by the row's length; gensim keeps its norms (`fill_norms`) and calls BLAS.
Also the same calls on unit rows (embeddings with norms, as finalfusion files store them) and
on an OPQ-quantized copy (scored through lookup tables).

    .venv/bin/python benches/bench_cosine.py [--n 400000] [--dims 300] [--repeat 7]

Times are medians of ``--repeat`` calls after one warm-up call, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np

import vecfusion as vf


def median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=400_000)
    p.add_argument("--dims", type=int, default=300)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--subquantizers", type=int, default=50)
    args = p.parse_args()
    from gensim.models import KeyedVectors

    warnings.simplefilter("ignore")
    n, d = args.n, args.dims
    print(f"# bench_cosine: vecfusion {vf.__version__} ({vf.build_profile}), {n} x {d}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, {platform.processor()}")
    rng = np.random.default_rng(0)
    m = rng.standard_normal((n, d), dtype=np.float32) * rng.uniform(0.5, 2.0, (n, 1)).astype(np.float32)
    words = [f"w{i}" for i in range(n)]
    lengths = np.linalg.norm(m, axis=1)
    raw = vf.Embeddings(words, m)
    unit = vf.Embeddings(words, m / lengths[:, None], norms=lengths)
    kv = KeyedVectors(d)
    kv.add_vectors(words, m)
    kv.fill_norms()
    q = raw.quantize(n_subquantizers=args.subquantizers, bits=8, opq=True, n_iterations=2,
                     sample=min(n, 20_000), progress=False)
    restrict = n - 1
    calls = [
        ("most_similar", lambda e: e.most_similar("w1"), lambda: kv.most_similar("w1")),
        ("restrict_vocab=n-1", lambda e: e.most_similar("w1", restrict_vocab=restrict),
         lambda: kv.most_similar("w1", restrict_vocab=restrict)),
        ("topn=None", lambda e: e.most_similar("w1", topn=None), lambda: kv.most_similar("w1", topn=None)),
        ("most_similar_cosmul", lambda e: e.most_similar_cosmul(["w1", "w2"], ["w3"]),
         lambda: kv.most_similar_cosmul(["w1", "w2"], ["w3"])),
    ]
    print(f"\n| call | vecfusion raw rows | vecfusion unit rows | vecfusion OPQ M={args.subquantizers} | gensim | "
          "gensim / raw |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, vf_call, gensim_call in calls:
        t_raw = median_ms(lambda: vf_call(raw), args.repeat)
        t_unit = median_ms(lambda: vf_call(unit), args.repeat)
        t_q = median_ms(lambda: vf_call(q), args.repeat)
        t_g = median_ms(gensim_call, args.repeat)
        print(f"| {name} | {t_raw:.1f} ms | {t_unit:.1f} ms | {t_q:.1f} ms | {t_g:.1f} ms | {t_g / t_raw:.2f}x |")
    same = [w for w, _ in raw.most_similar("w1")] == [w for w, _ in kv.most_similar("w1")]
    same_mul = [w for w, _ in raw.most_similar_cosmul(["w1", "w2"], ["w3"])] == [
        w for w, _ in kv.most_similar_cosmul(["w1", "w2"], ["w3"])]
    print(f"\nsame top-10 as gensim: most_similar {same}, most_similar_cosmul {same_mul}")


if __name__ == "__main__":
    main()
