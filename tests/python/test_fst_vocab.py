"""The fst (automaton) vocabulary answers exactly like the standard one, round-trips to the
standard chunks byte for byte, and reports corrupt chunks as FormatError."""

from __future__ import annotations

import pickle
import random
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vecfusion as vf

from conftest import TESTDATA

GOLDEN = sorted(TESTDATA.rglob("*.fifu"))

FST_IDS = {
    0x5646_0001: "FstSimpleVocab",
    0x5646_0003: "FstBucketSubwordVocab",
    0x5646_0007: "FstFastTextSubwordVocab",
    0x5646_0008: "FstExplicitSubwordVocab",
}
STD_OF_FST = {
    "FstSimpleVocab": "SimpleVocab",
    "FstBucketSubwordVocab": "BucketSubwordVocab",
    "FstFastTextSubwordVocab": "FastTextSubwordVocab",
    "FstExplicitSubwordVocab": "ExplicitSubwordVocab",
}


def chunks(data: bytes) -> list[tuple[int, int, int]]:
    """(id, body_start, body_len) of every chunk, parsed independently of the library."""
    assert data[:4] == b"FiFu"
    (n,) = struct.unpack_from("<I", data, 8)
    pos = 12 + 4 * n
    out = []
    while pos < len(data):
        cid, length = struct.unpack_from("<IQ", data, pos)
        out.append((cid, pos + 12, length))
        pos += 12 + length
    return out


def fst_layout(data: bytes) -> dict[str, tuple[int, int]]:
    """Regions (start, end) of the fst vocabulary chunk as docs/FORMAT-vecfusion.md describes."""
    cid, start, length = next(c for c in chunks(data) if c[0] in FST_IDS)
    pos = start
    n, width, _max_len = struct.unpack_from("<QII", data, pos)
    pos += 16
    if cid in (0x5646_0003, 0x5646_0007):
        pos += 12
    elif cid == 0x5646_0008:
        pos += 24
    (fst_len,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    pos += (8 - pos % 8) % 8
    regions = {"fst": (pos, pos + fst_len)}
    pos += fst_len
    for name in ("rank_to_row", "row_to_rank"):
        pos += (8 - pos % 8) % 8
        regions[name] = (pos, pos + n * width)
        pos += n * width
    regions["chunk"] = (start, start + length)
    regions["n"] = (n, width)
    return regions


def answers(emb: vf.Embeddings, probes: list[str]) -> dict[str, object]:
    """Everything the vocabulary says, for comparing two vocabularies."""
    v = emb.vocab
    out: dict[str, object] = {
        "len": len(v),
        "rows": v.rows,
        "min_n": v.min_n,
        "max_n": v.max_n,
        "words": v.words,
        "iter": list(v),
        "by_row": [v[i] for i in range(len(v))],
        "neg": [v[-1]] if len(v) else [],
    }
    out["index"] = [v.index(w) for w in probes]
    out["contains"] = [w in v for w in probes]
    out["ngrams"] = [v.ngrams(w) for w in probes]
    out["subword_indices"] = [v.subword_indices(w) for w in probes]
    if emb.dims:
        arr, found = emb.lookup(probes)
        out["lookup"] = (arr.tobytes(), found.tolist())
    return out


def probes_for(words: list[str], extra: list[str]) -> list[str]:
    unknown = [w + "\u00df" for w in words[:20]] + [w[:-1] for w in words[:20] if w]
    return words + unknown + extra + ["", "<", "unknown-word", "\u6771\u4eac", "a" * 300]


# --- golden files ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: str(p.relative_to(TESTDATA)))
def test_golden_round_trip(path: Path, tmp_path: Path) -> None:
    emb = vf.load(path)
    std, fst, back = tmp_path / "std.fifu", tmp_path / "fst.fifu", tmp_path / "back.fifu"
    emb.write(std)
    emb.write(fst, vocab="fst")
    std_bytes = std.read_bytes()
    ids = [c[0] for c in chunks(fst.read_bytes())]
    assert any(i in FST_IDS for i in ids)
    probes = probes_for(list(emb.vocab.words), ["tübingen", "Test", "über", "naïve"])
    ref = answers(vf.load(std), probes)
    for mmap in (False, True):
        f = vf.load(fst, mmap=mmap)
        assert f.vocab.kind in STD_OF_FST
        assert STD_OF_FST[f.vocab.kind] == emb.vocab.kind
        assert f.vocab_kind == f.vocab.kind
        assert answers(f, probes) == ref
        f.write(back)  # default: standard
        assert back.read_bytes() == std_bytes
        f.write(back, vocab="standard")
        assert back.read_bytes() == std_bytes
        f.write(back, vocab="fst")
        assert back.read_bytes() == fst.read_bytes()


def test_fst_chunk_smaller_than_standard(tmp_path: Path) -> None:
    words = [f"w{i:06d}suffix" for i in range(20_000)]
    emb = vf.Embeddings(words, np.zeros((len(words), 1), np.float32))
    emb.write(tmp_path / "s.fifu")
    emb.write(tmp_path / "f.fifu", vocab="fst")
    std = next(c for c in chunks((tmp_path / "s.fifu").read_bytes()) if c[0] == 1)
    fst = next(c for c in chunks((tmp_path / "f.fifu").read_bytes()) if c[0] in FST_IDS)
    assert fst[2] < std[2]


def test_layout_is_aligned(tmp_path: Path) -> None:
    for n in (1, 7, 100):
        words = ["x" * i for i in range(1, n + 1)]
        emb = vf.Embeddings(words, np.zeros((n, 3), np.float32))
        p = tmp_path / f"{n}.fifu"
        emb.write(p, vocab="fst")
        lay = fst_layout(p.read_bytes())
        assert lay["fst"][0] % 8 == 0
        assert lay["rank_to_row"][0] % 8 == 0 and lay["row_to_rank"][0] % 8 == 0
        # table entries take the fewest bytes that hold every row number
        assert lay["n"] == (n, max(1, ((n - 1).bit_length() + 7) // 8))


def test_bad_vocab_argument(tmp_path: Path) -> None:
    emb = vf.Embeddings(["a"], np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="fst"):
        emb.write(tmp_path / "x.fifu", vocab="automaton")
    assert not (tmp_path / "x.fifu").exists()


# --- random vocabularies ----------------------------------------------------------------------

_chars = st.characters(exclude_categories=("Cs",))
_word = st.one_of(
    st.text(_chars, min_size=0, max_size=12),
    st.text(st.sampled_from("ab<>é東"), min_size=1, max_size=6),
    st.text(_chars, min_size=200, max_size=3000),
)


def build(words: list[str], kind: str, rng: random.Random, dims: int = 2) -> vf.Embeddings:
    kw: dict[str, object] = {}
    extra_rows = 0
    if kind == "bucket":
        kw = {"vocab": "bucket", "buckets": 5, "min_n": 2, "max_n": 4}
        extra_rows = 32
    elif kind == "fasttext":
        kw = {"vocab": "fasttext", "buckets": 13, "min_n": 3, "max_n": 5}
        extra_rows = 13
    elif kind == "explicit":
        grams: list[str] = []
        for w in words[:50]:
            b = f"<{w}>"
            grams += [b[i : i + k] for k in (3, 4) for i in range(0, max(0, len(b) - k + 1))]
        grams += ["".join(rng.choice("ab<>é") for _ in range(rng.randint(1, 4))) for _ in range(20)]
        grams = list(dict.fromkeys(grams))
        rng.shuffle(grams)
        pairs = [(g, rng.randrange(max(1, len(grams) // 2)) * 7) for g in grams]
        distinct = len({i for _, i in pairs})
        kw = {"vocab": "explicit", "ngrams": pairs, "min_n": 3, "max_n": 4}
        extra_rows = distinct
    m = np.arange((len(words) + extra_rows) * dims, dtype=np.float32).reshape(-1, dims)
    return vf.Embeddings(words, m, **kw)


def compare(words: list[str], kind: str, seed: int, extra: list[str]) -> None:
    rng = random.Random(seed)
    emb = build(words, kind, rng)
    with tempfile.TemporaryDirectory() as d:
        std, fst = Path(d) / "s.fifu", Path(d) / "f.fifu"
        emb.write(std)
        emb.write(fst, vocab="fst")
        probes = probes_for(words, extra)
        ref = answers(vf.load(std), probes)
        assert ref["words"] == words
        for mmap in (False, True):
            got = vf.load(fst, mmap=mmap)
            assert answers(got, probes) == ref
            got.write(Path(d) / "b.fifu")
            assert (Path(d) / "b.fifu").read_bytes() == std.read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(_word, min_size=1, max_size=60, unique=True),
    kind=st.sampled_from(["simple", "bucket", "fasttext", "explicit"]),
    seed=st.integers(0, 2**16),
    extra=st.lists(st.text(_chars, max_size=10), max_size=10),
)
def test_random_vocab_matches_standard(words: list[str], kind: str, seed: int, extra: list[str]) -> None:
    compare(words, kind, seed, extra)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.sampled_from([2_000, 100_000]),
    kind=st.sampled_from(["simple", "bucket", "fasttext", "explicit"]),
    seed=st.integers(0, 2**16),
)
def test_large_random_vocab(n: int, kind: str, seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzäöüßé東京"
    words = list(dict.fromkeys("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))) for _ in range(n)))
    rng.shuffle(words)
    emb = build(words, kind, rng, dims=1)
    with tempfile.TemporaryDirectory() as d:
        std, fst = Path(d) / "s.fifu", Path(d) / "f.fifu"
        emb.write(std)
        emb.write(fst, vocab="fst")
        s, f = vf.load(std), vf.load(fst, mmap=True)
        sample = rng.sample(range(len(words)), 300)
        assert [f.vocab[i] for i in sample] == [words[i] for i in sample]
        probes = [words[i] for i in sample] + [w + "q" for w in words[:200]]
        assert [f.vocab.index(w) for w in probes] == [s.vocab.index(w) for w in probes]
        assert [f.vocab.subword_indices(w) for w in probes[:100]] == [s.vocab.subword_indices(w) for w in probes[:100]]
        assert f.vocab.words == words
        f.write(Path(d) / "b.fifu")
        assert (Path(d) / "b.fifu").read_bytes() == std.read_bytes()


# --- corruption -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fst_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    rng = random.Random(7)
    words = list(dict.fromkeys("".join(rng.choice("abcdeé") for _ in range(rng.randint(1, 9))) for _ in range(400)))
    emb = build(words, "bucket", rng)
    p = tmp_path_factory.mktemp("fst") / "v.fifu"
    emb.write(p, vocab="fst")
    return p, words


def exercise(path: Path, words: list[str], mmap: bool) -> None:
    """Open and use every vocabulary method: only FormatError may come out."""
    try:
        emb = vf.load(path, mmap=mmap)
    except vf.FormatError:
        return
    v = emb.vocab
    probes = words[:50] + ["zzz", "", "abé"]
    calls = [lambda: v.words, lambda: list(v)]
    calls += [lambda i=i: v[i] for i in range(len(v))]
    calls += [lambda w=w: v.index(w) for w in probes]
    calls += [lambda w=w: v.subword_indices(w) for w in probes]
    calls += [lambda: emb.lookup(probes), lambda: emb.write(path.with_suffix(".out"))]
    for c in calls:
        try:
            c()
        except vf.FormatError:
            pass


def test_truncated_chunks_raise(fst_file: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, _ = fst_file
    data = path.read_bytes()
    lay = fst_layout(data)
    start, end = lay["chunk"]
    bad = tmp_path / "bad.fifu"
    for cut in sorted({start - 5, start, start + 3, *range(start + 8, end, max(1, (end - start) // 40)), end - 1}):
        bad.write_bytes(data[:cut])
        for mmap in (False, True):
            with pytest.raises(vf.FormatError):
                vf.load(bad, mmap=mmap)


def flipped_copies(data: bytes, bad: Path, seed: int, per_region: int) -> Iterator[None]:
    """Write `bad` as `data` with one bit flipped in the automaton or one of the tables, again
    and again (`per_region` places of each)."""
    lay = fst_layout(data)
    rng = random.Random(seed)
    for region in ("fst", "rank_to_row", "row_to_rank"):
        a, b = lay[region]
        for pos in rng.sample(range(a, b), min(per_region, b - a)):
            corrupt = bytearray(data)
            corrupt[pos] ^= 1 << rng.randrange(8)
            bad.write_bytes(bytes(corrupt))
            yield


def test_flipped_bytes(fst_file: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, words = fst_file
    data = path.read_bytes()
    lay = fst_layout(data)
    bad = tmp_path / "bad.fifu"
    for _ in flipped_copies(data, bad, seed=3, per_region=25):
        # Reading into memory verifies the automaton checksum and the tables.
        with pytest.raises(vf.FormatError):
            vf.load(bad)
        # Memory-mapped: checked at use; never anything but FormatError.
        exercise(bad, words, mmap=True)
    # Header fields of the chunk, flipped anywhere: never a crash.
    a = lay["chunk"][0]
    for pos in range(a, a + 44):
        corrupt = bytearray(data)
        corrupt[pos] ^= 0xFF
        bad.write_bytes(bytes(corrupt))
        exercise(bad, words, mmap=False)
        exercise(bad, words, mmap=True)


def test_short_tables_raise(fst_file: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, _ = fst_file
    data = path.read_bytes()
    lay = fst_layout(data)
    start, end = lay["chunk"]
    bad = tmp_path / "bad.fifu"
    # A word count larger than the automaton and the tables hold.
    n, _ = lay["n"]
    for new_n in (n + 1, n - 1, 2**40):
        corrupt = bytearray(data)
        struct.pack_into("<Q", corrupt, start, new_n)
        bad.write_bytes(bytes(corrupt))
        for mmap in (False, True):
            with pytest.raises(vf.FormatError):
                vf.load(bad, mmap=mmap)
    # The row -> rank table cut short (chunk length adjusted so the chunk list still parses).
    a, b = lay["row_to_rank"]
    corrupt = bytearray(data[: b - 8] + data[b:])
    struct.pack_into("<Q", corrupt, start - 8, end - start - 8)
    bad.write_bytes(bytes(corrupt))
    for mmap in (False, True):
        with pytest.raises(vf.FormatError):
            vf.load(bad, mmap=mmap)


def test_two_ranks_one_row(fst_file: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, words = fst_file
    data = bytearray(path.read_bytes())
    lay = fst_layout(bytes(data))
    a, _ = lay["rank_to_row"]
    w = lay["n"][1]
    row0 = int.from_bytes(data[a : a + w], "little")
    row1 = int.from_bytes(data[a + w : a + 2 * w], "little")
    data[a + w : a + 2 * w] = row0.to_bytes(w, "little")  # ranks 0 and 1 both map to row0
    bad = tmp_path / "dup.fifu"
    bad.write_bytes(bytes(data))
    with pytest.raises(vf.FormatError, match="does not map back"):
        vf.load(bad)
    emb = vf.load(bad, mmap=True)
    v = emb.vocab
    sorted_words = sorted(words, key=lambda w: w.encode())
    assert v.index(sorted_words[0]) == row0
    with pytest.raises(vf.FormatError, match="tables disagree"):
        v.index(sorted_words[1])
    with pytest.raises(vf.FormatError, match="tables disagree"):
        v[row1]
    assert v[row0] == sorted_words[0]
    # The embedding lookups never return another word's row: the broken word is unknown
    # and gets its n-gram embedding instead.
    (arr, found), ref = emb.lookup([sorted_words[1]]), vf.load(path)
    assert found.tolist() == [True]
    assert arr.tobytes() != ref[sorted_words[0]].tobytes()
    with pytest.raises(vf.FormatError):
        emb.write(tmp_path / "out.fifu")
    assert not (tmp_path / "out.fifu").exists()


def test_writing_a_corrupt_mapped_vocabulary_raises(fst_file: tuple[Path, list[str]], tmp_path: Path) -> None:
    """A memory-mapped fst chunk is checked at use only; writing copies every word, so it is
    verified in full first: a flipped byte of the automaton or the tables never ends up as
    renamed or reordered words in a new file (every format)."""
    path, words = fst_file
    bad = tmp_path / "bad.fifu"
    checked = 0
    for _ in flipped_copies(path.read_bytes(), bad, seed=9, per_region=12):
        try:
            emb = vf.load(bad, mmap=True)
        except vf.FormatError:
            continue
        checked += 1
        for write in (
            lambda: emb.write(tmp_path / "o.fifu"),
            lambda: emb.write(tmp_path / "o.fifu", vocab="standard"),
            lambda: emb.write_text(tmp_path / "o.txt"),
            lambda: emb.write_word2vec(tmp_path / "o.bin"),
            lambda: pickle.dumps(emb.vocab),
            lambda: pickle.dumps(emb),
            # the whole word list reads every word too: checked as fully (it skipped the
            # automaton's checksum, so a flip that still decoded gave a wrong word)
            lambda: emb.vocab.words,
        ):
            with pytest.raises(vf.FormatError):
                write()
    assert checked > 10
    # an intact mapped file writes as before
    emb = vf.load(path, mmap=True)
    emb.write(tmp_path / "ok.fifu")
    assert vf.load(tmp_path / "ok.fifu").vocab.words == words
