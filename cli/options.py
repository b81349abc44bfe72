"""Command-line values out of range: the one error type for them, and the small checks that raise it."""

from __future__ import annotations

import math

from tinygraph.errors import TinygraphError


class OptionError(TinygraphError):
    """A command-line value out of range."""


def at_least(option: str, value: float, low: float) -> None:
    """``--option`` must be >= ``low``."""
    if value < low:
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
