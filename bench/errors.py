"""The benchmark's error: a request that cannot be run as given (the CLI prints it as one line, exit 2)."""

from __future__ import annotations

from tinygraph.errors import TinygraphError


class BenchError(TinygraphError):
    """A benchmark request that cannot be run as given (unknown config, unreadable corpus, ...)."""
