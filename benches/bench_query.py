"""Query benchmark (issue 4): nearest words and batches of queries, beside gensim.

Data: the foundation benchmark's 1,000,000 x 300 embedding (``_data.big_files()``), as
- ``array``: ``vf.load(big.fifu)`` (matrix read into memory),
- ``mmap``: ``vf.load(big.fifu, mmap=True)`` (matrix memory-mapped; pages come in on the
  first query and count in RSS as file pages, not as process memory),
- ``quantized``: a PQ file (50 subquantizers x 256 centroids, no projection) of the same unit
  rows. vecfusion's own quantizer lives in another issue, so this file is made HERE by a plain
  numpy k-means (``build_pq``), written with the FORMAT.md QuantizedArray layout, cached in
  benches/_data/. Its codes are 50 MB, so its "floor" is the codes' bytes.

Peer: gensim ``KeyedVectors.load_word2vec_format(big.w2v.bin, binary=True)`` and
``most_similar(word, topn=10)`` on the same vectors (gensim has no batch query).

Floor: bytes a query reads / memory bandwidth, the bandwidth measured in the same run and the
same process (before and after the queries, best taken) by a plain numpy copy of a 1M x 300
f32 matrix into a pre-touched buffer, counting the bytes read and written (2 x size / time),
so the dense floor is half the copy time.

The machine may be shared: besides wall time, each query's process CPU time (all threads)
is printed, which is steadier when other processes compete for the cores.

Every variant runs in its own subprocess so that its peak RSS is its own; the peak is
taken over the queries only (``/proc/self/clear_refs`` resets it after loading).
Prints a table and ratios; asserts nothing.

    python benches/bench_query.py [--singles 50] [--batch 1000] [-k 10] [--skip-gensim]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA, big_files  # noqa: E402

PQ_M, PQ_K = 50, 256


# --- helpers run inside the workers ---------------------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def query_rows(n_words: int, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(n_words, size=count, replace=False)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def timed_cpu(fn, *args, **kw):
    """(wall seconds, process CPU seconds of all threads, result)"""
    c, t = time.process_time(), time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, time.process_time() - c, out


MATRIX_BYTES = 1_000_000 * 300 * 4


def copy_floor(scan_bytes: int) -> dict:
    """Memory bandwidth of a plain numpy copy of a 1M x 300 f32 matrix into a pre-touched
    buffer (bytes read + written per second, best of 3; the buffers are freed again), and
    the floor of a query that reads `scan_bytes`: scan_bytes / bandwidth."""
    src = np.ones(MATRIX_BYTES // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    best = min(timed(np.copyto, dst, src)[0] for _ in range(3))
    del src, dst
    bandwidth = 2 * MATRIX_BYTES / best
    return {"copy_ms": 1e3 * best, "bandwidth": bandwidth, "floor_ms": 1e3 * scan_bytes / bandwidth}


# --- workers --------------------------------------------------------------------------


def worker_vecfusion(path: str, mmap: bool, singles: int, batch: int, k: int, rows_bytes: int) -> dict:
    import vecfusion as vf

    t_load, emb = timed(vf.load, path, mmap=mmap)
    n = len(emb)
    floor_before = copy_floor(rows_bytes)
    single_words = [emb.vocab[int(i)] for i in query_rows(n, singles, 1)]
    batch_words = [emb.vocab[int(i)] for i in query_rows(n, batch, 2)]
    base = proc_status()
    peak_reset = reset_peak()
    t_first, _ = timed(emb.similar, single_words[0], k=k)
    times, cpus = [], []
    answers = {}
    for w in single_words:
        t, c, ans = timed_cpu(emb.similar, w, k=k)
        times.append(t)
        cpus.append(c)
        answers[w] = [x for x, _ in ans]
    queries, found = emb.lookup(batch_words)
    assert found.all()
    # median of 3 runs (the single query is a median of `singles` runs)
    runs = [timed_cpu(emb.similar_batch, queries, k=k) for _ in range(3)]
    order = sorted(range(3), key=lambda r: runs[r][0])
    t_batch, c_batch, (idx, _) = runs[order[1]]
    # batch answers agree with single answers (first 20 rows)
    agree = all(
        [emb.vocab[int(j)] for j in idx[i]] == [x for x, _ in emb.similar(queries[i], k=k)]
        for i in range(min(20, batch))
    )
    end = proc_status()
    return {
        "storage": emb.storage_kind,
        "load_s": t_load,
        "first_ms": 1e3 * t_first,
        "single_ms": 1e3 * float(np.median(times)),
        "single_cpu_ms": 1e3 * float(np.median(cpus)),
        "batch_s": t_batch,
        "batch_ms_per_query": 1e3 * t_batch / batch,
        "batch_cpu_ms_per_query": 1e3 * c_batch / batch,
        "floor": min(floor_before, copy_floor(rows_bytes), key=lambda f: f["floor_ms"]),
        "batch_agrees_with_single": agree,
        "rss_base": base["VmRSS"],
        "rss_peak": end["VmHWM"] if peak_reset else None,
        "anon_growth": end["RssAnon"] - base["RssAnon"],
        "file_rss_end": end["RssFile"],
        "answers": {w: answers[w] for w in single_words[:5]},
    }


def worker_gensim(path: str, singles: int, k: int, rows_bytes: int) -> dict:
    from gensim.models import KeyedVectors

    t_load, kv = timed(KeyedVectors.load_word2vec_format, path, binary=True)
    n = len(kv.index_to_key)
    floor_before = copy_floor(rows_bytes)
    single_words = [kv.index_to_key[int(i)] for i in query_rows(n, singles, 1)]
    base = proc_status()
    peak_reset = reset_peak()
    t_first, _ = timed(kv.most_similar, single_words[0], topn=k)
    times, cpus = [], []
    answers = {}
    for w in single_words:
        t, c, ans = timed_cpu(kv.most_similar, w, topn=k)
        times.append(t)
        cpus.append(c)
        answers[w] = [x for x, _ in ans]
    end = proc_status()
    return {
        "load_s": t_load,
        "first_ms": 1e3 * t_first,
        "single_ms": 1e3 * float(np.median(times)),
        "single_cpu_ms": 1e3 * float(np.median(cpus)),
        "floor": min(floor_before, copy_floor(rows_bytes), key=lambda f: f["floor_ms"]),
        "rss_base": base["VmRSS"],
        "rss_peak": end["VmHWM"] if peak_reset else None,
        "anon_growth": end["RssAnon"] - base["RssAnon"],
        "answers": {w: answers[w] for w in single_words[:5]},
    }


def build_pq(fifu: str, out: str, m: int = PQ_M, k: int = PQ_K, seed: int = 0) -> dict:
    """A PQ of the (unit) rows of `fifu` by plain numpy k-means, written as finalfusion
    [SimpleVocab, QuantizedArray] with the vocabulary chunk copied from `fifu`."""
    import vecfusion as vf

    t0 = time.perf_counter()
    emb = vf.load(fifu, mmap=True)
    x = np.asarray(emb.storage)
    rows, dims = x.shape
    ds = dims // m
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(rows, size=min(rows, 50_000), replace=False))]
    centroids = np.empty((m, k, ds), dtype=np.float32)
    for s in range(m):
        xs = sample[:, s * ds : (s + 1) * ds]
        c = xs[rng.choice(len(xs), size=k, replace=False)].copy()
        for _ in range(15):
            d2 = (c * c).sum(1)[None, :] - 2 * xs @ c.T
            assign = d2.argmin(1)
            sums = np.zeros_like(c)
            np.add.at(sums, assign, xs)
            counts = np.bincount(assign, minlength=k)
            nonempty = counts > 0
            c[nonempty] = sums[nonempty] / counts[nonempty, None]
        centroids[s] = c
    codes = np.empty((rows, m), dtype=np.uint8)
    cn = (centroids * centroids).sum(2)  # (m, k)
    step = 32_768
    for start in range(0, rows, step):
        xb = x[start : start + step]
        for s in range(m):
            d2 = cn[s][None, :] - 2 * xb[:, s * ds : (s + 1) * ds] @ centroids[s].T
            codes[start : start + step, s] = d2.argmin(1)
    # vocabulary chunk, verbatim from the source file
    with open(fifu, "rb") as f:
        header = f.read(12)
        n_chunks = int.from_bytes(header[8:12], "little")
        f.read(4 * n_chunks)
        vid = int.from_bytes(f.read(4), "little")
        vlen = int.from_bytes(f.read(8), "little")
        vbody = f.read(vlen)
    if vid != 1:
        raise RuntimeError(f"expected a SimpleVocab chunk first in {fifu}, got id {vid}")
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"FiFu" + (0).to_bytes(4, "little") + (2).to_bytes(4, "little"))
        f.write((1).to_bytes(4, "little") + (4).to_bytes(4, "little"))
        f.write(vid.to_bytes(4, "little") + vlen.to_bytes(8, "little") + vbody)
        chunk_start = f.tell()
        fields = b"".join(
            v.to_bytes(4, "little") for v in (0, 0, m, dims, k)
        ) + rows.to_bytes(8, "little") + (1).to_bytes(4, "little") + (10).to_bytes(4, "little")
        pad = 4 - (chunk_start + 12 + len(fields)) % 4
        body_len = len(fields) + pad + centroids.nbytes + codes.nbytes
        f.write((4).to_bytes(4, "little") + body_len.to_bytes(8, "little") + fields + b"\0" * pad)
        f.write(centroids.astype("<f4").tobytes())
        f.write(codes.tobytes())
    os.replace(tmp, out)
    recon = np.concatenate([centroids[s][codes[:1000, s]] for s in range(m)], axis=1)
    err = float(np.abs(recon - x[:1000]).mean())
    return {"build_s": time.perf_counter() - t0, "mean_abs_error_first_1000": err}


# --- driver ---------------------------------------------------------------------------


def run_worker(args: list[str]) -> dict:
    r = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True
    )
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--singles", type=int, default=50)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--skip-gensim", action="store_true")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.worker:
        kind, *rest = a.worker
        if kind == "vecfusion":
            path, mmap, singles, batch, k, scan = rest
            res = worker_vecfusion(path, mmap == "1", int(singles), int(batch), int(k), int(scan))
        elif kind == "gensim":
            path, singles, k = rest
            res = worker_gensim(path, int(singles), int(k), MATRIX_BYTES)
        elif kind == "build-pq":
            res = build_pq(rest[0], rest[1])
        else:
            raise SystemExit(f"unknown worker {kind}")
        print(json.dumps(res))
        return

    import vecfusion as vf

    files = big_files()
    rows, dims = 1_000_000, 300
    pq = DATA / f"big_{rows}x{dims}_pq{PQ_M}x{PQ_K}.fifu"
    print(f"vecfusion {vf.__version__} ({vf.build_profile}), {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}")
    if not pq.exists():
        print(f"building {pq.name} with the bench's numpy k-means (once) ...", flush=True)
        print("  ", run_worker(["build-pq", str(files["fifu"]), str(pq)]))

    results = {}
    variants = [
        ("array", files["fifu"], "0", MATRIX_BYTES),
        ("mmap", files["fifu"], "1", MATRIX_BYTES),
        ("quantized", pq, "0", rows * PQ_M),
    ]
    for name, path, mmap, scan in variants:
        results[name] = run_worker(["vecfusion", str(path), mmap, str(a.singles), str(a.batch), str(a.k), str(scan)])
        print(f"  {name}: {json.dumps(results[name])}", flush=True)

    gensim = None
    if not a.skip_gensim:
        need = 2 * MATRIX_BYTES + 2 * MATRIX_BYTES + (1 << 30)  # gensim's peak + the copy buffers
        if mem_available() < need:
            print(f"gensim skipped: {mem_available() / 2**30:.1f} GiB available, needs about {need / 2**30:.1f}")
        else:
            try:
                import gensim  # noqa: F401
            except ImportError:
                print("gensim skipped: not installed (make bench-deps)")
            else:
                gensim = run_worker(["gensim", str(files["w2v"]), str(a.singles), str(a.k)])
                print(f"  gensim: {json.dumps(gensim)}", flush=True)
    g_ok = gensim is not None and "error" not in gensim

    print()
    print(f"k={a.k}; single = median of {a.singles} word queries; batch = {a.batch} vector queries in one "
          "call (median of 3 calls); wall ms (CPU ms of all threads, which is steadier on a shared machine); floor = bytes "
          "scanned / bandwidth of a numpy copy measured in the same process (read + write bytes)")
    head = ("storage", "single ms (cpu)", "floor ms", "single / floor", "batch ms/query (cpu)",
            "gensim single / batch", "RSS MB", "peak RSS MB (queries)", "anon growth MB")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | error: {r['error']} |")
            continue
        fl = r["floor"]["floor_ms"]
        g = f"{gensim['single_ms'] / r['batch_ms_per_query']:.0f}x" if g_ok else "n/a"
        print(f"| {name} ({r['storage']}) | {r['single_ms']:.1f} ({r['single_cpu_ms']:.0f}) | {fl:.1f} | "
              f"{r['single_ms'] / fl:.2f} | {r['batch_ms_per_query']:.2f} ({r['batch_cpu_ms_per_query']:.1f}) | "
              f"{g} | {mb(r['rss_base'])} | {mb(r['rss_peak'])} | {mb(r['anon_growth'])} |")
    if g_ok:
        fl = gensim["floor"]["floor_ms"]
        print(f"| gensim most_similar | {gensim['single_ms']:.1f} ({gensim['single_cpu_ms']:.0f}) | {fl:.1f} | "
              f"{gensim['single_ms'] / fl:.2f} | - | - | {mb(gensim['rss_base'])} | "
              f"{mb(gensim['rss_peak'])} | {mb(gensim['anon_growth'])} |")
    print()
    for name, r in list(results.items()) + ([("gensim", gensim)] if g_ok else []):
        if "error" not in r:
            f = r["floor"]
            print(f"{name}: load {r['load_s']:.1f} s, first query {r['first_ms']:.0f} ms, numpy copy "
                  f"{f['copy_ms']:.0f} ms = {f['bandwidth'] / 1e9:.1f} GB/s"
                  + (f", batch agrees with single: {r['batch_agrees_with_single']}" if name != "gensim" else ""))
    arr = results.get("array", {})
    if g_ok and "error" not in arr:
        print(f"\narray vs gensim, single query: {gensim['single_ms'] / arr['single_ms']:.2f}x (wall), "
              f"{gensim['single_cpu_ms'] / arr['single_cpu_ms']:.2f}x (cpu); batch per query vs gensim single: "
              f"{gensim['single_ms'] / arr['batch_ms_per_query']:.0f}x (wall), "
              f"{gensim['single_cpu_ms'] / arr['batch_cpu_ms_per_query']:.0f}x (cpu)")
        same = [w for w in arr["answers"] if arr["answers"][w] == gensim["answers"].get(w)]
        print(f"same top-{a.k} as gensim for {len(same)}/{len(arr['answers'])} checked words; "
              f"gensim peak RSS during queries grew {mb(gensim['rss_peak'] - gensim['rss_base'])} MB over its base")


if __name__ == "__main__":
    main()
