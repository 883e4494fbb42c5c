"""Storage views: dtype, shape, read-only, no copy when mapped, alive after the handle."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

import vecfusion as vf


@pytest.mark.parametrize("mmap", [False, True])
def test_storage_view(ff: Path, mmap: bool) -> None:
    emb = vf.load(ff / "python/similarity.fifu", mmap=mmap)
    view = emb.storage
    assert isinstance(view, np.ndarray)
    assert view.dtype == np.float32 and view.shape == (41, 100)
    assert view.flags.c_contiguous and not view.flags.writeable and not view.flags.owndata
    assert view.base is not None
    with pytest.raises(ValueError):
        view[0, 0] = 1.0
    with pytest.raises(ValueError):
        view.setflags(write=True)
    # two views share memory: no copy is made
    assert np.shares_memory(view, emb.storage)
    np.testing.assert_array_equal(view[3], emb[emb.vocab[3]])


@pytest.mark.parametrize("mmap", [False, True])
def test_view_outlives_handle(ff: Path, mmap: bool) -> None:
    emb = vf.load(ff / "python/embeddings.fifu", mmap=mmap)
    view, norms = emb.storage, emb.norms
    expected = np.array(view), np.array(norms)
    del emb
    gc.collect()
    np.testing.assert_array_equal(view, expected[0])
    np.testing.assert_array_equal(norms, expected[1])
    assert not norms.flags.writeable


def test_quantized_views_outlive_handle(ff: Path) -> None:
    q = vf.load(ff / "python/pq.fifu", mmap=True).storage
    codes, cents, q_norms = q.codes, q.centroids, q.norms
    assert q.projection is None
    rec = q.reconstruct()
    del q
    gc.collect()
    assert codes.dtype == np.uint8 and not codes.flags.writeable
    manual = np.concatenate([cents[m, codes[:, m]] for m in range(codes.shape[1])], axis=1)
    if q_norms is not None:
        manual = manual * q_norms[:, None]
    np.testing.assert_allclose(manual, rec, rtol=1e-5, atol=1e-6)
    assert cents.shape == (50, 32, 2)


def test_mmap_view_is_the_file(tmp_path: Path, ff: Path) -> None:
    """The mapped view points into the file's pages: its address is 4-aligned and the
    bytes at that offset of the file are the matrix."""
    emb = vf.load(ff / "python/similarity.fifu", mmap=True)
    view = emb.storage
    assert view.ctypes.data % 4 == 0
    raw = (ff / "python/similarity.fifu").read_bytes()
    blob = view.tobytes()
    assert raw.find(blob) > 0 and raw.find(blob) % 4 == 0
