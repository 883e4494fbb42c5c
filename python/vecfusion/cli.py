"""The ``vecfusion`` command line.

Each subcommand lives in ``vecfusion/commands/<name>.py`` and provides
``add_parser(subparsers)`` (which registers the subcommand and sets ``func``)
and the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
        # the readers' hints name Python arguments: say them as this command's options
        msg = _as_options(msg, args.command)
        print(f"vecfusion {args.command}: error: {msg}", file=sys.stderr)
        return 1


_OPTION_NAMES = (("encoding='latin-1'", "--encoding latin-1"), ("lossy=True", "--lossy"))
_LOADER_FORMATS = {"load": "finalfusion", "load_word2vec": "word2vec", "load_text": "text", "load_fasttext": "fasttext"}


# per command: (Python argument as the core's messages name it, this command's option)
_COMMAND_OPTIONS: dict[str, list[tuple[str, str]]] = {
    "quantize": [
        (r"\bn_subquantizers\b", "--subquantizers"),
        (r"\bn_iterations\b", "--iterations"),
        (r"\bn_attempts\b", "--attempts"),
        (r"\bbits(?==)", "--bits"),
        (r"\bbits must\b", "--bits must"),
        (r"\bsample(?==| must)", "--sample"),
        (r"\bseed must\b", "--seed must"),
    ],
    "convert": [(r"\bvocab='(\w+)'", r"--vocab \1")],
    # the Python API's a, b, c are the command's A, B, C
    "analogy": [(r"\banalogy word ([abc]) \(", lambda m: f"analogy word {m.group(1).upper()} (")],
}


def _as_options(msg: str, command: str) -> str:
    """The readers' hints name Python calls and arguments; say them as this command's options."""
    import re

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
        msg = re.sub(pattern, option, msg)
    # `--option=value` reads as the command line would have it: `--option value`
    return re.sub(r"(--[a-z-]+)=(\S)", r"\1 \2", msg)


if __name__ == "__main__":
    sys.exit(main())
