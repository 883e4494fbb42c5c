"""Python API and CLI edge cases found in QA: `in` with non-str, analogy masks as lists,
text files with a byte order mark, readable errors for a wrong file kind, and the CLI
query commands on every input format."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import vecfusion as vf
from vecfusion.cli import main as cli

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "qa" / "ff"

ROWS = {
    "the": [1.0, 2.0, 3.0],
    "café": [-0.5, 0.25, 1e-3],
    "東京": [4.0, 5.0, 6.0],
    "x": [7.0, 8.0, 9.0],
}


def _text(header: bool = True, eol: str = "\n") -> str:
    lines = [f"{len(ROWS)} 3"] if header else []
    lines += [f"{w} " + " ".join(repr(v) for v in vs) for w, vs in ROWS.items()]
    return eol.join(lines) + eol


def _w2v_bytes() -> bytes:
    b = f"{len(ROWS)} 3\n".encode()
    for w, vs in ROWS.items():
        b += w.encode() + b" " + struct.pack("<3f", *vs) + b"\n"
    return b


def _check_rows(e: vf.Embeddings) -> None:
    assert e.vocab.words == list(ROWS)
    np.testing.assert_array_equal(np.asarray(e.storage), np.float32(list(ROWS.values())))


@pytest.mark.parametrize("kind", ["simple", "ffbucket", "explicit", "ftbucket"])
def test_contains_non_str_is_false(kind: str) -> None:
    e = vf.load(FIX / f"{kind}.fifu")
    for x in (3, None, b"one", 1.5, ("one",)):
        assert (x in e) is False
        assert (x in e.vocab) is False
    assert "one" in e and "one" in e.vocab


def test_analogy_mask_any_sequence() -> None:
    e = vf.load(FIX / "simple.fifu")
    want = e.analogy("one", "two", "café", k=10, mask=(True, False, True))
    assert e.analogy("one", "two", "café", k=10, mask=[True, False, True]) == want
    assert e.analogy("one", "two", "café", k=10, mask=np.array([True, False, True])) == want
    assert "two" in [w for w, _ in want]
    assert e.analogy("one", "two", "café", k=10) == e.analogy("one", "two", "café", k=10, mask=(True,) * 3)
    with pytest.raises(ValueError, match="three"):
        e.analogy("one", "two", "café", mask=[True, True])
    with pytest.raises(TypeError, match="mask"):
        e.analogy("one", "two", "café", mask="yes")
    with pytest.raises(TypeError, match="mask"):
        e.analogy("one", "two", "café", mask=5)


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_text_with_utf8_bom(tmp_path: Path, header: bool, eol: str) -> None:
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbf" + _text(header, eol).encode())
    _check_rows(vf.load_text(p, normalize=False))
    _check_rows(vf.load_text(p, dims=header, normalize=False))
    _check_rows(vf.load_text(p, normalize=False, limit=10))
    # without the BOM the same
    q = tmp_path / "plain.txt"
    q.write_bytes(_text(header, eol).encode())
    _check_rows(vf.load_text(q, normalize=False))


def test_load_wrong_kind_names_file_and_the_right_loader(tmp_path: Path) -> None:
    p = tmp_path / "vectors.bin"
    p.write_bytes(_w2v_bytes())
    with pytest.raises(vf.FormatError, match=r'magic b"4 3\\n.*vectors\.bin.*load_word2vec') as ei:
        vf.load(p)
    assert "[52," not in str(ei.value)  # bytes shown as a byte string, not a list of ints
    data = (FIX / "simple.fifu").read_bytes()
    t = tmp_path / "cut.fifu"
    t.write_bytes(data[: len(data) // 2])
    for mmap in (False, True):
        with pytest.raises(vf.FormatError, match=r"truncated.*cut\.fifu"):
            vf.load(t, mmap=mmap)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    out = {"word2vec": tmp_path / "v.w2v", "text": tmp_path / "v.txt", "glove": tmp_path / "v.glove"}
    out["word2vec"].write_bytes(_w2v_bytes())
    out["text"].write_text(_text(True), encoding="utf-8")
    out["glove"].write_text(_text(False), encoding="utf-8")
    out["finalfusion"] = tmp_path / "v.fifu"
    vf.load_word2vec(out["word2vec"]).write(out["finalfusion"])
    return out


@pytest.mark.parametrize("fmt", ["finalfusion", "word2vec", "text", "glove"])
def test_cli_similar_and_analogy_on_every_format(files: dict[str, Path], fmt: str, capsys) -> None:
    ref = vf.load(files["finalfusion"])
    assert cli(["similar", str(files[fmt]), "the", "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == [w for w, _ in ref.similar("the", k=2)]
    assert cli(["analogy", str(files[fmt]), "the", "x", "café", "-k", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == [w for w, _ in ref.analogy("the", "x", "café", k=1)]


def test_cli_similar_unknown_word_message(files: dict[str, Path], capsys) -> None:
    assert cli(["similar", str(files["finalfusion"]), "nope"]) == 1
    err = capsys.readouterr().err
    assert "'nope' has no embedding" in err


def test_cli_reads_latin1_and_lossy_input_in_every_command(tmp_path: Path, capsys) -> None:
    """info, similar, analogy and quantize read what convert reads: --encoding and --lossy
    (they had neither, and their errors suggested Python arguments)."""
    lat = tmp_path / "lat.txt"
    lat.write_bytes(b"3 2\ncaf\xe9 1 2\nb 3 4\nc 5 6\n")
    assert cli(["similar", str(lat), "b", "-k", "1"]) == 1  # not UTF-8: the hint names the options
    err = capsys.readouterr().err
    assert "--encoding latin-1" in err and "--lossy" in err and "lossy=True" not in err, err
    assert cli(["similar", str(lat), "b", "-k", "1", "--encoding", "latin-1"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == "c"
    assert cli(["analogy", str(lat), "b", "c", "café", "-k", "1", "--encoding", "latin-1"]) == 0
    assert cli(["info", str(lat), "--lossy", "--json"]) == 0
    assert '"words": 3' in capsys.readouterr().out
    dst = tmp_path / "q.fifu"
    assert cli(["quantize", str(lat), str(dst), "-m", "1", "-b", "1", "-q", "--encoding", "latin-1"]) == 0
    assert "café" in vf.load(dst)


def test_cli_wrong_format_hint_names_the_option(files: dict[str, Path], capsys) -> None:
    """A file given with the wrong format: the hint names --format (--from for convert) and
    the right format, not the Python loader."""
    cases = [
        (["info", "--format", "text", str(files["word2vec"])], "give --format word2vec"),
        (["info", "--format", "word2vec", str(files["text"])], "give --format text"),
        (["info", "--format", "fasttext", str(files["finalfusion"])], "give --format finalfusion"),
        (["similar", "--format", "finalfusion", str(files["word2vec"]), "the"], "give --format word2vec"),
        (["similar", "--format", "finalfusion", str(files["text"]), "the"], "give --format text"),
        (["convert", "--from", "fasttext", str(files["word2vec"]), str(files["word2vec"]) + ".fifu"],
         "give --from word2vec"),
    ]
    for argv, hint in cases:
        assert cli(argv) == 1
        err = capsys.readouterr().err
        assert hint in err and "vf." not in err, err


def test_load_of_another_format_names_its_loader(files: dict[str, Path], ff: Path, tmp_path: Path) -> None:
    """vf.load on a file of another format says which loader reads it, where the first
    bytes or lines tell (it gave the same list of loaders for every file)."""
    for path, loader in ((files["word2vec"], "vf.load_word2vec"), (files["text"], "vf.load_text"),
                         (ff / "rust" / "fasttext.bin", "vf.load_fasttext")):
        with pytest.raises(vf.FormatError, match="bad magic") as e:
            vf.load(path)
        assert f"read it with {loader}" in str(e.value) and str(path) in str(e.value), e.value
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\xff\xfe\x00\x01" * 8)
    with pytest.raises(vf.FormatError, match="open with vf.load_word2vec, vf.load_text and vf.load_fasttext"):
        vf.load(odd)


def test_cli_errors_name_the_command_options(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    """The core's messages name the Python API's arguments (n_iterations, vocab='fst', analogy
    word b): the CLI says them as its own options and positionals."""
    w2v, out = str(files["word2vec"]), str(tmp_path / "q.fifu")
    cases = [
        (["quantize", w2v, out, "-q", "-i", "0"], "--iterations must be", "n_iterations"),
        (["quantize", w2v, out, "-q", "--attempts", "0"], "--attempts must be", "n_attempts"),
        (["quantize", w2v, out, "-q", "-m", "2"], "--subquantizers 2 does not divide", "n_subquantizers"),
        (["quantize", w2v, out, "-q", "-b", "9"], "--bits 9 is out of range", "bits="),
        (["quantize", w2v, out, "-q", "--sample", "-1"], "--sample -1 must not be negative", "sample="),
        (["quantize", w2v, out, "-q", "-m", "1"], "--bits 8 means 256 centroids", "bits="),
        (["quantize", w2v, out, "-q", "-i", "-1"], "--iterations -1 must not be negative", "n_iterations"),
        (["quantize", w2v, out, "-q", "--attempts", "-1"], "--attempts -1 must not be negative", "n_attempts"),
        # beyond 128 bits: the conversion's error names the argument in a note only
        (["quantize", w2v, out, "-q", "--attempts", "9" * 41], f"--attempts {'9' * 41} is out of range", "n_attempts"),
        (["quantize", w2v, out, "-q", "-m", "9" * 41], f"--subquantizers {'9' * 41} is out of range", "n_sub"),
        (["quantize", w2v, out, "-q", "--sample", "9" * 41], f"--sample {'9' * 41} is out of range", "sample="),
        (["quantize", w2v, out, "-q", "-b", "9" * 41], f"--bits {'9' * 41} is out of range", "bits="),
        (["convert", w2v, str(tmp_path / "x.txt"), "--vocab", "fst"], "--vocab fst applies", "vocab="),
        (["analogy", w2v, "the", "nope", "x"], 'analogy word B ("nope")', "word b"),
        (["analogy", w2v, "no1", "no2", 'q", b ("x'], 'words A ("no1"), B ("no2"), C ("q\\", b (\\"x")', "A (\"no1\"), b"),
    ]
    for argv, want, python_name in cases:
        assert cli(argv) == 1
        err = capsys.readouterr().err
        assert want in err and python_name not in err, err
    # paths in messages are shown as given, whatever they hold
    for argv, path in (
        (["quantize", w2v, str(tmp_path / "nope" / "sample=1" / "q.fifu"), "-q", "-m", "1", "-b", "1"],
         "nope/sample=1/q.fifu"),
        (["quantize", str(tmp_path / "n_iterations must.txt"), out, "-q"], "n_iterations must.txt"),
        (["info", str(tmp_path / "model--dim=300.fifu")], "model--dim=300.fifu"),
    ):
        if argv[0] == "info":
            Path(argv[1]).write_bytes(b"garbage")
        assert cli(argv) == 1
        err = capsys.readouterr().err
        assert path in err, err


def test_cli_info_names_a_headerless_txt_glove(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    """A .txt without a "<words> <dims>" line is GloVe (the reader detects it), not "text"."""
    glove_txt = tmp_path / "g.txt"
    glove_txt.write_bytes(files["glove"].read_bytes())
    for path, want in ((glove_txt, "glove"), (files["text"], "text")):
        assert cli(["info", str(path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["format"] == want
    # a format given is reported as given
    assert cli(["info", str(glove_txt), "--format", "text", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "text"


@pytest.mark.skipif(sys.platform != "linux", reason="file names of undecodable bytes")
def test_cli_info_json_of_an_undecodable_file_name_is_utf8(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    """A file name's undecodable byte (a lone surrogate in Python) was printed raw: the
    JSON was no UTF-8 text, which parsers refuse. It is now a \\u escape."""
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/x\xff.fifu"))
    odd.write_bytes(files["finalfusion"].read_bytes())
    assert cli(["info", str(odd), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.encode("utf-8"))["file"] == str(odd)


def test_cli_quantize_word2vec_input(files: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "q.fifu"
    assert cli(["quantize", str(files["word2vec"]), str(dst), "-m", "1", "-b", "2", "-q"]) == 0
    q = vf.load(dst)
    assert q.storage_kind == "QuantizedArray" and q.vocab.words == list(ROWS)


def test_metadata_numpy_values_and_datetimes_round_trip(tmp_path: Path) -> None:
    import datetime as dt

    e = vf.load(FIX / "simple.fifu")
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
    e.metadata = {
        "loss": np.float32(0.5),
        "epochs": np.int64(3),
        "flag": np.bool_(True),
        "shape": np.array([2, 3]),
        "nested": {"when": when, "day": dt.date(2024, 5, 6), "at": dt.time(7, 8, 9)},
        "frac": dt.time(7, 8, 9, 500),
        "text": "ü🙂",
    }
    want = {
        "frac": dt.time(7, 8, 9, 500),
        "loss": 0.5,
        "epochs": 3,
        "flag": True,
        "shape": [2, 3],
        "nested": {"when": when, "day": dt.date(2024, 5, 6), "at": dt.time(7, 8, 9)},
        "text": "ü🙂",
    }
    assert e.metadata == want
    assert type(e.metadata["epochs"]) is int and type(e.metadata["loss"]) is float
    p = tmp_path / "m.fifu"
    e.write(p)
    back = vf.load(p)
    assert back.metadata == want
    back.metadata = back.metadata  # a read dict can be assigned back unchanged
    assert back.metadata == want


def test_metadata_toml_is_standard_toml(tmp_path: Path) -> None:
    import datetime as dt

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    e = vf.load(FIX / "simple.fifu")
    want = {"n": 3, "x": 0.5, "when": dt.datetime(2024, 5, 6, 7, 8, 9), "t": {"a": [1, 2]}}
    e.metadata = {**want, "n": np.int32(3), "x": np.float64(0.5)}
    p = tmp_path / "m.fifu"
    e.write(p)
    raw = p.read_bytes()
    start = 12 + 4 * struct.unpack_from("<I", raw, 8)[0]
    cid, n = struct.unpack_from("<IQ", raw, start)
    assert cid == 5
    assert tomllib.loads(raw[start + 12 : start + 12 + n].decode()) == want


def test_metadata_toml_reads_the_same_in_older_toml_readers(tmp_path: Path) -> None:
    """finalfusion-python reads metadata with the `toml` 0.10 package, which misreads the
    multi-line strings TOML 1.0 writers use for text with newlines (a string ending in a
    quote is an error there, a leading newline is dropped): strings are written on one line
    with escapes, and every reader gets the same dict."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    old_toml = pytest.importorskip("toml", reason="the toml package (requirements-dev.txt) is missing")
    want = {
        "ends in a quote": 'a\nb"',
        "leading newline": "\nabc",
        "controls": "tab\there \\ back \x01 ctl \x7f \r\x08\x0c",
        "quotes": "''' \" x \"",  # (toml 0.10 misreads three quotes in a row, escaped or not)
        "ü key": "ü",
        "t": {"nested": {"x": [1, 2], "f": float("inf"), "z": -0.5, "s": ["a\nb", "c"]}},
        "arr": [{"a": 1, "s": "x\ny"}, {"a": 2}],
        "empty": {},
        "i": 3,
        "d": 1.0,
    }
    e = vf.load(FIX / "simple.fifu")
    e.metadata = want
    p = tmp_path / "m.fifu"
    e.write(p)
    raw = p.read_bytes()
    start = 12 + 4 * struct.unpack_from("<I", raw, 8)[0]
    cid, n = struct.unpack_from("<IQ", raw, start)
    text = raw[start + 12 : start + 12 + n].decode()
    assert cid == 5 and '"""' not in text
    assert tomllib.loads(text) == want
    assert old_toml.loads(text) == want
    assert vf.load(p).metadata == want


def test_metadata_fractional_seconds_read_the_same_in_older_toml_readers(tmp_path: Path) -> None:
    """A local time with fractional seconds was written as the toml crate trims it
    (`07:08:09.12`), which toml 0.10 (finalfusion-python) reads as 07:08:09: fractions are
    written with six digits, as Python's isoformat writes them."""
    import datetime as dt

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    old_toml = pytest.importorskip("toml", reason="the toml package (requirements-dev.txt) is missing")
    want = {
        "t": dt.time(7, 8, 9, 120000),
        "u": dt.time(7, 8, 9, 5),
        "local": dt.datetime(2024, 5, 6, 7, 8, 9, 500000),
        "utc": dt.datetime(2024, 5, 6, 7, 8, 9, 100000, tzinfo=dt.timezone.utc),
        "whole": dt.time(7, 8, 9),
    }
    e = vf.Embeddings(["a"], np.ones((1, 2), np.float32), metadata=want)
    text = _toml_text(e)
    assert "t = 07:08:09.120000\n" in text and "whole = 07:08:09\n" in text
    assert tomllib.loads(text) == want
    assert old_toml.loads(text) == want
    p = tmp_path / "m.fifu"
    e.write(p)
    assert vf.load(p).metadata == want


def test_metadata_table_of_empty_name_is_refused() -> None:
    """`{"x": {"": {}}}` was written as a `[x.""]` section, which toml 0.10 (finalfusion-python)
    refuses ("Can't have a keygroup with an empty name"): the whole file would not open there."""
    old_toml = pytest.importorskip("toml", reason="the toml package (requirements-dev.txt) is missing")
    for bad in ({"x": {"": {}}}, {"": {"a": 1}}, {"x": {"": [{"a": 1}]}}):
        with pytest.raises(ValueError, match="empty name"):
            vf.Embeddings(["a"], np.ones((1, 2), np.float32), metadata=bad)
    # an empty key of a plain value is fine in every reader
    e = vf.Embeddings(["a"], np.ones((1, 2), np.float32), metadata={"": 1, "x": {"": "y"}})
    assert e.metadata == old_toml.loads(_toml_text(e)) == {"": 1, "x": {"": "y"}}


@pytest.mark.parametrize("bad", [[1, "x"], [1, 2.5], [True, 1], [{"a": 1}, 1], [[1], 2]])
def test_metadata_arrays_of_mixed_kinds_are_refused(bad: list) -> None:
    """toml 0.10 (finalfusion-python) refuses `[1, "x"]`, `[1, 2.5]`, ... (the whole file
    would not open there) and drops the 1 of `[{a = 1}, 1]`: such metadata is a ValueError."""
    e = vf.load(FIX / "simple.fifu")
    with pytest.raises(ValueError, match="mixes a"):
        e.metadata = {"x": {"bad": bad}}
    with pytest.raises(ValueError, match="mixes a"):
        vf.Embeddings(["a"], np.ones((1, 2), np.float32), metadata={"bad": bad})
    # arrays of one kind each (also inside an array of arrays) are fine, in every reader
    good = {"ints": [1, 2], "nested": [[1, 2], ["a"]], "tables": [{"a": 1}, {"b": "x"}], "none": []}
    e.metadata = good
    assert e.metadata == good
    old_toml = pytest.importorskip("toml", reason="the toml package (requirements-dev.txt) is missing")
    assert old_toml.loads(_toml_text(e)) == good


def _toml_text(e: vf.Embeddings) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.fifu"
        e.write(p)
        raw = p.read_bytes()
    start = 12 + 4 * struct.unpack_from("<I", raw, 8)[0]
    cid, n = struct.unpack_from("<IQ", raw, start)
    assert cid == 5
    return raw[start + 12 : start + 12 + n].decode()


def test_explicit_vocab_of_no_ngrams_is_refused() -> None:
    """finalfusion-python cannot load an explicit n-gram table without n-grams."""
    with pytest.raises(ValueError, match="at least one n-gram"):
        vf.Embeddings(["a"], np.ones((1, 2), np.float32), vocab="explicit", ngrams=[])


def test_cli_output_into_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    n = 6000  # ~100 KB of output: more than a pipe buffer holds
    p = tmp_path / "many.txt"
    rng = np.random.default_rng(0)
    p.write_text("".join(f"w{i} {a:.3f} {b:.3f}\n" for i, (a, b) in enumerate(rng.standard_normal((n, 2)))))
    with subprocess.Popen(
        [sys.executable, "-m", "vecfusion", "similar", str(p), "w0", "-k", str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, err
    assert first.startswith(b"w") and b"\t" in first
    assert b"Broken pipe" not in err and b"Error" not in err, err


def test_quantize_keeps_the_current_metadata(tmp_path: Path) -> None:
    e = vf.load(FIX / "simple_meta.fifu")
    assert e.metadata["a"] == 1
    e.metadata = {"trained": {"by": "me"}}
    q = e.quantize(n_subquantizers=2, bits=2, n_iterations=2, progress=False)
    assert q.metadata == {"trained": {"by": "me"}}
    q.write(tmp_path / "q.fifu")
    assert vf.load(tmp_path / "q.fifu").metadata == {"trained": {"by": "me"}}
    e.metadata = None
    assert e.quantize(n_subquantizers=2, bits=2, n_iterations=2, progress=False).metadata is None


def test_constructor_takes_any_real_matrix() -> None:
    words = ["a", "b", "c"]
    want = np.array([[1, 0], [0, -1], [0, 0]], np.float32)
    for m in (want.astype(np.float64), want.astype(np.int64), want.tolist(), np.asfortranarray(want)):
        e = vf.Embeddings(words, m, norms=np.ones(3))
        np.testing.assert_array_equal(np.asarray(e.storage), want)
        np.testing.assert_array_equal(e.norms, np.ones(3, np.float32))
        e = vf.Embeddings(words, np.asarray(m) * 3)  # any rows without norms
        np.testing.assert_array_equal(np.asarray(e.storage), want * 3)
    with pytest.raises(TypeError):
        vf.Embeddings(words, np.ones(3))
    with pytest.raises(ValueError, match="4 rows"):
        vf.Embeddings(words, np.ones((4, 2)))


def test_similar_to_a_word_with_a_nan_vector_raises(tmp_path: Path) -> None:
    # vf.Embeddings and the text readers refuse NaN ...
    (tmp_path / "nan.txt").write_text("a 1 0\nb 0.8 0.6\nc nan 1\nd 0 1\n")
    with pytest.raises(vf.FormatError, match=r'line 3: value 1 of "c" is not a finite float32: "nan"'):
        vf.load_text(tmp_path / "nan.txt", normalize=False)
    # ... a finalfusion file may hold one all the same
    m = np.array([[1, 0], [0.8, 0.6], [0.25, 1], [0, 1]], np.float32)
    vf.Embeddings(["a", "b", "c", "d"], m).write(tmp_path / "nan.fifu")
    raw = (tmp_path / "nan.fifu").read_bytes()
    at = raw.rindex(np.float32(0.25).tobytes())
    (tmp_path / "nan.fifu").write_bytes(raw[:at] + np.float32("nan").tobytes() + raw[at + 4 :])
    e = vf.load(tmp_path / "nan.fifu")
    assert np.isnan(e["c"][0])
    with pytest.raises(ValueError, match=r'embedding of "c" contains NaN'):
        e.similar("c")
    with pytest.raises(ValueError, match="NaN"):
        e.analogy("a", "c", "d")
    # a NaN row is never an answer to other queries
    assert [w for w, _ in e.similar("a", k=10)] == ["b", "d"]
    # nor to gensim's queries: scored NaN (as gensim scores it), ranked nowhere; a zero row
    # (no NaN) scores 0
    for mmap in (False, True):
        e = vf.load(tmp_path / "nan.fifu", mmap=mmap)
        assert [w for w, _ in e.most_similar("a", topn=10)] == ["b", "d"]
        assert [w for w, _ in e.most_similar_cosmul("a", topn=10)] == ["b", "d"]
        assert [w for w, _ in e.most_similar("a", topn=10, restrict_vocab=3)] == ["b"]
        scores = e.most_similar("a", topn=None)
        assert np.isnan(scores[2]) and not np.isnan(np.delete(scores, 2)).any()
        assert np.isnan(e.most_similar_cosmul("a", topn=None)[2])


def test_norms_over_rows_that_are_not_unit_vectors_in_a_file(tmp_path: Path) -> None:
    """The same rows written out and opened again (a norms chunk over rows that are not unit
    vectors) were ranked by raw dot product for an int topn, and by cosine for topn=None or
    a restrict_vocab below the word count: the answers changed with save and load, and
    with topn. A file's rows are now checked once, and every call ranks by cosine."""
    rng = np.random.default_rng(18)
    n, d = 50, 6
    words = [f"w{i}" for i in range(n)]
    m = (rng.standard_normal((n, d)) * rng.uniform(0.1, 10, (n, 1))).astype(np.float32)
    vf.Embeddings(words, m, norms=np.ones(n, np.float32)).write(tmp_path / "raw.fifu")
    unit = m / np.linalg.norm(m, axis=1, keepdims=True)
    cos = unit @ unit[1]
    order = [j for j in np.argsort(-cos, kind="stable") if j != 1][:3]
    for mmap in (False, True):
        f = vf.load(tmp_path / "raw.fifu", mmap=mmap)
        for rv in (None, n, 10**6):
            got = f.most_similar("w1", topn=3, restrict_vocab=rv)
            assert [w for w, _ in got] == [words[j] for j in order], (mmap, rv)
            np.testing.assert_allclose([s for _, s in got], cos[order], rtol=1e-5)
        np.testing.assert_allclose(f.most_similar("w1", topn=None), cos, rtol=1e-5, atol=1e-6)
    # a file whose norms chunk comes with unit rows and one infinite row (finalfusion-python
    # writes such files): the infinite row is never an answer (it scored inf)
    u = unit.copy()
    u[4] = [0.6, 0.8, 0, 0, 0, 0]
    vf.Embeddings(words, u, norms=np.ones(n, np.float32)).write(tmp_path / "inf.fifu")
    data = (tmp_path / "inf.fifu").read_bytes()
    row = np.asarray(u[4], np.float32).tobytes()
    assert data.count(row) == 1
    bad = np.asarray([np.inf, 0.8, 0, 0, 0, 0], np.float32).tobytes()
    (tmp_path / "inf.fifu").write_bytes(data.replace(row, bad))
    ucos = u @ u[1]
    finite = [j for j in np.argsort(-ucos, kind="stable") if j not in (1, 4)][:3]
    for mmap in (False, True):
        f = vf.load(tmp_path / "inf.fifu", mmap=mmap)
        assert [w for w, _ in f.most_similar("w1", topn=3)] == [words[j] for j in finite]
        assert np.isnan(f.most_similar("w1", topn=None)[4])


def test_norms_over_rows_that_are_not_unit_vectors() -> None:
    """finalfusion's convention has the rows unit vectors when there are norms, and the gensim-
    style searches took cosines as dot products then: with norms over raw rows (or rows rebuilt
    from a quantizer) most_similar ranked by dot product, with scores above 1. Now the rows'
    own lengths are used, as without norms (and as gensim does)."""
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((300, 16)).astype(np.float32) * rng.uniform(0.2, 12, (300, 1)).astype(np.float32)
    words = [f"w{i:03d}" for i in range(300)]
    plain = vf.Embeddings(words, raw)
    normed = vf.Embeddings(words, raw, norms=np.linalg.norm(raw, axis=1))
    for q in ("w001", "w150"):
        want = plain.most_similar(q, topn=5)
        got = normed.most_similar(q, topn=5)
        assert [w for w, _ in got] == [w for w, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)
        assert all(s <= 1.0 + 1e-6 for _, s in got)
    # unit rows with norms keep the fast path (finalfusion's convention), with the same answers
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    fast = vf.Embeddings(words, unit, norms=np.linalg.norm(raw, axis=1))
    assert [w for w, _ in fast.most_similar("w001", topn=5)] == [w for w, _ in plain.most_similar("w001", topn=5)]


def test_cli_paths_as_given(tmp_path: Path, capsys) -> None:
    """convert wrote "new.fifu/" as a regular file named new.fifu (Path drops the slash),
    and an empty path was '.', "a directory"."""
    src = tmp_path / "s.txt"
    src.write_text("2 2\na 1 2\nb 3 4\n")
    assert cli(["convert", str(src), str(tmp_path / "new.fifu") + "/"]) == 1
    assert not (tmp_path / "new.fifu").exists()
    assert "the output name ends in a slash" in capsys.readouterr().err
    for argv in (["info", ""], ["convert", "", str(tmp_path / "x.fifu")], ["similar", "", "a"]):
        assert cli(argv) == 1
        err = capsys.readouterr().err
        assert "No such file" in err and "directory: '.'" not in err, err


def test_bad_metadata_keys_values_and_ngrams_name_the_problem() -> None:
    """A lone surrogate in a metadata key was reported as "keys must be strings" (it is a
    str), in a value as a bare UnicodeEncodeError; `ngrams=` of the wrong kind showed pyo3's
    "'int' object is not an instance of 'Sequence'"."""
    m = np.ones((1, 2), np.float32)
    with pytest.raises(ValueError, match=r"metadata key '\\ud800' .*not valid Unicode"):
        vf.Embeddings(["a"], m, metadata={"\ud800": 1})
    with pytest.raises(ValueError, match=r"metadata value '\\udfff' .*not valid Unicode"):
        vf.Embeddings(["a"], m, metadata={"a": {"b": ["\udfff"]}})
    with pytest.raises(TypeError, match="metadata keys must be strings, got 1 of type int"):
        vf.Embeddings(["a"], m, metadata={1: 2})
    two = np.ones((2, 2), np.float32)
    for bad, kind in ((5, "int"), ("ab", "str"), ([("ab", "x")], "list holding \\('ab', 'x'\\)"),
                      ([("ab",)], "list"), ([("ab", True)], "list"), ([(b"ab", 0)], "list")):
        with pytest.raises(TypeError, match=f"ngrams must be a list of \\(n-gram, index\\) pairs.*got {kind}"):
            vf.Embeddings(["a"], two, vocab="explicit", ngrams=bad, min_n=2, max_n=2)
    with pytest.raises(ValueError, match=r"n-gram '\\udcff' is not valid Unicode"):
        vf.Embeddings(["a"], two, vocab="explicit", ngrams=[("\udcff", 0)], min_n=2, max_n=2)
    for big in (2**200, -1):
        with pytest.raises(ValueError, match=f"the index {big} of n-gram \"ab\" is out of range"):
            vf.Embeddings(["a"], two, vocab="explicit", ngrams=[("ab", big)], min_n=2, max_n=2)
    # tuples, or lists of two as JSON gives them, in any iterable
    for ok in ([("<a", 0)], [["<a", 0]], iter([("<a", 0)]), [("<a", np.int64(0))], list(zip(["<a"], np.arange(1)))):
        e = vf.Embeddings(["a"], two, vocab="explicit", ngrams=ok, min_n=2, max_n=2)
        assert e.vocab.ngrams("a") == ["<a", "a>"] and e.vocab.subword_indices("a") == [1]
