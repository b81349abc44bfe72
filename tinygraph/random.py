"""The framework's random stream (dropout masks, initialisers), seedable and checkpointable."""

from __future__ import annotations

from typing import Any

import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng() -> np.random.Generator:
    return _rng


def get_state() -> dict[str, Any]:
    """A JSON-able snapshot of the stream, for exact resume."""
    return _rng.bit_generator.state


def set_state(state: dict[str, Any]) -> None:
    _rng.bit_generator.state = state
