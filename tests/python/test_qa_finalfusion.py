"""finalfusion files written by finalfusion-python 0.7.1 (every vocabulary kind it writes),
read by vecfusion in memory and memory-mapped, against what finalfusion-python itself reads.

The fixtures and the expected answers come from tests/fixtures/qa/make_ff_fixtures.py.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

import vecfusion as vf

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "qa" / "ff"
EXPECTED = json.loads((FIX / "ff_expected.json").read_text(encoding="utf-8"))
NAMES = sorted(EXPECTED)


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_reads_finalfusion_python_files(name: str, mmap: bool) -> None:
    ref = EXPECTED[name]
    e = vf.load(FIX / f"{name}.fifu", mmap=mmap)
    assert e.vocab.words == ref["words"]
    assert len(e) == len(ref["words"])
    np.testing.assert_array_equal(np.asarray(e.storage), np.float32(ref["storage"]))
    if ref["norms"] is None:
        assert e.norms is None
    else:
        np.testing.assert_array_equal(e.norms, np.float32(ref["norms"]))
    for q, a in ref["q"].items():
        assert e.vocab.index(q) == a["idx"], q
        if a["sub"] is not None:
            assert e.vocab.subword_indices(q) == a["sub"], q
            assert e.vocab.ngrams(q) == a["ngrams"], q
        got = e.embedding_with_norm(q)
        if a["emb"] is None:
            assert got is None and e.embedding(q) is None and q not in e, q
            with pytest.raises(KeyError):
                e[q]
            continue
        v, n = got
        want = np.float32(a["emb"][0])
        if np.isnan(want).any():
            # finalfusion-python divides a zero n-gram sum by 0; vecfusion keeps it zero
            assert not v.any() and n == 0.0, q
        else:
            np.testing.assert_allclose(v, want, atol=1e-6, err_msg=q)
            if not math.isnan(a["emb"][1]):
                assert n == pytest.approx(a["emb"][1], rel=1e-5), q
        np.testing.assert_array_equal(e[q], v)


def test_metadata_from_finalfusion_python() -> None:
    e = vf.load(FIX / "simple_meta.fifu")
    assert e.metadata == {"a": 1, "f": 0.5, "nested": {"x": "ü", "y": [1, 2]}}


def _explicit_chunk(data: bytes) -> tuple[int, int, int]:
    """(offset of the chunk length field, declared length, real length) of the
    ExplicitSubwordVocab chunk of a file without metadata."""
    n_chunks = struct.unpack_from("<I", data, 8)[0]
    pos = 12 + 4 * n_chunks
    cid, declared = struct.unpack_from("<IQ", data, pos)
    assert cid == 8
    body = pos + 12
    n_words, n_ngrams = struct.unpack_from("<QQ", data, body)
    p = body + 24
    for _ in range(n_words):
        p += 4 + struct.unpack_from("<I", data, p)[0]
    for _ in range(n_ngrams):
        p += 4 + struct.unpack_from("<I", data, p)[0] + 8
    return pos + 4, declared, p - body


@pytest.mark.parametrize("name", ["explicit", "explicit_ft"])
def test_explicit_vocab_with_finalfusion_python_chunk_length(name: str, tmp_path: Path) -> None:
    """finalfusion-python writes an ExplicitSubwordVocab chunk length without the 8-byte
    index of each n-gram; vecfusion reads such files (as the reference readers do) and
    writes the correct length."""
    data = (FIX / f"{name}.fifu").read_bytes()
    _, declared, real = _explicit_chunk(data)
    n_ngrams = struct.unpack_from("<Q", data, 12 + 4 * struct.unpack_from("<I", data, 8)[0] + 12 + 8)[0]
    assert real - declared == 8 * n_ngrams > 0  # the fixture really has the short length

    e = vf.load(FIX / f"{name}.fifu")
    out = tmp_path / "out.fifu"
    e.write(out)
    written = out.read_bytes()
    _, declared2, real2 = _explicit_chunk(written)
    assert declared2 == real2 == real
    # with the length corrected, the rest of the file is the same bytes
    off, _, _ = _explicit_chunk(data)
    fixed = data[:off] + struct.pack("<Q", real) + data[off + 8 :]
    assert written == fixed
    for mmap in (False, True):
        e2 = vf.load(out, mmap=mmap)
        assert e2.vocab.words == e.vocab.words
        np.testing.assert_array_equal(np.asarray(e2.storage), np.asarray(e.storage))


def test_explicit_vocab_other_wrong_lengths_still_fail(tmp_path: Path) -> None:
    data = (FIX / "explicit.fifu").read_bytes()
    off, declared, real = _explicit_chunk(data)
    for bad in (declared - 1, declared + 4, real + 8, real - 9):
        p = tmp_path / f"bad{bad}.fifu"
        p.write_bytes(data[:off] + struct.pack("<Q", bad) + data[off + 8 :])
        with pytest.raises(vf.FormatError):
            vf.load(p)


@pytest.mark.parametrize("name", NAMES)
def test_fst_round_trip_gives_back_the_standard_file(name: str, tmp_path: Path) -> None:
    e = vf.load(FIX / f"{name}.fifu")
    fst = tmp_path / "v.fst.fifu"
    e.write(fst, vocab="fst")
    back = tmp_path / "back.fifu"
    vf.convert(fst, back, vocab="standard", progress=False)
    want = tmp_path / "want.fifu"
    e.write(want)
    assert back.read_bytes() == want.read_bytes()
    if not name.startswith("explicit"):
        # (finalfusion-python's explicit chunk length is corrected on writing)
        assert back.read_bytes() == (FIX / f"{name}.fifu").read_bytes()


@pytest.mark.parametrize("mmap", [False, True])
def test_a_file_cut_at_a_chunk_boundary_is_an_error(tmp_path: Path, mmap: bool) -> None:
    """A file cut exactly where a chunk the header lists would begin (here the norms) is a
    FormatError naming the missing chunk: it loaded without them, and every vector exported
    after (rows times norms) silently changed."""
    p = tmp_path / "n.fifu"
    vf.Embeddings(["a", "b"], np.eye(2, 3, dtype=np.float32), norms=np.array([2, 3], np.float32),
                  metadata={"k": 1}).write(p)
    data = p.read_bytes()
    pos = 12 + 4 * struct.unpack_from("<I", data, 8)[0]
    starts = []
    while pos < len(data):
        starts.append(pos)
        pos += 12 + struct.unpack_from("<Q", data, pos + 4)[0]
    assert len(starts) == 4  # metadata, vocabulary, storage, norms
    for cut, missing in zip(starts[1:], ["SimpleVocab", "NdArray", "NdNorms"]):
        p.write_bytes(data[:cut])
        with pytest.raises(vf.FormatError, match=f"lists a {missing} chunk" if missing == "NdNorms" else None):
            vf.load(p, mmap=mmap)
    p.write_bytes(data)
    assert vf.load(p, mmap=mmap).embedding_with_norm("a")[1] == 2.0
