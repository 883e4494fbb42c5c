"""Helpers for benchmarks: run a measurement in a fresh subprocess and read its peak RSS."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB: VmHWM, which (unlike ru_maxrss)
    starts afresh at exec, so a worker does not inherit its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def run_worker(script: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """Run ``script --worker args...`` in a new interpreter; it prints one JSON line last."""
    r = subprocess.run(
        [sys.executable, script, "--worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:] or ["failed"]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def fmt_ratio(peer: float | None, ours: float | None) -> str:
    if not peer or not ours:
        return "n/a"
    return f"{peer / ours:.1f}x"
