"""Subcommands of the ``vecfusion`` CLI (see ``vecfusion.cli``)."""

from __future__ import annotations

import argparse


def add_word_options(p: argparse.ArgumentParser) -> None:
    """``--lossy`` and ``--encoding``: how the words of word2vec, text and fastText input are
    decoded (``load_any``'s arguments of the same names)."""
    p.add_argument("--lossy", action="store_true",
                   help="replace invalid UTF-8 in words with U+FFFD instead of failing")
    p.add_argument("--encoding", default="utf-8",
                   help="words' encoding in word2vec/text/fastText input: utf-8 (default) or latin-1")
