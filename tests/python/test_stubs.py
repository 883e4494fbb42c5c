"""The type stubs of the native module match what it exports (mypy.stubtest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stubtest() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "vecfusion._native",
            "--allowlist",
            str(ROOT / "tests/stubtest-allowlist.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]


def test_py_typed_ships() -> None:
    import vecfusion

    pkg = Path(vecfusion.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_native.pyi").exists()


_USER_PROGRAM = '''
import numpy as np
import vecfusion as vf

emb = vf.load("x.fifu", mmap=True)
v: np.ndarray = emb["word"]
rows, found = emb.lookup(["a", "b"])
q = emb.quantize(n_subquantizers=10, bits=8, progress=False)
method: str = q.storage.rebuild_method if isinstance(q.storage, vf.QuantizedStorage) else ""
pairs = emb.most_similar("a", topn=5)
reader = vf.EmbeddingReader("embeddings/", file_format="npy")
for batch, meta in reader(batch_size=1000, start=0, end=reader.count):
    pass
reveal_type(reader)
'''


def test_a_user_program_type_checks_strictly(tmp_path: Path) -> None:
    """The documented API, as a user writes it, passes `mypy --strict` with the shipped
    stubs (`vf.EmbeddingReader`, imported lazily, was typed `object`)."""
    prog = tmp_path / "user.py"
    prog.write_text(_USER_PROGRAM)
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(prog)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
    assert 'Revealed type is "vecfusion.reader.EmbeddingReader"' in r.stdout
