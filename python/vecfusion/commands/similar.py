"""``vecfusion similar FILE WORD [-k 10] [--mmap]``: the nearest words to a word."""

from __future__ import annotations

import argparse

from . import add_word_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "similar",
        help="print the words nearest to WORD",
        description="Print the K words nearest to WORD (one 'word<TAB>score' line each, best first). "
        "An unknown word works through its n-grams in a subword vocabulary.",
    )
    p.add_argument(
        "file", metavar="FILE", help="an embedding file: finalfusion, word2vec, text/GloVe or fastText"
    )
    p.add_argument("word", metavar="WORD")
    p.add_argument("-k", type=int, default=10, help="number of words (default 10)")
    p.add_argument(
        "--mmap",
        action="store_true",
        help="memory-map the matrix of a finalfusion file (other formats are always read)",
    )
    p.add_argument("--format", dest="fmt", metavar="FMT", help="file format (detected if omitted)")
    add_word_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..convert import load_any

    emb = load_any(args.file, args.fmt, mmap=args.mmap, lossy=args.lossy, encoding=args.encoding)
    try:
        found = emb.similar(args.word, k=args.k)
    except KeyError:
        raise KeyError(f"{args.word!r} has no embedding (an unknown word without n-grams)") from None
    for word, score in found:
        print(f"{word}\t{score:.6f}")
    return 0
