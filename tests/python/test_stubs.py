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
