"""Shared fixtures: where the golden files are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _shared() -> Path:
    env = os.environ.get("VECFUSION_SHARED")
    if env:
        return Path(env)
    return ROOT.parent / "shared"


SHARED = _shared()
TESTDATA = SHARED / "testdata"
FF = TESTDATA / "finalfusion"
PEERS = TESTDATA / "peers"

if not TESTDATA.is_dir():  # pragma: no cover - a broken checkout, not a skip
    raise RuntimeError(
        f"golden test data not found at {TESTDATA}; set VECFUSION_SHARED to the shared/ folder"
    )


@pytest.fixture(scope="session")
def ff() -> Path:
    """../shared/testdata/finalfusion"""
    return FF


@pytest.fixture(scope="session")
def peers() -> Path:
    """../shared/testdata/peers"""
    return PEERS
