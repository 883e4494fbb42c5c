"""Lookups from several Python threads at once are safe and give the same answers."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import vecfusion as vf


@pytest.mark.parametrize("name", ["python/ff_buckets.fifu", "python/pq.fifu", "python/similarity.fifu"])
def test_concurrent_lookups(ff: Path, name: str) -> None:
    emb = vf.load(ff / name, mmap=True)
    words = list(emb) + ["tübingen", "unknown-word", "Berlin", ""] * 5
    want_batch = emb.lookup(words)
    want_single = [emb.embedding(w) for w in words]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(30):
                out, found = emb.lookup(words)
                np.testing.assert_array_equal(out, want_batch[0])
                np.testing.assert_array_equal(found, want_batch[1])
                for w, v in zip(words, want_single):
                    got = emb.embedding(w)
                    assert (got is None) == (v is None)
                    if v is not None:
                        np.testing.assert_array_equal(got, v)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_metadata_setter_from_threads(ff: Path) -> None:
    emb = vf.load(ff / "python/similarity.fifu")

    def work(i: int) -> None:
        for j in range(200):
            emb.metadata = {"thread": i, "j": j}
            m = emb.metadata
            assert set(m) == {"thread", "j"}

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert emb.metadata["j"] == 199
