"""word2vec, text (GloVe / word2vec text) and fastText readers and writers, convert, CLI.

Truth comes from golden files written by finalfusion, gensim and fastText
(../shared/testdata), and from fastText itself where it can be installed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import vecfusion as vf
from vecfusion.cli import main as cli_main
from vecfusion.convert import detect_format

# ---------------------------------------------------------------- helpers


def _rows_normalized(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, n, out=np.zeros_like(m), where=n > 0)


@pytest.fixture(scope="module")
def w2v_expected(peers: Path) -> dict:
    return json.loads((peers / "w2v.expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ft_expected(peers: Path) -> dict:
    return json.loads((peers / "ft_skipgram.expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ft_skipgram(peers: Path) -> vf.Embeddings:
    return vf.load_fasttext(peers / "ft_skipgram.bin")


# ------------------------------------------------- byte-identical round trips


@pytest.mark.parametrize(
    "name, load, write",
    [
        ("similarity.bin", lambda p: vf.load_word2vec(p, normalize=False), lambda e, p: e.write_word2vec(p)),
        ("similarity.txt", lambda p: vf.load_text(p, normalize=False), lambda e, p: e.write_text(p)),
        (
            "similarity.nodims",
            lambda p: vf.load_text(p, dims=False, normalize=False),
            lambda e, p: e.write_text(p, dims=False),
        ),
    ],
)
def test_raw_round_trip_is_byte_identical(ff: Path, tmp_path: Path, name, load, write) -> None:
    emb = load(ff / "rust" / name)
    assert emb.norms is None
    out = tmp_path / name
    write(emb, out)
    assert out.read_bytes() == (ff / "rust" / name).read_bytes()


def test_normalized_round_trip_writes_the_original_vectors(ff: Path, tmp_path: Path) -> None:
    raw = vf.load_word2vec(ff / "rust" / "similarity.bin", normalize=False)
    emb = vf.load_word2vec(ff / "rust" / "similarity.bin")
    emb.write_word2vec(tmp_path / "x.bin")
    again = vf.load_word2vec(tmp_path / "x.bin", normalize=False)
    np.testing.assert_allclose(again.storage, raw.storage, rtol=1e-6, atol=1e-6)


def test_all_three_similarity_files_hold_the_finalfusion_matrix(ff: Path) -> None:
    fifu = vf.load(ff / "rust" / "similarity.fifu")
    for emb in (
        vf.load_word2vec(ff / "rust" / "similarity.bin", normalize=False),
        vf.load_text(ff / "rust" / "similarity.txt", normalize=False),
        vf.load_text(ff / "rust" / "similarity.nodims", normalize=False),
    ):
        assert list(emb) == list(fifu)
        np.testing.assert_array_equal(emb.storage, fifu.storage)


def test_nearest_to_berlin(ff: Path) -> None:
    emb = vf.load_word2vec(ff / "rust" / "similarity.bin")
    m = np.asarray(emb.storage)
    words = list(emb)
    sims = m @ emb["Berlin"]
    order = [words[i] for i in np.argsort(-sims, kind="stable") if words[i] != "Berlin"][:10]
    assert order == [
        "Potsdam", "Hamburg", "Leipzig", "Dresden", "München",
        "Düsseldorf", "Bonn", "Stuttgart", "Weimar", "Berlin-Charlottenburg",
    ]
    assert sims[words.index("Potsdam")] == pytest.approx(0.8848505, abs=1e-6)


# ------------------------------------------------------------ normalization


def test_default_normalizes_and_keeps_norms(ff: Path) -> None:
    ref = vf.load(ff / "python" / "embeddings.fifu")
    for emb in (
        vf.load_text(ff / "python" / "embeddings.txt"),
        vf.load_text(ff / "python" / "embeddings.dims.txt"),
    ):
        assert list(emb) == ["one", "two", "three", "four", "five", "six", "seven"]
        np.testing.assert_allclose(emb.storage, ref.storage, atol=1e-6)
        np.testing.assert_allclose(
            emb.norms,
            [6.557438373565674, 8.83176040649414, 6.164413928985596, 9.165151596069336,
             7.4833149909973145, 7.211102485656738, 7.4833149909973145],
            rtol=1e-6,
        )
        assert emb.embedding("OOV") is None


def test_gensim_files(peers: Path, w2v_expected: dict) -> None:
    loaded = [
        vf.load_word2vec(peers / "w2v.bin", normalize=False),
        vf.load_text(peers / "w2v.txt", normalize=False),
        vf.load_text(peers / "glove.txt", normalize=False),
        vf.load_text(peers / "glove.txt", dims=False, normalize=False),
    ]
    for emb in loaded:
        assert (len(emb), emb.dims) == tuple(w2v_expected["shape"])
        assert list(emb)[:30] == w2v_expected["words_first30"]
        for w, v in w2v_expected["vectors"].items():
            np.testing.assert_array_equal(emb[w], np.array(v, dtype=np.float32))
        np.testing.assert_array_equal(emb.storage, loaded[0].storage)
    norm = vf.load_word2vec(peers / "w2v.bin")
    for w, n in w2v_expected["norms"].items():
        assert norm.embedding_with_norm(w)[1] == pytest.approx(n, rel=1e-6)
        np.testing.assert_allclose(
            norm[w], np.array(w2v_expected["vectors"][w]) / n, atol=1e-6
        )
    ffx = json.loads((peers / "finalfusion.expected.json").read_text(encoding="utf-8"))["w2v.fifu"]
    for w, v in ffx["embedding"].items():
        np.testing.assert_allclose(norm[w], v, atol=1e-6)


@pytest.mark.parametrize("loader", [
    lambda p, **k: vf.load_word2vec(p / "w2v.bin", **k),
    lambda p, **k: vf.load_text(p / "w2v.txt", **k),
    lambda p, **k: vf.load_text(p / "glove.txt", **k),
])
def test_limit(peers: Path, w2v_expected: dict, loader) -> None:
    emb = loader(peers, limit=100)
    assert (len(emb), emb.dims) == tuple(w2v_expected["limit100"]["shape"])
    assert list(emb)[-1] == w2v_expected["limit100"]["last_word"]
    assert len(loader(peers, limit=0)) == 0
    assert len(loader(peers, limit=np.int64(100))) == 100  # any integer type, as operator.index
    # A limit beyond any row count (Python ints are unbounded) reads everything.
    assert len(loader(peers, limit=2**70)) == len(loader(peers)) > 100
    with pytest.raises(ValueError, match="limit must be >= 0"):
        loader(peers, limit=-1)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        loader(peers, limit=-(2**70))
    for bad in (1.5, "100", True):
        with pytest.raises(TypeError, match="limit must be an int or None"):
            loader(peers, limit=bad)


def test_limit_reads_only_what_it_needs(peers: Path, tmp_path: Path) -> None:
    # Everything after the first 100 records is garbage: a full read fails, a limited
    # read never gets there.
    data = (peers / "w2v.bin").read_bytes()
    header = data.partition(b"\n")[0]
    emb = vf.load_word2vec(peers / "w2v.bin", normalize=False, limit=100)
    pos = len(header) + 1
    for w in list(emb):
        pos += len(w.encode()) + 1 + 20 * 4 + 1
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data[:pos] + b"\xff" * 50)
    with pytest.raises(vf.FormatError):
        vf.load_word2vec(bad)
    np.testing.assert_array_equal(vf.load_word2vec(bad, limit=100, normalize=False).storage, emb.storage)

    lines = (peers / "w2v.txt").read_bytes().split(b"\n")
    badt = tmp_path / "bad.txt"
    badt.write_bytes(b"\n".join(lines[:101]) + b"\nthis is not a vector\n")
    with pytest.raises(vf.FormatError, match="line 102"):
        vf.load_text(badt)
    np.testing.assert_array_equal(vf.load_text(badt, limit=100, normalize=False).storage, emb.storage)


def test_fasttext_vec_text_export(peers: Path, ft_expected: dict) -> None:
    # fastText's .vec: header, trailing space on every line
    emb = vf.load_text(peers / "ft_skipgram.vec", normalize=False)
    assert len(emb) == ft_expected["nwords"] and emb.dims == ft_expected["dim"]
    for w, d in ft_expected["in_vocab"].items():
        np.testing.assert_array_equal(emb[w], np.array(d["vector"], dtype=np.float32))


# -------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, load",
    [
        ("utf8-incomplete.bin", lambda p, **k: vf.load_word2vec(p, **k)),
        ("utf8-incomplete.txt", lambda p, **k: vf.load_text(p, dims=False, **k)),
        ("utf8-incomplete.dims", lambda p, **k: vf.load_text(p, **k)),
    ],
)
def test_invalid_utf8(ff: Path, name, load) -> None:
    path = ff / "rust" / name
    where = "record 2" if name.endswith(".bin") else ("line 3" if name.endswith(".dims") else "line 2")
    with pytest.raises(vf.FormatError, match=f"{where}.*UTF-8"):
        load(path)
    emb = load(path, lossy=True)
    assert list(emb) == ["meren", "zee\ufffdn", "rivieren"]
    assert "zee\ufffdn" in emb


@pytest.mark.parametrize(
    "text, dims, match",
    [
        ("a 1 2 3\nb 1 2\n", False, "line 2: expected 3 values"),
        ("a 1 2 3\nb 1 2 3 4\n", False, "line 2: expected 3 values"),
        ("2 3\na 1 2 3\nb 1 2\n", None, "line 3: expected 3 values"),
        ("3 3\na 1 2 3\nb 1 2 3\n", None, "header announces 3 words"),
        ("2 4\na 1 2 3\nb 1 2 3\n", True, "line 2: expected 4 values"),
        ("a 1 2 3\n\nb 1 2 3\n", False, "line 2: empty line"),
        ("a 1 2 3\nb 1 x 3\n", False, "line 2: value 2 .* not a number"),
        ("a 1 2 3\nb 1 2 3e\n", False, "line 2: value 3"),
        ("a 1 2 3\n", True, "line 1: expected a header"),
        ("a\n", False, "line 1: no values"),
    ],
)
def test_malformed_text(tmp_path: Path, text: str, dims, match: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(vf.FormatError, match=match):
        vf.load_text(p, dims=dims)


@pytest.mark.parametrize(
    "text, kwargs",
    [
        # what gensim 4.4's load_word2vec_format(binary=False) reads from these files:
        ("2 2\na 1 2\nb 3 4\n\n  \n", {}),  # blank lines after the records
        ("a 1 2\nb 3 4\n\n\t\n", {"dims": False}),
        ("2 2\na 1 2\x0c\nb 3 4\x0b\r\r\n", {}),  # line ends stripped as str.rstrip() does
        ("2 2\na 1 2\nb 3 4\nc 5 6\n", {"limit": 3}),  # a limit above the header's count
        ("2 2\na 1 2\nb 3 4\n\n\nc 5 6\n", {"limit": 5}),  # (and nothing after it is read)
    ],
)
def test_text_ends_as_gensim_reads_them(tmp_path: Path, text: str, kwargs: dict) -> None:
    p = tmp_path / "t.txt"
    p.write_text(text, newline="")
    emb = vf.load_text(p, normalize=False, **kwargs)
    assert list(emb) == ["a", "b"]
    np.testing.assert_array_equal(emb.storage[:], [[1, 2], [3, 4]])


def test_only_bytes_rstrip_whitespace_ends_a_line(tmp_path: Path) -> None:
    """gensim strips lines as bytes (`bytes.rstrip()`: space, \\t, \\n, \\r, \\x0b, \\x0c):
    \\x1c-\\x1f stay in a word, here the only field of a 0-dimensional file."""
    p = tmp_path / "t.txt"
    p.write_bytes(b"2 0\na\x1c\nb\x1f\x0c\n")
    assert list(vf.load_text(p)) == ["a\x1c", "b\x1f"]


def test_numbers_in_unicode_whitespace_read_as_python_float_reads_them(tmp_path: Path) -> None:
    """gensim parses each field with float(), which strips Unicode's White_Space (a no-break
    space after the last number, U+3000 ...): such a file read as gensim reads it, and a
    field that is no number names its invisible characters."""
    lines = ["a 1 2 3\xa0", "b \u30004 5\u2003 6\x85"]
    p = tmp_path / "t.txt"
    p.write_bytes(("2 3\n" + "\n".join(lines) + "\n").encode())
    # gensim's rule: split on spaces, float() each field
    want = np.array([[float(x) for x in line.split(" ")[1:]] for line in lines], np.float32)
    np.testing.assert_array_equal(want, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(vf.load_text(p, normalize=False).storage, want)
    # in latin-1, byte A0 is the no-break space
    q = tmp_path / "l.txt"
    q.write_bytes(b"2 3\na 1 2 3\xa0\nb 4 5 6\n")
    np.testing.assert_array_equal(vf.load_text(q, normalize=False, encoding="latin-1").storage, want)
    # no White_Space (a zero-width space, \x1c), or nothing but it: not a number (also in
    # Python), and the message shows what is there
    for bad, shown in (("3\u200b", r"3\u{200b}"), ("3\x1c", r"3\u{1c}"), ("3 \xa0", r"\u{a0}")):
        r = tmp_path / "bad.txt"
        r.write_bytes(f"2 3\na 1 2 {bad}\nb 4 5 6\n".encode())
        with pytest.raises(vf.FormatError, match=re.escape(f'is not a number: "{shown}"')):
            vf.load_text(r)


def test_blank_line_between_records_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("3 2\na 1 2\n \nb 3 4\nc 5 6\n")
    for kwargs in ({}, {"limit": 3}):
        with pytest.raises(vf.FormatError, match="line 3: empty line"):
            vf.load_text(p, **kwargs)


def test_malformed_text_far_down_gets_the_right_line(tmp_path: Path) -> None:
    # large enough to be cut into several pieces that are parsed in parallel
    rows = [f"w{i} {i} {i + 1} {i + 2}" for i in range(60_000)]
    rows[54_321] = "oops 1 2"
    p = tmp_path / "big.txt"
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(vf.FormatError, match="line 54322: expected 3 values"):
        vf.load_text(p)
    rows[54_321] = "oops 1 2 3"
    p.write_text("\n".join(rows) + "\n")
    emb = vf.load_text(p, normalize=False)
    assert len(emb) == 60_000
    np.testing.assert_array_equal(emb["w59999"], [59999, 60000, 60001])
    np.testing.assert_array_equal(emb["oops"], [1, 2, 3])


def test_rows_longer_than_float32_range(tmp_path: Path) -> None:
    """[3e38, 3e38] is finite, but its norm (4.2e38) is not a float32: normalized at load it
    could not be written back (row x inf norm), so loading it normalized is an error that
    says what to do; with normalize=False it reads and writes back exactly."""
    rows = np.array([[3e38, 3e38], [1, 2]], np.float32)
    e = vf.Embeddings(["big", "ok"], rows)
    for name, write, load in [
        ("w.bin", e.write_word2vec, vf.load_word2vec),
        ("w.txt", e.write_text, vf.load_text),
        ("w.ftbin", e.write_fasttext, vf.load_fasttext),
    ]:
        write(tmp_path / name)
        with pytest.raises(vf.FormatError, match='"big" .*normalize=False'):
            load(tmp_path / name)
        raw = load(tmp_path / name, normalize=False)
        np.testing.assert_array_equal(raw.storage[:2], rows)
    # converting to finalfusion normalizes too: convert(normalize=False) and the command's
    # --no-normalize keep the rows as they are, and the command's error names its option
    src = tmp_path / "w.bin"
    with pytest.raises(vf.FormatError, match="normalize=False"):
        vf.convert(src, tmp_path / "c.fifu", progress=False)
    out = vf.convert(src, tmp_path / "c.fifu", progress=False, normalize=False)
    assert out.norms is None
    np.testing.assert_array_equal(vf.load(tmp_path / "c.fifu").storage, rows)
    assert cli_main(["convert", str(src), str(tmp_path / "d.fifu")]) == 1
    assert not (tmp_path / "d.fifu").exists()
    assert cli_main(["convert", str(src), str(tmp_path / "d.fifu"), "--no-normalize"]) == 0
    np.testing.assert_array_equal(vf.load(tmp_path / "d.fifu").storage, rows)
    # (normalizing stays the default and applies to finalfusion targets only)
    ok = tmp_path / "ok.txt"
    vf.Embeddings(["a"], np.array([[3, 4]], np.float32)).write_text(ok)
    np.testing.assert_array_equal(vf.convert(ok, tmp_path / "n.fifu", progress=False).norms, [5])
    assert vf.convert(ok, tmp_path / "n.txt", progress=False).norms is None


def test_cli_convert_error_names_no_normalize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    e = vf.Embeddings(["big", "ok"], np.array([[3e38, 3e38], [1, 2]], np.float32))
    e.write_word2vec(tmp_path / "w.bin")
    capsys.readouterr()
    assert cli_main(["convert", str(tmp_path / "w.bin"), str(tmp_path / "d.fifu")]) == 1
    err = capsys.readouterr().err
    assert "convert with --no-normalize" in err and "normalize=False" not in err, err


def test_a_headerless_first_line_that_reads_as_a_header_is_refused(tmp_path: Path) -> None:
    """A 1-dimensional row of a number word prints as `2 1`, which the default reader (and
    vf.convert) takes for a header: written without one, the file read back a word short,
    silently. Such a file is refused (write it with a header); other first lines are not."""
    e = vf.Embeddings(["2", "a", "b"], np.array([[1], [0.5], [0.25]], np.float32))
    p = tmp_path / "amb.txt"
    with pytest.raises(ValueError, match=r'first line "2 1" would read back as a header.*dims=True'):
        e.write_text(p, dims=False)
    assert not p.exists()
    e.write_text(p, dims=True)
    assert list(vf.load_text(p).vocab.words) == ["2", "a", "b"]
    for words, rows in ((["2", "a"], [[0.5], [1]]), (["x", "2"], [[1], [1]]), (["2", "a"], [[1, 1], [2, 2]])):
        e = vf.Embeddings(words, np.array(rows, np.float32))
        e.write_text(p, dims=False)
        assert list(vf.load_text(p, normalize=False).vocab.words) == words
        np.testing.assert_array_equal(vf.load_text(p, normalize=False).storage, rows)


def test_malformed_word2vec(tmp_path: Path, peers: Path) -> None:
    data = (peers / "w2v.bin").read_bytes()
    p = tmp_path / "x.bin"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(vf.FormatError, match="3012 words"):
        vf.load_word2vec(p)
    p.write_bytes(b"hello world\n")
    with pytest.raises(vf.FormatError, match="header"):
        vf.load_word2vec(p)
    p.write_bytes(b"99999999999 99999999\nx ")
    with pytest.raises(vf.FormatError):
        vf.load_word2vec(p)
    with pytest.raises(FileNotFoundError):
        vf.load_word2vec(tmp_path / "missing.bin")


def test_duplicate_words_are_a_format_error(tmp_path: Path) -> None:
    p = tmp_path / "dup.txt"
    p.write_text("a 1 2\nb 3 4\na 5 6\n")
    with pytest.raises(vf.FormatError, match="duplicate word"):
        vf.load_text(p)


# ---------------------------------------------------------------- fastText


def test_fasttext_vectors_match_fasttext(ft_skipgram: vf.Embeddings, ft_expected: dict) -> None:
    emb = ft_skipgram
    assert emb.vocab_kind == "FastTextSubwordVocab"
    assert len(emb) == ft_expected["nwords"] and emb.dims == ft_expected["dim"]
    assert emb.vocab.rows == ft_expected["input_matrix_shape"][0]
    assert list(emb)[:30] == ft_expected["first_words"]
    zero_seen = False
    for kind in ("in_vocab", "oov"):
        for w, d in ft_expected[kind].items():
            want = np.array(d["vector"], dtype=np.float32)
            if kind == "in_vocab":
                assert emb.vocab.index(w) == d["id"]
            else:
                assert w not in list(emb)[: len(emb)] and d["id"] == -1
            np.testing.assert_allclose(emb.fasttext_vector(w), want, atol=1e-6, err_msg=w)
            n = np.linalg.norm(want)
            got = emb.embedding(w)
            if n == 0:
                zero_seen = True
                assert got is not None and not np.isnan(got).any()
                np.testing.assert_array_equal(got, 0)
                assert emb.embedding_with_norm(w)[1] == 0
            else:
                np.testing.assert_allclose(got, want / n, atol=1e-6, err_msg=w)
    assert zero_seen  # the expected file holds OOV words with untrained n-grams


def test_fasttext_subwords(ft_skipgram: vf.Embeddings, ft_expected: dict) -> None:
    for w, d in ft_expected["subwords"].items():
        strings, ids = ft_skipgram.fasttext_subwords(w)
        assert strings == d["subwords"], w
        assert ids == d["ids"], w


def test_fasttext_agrees_with_finalfusion_conversion(ft_skipgram: vf.Embeddings, peers: Path) -> None:
    ref = vf.load(peers / "ft_skipgram.fifu")
    assert ref.vocab_kind == ft_skipgram.vocab_kind
    assert list(ref) == list(ft_skipgram)
    nw = len(ref)
    # n-gram rows are kept as they are; word rows (but </s>, which finalfusion gives
    # n-grams and fastText does not) are the normalized means
    np.testing.assert_array_equal(np.asarray(ref.storage)[nw:], np.asarray(ft_skipgram.storage)[nw:])
    np.testing.assert_allclose(np.asarray(ref.storage)[1:nw], np.asarray(ft_skipgram.storage)[1:nw], atol=1e-6)
    np.testing.assert_allclose(ref.norms[1:], ft_skipgram.norms[1:], rtol=1e-5)


def test_finalfusion_fasttext_golden(ff: Path) -> None:
    emb = vf.load_fasttext(ff / "rust" / "fasttext.bin")
    assert (len(emb), emb.dims, emb.vocab.rows) == (157, 50, 257)
    m = np.asarray(emb.storage)[: len(emb)]
    q = emb["über"]
    words = list(emb)
    sims = m @ q
    top = [(words[i], sims[i]) for i in np.argsort(-sims) if words[i] != "über"][:3]
    assert [w for w, _ in top] == ["auf", "vor", "durch"]
    np.testing.assert_allclose([s for _, s in top], [0.568513, 0.551551, 0.547349], atol=1e-5)


def test_fasttext_supervised_bin(peers: Path) -> None:
    exp = json.loads((peers / "ft_supervised.expected.json").read_text(encoding="utf-8"))["bin"]
    emb = vf.load_fasttext(peers / "ft_supervised.bin")
    assert len(emb) == exp["nwords"] and emb.dims == exp["dim"]
    assert not any(w.startswith("__label__") for w in emb)
    for w, v in exp["word_vectors"].items():
        np.testing.assert_allclose(emb.fasttext_vector(w), v, atol=1e-6, err_msg=w)


def test_convert_pruned_ftz_to_bin_writes_word2vec(peers: Path, tmp_path: Path) -> None:
    """fastText takes a pruned model's buckets only quantized, so a .bin target from a
    pruned .ftz is word2vec, as convert's docstring says (it raised, writing nothing).
    --to fasttext still names what cannot be written."""
    src = peers / "ft_supervised.ftz"
    out = tmp_path / "pruned.bin"
    vf.convert(src, out, progress=False)
    assert detect_format(out) == "word2vec"
    w2v, emb = vf.load_word2vec(out, normalize=False), vf.load_fasttext(src, normalize=False)
    assert list(w2v) == list(emb)
    np.testing.assert_array_equal(w2v.lookup(list(emb))[0], emb.lookup(list(emb))[0])
    with pytest.raises(ValueError, match="pruned fastText model"):
        vf.convert(src, tmp_path / "forced.bin", dst_format="fasttext", progress=False)


def test_ftz_quantized_and_pruned_model(peers: Path, tmp_path: Path) -> None:
    """A quantized .ftz (product-quantized input matrix with quantized norms, pruned
    dictionary and n-gram buckets) gives fastText's own word vectors bit for bit."""
    exp = json.loads((peers / "ft_supervised.expected.json").read_text(encoding="utf-8"))["ftz"]
    assert exp["is_quantized"]
    emb = vf.load_fasttext(peers / "ft_supervised.ftz", normalize=False)
    assert len(emb) == exp["nwords"] and emb.dims == exp["dim"]
    assert emb.vocab_kind == "FastTextSubwordVocab"
    for w, v in exp["word_vectors"].items():
        np.testing.assert_array_equal(emb.fasttext_vector(w), np.array(v, np.float32), err_msg=w)
    normalized = vf.load_fasttext(peers / "ft_supervised.ftz")
    for w, v in exp["word_vectors"].items():
        v = np.array(v, np.float32)
        n = np.linalg.norm(v)
        np.testing.assert_allclose(normalized.embedding(w), v / n if n else v, atol=1e-6, err_msg=w)
    assert "pruned_buckets" in normalized.metadata["fasttext"]
    # against fastText itself on every word and on unknown words, when it is installed
    fasttext = pytest.importorskip("fasttext", reason="the fasttext package cannot be installed here")
    model = fasttext.load_model(str(peers / "ft_supervised.ftz"))
    for w in list(model.words) + ["zzzqqq", "über", "xylophone", "ö"]:
        np.testing.assert_array_equal(emb.fasttext_vector(w), model.get_word_vector(w), err_msg=w)
    # a pruned model cannot go back to fastText .bin (fastText wants its matrix quantized
    # then); through finalfusion it keeps its vectors, the pruning included
    with pytest.raises(ValueError, match="pruned"):
        emb.write_fasttext(tmp_path / "x.bin")
    emb.write(tmp_path / "x.fifu")
    back = vf.load(tmp_path / "x.fifu")
    for w in list(model.words)[:200] + ["zzzqqq", "über", "xylophone"]:
        np.testing.assert_array_equal(back.fasttext_vector(w), model.get_word_vector(w), err_msg=w)
    # a corrupt bucket count (a table the file does not hold) is an error, not an abort
    raw = bytearray((peers / "ft_supervised.ftz").read_bytes())
    struct.pack_into("<i", raw, 40, 2**31 - 1)
    (tmp_path / "huge.ftz").write_bytes(bytes(raw))
    with pytest.raises(vf.FormatError, match="cannot be allocated"):
        vf.load_fasttext(tmp_path / "huge.ftz")
    # a truncated .ftz is a clear error
    data = (peers / "ft_supervised.ftz").read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 2000):
        p = tmp_path / "cut.ftz"
        p.write_bytes(data[:cut])
        with pytest.raises(vf.FormatError):
            vf.load_fasttext(p)


def test_pruned_ftz_kept_buckets_of_zeros_count_in_the_mean(tmp_path: Path) -> None:
    """fastText's pruned dictionary can keep buckets whose rows are all zeros (here most of
    them: a tiny corpus, one epoch); an unknown word's vector counts them in its mean, as
    fastText does, and only the buckets pruned away are left out."""
    fasttext = pytest.importorskip("fasttext", reason="the fasttext package cannot be installed here")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "日本", "eta", "theta", "iota", "kappa"]
    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "".join(f"__label__{'ab'[rng.integers(2)]} {' '.join(rng.choice(words, 8))}\n" for _ in range(300)),
        encoding="utf-8",
    )
    m = fasttext.train_supervised(str(corpus), dim=4, bucket=400, minn=2, maxn=3, epoch=1, minCount=1, thread=1, verbose=0)
    m.quantize(input=str(corpus), qnorm=True, cutoff=300, retrain=False, dsub=2)
    m.save_model(str(tmp_path / "m.ftz"))
    ft = fasttext.load_model(str(tmp_path / "m.ftz"))
    emb = vf.load_fasttext(tmp_path / "m.ftz", normalize=False)
    ngram_rows = emb.storage[len(emb) :]
    kept_zero = np.all(ngram_rows == 0, axis=1) & np.signbit(ngram_rows[:, 0])
    assert kept_zero.any()  # the case under test occurs in this model
    emb.write(tmp_path / "m.fifu")
    back = vf.load(tmp_path / "m.fifu")
    probes = ["zzz", "xyzzy", "alph", "gamm", "日", "kapp", "q"]
    for w in list(ft.words) + probes:
        want = ft.get_word_vector(w)
        np.testing.assert_array_equal(emb.fasttext_vector(w), want, err_msg=w)
        np.testing.assert_array_equal(back.fasttext_vector(w), want, err_msg=w)


def test_pruned_model_that_kept_no_bucket_keeps_its_ngrams(tmp_path: Path) -> None:
    """`fasttext quantize -cutoff N` can keep only word rows (pruneidx_size 0): the model still
    has n-grams (fastText's get_subwords lists them; none counts), so it reads as a fastText
    subword vocabulary whose unknown words are zero vectors, not as a SimpleVocab where an
    unknown word is a KeyError. (A dense pruned model, written here by hand.)"""
    words = [("</s>", 9), ("this", 5), ("is", 4)]
    dim, bucket, minn, maxn = 3, 50, 2, 4
    rows = np.arange(1, 1 + len(words) * dim, dtype=np.float32).reshape(len(words), dim)
    out = bytearray(struct.pack("<ii", 793712314, 12))
    # args: dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate t
    out += struct.pack("<12id", dim, 5, 1, 1, 5, 1, 1, 2, bucket, minn, maxn, 100, 1e-4)
    out += struct.pack("<iiiqq", len(words), len(words), 0, 18, 0)  # pruneidx_size 0
    for w, count in words:
        out += w.encode() + b"\0" + struct.pack("<qb", count, 0)
    out += b"\0" + struct.pack("<qq", len(words), dim) + rows.tobytes()  # dense input matrix
    out += b"\0" + struct.pack("<qq", 1, dim) + np.zeros(dim, np.float32).tobytes()
    p = tmp_path / "pruned.ftz"
    p.write_bytes(bytes(out))
    emb = vf.load_fasttext(p, normalize=False)
    assert emb.vocab_kind == "FastTextSubwordVocab" and len(emb) == 3
    assert emb.metadata["fasttext"]["pruned_buckets"] == 0
    # fastText 0.9.3's get_subwords("this") on such a model (minn 2, maxn 4)
    want = ["this", "<t", "<th", "<thi", "th", "thi", "this", "hi", "his", "his>", "is", "is>", "s>"]
    assert emb.fasttext_subwords("this")[0] == want
    for i, (w, _) in enumerate(words):  # no n-gram counts: a word is its own row
        np.testing.assert_array_equal(emb.fasttext_vector(w), rows[i])
        np.testing.assert_array_equal(emb[w], rows[i])
    for w in ("xyzzy", "thi", "q"):
        np.testing.assert_array_equal(emb.fasttext_vector(w), np.zeros(dim, np.float32))
        np.testing.assert_array_equal(emb[w], np.zeros(dim, np.float32))


def test_fasttext_bad_files(tmp_path: Path, peers: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"FiFu" + b"\0" * 100)
    with pytest.raises(vf.FormatError, match="fastText"):
        vf.load_fasttext(p)
    data = (peers / "ft_skipgram.bin").read_bytes()
    p.write_bytes(data[:-(2_000_000)])
    with pytest.raises(vf.FormatError):
        vf.load_fasttext(p)
    p.write_bytes(data[:4] + struct.pack("<i", 13) + data[8:])
    with pytest.raises(vf.FormatError, match="version"):
        vf.load_fasttext(p)


def test_write_fasttext_inverts_the_import(ft_skipgram: vf.Embeddings, peers: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft.bin"
    ft_skipgram.write_fasttext(out)
    b = out.read_bytes()
    # header: magic, version, 12 args, t; dictionary: size, nwords, nlabels, ntokens, pruneidx_size
    magic, version = struct.unpack_from("<ii", b, 0)
    assert (magic, version) == (793712314, 12)
    assert struct.unpack_from("<q", b, 4 * 14 + 8 + 12 + 8)[0] == -1
    orig = (peers / "ft_skipgram.bin").read_bytes()
    assert b[: 4 * 14 + 8] == orig[: 4 * 14 + 8]  # same arguments
    again = vf.load_fasttext(out)
    assert list(again) == list(ft_skipgram)
    np.testing.assert_allclose(again.storage, ft_skipgram.storage, atol=1e-6)
    np.testing.assert_allclose(again.norms, ft_skipgram.norms, rtol=1e-5)


def test_write_fasttext_of_a_finalfusion_conversion_gives_back_the_model(
    peers: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """finalfusion's import averages every word row with its vocabulary's n-grams, `</s>`
    included (vecfusion's own import follows fastText: `</s>` has none); writing fastText
    inverts the convention the file was made with, so every input row comes back."""
    fasttext = pytest.importorskip("fasttext", reason="the fasttext package cannot be installed here")
    out = tmp_path / "ft.bin"
    vf.load(peers / "ft_skipgram.fifu").write_fasttext(out)
    got = fasttext.load_model(str(out)).get_input_matrix()
    want = fasttext.load_model(str(peers / "ft_skipgram.bin")).get_input_matrix()
    assert got.shape == want.shape
    np.testing.assert_allclose(got[0], want[0], atol=5e-5)  # `</s>`
    np.testing.assert_allclose(got, want, atol=5e-5)
    # vecfusion's import, also once its metadata is gone, follows fastText (`</s>` alone)
    own = vf.load_fasttext(peers / "ft_skipgram.bin")
    for meta in (own.metadata, None, {"source": "x"}):
        own.metadata = meta
        own.write_fasttext(out)
        np.testing.assert_allclose(fasttext.load_model(str(out)).get_input_matrix(), want, atol=5e-5)
    # and so do embeddings built from an array: fastText's vectors are the embeddings
    words = ["</s>", "the", "cat", "sat"]
    m = np.random.default_rng(5).standard_normal((104, 8)).astype(np.float32)
    built = vf.Embeddings(words, m, vocab="fasttext", buckets=100)
    built.write_fasttext(out)
    model = fasttext.load_model(str(out))
    for w in words:
        np.testing.assert_allclose(model.get_word_vector(w), built.embedding(w), atol=1e-5, err_msg=w)
    capfd.readouterr()


def test_written_fasttext_loads_in_fasttext(
    ft_skipgram: vf.Embeddings, ft_expected: dict, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    fasttext = pytest.importorskip("fasttext", reason="the fasttext package cannot be installed here")
    out = tmp_path / "ft.bin"
    ft_skipgram.write_fasttext(out)
    model = fasttext.load_model(str(out))
    assert model.get_dimension() == ft_expected["dim"]
    assert model.get_words()[:30] == ft_expected["first_words"]
    for kind in ("in_vocab", "oov"):
        for w, d in ft_expected[kind].items():
            np.testing.assert_allclose(model.get_word_vector(w), d["vector"], atol=1e-6, err_msg=w)
    for w, d in ft_expected["subwords"].items():
        strings, ids = model.get_subwords(w)
        assert list(strings) == d["subwords"] and [int(i) for i in ids] == d["ids"]


def test_write_fasttext_simple_vocab(peers: Path, tmp_path: Path) -> None:
    emb = vf.load_word2vec(peers / "w2v.bin")
    out = tmp_path / "simple.bin"
    emb.write_fasttext(out)
    again = vf.load_fasttext(out)
    assert again.vocab_kind == "SimpleVocab"
    np.testing.assert_allclose(again.storage, emb.storage, atol=1e-6)
    np.testing.assert_allclose(again.norms, emb.norms, rtol=1e-6)
    try:
        import fasttext
    except ImportError:
        return
    model = fasttext.load_model(str(out))
    raw = vf.load_word2vec(peers / "w2v.bin", normalize=False)
    np.testing.assert_allclose(model.get_word_vector("license"), raw["license"], atol=1e-5)
    np.testing.assert_array_equal(model.get_word_vector("zzzqqq-unknown"), 0)


def test_write_fasttext_refuses_finalfusion_buckets(ff: Path, tmp_path: Path) -> None:
    emb = vf.load(ff / "python" / "ff_buckets.fifu")
    with pytest.raises(ValueError, match="fastText"):
        emb.write_fasttext(tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()


def test_write_text_rejects_words_with_spaces(tmp_path: Path) -> None:
    emb = vf.Embeddings(["a b", "c"], np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="whitespace"):
        emb.write_text(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="space"):
        emb.write_word2vec(tmp_path / "x.bin")


def test_write_text_refuses_what_would_not_read_back(tmp_path: Path) -> None:
    # a first word opening with U+FEFF reads back as a byte order mark (no header before it)
    emb = vf.Embeddings(["\ufeffa", "b"], np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="U\\+FEFF"):
        emb.write_text(tmp_path / "x.txt", dims=False)
    emb.write_text(tmp_path / "x.txt")  # after a header it is a word like any other
    assert list(vf.load_text(tmp_path / "x.txt")) == ["\ufeffa", "b"]
    # 0 dimensions: trailing whitespace of a word would be read as the end of its line
    emb = vf.Embeddings(["a\x0c", "b"], np.ones((2, 0), np.float32))
    with pytest.raises(ValueError, match="whitespace"):
        emb.write_text(tmp_path / "y.txt")


def test_the_empty_word_writes_as_text_where_it_reads_back(tmp_path: Path) -> None:
    """The empty word is a line of " v1 v2 ...", as gensim writes it: after a header or a
    first line it reads back as the empty word; as a headerless file's first line it would not."""
    vals = np.arange(6, dtype=np.float32).reshape(3, 2) + 0.5
    for words, dims in [(["a", "", "b"], False), (["", "a", "b"], True), (["a", "", "b"], True)]:
        emb = vf.Embeddings(words, vals)
        emb.write_text(tmp_path / "e.txt", dims=dims)
        back = vf.load_text(tmp_path / "e.txt", dims=dims, normalize=False)
        assert list(back) == words
        np.testing.assert_array_equal(back.storage, vals)
    with pytest.raises(ValueError, match="empty"):
        vf.Embeddings(["", "a", "b"], vals).write_text(tmp_path / "f.txt", dims=False)
    with pytest.raises(ValueError, match="empty"):
        vf.Embeddings(["a", ""], np.ones((2, 0), np.float32)).write_text(tmp_path / "f.txt")
    assert not (tmp_path / "f.txt").exists()


def test_text_round_trip_of_awkward_floats(tmp_path: Path) -> None:
    vals = np.array(
        [[3.0, -0.5, 1e-10, -0.0], [1e20, 1.17549435e-38, 3.4028235e38, 1.4e-45],
         [0.1, 123456.79, -7.006492e-45, 2.5]],
        dtype=np.float32,
    )
    emb = vf.Embeddings(["a", "b", "c"], vals)
    emb.write_text(tmp_path / "x.txt")
    text = (tmp_path / "x.txt").read_text()
    assert "e" not in text.replace("\n", " ").split(" ", 3)[-1].lower().replace("a", "")
    assert text.splitlines()[1].split()[1:] == ["3", "-0.5", "0.0000000001", "-0"]
    back = vf.load_text(tmp_path / "x.txt", normalize=False)
    np.testing.assert_array_equal(back.storage.view(np.uint32), vals.view(np.uint32))


# ----------------------------------------------------------- convert and CLI


def test_detect_format(ff: Path, peers: Path, tmp_path: Path) -> None:
    assert detect_format(ff / "rust" / "similarity.fifu") == "finalfusion"
    assert detect_format(ff / "rust" / "similarity.bin") == "word2vec"
    assert detect_format(ff / "rust" / "similarity.txt") == "text"
    assert detect_format(peers / "ft_skipgram.bin") == "fasttext"
    assert detect_format(peers / "ft_skipgram.vec") == "text"
    shutil.copy(ff / "python" / "embeddings.w2v", tmp_path / "noext")
    assert detect_format(tmp_path / "noext") == "word2vec"
    shutil.copy(ff / "python" / "embeddings.txt", tmp_path / "noext2")
    assert detect_format(tmp_path / "noext2") == "text"
    # text with an invalid UTF-8 byte in a word is still text (read it with lossy=True)
    for name in ("utf8-incomplete.dims", "utf8-incomplete.txt"):
        shutil.copy(ff / "rust" / name, tmp_path / "noext3")
        assert detect_format(tmp_path / "noext3") in ("text", "glove")
    shutil.copy(ff / "rust" / "utf8-incomplete.bin", tmp_path / "noext4")
    assert detect_format(tmp_path / "noext4") == "word2vec"
    shutil.copy(ff / "rust" / "similarity.bin", tmp_path / "noext5")
    assert detect_format(tmp_path / "noext5") == "word2vec"


def test_convert_chain(ff: Path, tmp_path: Path) -> None:
    src = ff / "rust" / "similarity.bin"
    vf.convert(src, tmp_path / "a.fifu", progress=False)
    fifu = vf.load(tmp_path / "a.fifu")
    ref = vf.load_word2vec(src)
    assert list(fifu) == list(ref)
    np.testing.assert_array_equal(fifu.storage, ref.storage)
    np.testing.assert_array_equal(fifu.norms, ref.norms)
    # finalfusion -> text -> word2vec: the raw vectors survive
    vf.convert(ff / "rust" / "similarity.fifu", tmp_path / "b.txt", progress=False)
    assert (tmp_path / "b.txt").read_bytes() == (ff / "rust" / "similarity.txt").read_bytes()
    vf.convert(tmp_path / "b.txt", tmp_path / "c.w2v", progress=False)
    assert (tmp_path / "c.w2v").read_bytes() == src.read_bytes()
    vf.convert(src, tmp_path / "d.out", dst_format="glove", progress=False)
    assert (tmp_path / "d.out").read_bytes() == (ff / "rust" / "similarity.nodims").read_bytes()


def test_convert_fasttext(peers: Path, tmp_path: Path, ft_expected: dict) -> None:
    vf.convert(peers / "ft_skipgram.bin", tmp_path / "ft.fifu", progress=False)
    emb = vf.load(tmp_path / "ft.fifu")
    assert emb.vocab_kind == "FastTextSubwordVocab"
    w, d = next(iter(ft_expected["oov"].items()))
    want = np.array(d["vector"], dtype=np.float32)
    np.testing.assert_allclose(emb.embedding(w), want / np.linalg.norm(want), atol=1e-6)
    vf.convert(tmp_path / "ft.fifu", tmp_path / "ft2.bin", dst_format="fasttext", progress=False)
    np.testing.assert_allclose(vf.load_fasttext(tmp_path / "ft2.bin").fasttext_vector(w), want, atol=1e-6)
    # a .bin name alone: a finalfusion file with a fastText vocabulary becomes fastText (its
    # n-grams kept), other finalfusion files word2vec; dst_format says otherwise
    vf.convert(tmp_path / "ft.fifu", tmp_path / "ft3.bin", progress=False)
    assert detect_format(tmp_path / "ft3.bin") == "fasttext"
    assert (tmp_path / "ft3.bin").read_bytes() == (tmp_path / "ft2.bin").read_bytes()
    vf.convert(tmp_path / "ft.fifu", tmp_path / "ft4.bin", dst_format="word2vec", progress=False)
    assert detect_format(tmp_path / "ft4.bin") == "word2vec"
    assert cli_main(["convert", str(tmp_path / "ft.fifu"), str(tmp_path / "ft5.bin")]) == 0
    assert detect_format(tmp_path / "ft5.bin") == "fasttext"
    # the same with the vocabulary stored as an fst (it was written as word2vec, n-grams lost)
    vf.load(tmp_path / "ft.fifu").write(tmp_path / "ft.fst.fifu", vocab="fst")
    vf.convert(tmp_path / "ft.fst.fifu", tmp_path / "ft6.bin", progress=False)
    assert (tmp_path / "ft6.bin").read_bytes() == (tmp_path / "ft2.bin").read_bytes()
    assert cli_main(["convert", str(tmp_path / "ft.fst.fifu"), str(tmp_path / "ft7.bin")]) == 0
    assert detect_format(tmp_path / "ft7.bin") == "fasttext"
    vf.Embeddings(["a", "b"], np.eye(2, dtype=np.float32)).write(tmp_path / "s.fifu")
    vf.convert(tmp_path / "s.fifu", tmp_path / "s.bin", progress=False)
    assert detect_format(tmp_path / "s.bin") == "word2vec"
    # a pruned .ftz model cannot be written as fastText .bin: its .fifu stays word2vec
    vf.load_fasttext(peers / "ft_supervised.ftz").write(tmp_path / "ftz.fifu")
    vf.convert(tmp_path / "ftz.fifu", tmp_path / "ftz.bin", progress=False)
    assert detect_format(tmp_path / "ftz.bin") == "word2vec"
    with pytest.raises(ValueError, match="pruned.*as word2vec instead"):
        vf.convert(tmp_path / "ftz.fifu", tmp_path / "ftz2.bin", dst_format="fasttext", progress=False)


def test_convert_arguments(ff: Path, tmp_path: Path) -> None:
    src = ff / "rust" / "similarity.bin"
    with pytest.raises(ValueError, match="format"):
        vf.convert(src, tmp_path / "x.unknown", progress=False)
    with pytest.raises(ValueError, match="unknown format"):
        vf.convert(src, tmp_path / "x.fifu", dst_format="nope", progress=False)
    with pytest.raises(ValueError, match="finalfusion output only"):
        vf.convert(src, tmp_path / "x.txt", vocab="fst", progress=False)
    with pytest.raises(FileNotFoundError):
        vf.convert(tmp_path / "missing.bin", tmp_path / "x.fifu", progress=False)
    # bytes paths, as vf.load and write take them (Path() refused them)
    out = os.fsencode(tmp_path / "b.fifu")
    assert detect_format(os.fsencode(src)) == "word2vec"
    vf.convert(os.fsencode(src), out, progress=False)
    assert list(vf.load(out)) == list(vf.load(ff / "rust" / "similarity.fifu"))


def test_convert_onto_its_input(ff: Path, tmp_path: Path) -> None:
    """Converting a file onto itself in another format left a word2vec file named .txt (the
    text input gone): refused; the same format again is a round trip (written, then renamed
    over the input), e.g. a finalfusion file to the fst vocabulary in place."""
    txt = tmp_path / "same.txt"
    shutil.copy(ff / "rust" / "similarity.txt", txt)
    before = txt.read_bytes()
    with pytest.raises(ValueError, match="is the input file"):
        vf.convert(txt, txt, dst_format="word2vec", progress=False)
    assert cli_main(["convert", str(txt), str(txt), "--to", "word2vec"]) == 1
    assert txt.read_bytes() == before
    fifu = tmp_path / "x.fifu"
    vf.convert(txt, fifu, progress=False)
    words = list(vf.load(fifu))
    vf.convert(fifu, fifu, vocab="fst", progress=False)
    assert vf.load(fifu).vocab_kind == "FstSimpleVocab" and list(vf.load(fifu)) == words
    with pytest.raises(IsADirectoryError, match="directory"):
        vf.convert(txt, tmp_path, dst_format="text", progress=False)
    with pytest.raises(FileNotFoundError, match="directory does not exist"):
        vf.convert(txt, tmp_path / "no" / "x.fifu", progress=False)
    (tmp_path / "dangling.fifu").symlink_to(tmp_path / "no" / "x.fifu")  # written through
    with pytest.raises(FileNotFoundError, match="directory does not exist"):
        vf.convert(txt, tmp_path / "dangling.fifu", progress=False)


def test_convert_vocab_passthrough(ff: Path, tmp_path: Path) -> None:
    sig = getattr(vf.Embeddings.write, "__text_signature__", "") or ""
    if "vocab" in sig:
        vf.convert(ff / "rust" / "similarity.bin", tmp_path / "x.fifu", vocab="fst", progress=False)
        assert list(vf.load(tmp_path / "x.fifu")) == list(vf.load(ff / "rust" / "similarity.fifu"))
    else:
        with pytest.raises(ValueError, match="not supported"):
            vf.convert(ff / "rust" / "similarity.bin", tmp_path / "x.fifu", vocab="fst", progress=False)


def test_convert_progress_bar_runs(ff: Path, tmp_path: Path) -> None:
    vf.convert(ff / "rust" / "similarity.bin", tmp_path / "x.fifu", progress=True)
    assert vf.load(tmp_path / "x.fifu").dims == 100


def test_cli_convert_and_info(ff: Path, peers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.fifu"
    assert cli_main(["convert", str(peers / "w2v.txt"), str(out), "--from", "text"]) == 0
    assert "3012 words x 20 dims" in capsys.readouterr().out
    assert cli_main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    for line in ("format", "finalfusion", "3012", "20", "SimpleVocab", "NdArray"):
        assert line in info
    assert cli_main(["info", "--json", str(peers / "ft_skipgram.bin")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "fasttext" and d["words"] == 3013 and d["dims"] == 24
    assert d["vocab"] == "FastTextSubwordVocab" and d["rows"] == 23013
    assert d["metadata"]["fasttext"]["bucket"] == 20000
    assert cli_main(["convert", str(peers / "w2v.bin"), str(tmp_path / "y.txt"), "--vocab", "fst"]) == 1
    assert "finalfusion output only" in capsys.readouterr().err
    assert cli_main(["info", str(ff / "rust" / "utf8-incomplete.bin")]) == 1
    assert "UTF-8" in capsys.readouterr().err
    # TOML's inf and nan are strings in the JSON (json.dumps would print Infinity / NaN,
    # which strict parsers refuse)
    md = tmp_path / "md.fifu"
    vf.Embeddings(["a"], np.ones((1, 2), np.float32), metadata={"x": {"inf": float("inf"), "nan": [float("nan")]}}).write(md)
    assert cli_main(["info", "--json", str(md)]) == 0
    d = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert d["metadata"] == {"x": {"inf": "inf", "nan": ["nan"]}}


def test_fasttext_unnormalized_is_fasttexts_vector_bit_for_bit(peers: Path, ft_expected: dict) -> None:
    """normalize=False keeps each word row as fastText's own get_word_vector (the mean of
    the word row and its n-gram rows, summed in fastText's order), with no norms."""
    emb = vf.load_fasttext(peers / "ft_skipgram.bin", normalize=False)
    assert emb.norms is None
    for kind in ("in_vocab", "oov"):
        for w, d in ft_expected[kind].items():
            want = np.array(d["vector"], dtype=np.float32)
            np.testing.assert_array_equal(emb.fasttext_vector(w), want, err_msg=w)
            if kind == "in_vocab":
                np.testing.assert_array_equal(emb.storage[d["id"]], want, err_msg=w)
    # converting to fastText's text format gives fastText's own .vec rows
    vec = vf.load_text(peers / "ft_skipgram.vec", normalize=False)
    np.testing.assert_array_equal(emb.storage[: len(emb)], vec.storage)


def test_fasttext_minn_zero_uses_ngrams(peers: Path, tmp_path: Path) -> None:
    """fastText with minn 0 and maxn > 0 (supervised models trained with -maxn) uses
    n-grams of 1..maxn characters: the same as minn 1."""
    fasttext = pytest.importorskip("fasttext", reason="the fasttext package cannot be installed here")
    raw = bytearray((peers / "ft_skipgram.bin").read_bytes())
    # header: magic, version, then dim ws epoch minCount neg wordNgrams loss model bucket minn maxn
    assert struct.unpack_from("<ii", raw, 44) == (3, 6)
    struct.pack_into("<ii", raw, 44, 0, 3)
    path = tmp_path / "minn0.bin"
    path.write_bytes(bytes(raw))
    emb = vf.load_fasttext(path, normalize=False)
    assert emb.vocab_kind == "FastTextSubwordVocab"
    model = fasttext.load_model(str(path))
    words = model.words[:200] + ["über", "naïve", "xyzzy", "日本", "a"]
    for w in words:
        strings, ids = model.get_subwords(w)
        got_strings, got_ids = emb.fasttext_subwords(w)
        assert (got_strings, got_ids) == (list(strings), ids.tolist()), w
        np.testing.assert_array_equal(emb.fasttext_vector(w), model.get_word_vector(w), err_msg=w)
    # unknown words through the vocabulary (emb[w], lookup): fastText's n-grams, never the
    # single "<" or ">" (they were counted once), normalized as finalfusion does
    unknown = [w for w in ["über", "naïve", "xyzzy", "日本", "qzxv", "ö", ""] if w not in set(model.words)]
    assert len(unknown) >= 5
    got, found = emb.lookup(unknown)
    assert found.all()
    for w, row in zip(unknown, got):
        strings, _ = model.get_subwords(w)
        assert sorted(emb.vocab.ngrams(w)) == sorted(strings), w
        want = model.get_word_vector(w)
        if np.linalg.norm(want) > 0:  # a zero sum stays zero
            want = want / np.linalg.norm(want)
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-6, err_msg=w)
        np.testing.assert_array_equal(emb[w], row, err_msg=w)


def test_fasttext_model_single_brackets_are_not_ngrams(tmp_path: Path) -> None:
    """A vocabulary read from a fastText model with minn 1 leaves out the single "<" and ">"
    (fastText's rule); a finalfusion chunk keeps finalfusion's rule (every n-gram of the
    bracketed word, as finalfusion-python gives it), also after a round trip."""
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma"]
    built = vf.Embeddings(words, rng.standard_normal((3 + 97, 8)).astype(np.float32), vocab="fasttext",
                          min_n=1, max_n=2, buckets=97)
    assert built.vocab.ngrams("ab") == ["<a", "<", "ab", "a", "b>", "b", ">"]
    built.write_fasttext(tmp_path / "m.bin")
    ft = vf.load_fasttext(tmp_path / "m.bin")
    assert ft.vocab.ngrams("ab") == ["<a", "ab", "a", "b>", "b"]
    assert ft.vocab.ngrams("") == ["<>"]
    # the vocabulary's rows agree with fastText's own rule (the fastText compatibility path)
    for w in ["ab", "x", "über", "<>"]:
        strings, ids = ft.fasttext_subwords(w)
        assert sorted(ft.vocab.ngrams(w)) == sorted(strings), w
        assert sorted(ft.vocab.subword_indices(w)) == sorted(ids), w
        assert ft.embedding(w) is not None
    # a copy of the vocabulary keeps the rule (pickle, deepcopy, detached)
    import copy
    import pickle

    for v in (pickle.loads(pickle.dumps(ft.vocab)), copy.deepcopy(ft.vocab), ft.vocab.detached()):
        assert v.ngrams("ab") == ft.vocab.ngrams("ab")
        assert v.subword_indices("ab") == ft.vocab.subword_indices("ab")
    assert pickle.loads(pickle.dumps(built.vocab)).ngrams("ab") == built.vocab.ngrams("ab")
    for kind in ("standard", "fst"):
        path = tmp_path / f"v_{kind}.fifu"
        ft.write(path, vocab=kind)
        back = vf.load(path, mmap=True)
        assert back.vocab.ngrams("ab") == built.vocab.ngrams("ab")
        assert back.vocab.subword_indices("ab") == built.vocab.subword_indices("ab")


@pytest.mark.parametrize(
    "name, hint",
    [("ft_skipgram.bin", "fastText model: read it with vf.load_fasttext"), ("w2v.fifu", "finalfusion file: read it with vf.load")],
)
def test_wrong_loader_names_the_right_one_briefly(peers: Path, name: str, hint: str) -> None:
    for load in (vf.load_word2vec, vf.load_text):
        with pytest.raises(vf.FormatError, match=hint) as info:
            load(peers / name)
        assert name in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize(
    "name, hint",
    [("w2v.fifu", "vf.load"), ("w2v.txt", "vf.load_text"), ("w2v.bin", "vf.load_word2vec")],
)
def test_load_fasttext_on_other_files_names_the_loader(peers: Path, name: str, hint: str) -> None:
    with pytest.raises(vf.FormatError, match=rf"read it with {hint} \(.*{name}\)"):
        vf.load_fasttext(peers / name)


def test_bad_text_values_are_quoted_briefly(tmp_path: Path) -> None:
    p = tmp_path / "long.txt"
    p.write_text("w" * 5000 + " 1 " + "x" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(vf.FormatError, match=r"value 2 of \"w{60}\"\.\.\. is not a number: \"x{60}\"\.\.\.") as info:
        vf.load_text(p, dims=False)
    assert len(str(info.value)) < 400


def test_word2vec_header_with_too_few_words_is_an_error(tmp_path: Path) -> None:
    """As for text files: records beyond the announced count mean a wrong header."""
    rec = lambda w, v: w.encode() + b" " + np.array(v, "<f4").tobytes() + b"\n"  # noqa: E731
    body = rec("a", [1, 2, 3]) + rec("b", [4, 5, 6])
    p = tmp_path / "under.bin"
    p.write_bytes(b"1 3\n" + body)
    with pytest.raises(vf.FormatError, match=r"announces 1 words, but more data follows record 1.*limit=1"):
        vf.load_word2vec(p)
    assert list(vf.load_word2vec(p, limit=1)) == ["a"]
    t = tmp_path / "under.txt"
    t.write_text("1 3\na 1 2 3\nb 4 5 6\n")
    with pytest.raises(vf.FormatError, match="announces 1 words"):
        vf.load_text(t)
    # trailing whitespace after the last record is fine
    p.write_bytes(b"2 3\n" + body + b"\n\r\n  ")
    assert list(vf.load_word2vec(p)) == ["a", "b"]


def test_convert_lossy(ff: Path, tmp_path: Path) -> None:
    src = ff / "rust" / "utf8-incomplete.bin"
    with pytest.raises(vf.FormatError, match="lossy"):
        vf.convert(src, tmp_path / "x.txt", progress=False)
    emb = vf.convert(src, tmp_path / "x.txt", progress=False, lossy=True)
    assert "zee\ufffdn" in list(emb)
    assert "zee\ufffdn" in list(vf.load_text(tmp_path / "x.txt"))
    out = subprocess.run(
        [sys.executable, "-m", "vecfusion", "convert", str(src), str(tmp_path / "y.fifu"), "--lossy"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "zee\ufffdn" in list(vf.load(tmp_path / "y.fifu"))


def test_zero_dimensional_writes_that_cannot_read_back_are_refused(tmp_path: Path) -> None:
    emb = vf.Embeddings(["a", "b"], np.zeros((2, 0), np.float32))
    with pytest.raises(ValueError, match="GloVe text"):
        emb.write_text(tmp_path / "x.glove", dims=False)
    with pytest.raises(ValueError, match="fastText needs dim > 0"):
        emb.write_fasttext(tmp_path / "x.bin")
    emb.write_text(tmp_path / "x.txt", dims=True)  # with a header it reads back
    back = vf.load_text(tmp_path / "x.txt")
    assert list(back) == ["a", "b"] and back.dims == 0
    assert not list(tmp_path.glob("*.glove")) and not list(tmp_path.glob("*.bin"))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e40", "-3.5e38"])
def test_non_finite_values_are_format_errors(tmp_path: Path, value: str) -> None:
    """A value that is not a finite float32 (NaN, infinity, beyond float32's range) cannot be
    normalized or compared: the text and word2vec readers refuse it, naming where it is."""
    p = tmp_path / "v.txt"
    p.write_text(f"2 3\nfoo 1 0.5 2\nbar 1 {value} 3\n")
    for normalize in (True, False):
        with pytest.raises(vf.FormatError, match=rf'line 3: value 2 of "bar" is not a finite float32: "{re.escape(value)}"'):
            vf.load_text(p, normalize=normalize)
    e = vf.Embeddings(["foo", "bar"], np.ones((2, 3), np.float32))
    e.write_word2vec(tmp_path / "v.bin")
    raw = bytearray((tmp_path / "v.bin").read_bytes())
    at = raw.index(b"bar ") + 4 + 8  # the third value of "bar"
    with np.errstate(over="ignore"):
        raw[at : at + 4] = np.float32(np.float64(value)).tobytes()  # 1e40 -> inf, as a float32 holds it
    (tmp_path / "v2.bin").write_bytes(bytes(raw))
    with pytest.raises(vf.FormatError, match=r"record 2 of 2: value 3 is .*not a finite number"):
        vf.load_word2vec(tmp_path / "v2.bin")


def test_write_fasttext_keeps_the_loss(tmp_path: Path) -> None:
    """The training arguments in the metadata go back into the header: every loss fastText has
    (hs 1, ns 2, softmax 3, ova 4) is kept, and fastText loads the model."""
    fasttext = pytest.importorskip("fasttext", reason="the fasttext package cannot be installed here")
    rng = np.random.default_rng(4)
    e = vf.Embeddings(["alpha", "beta"], rng.standard_normal((2 + 97, 8)).astype(np.float32), vocab="fasttext",
                      min_n=3, max_n=5, buckets=97)
    e.write_fasttext(tmp_path / "m.bin")
    raw = bytearray((tmp_path / "m.bin").read_bytes())
    for loss in (1, 2, 3, 4):
        struct.pack_into("<i", raw, 8 + 6 * 4, loss)  # dim ws epoch minCount neg wordNgrams loss
        (tmp_path / "in.bin").write_bytes(bytes(raw))
        vf.load_fasttext(tmp_path / "in.bin").write_fasttext(tmp_path / "out.bin")
        assert struct.unpack_from("<i", (tmp_path / "out.bin").read_bytes(), 8 + 6 * 4)[0] == loss
        m = fasttext.load_model(str(tmp_path / "out.bin"))
        np.testing.assert_allclose(m.get_word_vector("alpha"), e.fasttext_vector("alpha"), rtol=1e-6, atol=1e-7)


def _latin1_fasttext(tmp_path: Path, line: bytes) -> tuple[Any, Path]:
    """A small fastText model trained on a Latin-1 (not UTF-8) corpus, and its .bin file."""
    import fasttext

    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(line * 300)
    model = fasttext.train_unsupervised(
        str(corpus), dim=4, minCount=1, epoch=1, thread=1, verbose=0, bucket=200, minn=2, maxn=4
    )
    path = tmp_path / "latin1.bin"
    model.save_model(str(path))
    return model, path


def test_load_fasttext_lossy_takes_the_ngrams_of_the_stored_bytes(tmp_path: Path) -> None:
    """A word that is not UTF-8 (a Latin-1 corpus) is read with lossy=True as U+FFFD text, but
    its row is fastText's: the mean of its word row and the n-gram rows of the bytes in the
    file (they were taken from the replaced text). Checked against fastText's own
    getWordVector on those bytes."""
    import fasttext_pybind

    model, path = _latin1_fasttext(tmp_path, b"caf\xe9 na\xefve hello world foo bar\n")
    with pytest.raises(vf.FormatError, match="UTF-8"):
        vf.load_fasttext(path)
    emb = vf.load_fasttext(path, lossy=True, normalize=False)
    for raw, text in ((b"caf\xe9", "caf\ufffd"), (b"na\xefve", "na\ufffdve"), (b"hello", "hello")):
        want = fasttext_pybind.Vector(4)
        model.f.getWordVector(want, raw)  # the C++ call takes the bytes as they are
        np.testing.assert_array_equal(emb[text], np.array(want), err_msg=repr(raw))


def test_latin1_words_stay_distinct_where_lossy_would_merge_them(tmp_path: Path) -> None:
    """A Latin-1 file whose words differ only in non-ASCII bytes ("caf\\xe9", "caf\\xe8"):
    lossy=True makes both "caf\\ufffd" (a duplicate: refused); encoding="latin-1" reads them
    as gensim's encoding='latin-1' does, every byte the character of that code point."""
    words = [b"caf\xe9", b"caf\xe8", b"na\xefve", b"plain"]
    vecs = np.arange(len(words) * 3, dtype=np.float32).reshape(-1, 3) + 1
    w2v = tmp_path / "l1.bin"
    w2v.write_bytes(b"4 3\n" + b"".join(w + b" " + v.astype("<f4").tobytes() + b"\n" for w, v in zip(words, vecs)))
    txt = tmp_path / "l1.txt"
    txt.write_bytes(b"".join(w + b" " + " ".join(map(str, v.tolist())).encode() + b"\n" for w, v in zip(words, vecs)))
    want = [w.decode("latin-1") for w in words]
    for load in (lambda p, **k: vf.load_word2vec(w2v, **k), lambda p, **k: vf.load_text(txt, dims=False, **k)):
        with pytest.raises(vf.FormatError, match="latin-1"):
            load(None)  # the UTF-8 error names the way out
        with pytest.raises(vf.FormatError, match="duplicate"):
            load(None, lossy=True)
        e = load(None, encoding="latin-1", normalize=False)
        assert list(e) == want
        np.testing.assert_array_equal(e.storage, vecs)
        assert list(load(None, encoding="ISO-8859-1")) == want
    with pytest.raises(ValueError, match="encoding must be"):
        vf.load_word2vec(w2v, encoding="cp1252")
    # vf.convert passes it on
    out = tmp_path / "l1.fifu"
    vf.convert(w2v, out, encoding="latin-1", progress=False)
    assert list(vf.load(out)) == want
    out2 = tmp_path / "l1-cli.fifu"
    assert cli_main(["convert", str(txt), str(out2), "--from", "glove", "--encoding", "latin-1"]) == 0
    assert list(vf.load(out2)) == want


def test_load_fasttext_latin1_keeps_fasttexts_vectors(tmp_path: Path) -> None:
    """fastText keeps words as bytes: a Latin-1 model whose words collide under lossy=True
    loads with encoding="latin-1", every word row fastText's own vector for its bytes."""
    import fasttext_pybind

    model, path = _latin1_fasttext(tmp_path, b"caf\xe9 caf\xe8 na\xefve hello world\n")
    with pytest.raises(vf.FormatError, match="duplicate"):
        vf.load_fasttext(path, lossy=True)
    emb = vf.load_fasttext(path, encoding="latin-1", normalize=False)
    for raw in (b"caf\xe9", b"caf\xe8", b"na\xefve", b"hello"):
        want = fasttext_pybind.Vector(4)
        model.f.getWordVector(want, raw)
        np.testing.assert_array_equal(emb[raw.decode("latin-1")], np.array(want), err_msg=repr(raw))


def test_max_n_is_bounded_the_same_when_building_and_reading(tmp_path: Path) -> None:
    """max_n up to 1024 builds, writes and reads back; above it the constructor refuses what
    the readers refuse (a long unknown word costs memory and time quadratic in its length
    with a huge max_n), so vecfusion never writes a file it cannot read."""
    e = vf.Embeddings(["hello"], np.ones((9, 4), np.float32), vocab="bucket", buckets=3, min_n=3, max_n=1024)
    e.write(tmp_path / "m.fifu")
    back = vf.load(tmp_path / "m.fifu")
    assert (back.vocab.min_n, back.vocab.max_n) == (3, 1024)
    assert back.vocab.ngrams("abc") == ["<abc>", "<abc", "<ab", "abc>", "abc", "bc>"]  # finalfusion 0.7.1's
    for kind, extra in (("bucket", {"buckets": 3}), ("fasttext", {"buckets": 5}), ("explicit", {"ngrams": []})):
        with pytest.raises(ValueError, match="max_n=1025"):
            vf.Embeddings(["hello"], np.ones((9, 4), np.float32), vocab=kind, min_n=3, max_n=1025, **extra)


def test_fasttext_vector_of_a_finalfusion_conversion_is_fasttexts(peers: Path) -> None:
    """finalfusion's conversion averaged `</s>` with n-grams fastText does not give it:
    fasttext_vector undoes that mean (as write_fasttext does), so every known word's vector,
    `</s>` included, is fastText's get_word_vector on the original model."""
    fasttext = pytest.importorskip("fasttext", reason="the fasttext package cannot be installed here")
    conv = vf.load(peers / "ft_skipgram.fifu")
    model = fasttext.load_model(str(peers / "ft_skipgram.bin"))
    words = model.get_words(on_unicode_error="replace")
    assert words[0] == "</s>" and conv.vocab.index("</s>") == 0
    got = np.stack([conv.fasttext_vector(w) for w in words])
    want = np.stack([model.get_word_vector(w) for w in words])
    np.testing.assert_allclose(got[0], want[0], atol=5e-5)
    np.testing.assert_allclose(got, want, atol=5e-5)


@pytest.mark.parametrize("t", [float("nan"), float("inf"), float("-inf")])
def test_fasttext_special_sampling_threshold_loads(tmp_path: Path, t: float) -> None:
    """A fastText header whose sampling threshold `t` is NaN or infinite (fastText loads it)
    reads, keeps the value in the metadata and writes it back; it was a TOML error."""
    p = tmp_path / "t.bin"
    vf.Embeddings(["a", "b"], np.eye(2, 4, dtype=np.float32)).write_fasttext(p)
    raw = bytearray(p.read_bytes())
    struct.pack_into("<d", raw, 56, t)  # magic version, 12 ints, then t
    p.write_bytes(bytes(raw))
    e = vf.load_fasttext(p)
    got = e.metadata["fasttext"]["t"]
    assert (math.isnan(got) and math.isnan(t)) or got == t
    e.write_fasttext(tmp_path / "back.bin")
    back = struct.unpack_from("<d", (tmp_path / "back.bin").read_bytes(), 56)[0]
    assert (math.isnan(back) and math.isnan(t)) or back == t


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_load_fasttext_refuses_non_finite_values(tmp_path: Path, bad: float) -> None:
    """NaN or infinity in a fastText input matrix (a word row or an n-gram row) is a
    FormatError naming the row, as in word2vec and text files; it loaded, and gave NaN
    vectors and norms that queries then skipped. A word mean that overflows float32 too."""
    words = ["alpha", "beta", "gamma"]
    m = np.arange(1, (3 + 50) * 4 + 1, dtype=np.float32).reshape(53, 4)  # every value distinct
    sub = vf.Embeddings(words, m, vocab="fasttext", buckets=50, min_n=3, max_n=4)
    # an n-gram row no word uses (a row a word uses makes that word's mean the first bad row)
    used = {i for w in words for i in sub.vocab.subword_indices(w)}
    free = min(set(range(3, 53)) - used)
    cases = [
        # (embeddings, the float to replace, what the error names)
        (vf.Embeddings(words, m[:3]), m[1, 2], 'row 1 \\(word "beta"\\)'),
        (sub, m[free, 1], rf"row {free} \(n-gram bucket {free - 3}\)"),
    ]
    for emb, value, named in cases:
        emb.write_fasttext(tmp_path / "ok.bin")
        raw = (tmp_path / "ok.bin").read_bytes()
        assert len(vf.load_fasttext(tmp_path / "ok.bin")) == 3
        at = raw.find(np.float32(value).tobytes(), 100)
        assert at > 0
        data = bytearray(raw)
        struct.pack_into("<f", data, at, bad)
        (tmp_path / "bad.bin").write_bytes(bytes(data))
        for normalize in (True, False):
            with pytest.raises(vf.FormatError, match=named + ".*not a finite number"):
                vf.load_fasttext(tmp_path / "bad.bin", normalize=normalize)
    # finite values whose word mean overflows (a file vecfusion does not write: every input
    # value 1 of a written model made 3e38)
    ones = np.ones((3 + 50, 4), np.float32)
    vf.Embeddings(words, ones, vocab="fasttext", buckets=50, min_n=3, max_n=4).write_fasttext(tmp_path / "big.bin")
    raw = (tmp_path / "big.bin").read_bytes()
    (tmp_path / "big.bin").write_bytes(raw.replace(np.float32(1).tobytes(), np.float32(3e38).tobytes()))
    with pytest.raises(vf.FormatError, match="overflows"):
        vf.load_fasttext(tmp_path / "big.bin", normalize=False)
    # and vecfusion refuses to write vectors whose fastText mean would overflow
    big = np.full((3 + 50, 4), 3e38, np.float32)
    with pytest.raises(vf.FormatError, match='"alpha" \\(row 0\\) has no fastText input row whose mean'):
        vf.Embeddings(words, big, vocab="fasttext", buckets=50, min_n=3, max_n=4).write_fasttext(tmp_path / "big2.bin")
    assert not (tmp_path / "big2.bin").exists()


@pytest.mark.parametrize("mmap", [False, True])
def test_writers_refuse_values_their_readers_refuse(tmp_path: Path, mmap: bool) -> None:
    """A finalfusion file may hold what no word2vec, text or fastText file may: a NaN,
    infinite or negative norm (finalfusion's norms are lengths; a memory-mapped file's are
    not checked at open) or NaN and infinity in a row. Writing such a vector raised nothing
    and wrote `b NaN NaN` (or, for a negative norm, the vector with its sign flipped), which
    vecfusion's own readers then refused: now the writer refuses, naming the word, and
    leaves no file."""
    words = ["a", "b", "c"]
    rows = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    good = tmp_path / "good.fifu"
    vf.Embeddings(words, rows, norms=np.array([1, 2, 3], np.float32)).write(good)
    data = good.read_bytes()
    assert data[-12:] == np.array([1, 2, 3], "<f4").tobytes()  # the norms chunk ends the file
    cases = {}
    for norm, say in ((np.nan, "is nan"), (-2.0, "is -2"), (np.inf, "is inf")):
        cases[f"norm {norm}"] = (data[:-8] + np.array([norm, 3], "<f4").tobytes(), f'stored norm of "b" (row 1) {say}')
    at = data.index(np.float32(0.6).tobytes())
    for value in (np.nan, np.inf):
        cases[f"row {value}"] = (data[:at] + np.float32(value).tobytes() + data[at + 4:], f'vector of "c" (row 2) holds {value}')
    writers = {
        "text": lambda e, p: e.write_text(p),
        "word2vec": lambda e, p: e.write_word2vec(p),
        "fastText": lambda e, p: e.write_fasttext(p),
    }
    for name, (body, says) in cases.items():
        src = tmp_path / "bad.fifu"
        src.write_bytes(body)
        emb = vf.load(src, mmap=mmap)  # loads: the file is finalfusion's to judge
        for fmt, write in writers.items():
            out = tmp_path / f"out.{fmt}"
            with pytest.raises(vf.FormatError) as ei:
                write(emb, out)
            msg = str(ei.value).lower()
            assert says in msg and fmt.lower() in msg, (name, fmt, msg)
            assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.fifu", "good.fifu"]
        with pytest.raises(vf.FormatError, match="row"):
            vf.convert(src, tmp_path / "out.txt", progress=False)
        assert cli_main(["convert", str(src), str(tmp_path / "out.vec")]) == 1
        assert not (tmp_path / "out.vec").exists()
        emb = None
    # the good file writes as before
    for fmt, write in writers.items():
        write(vf.load(good, mmap=mmap), tmp_path / f"out.{fmt}")
    for p in tmp_path.glob("out.*"):
        p.unlink()

    # fastText also writes n-gram rows, and word rows rebuilt as vector x (k + 1) - n-grams
    words = ["alpha", "beta"]
    ngram_rows = np.arange(1, 51 * 2 + 1, dtype=np.float32).reshape(51, 2) / 64
    sub = vf.Embeddings(words, np.vstack([[[0.25, 0.5], [0.75, 1.0]], ngram_rows[:49]]).astype(np.float32),
                        vocab="fasttext", buckets=49, min_n=3, max_n=4)
    sub.write(src)
    data = src.read_bytes()
    at = data.index(np.float32(ngram_rows[47, 1]).tobytes())  # an n-gram row no word uses
    src.write_bytes(data[:at] + np.float32(np.nan).tobytes() + data[at + 4:])
    with pytest.raises(vf.FormatError, match=r"n-gram row 47 \(row 49\) holds NaN"):
        vf.load(src, mmap=mmap).write_fasttext(tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    huge = vf.Embeddings(words, np.vstack([[[3e38, 1], [0.75, 1.0]], ngram_rows[:49]]).astype(np.float32),
                         vocab="fasttext", buckets=49, min_n=3, max_n=4)
    with pytest.raises(vf.FormatError, match=r'"alpha" \(row 0\) has no fastText input row whose mean'):
        huge.write_fasttext(tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("name", ["ft_skipgram.bin", "ft_supervised.bin"])
@pytest.mark.parametrize("normalize", [False, True])
def test_fasttext_round_trip_is_exact(peers: Path, tmp_path: Path, name: str, normalize: bool) -> None:
    """write_fasttext rebuilds each word's input row from its vector and its n-gram rows; the
    plain inverse (vector x (k + 1) - n-grams) drifted by up to a few hundred ulps. Each
    value is now one whose fastText mean gives the vector back bit for bit: the written
    model's word vectors (read as fastText computes them) are the embeddings' own, and its
    n-gram rows, hence unknown words, are unchanged. (Rows stored normalized write row x
    norm, a vector that no input row need give exactly: within float rounding then.)"""
    emb = vf.load_fasttext(peers / name, normalize=normalize)
    emb.write_fasttext(tmp_path / "rt.bin")
    back = vf.load_fasttext(tmp_path / "rt.bin", normalize=False)
    words = list(emb.vocab.words)
    for w in words + ["zzqx", "überlang", ""]:
        got, want = back.fasttext_vector(w), emb.fasttext_vector(w)
        if normalize and w in emb.vocab:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-8 + 2e-7 * np.linalg.norm(want), err_msg=w)
        else:
            np.testing.assert_array_equal(got, want, err_msg=w)
    if not normalize:
        np.testing.assert_array_equal(back.lookup(words)[0], emb.lookup(words)[0])
        # and again: a second round trip writes the same file
        back.write_fasttext(tmp_path / "rt2.bin")
        assert (tmp_path / "rt2.bin").read_bytes() == (tmp_path / "rt.bin").read_bytes()


def test_fasttext_word_vectors_start_from_zero_as_fasttexts(tmp_path: Path) -> None:
    """fastText adds a word's input row to a zero vector, so a -0.0 in the row of `</s>`
    (which has no n-grams) is +0.0 in its vector; vecfusion's import kept -0.0."""
    m = np.array([[-0.0, 1.0], [0.5, -0.0]] + [[0.25, 0.125]] * 20, np.float32)
    vf.Embeddings(["</s>", "ab"], m, vocab="fasttext", buckets=20, min_n=3, max_n=3).write_fasttext(tmp_path / "z.bin")
    back = vf.load_fasttext(tmp_path / "z.bin", normalize=False)
    assert np.signbit(back.fasttext_vector("</s>")).tolist() == [False, False]
    assert back.fasttext_vector("</s>").tolist() == [0.0, 1.0]


def test_fasttext_output_matrix_must_end_the_file(tmp_path: Path, peers: Path) -> None:
    """The reader stopped after the input matrix: a file cut inside the output matrix,
    with bytes after it, or whose input matrix was read with another layout (a quantized
    model's norm flag cleared: the norm codes were then taken for the output matrix) loaded,
    the last with other vectors, where fastText refuses it."""
    m = np.arange(40, dtype=np.float32).reshape(10, 4) / 10
    ok = tmp_path / "ok.bin"
    vf.Embeddings(["a", "b"], m, vocab="fasttext", buckets=8).write_fasttext(ok)
    data = ok.read_bytes()
    assert vf.load_fasttext(ok).storage.shape == (10, 4)
    bad = tmp_path / "bad.bin"
    end = data.index(np.int64(10).tobytes() + np.int64(4).tobytes()) + 16 + 160  # after the input matrix
    for cut, why in ((data[:end], "output quantization flag"), (data[:end + 5], "output matrix"),
                     (data[:-4], "ends early"), (data + b"\xff" * 64, "something follows it"),
                     (data[:end] + b"\0" + np.int64(-1).tobytes() * 2, r"shape \(-1, -1\)")):
        bad.write_bytes(cut)
        with pytest.raises(vf.FormatError, match=why):
            vf.load_fasttext(bad)
    # the output's flag set (-qout) over a dense input matrix: fastText reads the output
    # dense, and so does the check
    for flag in (b"\x01", b"\x07"):
        bad.write_bytes(data[:end] + flag + data[end + 1:])
        np.testing.assert_array_equal(vf.load_fasttext(bad).storage, vf.load_fasttext(ok).storage)
    ftz = bytearray((peers / "ft_supervised.ftz").read_bytes())
    qnorm = 31564  # the quantized input matrix's norm flag, after its quantization flag
    assert ftz[qnorm - 1] == 1 and ftz[qnorm] == 1
    ftz[qnorm] = 0
    bad.write_bytes(bytes(ftz))
    with pytest.raises(vf.FormatError, match="fastText"):
        vf.load_fasttext(bad)
