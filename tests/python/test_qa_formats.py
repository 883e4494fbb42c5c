"""word2vec binary / text / GloVe files written by gensim 4.4.0 (and hand-made variants:
CRLF, trailing blanks, no final newline, a CRLF header), read by vecfusion, against what
gensim itself reads; queries against gensim's most_similar. Fixtures and gensim's answers:
tests/fixtures/qa/make_gensim_fixtures.py."""

from __future__ import annotations

import json
import struct
from itertools import groupby
from pathlib import Path

import numpy as np
import pytest

import vecfusion as vf

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "qa" / "gensim"
EXPECTED = json.loads((FIX / "expected.json").read_text(encoding="utf-8"))
FILES = sorted({k.split(":")[0] for k in EXPECTED if ":" in k})


def _load(name: str, **kw):
    p = FIX / name
    if name.endswith(".bin"):
        return vf.load_word2vec(p, **kw)
    if name.endswith(".glove"):
        return vf.load_text(p, dims=False, **kw)
    return vf.load_text(p, **kw)


@pytest.mark.parametrize("limit", [None, 3])
@pytest.mark.parametrize("name", FILES)
def test_same_words_and_vectors_as_gensim(name: str, limit: int | None) -> None:
    ref = EXPECTED[f"{name}:{limit}"]
    raw = (FIX / name).read_bytes()
    if name.startswith("crlf"):
        assert b"\r\n" in raw  # the fixture kept its line ends
    if name.startswith("trailing"):
        assert b" \t \n" in raw
    e = _load(name, normalize=False, limit=limit)
    assert e.vocab.words == ref["words"]
    np.testing.assert_array_equal(np.asarray(e.storage), np.float32(ref["vectors"]))
    assert e.norms is None
    n = _load(name, limit=limit)
    assert n.vocab.words == ref["words"]
    np.testing.assert_allclose(np.asarray(n.storage) * n.norms[:, None], np.float32(ref["vectors"]), rtol=2e-7)
    if name.endswith(".txt") and limit is None:
        # header detection on a file with a header, and dims=True
        assert vf.load_text(FIX / name, dims=True, normalize=False).vocab.words == ref["words"]


def _same_answers(got: list[tuple[str, float]], want: list[list]) -> None:
    """Same scores (1e-5); the same words, except that words with equal scores come in
    sorted order (FORMAT.md) where gensim keeps row order."""
    assert len(got) == len(want)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    key = lambda ws: round(ws[1], 5)  # noqa: E731
    g = [sorted(w for w, _ in grp) for _, grp in groupby(got, key=key)]
    w = [sorted(w for w, _ in grp) for _, grp in groupby(want, key=key)]
    assert g == w
    for _, grp in groupby(got, key=key):
        words = [w for w, _ in grp]
        assert words == sorted(words)


def test_queries_like_gensim() -> None:
    e = vf.load_word2vec(FIX / "w.bin")
    for word, want in EXPECTED["most_similar"].items():
        _same_answers(e.similar(word, k=20), want)
        _same_answers(e.similar(word, k=3), want[:3])
        assert e.similar(word, k=0) == []
    _same_answers(e.analogy("the", "café", "a", k=20), EXPECTED["analogy"])
    vec = np.float32(EXPECTED["w.bin:None"]["vectors"][0])
    _same_answers(e.similar(vec, k=20), EXPECTED["by_vector"])
    # the tie: 東京 and a have the same vector; the word that sorts first comes first
    got = [w for w, _ in e.similar("the", k=20)]
    assert got.index("a") + 1 == got.index("東京")


@pytest.mark.parametrize("name", ["w.bin", "w.txt", "w.glove"])
def test_written_files_read_back_exactly(name: str, tmp_path: Path) -> None:
    e = _load(name, normalize=False)
    ref = np.asarray(e.storage)
    e.write_word2vec(tmp_path / "o.bin")
    e.write_text(tmp_path / "o.txt")
    e.write_text(tmp_path / "o.glove", dims=False)
    for out in ("o.bin", "o.txt", "o.glove"):
        p = tmp_path / out
        r = vf.load_word2vec(p, normalize=False) if out.endswith(".bin") else vf.load_text(
            p, dims=out.endswith(".txt"), normalize=False
        )
        assert r.vocab.words == e.vocab.words
        np.testing.assert_array_equal(np.asarray(r.storage), ref)
    # the text gensim wrote holds the same numbers as the text vecfusion writes
    if name == "w.txt":
        mine = [line.split(" ") for line in (tmp_path / "o.txt").read_text(encoding="utf-8").splitlines()]
        theirs = [line.split(" ") for line in (FIX / name).read_text(encoding="utf-8").splitlines()]
        assert [[float(x) for x in row[1:]] for row in mine] == [[float(x) for x in row[1:]] for row in theirs]


def _fifu_simple(words: list[str], path: Path) -> None:
    """A finalfusion file [SimpleVocab, NdArray] written by hand; row i is (i+1, -(i+1))."""

    def s(w: str) -> bytes:
        b = w.encode()
        return struct.pack("<I", len(b)) + b

    vocab = struct.pack("<Q", len(words)) + b"".join(s(w) for w in words)
    body = bytearray(struct.pack("<4sII", b"FiFu", 0, 2) + struct.pack("<II", 1, 2))
    body += struct.pack("<IQ", 1, len(vocab)) + vocab
    start = len(body) + 12 + 16
    pad = 4 - start % 4
    mat = np.array([[i + 1, -(i + 1)] for i in range(len(words))], dtype="<f4").tobytes()
    body += struct.pack("<IQ", 2, 16 + pad + len(mat)) + struct.pack("<QII", len(words), 2, 10) + b"\0" * pad + mat
    path.write_bytes(bytes(body))


@pytest.mark.parametrize("bad", ["\nb", "\rb", "a b", " "])
def test_write_word2vec_refuses_words_it_cannot_write(bad: str, tmp_path: Path) -> None:
    src = tmp_path / "in.fifu"
    _fifu_simple(["a", bad, "z"], src)
    e = vf.load(src)
    assert e.vocab.words == ["a", bad, "z"]
    out = tmp_path / "o.bin"
    # a word2vec reader could not get the word back: refused before anything is written
    with pytest.raises(ValueError, match="contains a space or starts with a line break"):
        e.write_word2vec(out)
    assert not out.exists()


def _gensim_binary(words: list[str], vecs: np.ndarray, newline: bool) -> bytes:
    """A word2vec binary file as gensim 4.4 writes it (``f"{word} ".encode() + vector``, no
    record newline), or as word2vec's C tool writes it (a newline after each vector)."""
    out = f"{len(words)} {vecs.shape[1]}\n".encode()
    for w, v in zip(words, vecs):
        out += f"{w} ".encode() + v.astype("<f4").tobytes() + (b"\n" if newline else b"")
    return out


def test_text_empty_word_as_gensim_writes_it(tmp_path: Path) -> None:
    """gensim writes the empty word's line as ' 1.0 2.0' and reads it back as the word '':
    vecfusion took '1.0' for the word and failed, one value short."""
    p = tmp_path / "e.txt"
    p.write_text("2 2\n 1.0 2.0\na 3.0 4.0\n")
    e = vf.load_text(p, normalize=False)
    assert list(e) == ["", "a"]
    np.testing.assert_array_equal(e.storage, [[1, 2], [3, 4]])
    # a leading blank before a word with its values is still skipped
    p.write_text("2 2\n b 1.0 2.0\n\ta 3.0 4.0\n")
    assert list(vf.load_text(p, normalize=False)) == ["b", "a"]
    # without a header, an indented first line keeps its first field as the word (it cannot
    # be told from the empty word's line; gensim's no_header=True reads the empty word)
    p.write_text(" 1 0.1 0.2\n 2 0.3 0.4\n")
    assert list(vf.load_text(p, dims=False, normalize=False)) == ["1", "2"]
    p.write_text(" the 1.0 2.0\nx 3.0 4.0\n")
    assert list(vf.load_text(p, dims=False, normalize=False)) == ["the", "x"]


def test_text_first_word_fifu_and_empty_files(tmp_path: Path) -> None:
    """A GloVe file whose first word is "FiFu" was refused as a finalfusion file, even with
    the format given; an empty file read as an empty model (gensim raises: a failed download
    is no embedding). A real finalfusion file read as text still says what it is."""
    p = tmp_path / "g.txt"
    p.write_text("FiFu 0.5 1.5\nb 3 4\n")
    e = vf.load_text(p, dims=False, normalize=False)
    assert list(e) == ["FiFu", "b"]
    np.testing.assert_array_equal(e.storage, [[0.5, 1.5], [3, 4]])
    p.write_bytes(b"")
    with pytest.raises(vf.FormatError, match="the file is empty"):
        vf.load_text(p)
    assert len(vf.load_text(p, limit=0)) == 0
    ff = tmp_path / "x.fifu"
    vf.Embeddings(["a", "b"], np.eye(2, dtype=np.float32)).write(ff)
    with pytest.raises(vf.FormatError, match="this is a finalfusion file"):
        vf.load_text(ff)


def test_text_values_round_as_gensim_rounds_them(tmp_path: Path) -> None:
    """gensim parses a value as a Python float, then casts it to float32: two roundings. A
    decimal halfway between two float32 values (an f64 mean of two f32s, say) went the other
    way in vecfusion's direct float32 parse, one ulp off."""
    vals = ["1.0000000596046448", "-1.9267255663871765", "0.1", "3.4028234663852886e38", "1e-45"]
    rng = np.random.default_rng(5)
    pairs = rng.standard_normal((200, 2)).astype(np.float32)
    vals += [repr((float(a) + float(b)) / 2) for a, b in pairs]
    p = tmp_path / "r.txt"
    p.write_text(f"1 {len(vals)}\nw " + " ".join(vals) + "\n")
    want = np.array([np.float32(float(v)) for v in vals], np.float32)
    got = np.asarray(vf.load_text(p, normalize=False).storage)[0]
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("newline", [False, True])
def test_word2vec_binary_words_are_the_bytes_up_to_the_space_as_gensim_reads_them(
    newline: bool, tmp_path: Path
) -> None:
    """gensim takes every byte up to the next space as the word and strips only leading
    newlines: the empty word, tabs and carriage returns are part of words. (vecfusion used to
    skip all whitespace, which read the empty word's vector as the next word.) vecfusion also
    skips a leading \r, so that \r\n-terminated records read clean words."""
    words = ["a", "", "cr\r", "\tb", "c\td", "e"]
    vecs = np.arange(len(words) * 2, dtype=np.float32).reshape(-1, 2) - 3.5
    path = tmp_path / "g.bin"
    path.write_bytes(_gensim_binary(words, vecs, newline))
    e = vf.load_word2vec(path, normalize=False)
    assert list(e) == words
    np.testing.assert_array_equal(e.storage, vecs)
    # limit reads the first records the same way
    e3 = vf.load_word2vec(path, limit=3, normalize=False)
    assert list(e3) == words[:3]
    np.testing.assert_array_equal(e3.storage, vecs[:3])
    # records ending in \r\n (not gensim's writing, which ends none) read clean words
    crlf = f"{len(words)} 2\r\n".encode() + b"".join(
        f"{w} ".encode() + v.astype("<f4").tobytes() + b"\r\n" for w, v in zip(words, vecs)
    )
    path.write_bytes(crlf)
    assert list(vf.load_word2vec(path, normalize=False)) == words
    # and they write back to the same words
    e = vf.load_word2vec(path, normalize=False)
    out = tmp_path / "o.bin"
    e.write_word2vec(out)
    back = vf.load_word2vec(out, normalize=False)
    assert list(back) == words
    np.testing.assert_array_equal(back.storage, vecs)


def test_word2vec_binary_shortest_records_have_an_empty_word(tmp_path: Path) -> None:
    """The size check before reading allowed for a one-byte word per record: a file with the
    empty word, as gensim writes it, was refused as too short."""
    path = tmp_path / "e.bin"
    path.write_bytes(_gensim_binary(["", "a"], np.array([[1.0], [2.0]], np.float32), newline=False))
    e = vf.load_word2vec(path, normalize=False)
    assert list(e) == ["", "a"]
    np.testing.assert_array_equal(e.storage, [[1.0], [2.0]])


def test_write_word2vec_words_with_inner_tabs_round_trip(tmp_path: Path) -> None:
    """A tab inside a word (gensim reads and writes such words) reads back the same."""
    src = tmp_path / "in.fifu"
    _fifu_simple(["a", "fo\to", "z"], src)
    e = vf.load(src)
    out = tmp_path / "o.bin"
    e.write_word2vec(out)
    assert list(vf.load_word2vec(out)) == ["a", "fo\to", "z"]


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("limit", [None, 10])
def test_duplicate_word_names_both_lines(tmp_path: Path, header: bool, limit: int | None) -> None:
    rows = ["the 1 2", "café 3 4", "x 5 6", "the 7 8"]
    p = tmp_path / "dup.txt"
    p.write_text(("4 2\n" if header else "") + "\n".join(rows) + "\n", encoding="utf-8")
    first, second = (2, 5) if header else (1, 4)
    with pytest.raises(vf.FormatError, match=rf'line {second}: duplicate word "the", first at line {first}'):
        vf.load_text(p, dims=header, limit=limit)


def test_duplicate_word_in_word2vec_names_both_records(tmp_path: Path) -> None:
    p = tmp_path / "dup.bin"
    recs = [("the", 1.0), ("café", 2.0), ("x", 3.0), ("the", 4.0)]
    p.write_bytes(b"4 2\n" + b"".join(w.encode() + b" " + struct.pack("<2f", v, -v) + b"\n" for w, v in recs))
    for kw in ({}, {"normalize": False}, {"limit": 10}):
        with pytest.raises(vf.FormatError, match=r'record 4: duplicate word "the", first at record 1.*dup\.bin'):
            vf.load_word2vec(p, **kw)


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zip"])
def test_compressed_inputs_are_refused_clearly(tmp_path: Path, kind: str) -> None:
    """Users arrive with GoogleNews-vectors-negative300.bin.gz or cc.en.300.vec.gz: every
    loader says the file is compressed instead of failing on its bytes."""
    import bz2
    import gzip
    import lzma
    import zipfile

    raw = (FIX / "w.txt").read_bytes()
    ext = {"gzip": ".gz", "bzip2": ".bz2", "xz": ".xz", "zip": ".zip"}[kind]
    p = tmp_path / f"vectors.txt{ext}"
    if kind == "zip":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("vectors.txt", raw)
    else:
        p.write_bytes({"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[kind](raw))
    loaders = [
        lambda: vf.load_text(p),
        lambda: vf.load_text(p, dims=False, limit=2),
        lambda: vf.load_word2vec(p),
        lambda: vf.load_fasttext(p),
        lambda: vf.load(p),
        lambda: vf.load(p, mmap=True),
        lambda: vf.convert(p, tmp_path / "out.fifu", progress=False),
    ]
    for load in loaders:
        with pytest.raises(vf.FormatError, match=rf"vectors\.txt{ext} is {kind}-compressed.*decompress"):
            load()
    assert not (tmp_path / "out.fifu").exists()


@pytest.mark.parametrize("word", ["BZh5", "BZh9"])
def test_a_glove_word_like_a_compressors_magic_is_a_word(tmp_path: Path, word: str) -> None:
    """A GloVe file whose first word is `BZh5` starts with bzip2's magic bytes; it was
    refused as compressed, even one vecfusion wrote (gensim reads it). A first line that
    reads as text is text; a compressed file's first line never does."""
    e = vf.Embeddings([word, "b"], np.array([[1, 2], [3, 4]], np.float32))
    p = tmp_path / "w.txt"
    e.write_text(p, dims=False)
    for back in (vf.load_text(p, dims=False, normalize=False), vf.load_text(p, normalize=False),
                 vf.convert(p, tmp_path / "w.fifu", progress=False)):
        assert list(back.vocab.words) == [word, "b"]
    np.testing.assert_array_equal(vf.load(tmp_path / "w.fifu", mmap=True)[word] * vf.load(tmp_path / "w.fifu").norms[0], [1, 2])
    # the other loaders say which loader to use, not "compressed"
    with pytest.raises(vf.FormatError, match=r"vf\.load_text"):
        vf.load(p)
    with pytest.raises(vf.FormatError, match="looks like text embeddings"):
        vf.load_word2vec(p)
    with pytest.raises(vf.FormatError, match=r"looks like text embeddings.*vf\.load_text"):
        vf.load_fasttext(p)
    # a one-line file without a final line break
    p.write_text(f"{word} 1 2")
    assert list(vf.load_text(p).vocab.words) == [word]
    # a line without values after the magic is still the compressed file it looks like
    p.write_bytes(word.encode() + b"\x00\x01binary\n")
    with pytest.raises(vf.FormatError, match="compressed"):
        vf.load_text(p)


def test_wrong_loader_for_text_or_binary_says_which_to_use(tmp_path: Path) -> None:
    # a word2vec text file read as binary: the error says to use load_text
    with pytest.raises(vf.FormatError, match=r"looks like text embeddings.*vf\.load_text"):
        vf.load_word2vec(FIX / "w.txt")
    # a text file whose numbers happen to fill whole binary records (gensim returns
    # floats of about 1e-19 made of the digits' bytes): refused, not a silent wrong matrix
    t = tmp_path / "fits.txt"
    t.write_text("2 3\nthe 1.0 2.0 3.0\nof -1.5 0.0 2.25\n")
    with pytest.raises(vf.FormatError, match=r"record 1's vector is text.*looks like text embeddings.*vf\.load_text"):
        vf.load_word2vec(t)
    np.testing.assert_array_equal(vf.load_text(t, normalize=False).storage, [[1, 2, 3], [-1.5, 0, 2.25]])
    # any text file, whatever its width: the first record's bytes may hold a single number
    # (few dims) or end in the middle of one ("1e" of "1e-05", "-" of "-0.5")
    rng = np.random.default_rng(3)
    for dims in (1, 2, 3, 5, 100):
        for scale in (1.0, 1e-5):
            vals = (rng.standard_normal((4, dims)) * scale).astype(np.float32)
            lines = [f"{len(vals)} {dims}"] + [f"w{i} " + " ".join(repr(float(v)) for v in row) for i, row in enumerate(vals)]
            t = tmp_path / f"k{dims}.txt"
            t.write_text("\n".join(lines) + "\n")
            for limit in (None, 1, len(vals)):
                with pytest.raises(vf.FormatError, match=r"looks like text embeddings.*vf\.load_text"):
                    vf.load_word2vec(t, limit=limit)
    # real binary values whose bytes are digits and points (b"1.392.18": 1.7e-4, 4.2e-5) but
    # no blank between numbers: a word2vec file, read as gensim reads it
    row = np.frombuffer(b"1.392.18", "<f4")
    b = tmp_path / "digits.bin"
    b.write_bytes(b"2 2\na " + row.tobytes() + b"\nb " + np.array([0.5, -0.25], "<f4").tobytes() + b"\n")
    np.testing.assert_array_equal(vf.load_word2vec(b, normalize=False).storage, [row, [0.5, -0.25]])
    # a word2vec binary file read as text: the error says to use load_word2vec
    for dims in (None, True):
        with pytest.raises(vf.FormatError, match=r"line 2:.*looks like word2vec binary.*vf\.load_word2vec"):
            vf.load_text(FIX / "w.bin", dims=dims)
    for dims in (None, False):
        with pytest.raises(vf.FormatError, match=r"looks like word2vec binary"):
            vf.load_text(FIX / "w.bin", dims=dims)


def test_text_errors_without_a_wrong_loader_hint(tmp_path: Path) -> None:
    p = tmp_path / "ragged.txt"
    p.write_text("2 3\na 1 2 3\nb 1 2\n", encoding="utf-8")
    for load in (lambda: vf.load_text(p), lambda: vf.load_text(p, dims=True)):
        with pytest.raises(vf.FormatError, match="line 3") as ei:
            load()
        assert "looks like" not in str(ei.value)
    q = tmp_path / "bad2.txt"
    q.write_text("2 3\na 1 x 3\nb 1 2 3\n", encoding="utf-8")
    with pytest.raises(vf.FormatError, match="line 2") as ei:
        vf.load_text(q)
    assert "looks like" not in str(ei.value)
    b = tmp_path / "short.bin"
    b.write_bytes(b"2 3\na " + struct.pack("<3f", 1, 2, 3))
    with pytest.raises(vf.FormatError) as ei:
        vf.load_word2vec(b)
    assert "looks like" not in str(ei.value)


def _count_path(msg: str, path: Path) -> int:
    return msg.count(str(path))


def test_text_errors_name_the_file_once(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError) as ei:
        vf.load_text(missing)
    assert _count_path(str(ei.value), missing) == 1, str(ei.value)
    bad = tmp_path / "bad.txt"
    bad.write_text("2 3\na 1 2\n", encoding="utf-8")
    with pytest.raises(vf.FormatError) as ei:
        vf.load_text(bad)
    assert _count_path(str(ei.value), bad) == 1, str(ei.value)
    gz = tmp_path / "v.txt.gz"
    import gzip

    gz.write_bytes(gzip.compress(b"2 3\n"))
    with pytest.raises(vf.FormatError) as ei:
        vf.load_text(gz)
    assert _count_path(str(ei.value), gz) == 1, str(ei.value)


def test_fasttext_errors_name_the_file_once(tmp_path: Path) -> None:
    missing = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError) as ei:
        vf.load_fasttext(missing)
    assert _count_path(str(ei.value), missing) == 1, str(ei.value)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(vf.FormatError) as ei:
        vf.load_fasttext(empty)
    assert _count_path(str(ei.value), empty) == 1, str(ei.value)


def test_text_without_a_line_break_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    """A failed download of zero bytes (or any binary blob without a line break) is a
    FormatError after a bounded read of its first line."""
    p = tmp_path / "zeros.txt"
    with open(p, "wb") as f:
        f.truncate(65 << 20)  # 65 MiB of NUL bytes, no line break
    with pytest.raises(vf.FormatError, match="line 1 has no line break within 64 MiB"):
        vf.load_text(p)


def test_text_header_with_huge_dims_is_a_format_error(tmp_path: Path) -> None:
    """The dims of a header bound nothing by themselves: a short row is a ragged row, not
    a reservation of 400 GB (MemoryError)."""
    p = tmp_path / "h.txt"
    p.write_bytes(b"2 99999999999\na 1 2\nb 3 4\n")
    with pytest.raises(vf.FormatError, match="line 2"):
        vf.load_text(p)
