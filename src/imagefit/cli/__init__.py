"""`imagefit COMMAND`: thin clients of the library, one module per command.

Each command module has `NAME`, `add_arguments(sub)` (its parser) and `run(args)` (the call into the library and
the printing); one that keeps checkpoints also has `RESUME_HINT`, how it continues after a stop.
Every command takes `--json` and then prints one JSON object as the last line of standard output;
messages go to standard error. An `ImagefitError` prints as one line without a traceback and exits with status 1.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import signal
import sys

from ..allocator import keep_freed_memory
from ..errors import ImagefitError
from . import calibrate, ensemble, evaluate, export, features, find_lr, fine_tune, generate, models, predict, report, search, serve, train

COMMANDS = {m.NAME: m for m in (train, find_lr, fine_tune, features, ensemble, report, generate, evaluate, calibrate,
                                predict, search, export, serve, models)}


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (start-up, evaluation, export, …): stop like Ctrl-C, and say so."""


def _terminate(signum, frame):
    raise Terminated


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


class Parser(argparse.ArgumentParser):
    """argparse, with whole flag names only (no silent `--epoch` for `--epochs`) and usage errors on one line, an
    unknown flag answered with the command's closest ones (argparse prints the whole usage, 50 lines for train)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        if unknown:
            flags = [s for a in self._actions for s in a.option_strings]
            near = difflib.get_close_matches(unknown.group(1).split("=")[0], flags, n=3, cutoff=0.6)
            message = f"unknown option {unknown.group(1)}" + (f"; did you mean {', '.join(near)}?" if near else "")
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command line's (sub)command, whose flags an unknown one is compared with."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(args, action.dest, None)
            if chosen in action.choices:
                return _innermost(action.choices[chosen], args)
    return parser


def stopped_line(command: str, signal_name: str) -> str:
    """The one line a run stopped by a signal ends with: what is kept, and how that command continues."""
    hint = getattr(COMMANDS.get(command), "RESUME_HINT", None)
    return (f"imagefit {command}: stopped by {signal_name} before it finished; files written whole are kept"
            + (f" ({hint})" if hint else ""))


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = Parser(prog="imagefit", description="From a folder of images to a tuned, reproducible, served ResNet "
                                                  "classifier.")
    parser.add_argument("--version", action="version", version=f"imagefit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_arguments(sub)
    from .examples import finish
    finish(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _innermost(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    for stream in (sys.stdout, sys.stderr):  # a class name with undecodable bytes prints escaped, never crashes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if args.command != "serve":  # a server gives memory back after bursts instead (deploy.serve.PixelBudget)
        keep_freed_memory()
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        result = COMMANDS[args.command].run(args)
        if args.json:
            print(json.dumps(result, default=str))
        sys.stdout.flush()
        if isinstance(result, dict) and result.get("signal"):  # a run stopped cleanly by a signal: not finished
            return 128 + signal.Signals[result["signal"]].value
    except ImagefitError as e:
        print(f"imagefit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(stopped_line(args.command, "SIGTERM" if isinstance(e, Terminated) else "SIGINT"), file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:  # `imagefit predict ... | head`: the reader left; no traceback, and none at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
