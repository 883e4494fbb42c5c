"""EmbeddingReader benchmark: vecfusion vs embedding-reader 1.8.1, plus numpy floors.

    make build bench-deps
    .venv/bin/python benches/bench_reader.py                 # the issue's 2 GiB / 16 files / dim 512 float16
    .venv/bin/python benches/bench_reader.py --size-gib 0.5  # quicker

Data (generated once, cached in benches/_data/reader_<size>/): N float16 .npy files of
dimension 512 and, for the parquet_npy variant, one parquet file per npy file with 2
string columns. Every measurement runs in a fresh subprocess (so peak RSS is its own)
reading the whole collection; warm cache first, then cold cache when the page cache can
be dropped (root with a writable /proc/sys/vm/drop_caches), else that is said.
Prints time (construction + reading; imports excluded), MB/s of on-disk data, peak RSS and
peak RSS minus the RSS after imports minus one batch (the reader's own memory; np.load's
mmap pages count as RSS), and ratios; never asserts. Every consumer loop drops its batch
(`del emb, meta`) before asking for the next one, as a memory-conscious consumer does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA  # noqa: E402


def make_data(size_gib: float, n_files: int, dim: int) -> Path:
    rows_per_file = int(size_gib * 2**30) // (n_files * dim * 2)
    root = DATA / f"reader_{size_gib:g}g_{n_files}f_{dim}d"
    emb, meta = root / "emb", root / "meta"
    done = root / ".done"
    if done.exists():
        return root
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb.mkdir(parents=True, exist_ok=True)
    meta.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    print(f"generating {n_files} x {rows_per_file} x {dim} float16 in {root} ...", flush=True)
    for f in range(n_files):
        a = np.empty((rows_per_file, dim), dtype=np.float16)
        step = 65536
        for s in range(0, rows_per_file, step):
            a[s : s + step] = rng.standard_normal((min(step, rows_per_file - s), dim), dtype=np.float32)
        np.save(emb / f"{f}.npy", a)
        ids = np.arange(f * rows_per_file, (f + 1) * rows_per_file)
        urls = pa.array(np.char.add("https://example.com/img/", ids.astype(str)).tolist())
        caps = pa.array(np.char.add("a photo of thing number ", ids.astype(str)).tolist())
        pq.write_table(pa.table({"url": urls, "caption": caps}), meta / f"{f}.parquet")
    done.touch()
    return root


def run_one(mode: str, root: Path, batch_size: int) -> dict[str, float]:
    """One measurement, in this (fresh) process."""
    emb, meta = str(root / "emb"), str(root / "meta")
    files = sorted((root / "emb").glob("*.npy"), key=lambda p: int(p.stem))
    # Imports are not timed (pandas alone takes a second or more here).
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import vecfusion as vf

    if mode.startswith("er"):
        from embedding_reader import EmbeddingReader
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    rows = 0
    if mode.startswith("vf"):
        if mode.startswith("vf-parquet_npy"):
            r = vf.EmbeddingReader(emb, file_format="parquet_npy", metadata_folder=meta, meta_columns=["url", "caption"])
        else:
            r = vf.EmbeddingReader(emb, file_format="npy")
        dtype = None if mode.endswith("native") else np.float32
        for e, m in r(batch_size=batch_size, show_progress=False, dtype=dtype):
            rows += len(e)
            del e, m  # a consumer done with the batch: flat memory
    elif mode.startswith("er"):
        if mode.startswith("er-parquet_npy"):
            r = EmbeddingReader(emb, file_format="parquet_npy", metadata_folder=meta, meta_columns=["url", "caption"])
        else:
            r = EmbeddingReader(emb, file_format="npy")
        for e, m in r(batch_size=batch_size, start=0, end=r.count, show_progress=False):
            rows += len(e)
            del e, m
    elif mode in ("np-mmap-f32", "np-copy"):
        # The floors: batches filled file by file from np.load(mmap_mode="r"), a fresh
        # array per batch (as any reader that yields batches must allocate).
        arrays = [np.load(p, mmap_mode="r") for p in files]
        total = sum(len(a) for a in arrays)
        dim = arrays[0].shape[1]
        dtype = np.float32 if mode == "np-mmap-f32" else arrays[0].dtype
        out = np.empty((min(batch_size, total), dim), dtype=dtype)
        pos = 0
        for a in arrays:
            k = 0
            while k < len(a):
                n = min(len(a) - k, len(out) - pos)
                out[pos : pos + n] = a[k : k + n]
                pos += n
                k += n
                if pos == len(out):
                    rows += pos
                    pos = 0
                    del out
                    out = np.empty((min(batch_size, total - rows), dim), dtype=dtype)
        rows += pos
    else:
        raise SystemExit(f"unknown mode {mode}")
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": dt, "rows": rows, "peak_rss": peak, "base_rss": base_rss}


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.0, help="collection size on disk (default 2 GiB)")
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2**18, help="rows per batch (default 262144: 512 MiB float32)")
    ap.add_argument("--repeat", type=int, default=2, help="warm runs per mode (best is kept)")
    ap.add_argument("--no-peer", action="store_true", help="skip embedding-reader")
    ap.add_argument("--run-one", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_one:
        print(json.dumps(run_one(args.run_one, Path(args.root), args.batch_size)))
        return

    root = make_data(args.size_gib, args.files, args.dim)
    data_bytes = sum(p.stat().st_size for p in (root / "emb").glob("*.npy"))
    rows = data_bytes // (args.dim * 2)
    batch_f32 = min(args.batch_size, rows) * args.dim * 4
    batch_f16 = batch_f32 // 2

    def measure(mode: str) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--run-one", mode, "--root", str(root), "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    have_peer = False
    if not args.no_peer:
        try:
            import embedding_reader  # noqa: F401

            have_peer = True
        except ImportError:
            print("embedding-reader not installed (make bench-deps): peer not measured")
    modes = [
        ("vf-npy-f32", "vecfusion npy -> float32", batch_f32),
        ("vf-npy-native", "vecfusion npy, dtype=None (float16)", batch_f16),
        ("er-npy", "embedding-reader 1.8.1 npy -> float32", batch_f32),
        ("vf-parquet_npy-f32", "vecfusion parquet_npy (+2 str cols) -> float32", batch_f32),
        ("er-parquet_npy", "embedding-reader parquet_npy (+2 str cols)", batch_f32),
        ("np-mmap-f32", "numpy np.load(mmap) -> float32 copy", batch_f32),
        ("np-copy", "numpy np.load(mmap) plain copy (float16 floor)", batch_f16),
    ]
    if not have_peer:
        modes = [m for m in modes if not m[0].startswith("er")]

    import vecfusion as vf

    print(f"# bench_reader: vecfusion {vf.__version__} ({vf.build_profile})")
    print(f"collection: {args.files} files, {rows} x {args.dim} float16, {data_bytes / 2**30:.2f} GiB on disk; "
          f"batch {args.batch_size} rows; machine: {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    results: dict[tuple[str, str], dict[str, float]] = {}
    for cache in ("warm", "cold"):
        if cache == "cold" and not can_drop_caches():
            print("cold cache not measured: dropping the page cache needs root and a writable /proc/sys/vm/drop_caches")
            break
        if cache == "warm":
            measure("np-copy")  # load the files into the page cache
        print(f"\n{cache} cache")
        print(f"{'reader':52s} {'time s':>8s} {'MB/s':>8s} {'peak RSS MB':>12s} {'peak-imports-batch MB':>22s}")
        for mode, label, batch_bytes in modes:
            best = None
            for _ in range(args.repeat if cache == "warm" else 1):
                if cache == "cold" and not drop_caches():
                    print("cold cache not measured: drop_caches failed")
                    return
                r = measure(mode)
                if best is None or r["seconds"] < best["seconds"]:
                    best = r
            assert best is not None
            results[(cache, mode)] = best
            mbs = data_bytes / best["seconds"] / 1e6
            print(f"{label:52s} {best['seconds']:8.2f} {mbs:8.0f} {best['peak_rss'] / 1e6:12.0f} "
                  f"{(best['peak_rss'] - best['base_rss'] - batch_bytes) / 1e6:22.0f}", flush=True)
        print()

        def ratio(a: str, b: str, text: str) -> None:
            if (cache, a) in results and (cache, b) in results:
                x = results[(cache, b)]["seconds"] / results[(cache, a)]["seconds"]
                print(f"  {text}: {x:.2f}x")

        ratio("vf-npy-f32", "er-npy", "vecfusion float32 vs embedding-reader (speed-up)")
        ratio("vf-parquet_npy-f32", "er-parquet_npy", "parquet_npy: vecfusion vs embedding-reader (speed-up)")
        ratio("vf-npy-f32", "np-mmap-f32", "vecfusion float32 vs numpy mmap->float32 (speed-up)")
        if (cache, "vf-npy-native") in results and (cache, "np-copy") in results:
            x = results[(cache, "vf-npy-native")]["seconds"] / results[(cache, "np-copy")]["seconds"]
            print(f"  vecfusion dtype=None time / numpy plain copy time: {x:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
