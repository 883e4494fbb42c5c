"""``vecfusion quantize SRC DST``: product-quantize a finalfusion file (PQ or OPQ)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from . import add_word_options


def add_parser(subparsers) -> None:
    """Register the ``quantize`` subcommand."""
    p = subparsers.add_parser(
        "quantize",
        help="product-quantize embeddings (PQ / OPQ) into a finalfusion QuantizedArray",
        description=(
            "Train a product quantizer on the embedding matrix of SRC and write DST with a "
            "QuantizedArray storage (vocabulary, metadata and norms are kept). Readable by "
            "finalfusion too."
        ),
    )
    p.add_argument("src", help="input embedding file: finalfusion, word2vec, text/GloVe or fastText")
    p.add_argument("--format", dest="fmt", metavar="FMT", help="format of SRC (detected if omitted)")
    p.add_argument("dst", help="output finalfusion file")
    p.add_argument(
        "--subquantizers",
        "-m",
        type=int,
        default=None,
        metavar="M",
        help="subquantizers; must divide the dimensions (default: largest divisor <= dims/4)",
    )
    p.add_argument("--bits", "-b", type=int, default=8, help="bits per code, 1 to 8 (default 8: 256 centroids)")
    p.add_argument(
        "--opq",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="learn an OPQ rotation (default; --no-opq for plain PQ)",
    )
    p.add_argument("--iterations", "-i", type=int, default=25, metavar="N", help="k-means iterations; OPQ alternates 2N times (25)")
    p.add_argument("--attempts", type=int, default=1, help="k-means runs per subquantizer, best kept (1)")
    p.add_argument(
        "--sample", type=int, default=None, help="training rows (default: 256 per centroid, like faiss)"
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="L2-normalize rows before training and store their norms (default)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    add_word_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Quantize ``args.src`` into ``args.dst``."""
    from ..convert import check_output, load_any

    # (before the training: quantizing cannot be undone, and a wrong path found at the end
    # would waste it)
    check_output(args.src, args.dst, replace_input=False)
    suffix = os.path.splitext(str(args.dst))[1].lower()
    if suffix in (".bin", ".ftz", ".vec", ".txt", ".w2v", ".glove"):
        # (vecfusion knows a finalfusion file by its magic bytes, whatever its name; other
        # tools go by the extension)
        print(
            f"note: {args.dst} is written as a finalfusion file (quantized storage has no "
            f"{suffix} form); vecfusion reads it whatever its name, but tools that go by the "
            f"extension (gensim, fastText) will not: name it .fifu",
            file=sys.stderr,
        )
    emb = load_any(args.src, args.fmt, mmap=True, lossy=args.lossy, encoding=args.encoding)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # a warning (the default M of awkward dimensions) is a note in the command's terms,
        # printed when it is raised, before the training's progress bar
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = _note
        q = emb.quantize(
            n_subquantizers=args.subquantizers,
            bits=args.bits,
            opq=args.opq,
            n_iterations=args.iterations,
            n_attempts=args.attempts,
            normalize=args.normalize,
            sample=args.sample,
            seed=args.seed,
            progress=not args.quiet,
        )
    q.write(args.dst)
    if not args.quiet:
        s = q.storage
        print(
            f"{args.dst}: {s.shape[0]} rows x {s.shape[1]} dims, {s.n_subquantizers} subquantizers x "
            f"{s.n_centroids} centroids ({'OPQ' if s.projection is not None else 'PQ'}) "
            f"in {time.perf_counter() - start:.1f}s",
            file=sys.stderr,
        )
    return 0


def _note(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Print a warning of the quantizer as this command's note, with its options' names."""
    from ..cli import _as_options

    print(f"vecfusion quantize: note: {_as_options(str(message), 'quantize')}", file=sys.stderr)
