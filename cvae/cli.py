"""Command lines: one-line errors, and the training parser built from the config's options.

Every flag of `python -m cvae.train` comes from an `option(...)` field in
cvae.config: its spelling, help, default and limits are written there once.
Values given on the command line are only converted here (text to number);
their limits are checked by the config, so the app and the command line
print the same sentence.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from cvae.config import OPTIONS, REFERENCE, Option
from cvae.errors import CVAEError

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) with exit code 2. A `quiet` parser exits without
    a word: a launch's other ranks parse the very flags that rank 0 reports on."""

    quiet = False

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, None if self.quiet else f"{self.prog}: error: {message}\n")


def number(kind: type, *, low: float = 0, low_open: bool = True) -> Callable[[str], Any]:
    """An argparse type for the small tools' own flags: a finite number above (or from) `low`."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'above' if low_open else 'at least'} {low}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _argparse_type(opt: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return opt.parse(text)
        except CVAEError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = opt.kind.__name__
    return parse


def _help(opt: Option) -> str:
    shown = opt.user_choices()[opt.choices.index(opt.default)] if opt.choices else opt.default
    if isinstance(shown, tuple):
        shown = ",".join(map(str, shown))
    if opt.kind is bool and opt.section == "launch" or opt.default in (None, ""):
        return opt.help
    return f"{opt.help} [{shown}]"


def add_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option, grouped as the reference's first; unset flags stay None ("not given")."""
    groups = {
        REFERENCE: parser.add_argument_group(REFERENCE),
        "more options": parser.add_argument_group("more options"),
    }
    for opt in sorted(OPTIONS, key=lambda o: o.group != REFERENCE):  # the reference's flags first (stable)
        group = groups[opt.group]
        if opt.kind is bool and opt.section == "launch":  # a switch: --quiet
            group.add_argument(*opt.flags, dest=opt.name, action="store_true", default=None, help=_help(opt))
            continue
        metavar = "|".join(opt.user_choices()) if opt.choices else opt.name.upper()
        group.add_argument(*opt.flags, dest=opt.name, type=_argparse_type(opt), default=None, metavar=metavar,
                           help=_help(opt))  # fmt: skip


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave (None means not given)."""
    return {k: v for k, v in vars(args).items() if v is not None}


def run_main(entry: Callable[[], int]) -> int:
    """Run a command's body; a user's mistake (CVAEError) or a file-system failure is one line, exit 2."""
    try:
        return entry()
    except CVAEError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # disk full, read-only or vanished folder
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write{where}: {err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def exit_with(code: int) -> NoReturn:
    """End a command's process with `code`. What is still alive (torch's modules, a finished run's data) is
    moved out of the garbage collector's sight first: the interpreter's exit would walk it all again in its
    last collections, most of a second after a training run on 2 cores, for memory the process gives back
    whole anyway. Only for a process that ends here: objects frozen this way are never collected."""
    gc.freeze()
    sys.exit(code)


def format_argv(options: dict[str, Any]) -> list[str]:
    """Command-line flags for `options` (option name -> value), the inverse of the parser."""
    by_name = {opt.name: opt for opt in OPTIONS}
    argv: list[str] = []
    for name, value in options.items():
        opt = by_name[name]
        if opt.kind is bool and opt.section == "launch":
            argv += [opt.flags[0]] if value else []
        elif value is not None:
            text = (
                ",".join(map(str, value))
                if isinstance(value, tuple)
                else repr(value)
                if isinstance(value, float)
                else str(value)
            )
            argv += [opt.flags[0], text]
    return argv
