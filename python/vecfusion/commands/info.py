"""``vecfusion info FILE``: format, words, dims, vocabulary and storage kinds, metadata."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from . import add_word_options


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="show what an embedding file holds",
        description="Show the format, word count, dims, vocabulary and storage kinds and "
        "metadata of an embedding file (finalfusion, word2vec, text/GloVe, fastText).",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", dest="fmt", metavar="FMT", help="file format (detected if omitted)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_word_options(p)
    p.set_defaults(func=run)
    return p


def describe(path: str, fmt: str | None = None, *, lossy: bool = False, encoding: str = "utf-8") -> dict[str, Any]:
    """The facts ``info`` prints, as a dict."""
    from .. import _native
    from ..convert import _norm_format, detect_format, load_any

    f = _norm_format(fmt) if fmt else detect_format(path)
    emb = load_any(path, f, normalize=False, mmap=True, lossy=lossy, encoding=encoding)
    if f == "text" and not fmt and _native._text_header(path) is None:
        f = "glove"  # the reader found no "<words> <dims>" header line
    vocab = emb.vocab
    return {
        "file": str(path),
        "format": f,
        "words": len(emb),
        "dims": emb.dims,
        "rows": vocab.rows,
        "vocab": emb.vocab_kind,
        "ngram_range": None if vocab.min_n is None else [vocab.min_n, vocab.max_n],
        # the file's storage chunk (info memory-maps finalfusion files to stay cheap)
        "storage": {"MmapArray": "NdArray", "MmapQuantizedArray": "QuantizedArray"}.get(
            emb.storage_kind, emb.storage_kind
        ),
        "norms": emb.norms is not None,
        "metadata": emb.metadata,
    }


def _strict_json(v: Any) -> Any:
    """``v`` with TOML's non-finite floats (``inf``, ``nan``) as strings: JSON has no such
    numbers (``json.dumps`` would print ``Infinity``, which strict parsers such as jq refuse)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _strict_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict_json(x) for x in v]
    return v


def run(args: argparse.Namespace) -> int:
    d = describe(args.file, args.fmt, lossy=args.lossy, encoding=args.encoding)
    if args.json:
        text = json.dumps(_strict_json(d), ensure_ascii=False, indent=1, default=str, allow_nan=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # a file name of undecodable bytes (lone surrogates from os.fsdecode): written
            # raw they are no UTF-8, so no JSON; as \u escapes they are
            text = json.dumps(_strict_json(d), ensure_ascii=True, indent=1, default=str, allow_nan=False)
        print(text)
        return 0
    width = max(len(k) for k in d)
    for k, v in d.items():
        if k == "metadata":
            continue
        if k == "ngram_range":
            if v is None:
                continue
            v = f"{v[0]}..{v[1]}"
        print(f"{k:<{width}}  {v}")
    meta = d["metadata"]
    print(f"{'metadata':<{width}}  {'none' if not meta else ''}")
    if meta:
        for line in _toml_lines(meta):
            print(f"  {line}")
    return 0


def _toml_lines(meta: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in meta.items():
        if isinstance(v, dict):
            out.extend(_toml_lines(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k} = {v!r}")
    return out
