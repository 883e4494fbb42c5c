"""Converting between embedding formats: finalfusion, word2vec binary, text
(word2vec text with a ``"n d"`` header, or GloVe without one) and fastText ``.bin``.

>>> import vecfusion as vf
>>> vf.convert("vectors.w2v.bin", "vectors.fifu")     # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._native import (
    Embeddings,
    load,
    load_fasttext,
    load_text,
    load_word2vec,
)

__all__ = ["FORMATS", "check_output", "convert", "detect_format", "load_any", "write_any"]

#: Format names; ``text`` has a ``"n d"`` header line, ``glove`` has none.
FORMATS = ("finalfusion", "word2vec", "text", "glove", "fasttext")

_ALIASES = {
    "fifu": "finalfusion",
    "ff": "finalfusion",
    "w2v": "word2vec",
    "word2vec-binary": "word2vec",
    "textdims": "text",
    "word2vec-text": "text",
    "vec": "text",
    "txt": "text",
    "nodims": "glove",
    "fasttext-bin": "fasttext",
    "ft": "fasttext",
}

_FASTTEXT_MAGIC = (793712314).to_bytes(4, "little")


def _norm_format(fmt: str) -> str:
    f = fmt.lower()
    f = _ALIASES.get(f, f)
    if f not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return f


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of an existing file: from its magic bytes (finalfusion, fastText),
    else from its extension or, failing that, its first bytes (text or word2vec)."""
    # (the path as given: Path("") is ".", a directory, where "" names no file)
    # (bytes paths as the native loaders take them: decoded as the file system does)
    path = os.path.expanduser(os.fsdecode(path))
    p = Path(path)
    mode = os.stat(os.fspath(path)).st_mode  # FileNotFoundError for a missing file, or ""
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(p))
    if not stat.S_ISREG(mode):
        # a pipe has no size to read by, and opening a FIFO without a writer blocks forever
        raise OSError(
            errno.EINVAL,
            "not a regular file (a pipe, socket or device): save the data to a file first",
            str(p),
        )
    with open(p, "rb") as f:
        head = f.read(65536)
    if head[:4] == b"FiFu":
        return "finalfusion"
    if head[:4] == _FASTTEXT_MAGIC:
        return "fasttext"
    ext = p.suffix.lower()
    if ext == ".fifu":
        return "finalfusion"
    if ext == ".ftz":
        return "fasttext"
    if ext in (".bin", ".w2v"):
        return "word2vec"
    if ext in (".txt", ".vec", ".glove", ".nodims", ".dims"):
        return "glove" if ext in (".glove", ".nodims") else "text"
    # No telling extension: binary data after the first line means word2vec.
    _, _, rest = head.partition(b"\n")
    if b"\x00" in rest or not _looks_textual(rest):
        return "word2vec"
    return "text"


_CONTROL = bytes(c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D))


def _looks_textual(b: bytes) -> bool:
    """Text, possibly with a few invalid UTF-8 bytes (a lossy word), or binary floats?
    Text has almost no control bytes; little-endian floats are full of them."""
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        if e.start >= len(b) - 4:  # a multi-byte character cut at the end of the sample
            return True
    control = len(b) - len(b.translate(None, _CONTROL))
    return control * 100 < len(b)


def _dst_format(path: Path, src_format: str) -> str:
    ext = path.suffix.lower()
    if ext == ".fifu":
        return "finalfusion"
    if ext == ".w2v":
        return "word2vec"
    if ext == ".bin":
        # .bin is both word2vec and fastText: keep fastText models fastText
        return "fasttext" if src_format == "fasttext" else "word2vec"
    if ext in (".txt", ".vec"):
        return "text"
    if ext in (".glove", ".nodims"):
        return "glove"
    raise ValueError(
        f"cannot tell the output format from the name {path.name!r}; pass dst_format "
        f"(on the command line: --to), one of {', '.join(FORMATS)}"
    )


def _pruned(emb: Embeddings) -> bool:
    """Whether ``emb`` comes from a pruned fastText model (.ftz), as its metadata records."""
    meta = emb.metadata
    ft = meta.get("fasttext") if isinstance(meta, dict) else None
    return isinstance(ft, dict) and "pruned_buckets" in ft


def check_output(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, replace_input: bool) -> None:
    """Refuse, before any work, an output path that cannot be written: an empty one, a
    directory, a name ending in a slash, ``.`` or ``..``, a directory that does not exist, a
    path whose symbolic links loop; and the input file itself unless ``replace_input`` (the
    input would be replaced by the output; another hard link to it is a name of its own,
    which the output replaces while the input keeps its data)."""
    src_s, dst_s = os.path.expanduser(os.fsdecode(src)), os.path.expanduser(os.fsdecode(dst))
    if not dst_s:
        raise ValueError("the output path is empty: name a file")
    if os.path.isdir(dst_s):
        raise IsADirectoryError(errno.EISDIR, "the output is a directory: name a file in it", dst_s)
    if dst_s.endswith(("/", os.sep)):
        raise NotADirectoryError(errno.ENOTDIR, "the output name ends in a slash: name a file", dst_s)
    if os.path.basename(dst_s) in (os.curdir, os.pardir):
        raise IsADirectoryError(errno.EISDIR, "the output name is a directory's: name a file", dst_s)
    try:
        os.stat(dst_s)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "the output path's symbolic links loop", dst_s) from None
    # (a link is written through: its target's directory counts)
    parent = os.path.dirname(os.path.realpath(dst_s))
    if not os.path.isdir(parent):
        raise FileNotFoundError(errno.ENOENT, "the output's directory does not exist", dst_s)
    if not replace_input and os.path.exists(src_s) and os.path.exists(dst_s) and os.path.samefile(src_s, dst_s) \
            and (os.stat(dst_s).st_nlink == 1 or os.path.realpath(src_s) == os.path.realpath(dst_s)):
        raise ValueError(
            f"the output {dst_s!r} is the input file, which writing it would replace: "
            "write to another path"
        )


def load_any(path: str | os.PathLike[str], fmt: str | None = None, *, normalize: bool = True,
             lossy: bool = False, mmap: bool = False, encoding: str = "utf-8") -> Embeddings:
    """Load embeddings of any supported format (detected when ``fmt`` is None).
    ``lossy`` and ``encoding`` apply to the words of word2vec, text and fastText files."""
    f = _norm_format(fmt) if fmt else detect_format(path)
    if f == "finalfusion":
        return load(path, mmap=mmap)
    if f == "word2vec":
        return load_word2vec(path, lossy=lossy, normalize=normalize, encoding=encoding)
    if f == "text":
        return load_text(path, dims=None, lossy=lossy, normalize=normalize, encoding=encoding)
    if f == "glove":
        return load_text(path, dims=False, lossy=lossy, normalize=normalize, encoding=encoding)
    return load_fasttext(path, lossy=lossy, normalize=normalize, encoding=encoding)


def write_any(emb: Embeddings, path: str | os.PathLike[str], fmt: str, vocab: str = "standard") -> None:
    """Write embeddings in format ``fmt``."""
    f = _norm_format(fmt)
    if vocab != "standard" and f != "finalfusion":
        raise ValueError(f"vocab={vocab!r} applies to finalfusion output only, not {f}")
    if f == "finalfusion":
        emb.write(path, vocab=vocab)
    elif f == "word2vec":
        emb.write_word2vec(path)
    elif f == "text":
        emb.write_text(path, dims=True)
    elif f == "glove":
        emb.write_text(path, dims=False)
    else:
        emb.write_fasttext(path)


@contextmanager
def _step(bar: Any, desc: str) -> Iterator[None]:
    """Show ``desc`` on the bar and keep its clock ticking while a (GIL-free) native
    call runs; the bar itself appears only once a second has passed."""
    if bar is None:
        yield
        return
    bar.set_description(desc, refresh=False)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.25):
            bar.refresh()

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
        bar.update(1)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    src_format: str | None = None,
    dst_format: str | None = None,
    vocab: str = "standard",
    progress: bool = True,
    lossy: bool = False,
    encoding: str = "utf-8",
    normalize: bool = True,
) -> Embeddings:
    """Convert an embedding file to another format and return the embeddings read.

    Formats: ``finalfusion``, ``word2vec`` (binary), ``text`` (word2vec text, ``"n d"``
    header), ``glove`` (text without header), ``fasttext`` (``.bin``). ``src_format`` is
    detected from the magic bytes or the extension when None; ``dst_format`` from the
    extension (``.fifu``, ``.bin``/``.w2v``, ``.txt``/``.vec``, ``.glove``; a ``.bin``
    target stays fastText when the source is fastText or a finalfusion file with a fastText
    vocabulary, whose n-grams word2vec would drop, unless it comes from a pruned .ftz model).
    Converting a word2vec, text or fastText file to finalfusion L2-normalizes rows and keeps
    their norms (``normalize=False``: the rows as read, no norms, which also takes rows too
    long for a float32 norm); a finalfusion source is written as it is stored, norms
    included; other targets get the vectors as stored.
    ``vocab`` other than ``"standard"`` is passed to ``Embeddings.write`` (finalfusion
    targets only). ``progress`` shows a progress bar for steps longer than a second.
    ``lossy`` reads words with invalid UTF-8 (word2vec, text and fastText sources) with
    U+FFFD in place of the bad bytes instead of failing; ``encoding="latin-1"`` reads them as
    ISO-8859-1 instead (every byte a character, so distinct words stay distinct).
    """
    src, dst = os.path.expanduser(os.fsdecode(src)), os.path.expanduser(os.fsdecode(dst))
    src_p, dst_p = Path(src), Path(dst)
    check_output(src, dst, replace_input=True)
    sf = _norm_format(src_format) if src_format else detect_format(src)
    df = _norm_format(dst_format) if dst_format else _dst_format(dst_p, sf)
    # (the same format again is a round trip, written to a new file and renamed over the
    # input; another format would leave the input's name on a file of another kind)
    check_output(src, dst, replace_input=(sf == df))
    if vocab not in ("standard", "fst"):
        raise ValueError(f"vocab must be 'standard' or 'fst', not {vocab!r}")
    if vocab != "standard" and df != "finalfusion":
        raise ValueError(f"vocab={vocab!r} applies to finalfusion output only, not {df}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=2, delay=1.0, unit="step", leave=False,
                   bar_format="{desc}: {n_fmt}/{total_fmt} steps [{elapsed}]")
    try:
        with _step(bar, f"reading {src_p.name} ({sf})"):
            emb = load_any(src, sf, normalize=(df == "finalfusion" and normalize), lossy=lossy, encoding=encoding)
        if dst_format is None and dst_p.suffix.lower() == ".bin":
            # (.bin is both formats; the n-grams of a fastText vocabulary survive only as
            # fastText, which takes a pruned .ftz model's buckets only quantized: word2vec)
            fasttext_vocab = emb.vocab_kind in ("FastTextSubwordVocab", "FstFastTextSubwordVocab")
            bin_format = "fasttext" if (df == "fasttext" or fasttext_vocab) and not _pruned(emb) else "word2vec"
            if bin_format != df:
                df = bin_format
                check_output(src, dst, replace_input=(sf == df))
        with _step(bar, f"writing {dst_p.name} ({df})"):
            # the path as given: "out.fifu/" names a directory (Path drops the slash)
            write_any(emb, dst, df, vocab)
    finally:
        if bar is not None:
            bar.close()
    return emb


