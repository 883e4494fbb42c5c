"""``vecfusion analogy FILE A B C [-k 10] [--mmap]``: A is to B as C is to ?"""

from __future__ import annotations

import argparse

from . import add_word_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analogy",
        help="print the answers of 'A is to B as C is to ?'",
        description="Print the K words nearest to normalize(B - A + C), skipping A, B and C "
        "(one 'word<TAB>score' line each, best first).",
    )
    p.add_argument(
        "file", metavar="FILE", help="an embedding file: finalfusion, word2vec, text/GloVe or fastText"
    )
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("c", metavar="C")
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
    for word, score in emb.analogy(args.a, args.b, args.c, k=args.k):
        print(f"{word}\t{score:.6f}")
    return 0
