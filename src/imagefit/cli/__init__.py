"""`imagefit COMMAND`: thin clients of the library, one module per command.

Each command module has `NAME`, `add_arguments(sub)` (its parser) and `run(args)` (the call into the library and
the printing). Every command takes `--json` and then prints one JSON object as the last line of standard output;
messages go to standard error. An `ImagefitError` prints as one line without a traceback and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..allocator import keep_freed_memory
from ..errors import ImagefitError
from . import ensemble, evaluate, export, features, find_lr, fine_tune, generate, models, predict, report, search, serve, train

COMMANDS = {m.NAME: m for m in (train, find_lr, fine_tune, features, ensemble, report, generate, evaluate, predict,
                                search, export, serve, models)}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = argparse.ArgumentParser(prog="imagefit", description="From a folder of images to a tuned, "
                                     "reproducible, served ResNet classifier.")
    parser.add_argument("--version", action="version", version=f"imagefit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        result = COMMANDS[args.command].run(args)
    except ImagefitError as e:
        print(f"imagefit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"imagefit {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, default=str))
    return 0
