"""``vecfusion convert SRC DST [--from FMT] [--to FMT] [--vocab fst] [--lossy]``"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..convert import FORMATS
from . import add_word_options


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert",
        help="convert between finalfusion, word2vec, text/GloVe and fastText files",
        description=(
            "Convert an embedding file. Formats: " + ", ".join(FORMATS) + ". The input format "
            "is detected from magic bytes or the extension, the output format from the "
            "extension (.fifu, .bin/.w2v, .txt/.vec, .glove) unless given."
        ),
    )
    p.add_argument("src", metavar="SRC", help="input file")
    p.add_argument("dst", metavar="DST", help="output file")
    p.add_argument("--from", dest="src_format", metavar="FMT", help="input format")
    p.add_argument("--to", dest="dst_format", metavar="FMT", help="output format")
    p.add_argument("--vocab", default="standard", help="finalfusion vocabulary layout (e.g. fst)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="finalfusion output from word2vec, text or fastText: the rows as read, without norms "
        "(default: L2-normalized rows and their norms; a finalfusion source is copied as stored)",
    )
    add_word_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..convert import convert

    emb = convert(
        args.src,
        args.dst,
        src_format=args.src_format,
        dst_format=args.dst_format,
        vocab=args.vocab,
        progress=not args.no_progress and sys.stderr.isatty(),
        lossy=args.lossy,
        encoding=args.encoding,
        normalize=args.normalize,
    )
    print(f"wrote {args.dst}: {len(emb)} words x {emb.dims} dims")
    return 0
