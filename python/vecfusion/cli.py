"""The ``vecfusion`` command line.

Each subcommand lives in ``vecfusion/commands/<name>.py`` and provides
``add_parser(subparsers)`` (which registers the subcommand and sets ``func``)
and the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__

#: Subcommands, in the order ``--help`` lists them.
COMMANDS = ("info", "convert", "quantize", "similar", "analogy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vecfusion",
        description="Inspect, convert, quantize and query embedding files.",
    )
    parser.add_argument("--version", action="version", version=f"vecfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vecfusion.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"vecfusion.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from . import VecfusionError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader of our output went away (`vecfusion similar ... | head`): not an error;
        # point stdout at devnull so that the interpreter's final flush stays quiet
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (VecfusionError, OSError, KeyError, ValueError, OverflowError, MemoryError) as e:
        msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        # an argument's conversion error names the argument in a note only ("while processing
        # 'n_attempts'"): put it in the message, where the command's option replaces it
        for note in getattr(e, "__notes__", ()):
            named = re.fullmatch(r"while processing '(\w+)'", note)
            if named:
                sep = "=" if re.match(r"-?\d", msg) else ": "
                msg = f"{named.group(1)}{sep}{msg}"
                break
        # the readers' hints name Python arguments: say them as this command's options
        msg = _as_options(msg, args.command)
        print(f"vecfusion {args.command}: error: {msg}", file=sys.stderr)
        return 1


_OPTION_NAMES = (("encoding='latin-1'", "--encoding latin-1"), ("lossy=True", "--lossy"))
_LOADER_FORMATS = {"load": "finalfusion", "load_word2vec": "word2vec", "load_text": "text", "load_fasttext": "fasttext"}


# Per command: (the phrase of a core message that names a Python argument, the same phrase
# with this command's option). Each pattern matches a whole phrase of a message, never a
# bare word, so that paths in the message (a folder named "sample=1") stay as given.
_COMMAND_OPTIONS: dict[str, list[tuple[str, Any]]] = {
    "quantize": [
        (r"^n_subquantizers(?:=(-?\d+))? (must|does not divide|is out of range)\b", lambda m: _opt("--subquantizers", m)),
        (r"^n_iterations(?:=(-?\d+))? (must|is out of range)\b", lambda m: _opt("--iterations", m)),
        (r"^n_attempts(?:=(-?\d+))? (must|is out of range)\b", lambda m: _opt("--attempts", m)),
        (r"^bits=(-?\d+) is out of range: codes are u8, so bits must\b",
         r"--bits \1 is out of range: codes are u8, so --bits must"),
        (r"^bits=(\d+) means\b", r"--bits \1 means"),
        (r"^bits=(-?\d+) is out of range$", r"--bits \1 is out of range"),
        (r"^sample(?:=(-?\d+))? (must|is smaller|is out of range)\b", lambda m: _opt("--sample", m)),
        (r"^seed(?:=(-?\d+))? (must|is out of range)\b", lambda m: _opt("--seed", m)),
        # the note on the default M of awkward dimensions
        (r"\bso the default n_subquantizers is (\d+):", r"so the default --subquantizers is \1:"),
        (r"\bpass n_subquantizers=(\d+) to accept it, or n_subquantizers=(\d+) \(",
         r"pass --subquantizers \1 to accept it, or --subquantizers \2 ("),
    ],
    "convert": [
        (r"^vocab='(\w+)' applies to\b", r"--vocab \1 applies to"),
        (r": load with normalize=False\b", ": convert with --no-normalize"),
    ],
    # the Python API's a, b, c are the command's A, B, C
    "analogy": [
        (
            r"^(analogy words? )((?:[abc] \(\"(?:[^\"\\]|\\.)*\"\)(?:, )?)+)( ha(?:s|ve) no embedding)",
            lambda m: m.group(1) + _ANALOGY_ITEM.sub(lambda n: n.group(1).upper() + n.group(2), m.group(2)) + m.group(3),
        )
    ],
}


# one `x ("word")` of an analogy message (the word as Rust's Debug quotes it)
_ANALOGY_ITEM = re.compile(r'([abc])( \("(?:[^"\\]|\\.)*"\))')


def _opt(option: str, m: Any) -> str:
    """``--option value verb`` (or ``--option verb``) from a match of ``name(=value)? verb``."""
    return f"{option} {m.group(1)} {m.group(2)}" if m.group(1) is not None else f"{option} {m.group(2)}"


def _as_options(msg: str, command: str) -> str:
    """The readers' hints name Python calls and arguments; say them as this command's options."""
    format_option = "--from" if command == "convert" else "--format"
    for py_arg, option in _OPTION_NAMES:
        msg = msg.replace(py_arg, option)
    msg = msg.replace(
        "word2vec, text/GloVe and fastText files open with vf.load_word2vec, vf.load_text and "
        "vf.load_fasttext, or convert them with vf.convert",
        f"for word2vec, text/GloVe and fastText files give {format_option} word2vec, text or fasttext",
    )
    msg = re.sub(r"\(limit=(\d+) reads only the announced words\)", r"(the Python reader's limit=\1 reads only the announced words)", msg)
    msg = re.sub(
        r"read it with vf\.(load(?:_word2vec|_text|_fasttext)?)\b",
        lambda m: f"give {format_option} {_LOADER_FORMATS[m.group(1)]}",
        msg,
    )
    for pattern, option in _COMMAND_OPTIONS.get(command, []):
        msg = re.sub(pattern, option, msg, count=1)
    return msg


if __name__ == "__main__":
    sys.exit(main())
