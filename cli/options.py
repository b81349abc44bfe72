"""Command-line values: the parser that reports a mistake in one line, the one error type for values out
of range, and the small checks that raise it (each message names the option)."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from tinygraph.errors import TinygraphError


class OptionError(TinygraphError):
    """A command-line value out of range."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake (an unknown option, a value of the wrong type, a missing one) is one line
    on stderr naming the option, and exit status 2, like every other user mistake; ``--help`` lists
    the options."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


class CommandParser(OneLineParser):
    """The parser of one command: an argument it does not know is reported under the command's name
    (argparse would leave it to the top-level parser, which does not say which command was meant)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def at_least(option: str, value: float, low: float) -> None:
    """``--option`` must be >= ``low``, and finite (nan and inf are refused too)."""
    if not (value >= low and math.isfinite(value)):
        raise OptionError(f"{option} must be >= {low}, got {value}")


def between(option: str, value: float, low: float, high: float) -> None:
    """``--option`` must be in [``low``, ``high``]."""
    if not low <= value <= high:
        raise OptionError(f"{option} must be between {low} and {high}, got {value}")


def positive_finite(option: str, value: float) -> None:
    """``--option`` must be a finite number > 0."""
    if not (value > 0 and math.isfinite(value)):
        raise OptionError(f"{option} must be a finite number > 0, got {value}")


def one_character(option: str, value: str | None) -> None:
    """``--option``, when given, must be one character."""
    if value is not None and len(value) != 1:
        raise OptionError(f"{option} takes one character, got {value!r}")


def writable_file(option: str, path: Path, *, makes_parents: bool = True) -> None:
    """``--option`` names a file that can be written: not a directory, under a directory where a file
    can be created (directories missing below it are made when the file is written, if
    ``makes_parents``; otherwise its directory must exist).  Checked before any work, so a long
    computation does not end in a path that cannot be written."""
    if path.is_dir():
        raise OptionError(f"{option} {path} is a directory")
    existing = path.absolute().parent
    if not makes_parents and not existing.exists():
        raise OptionError(f"{option} {path}: no directory {existing}")
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(f"{option} {path}: {existing} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OptionError(f"{option} {path}: cannot write in {existing} ({exc.strerror or exc})") from None


def cell_list(text: str) -> list[str]:
    """An argparse type: a comma-separated list of recurrent cells (rnn, lstm, gru, cifg), repeats dropped."""
    from models.recurrent import CELLS

    names = [c.strip().lower() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in CELLS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"cells are a comma-separated list of {', '.join(CELLS)}; got {text!r}")
    return list(dict.fromkeys(names))  # drop repeats, keep the order given
