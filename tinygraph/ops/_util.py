"""Helpers shared by op bodies."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinygraph.backend import get_array_module


def unbroadcast(g: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``g`` over the axes broadcasting added or stretched, back to ``shape``."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes).reshape(shape)


def scatter_add(target: Any, index: Any, values: Any) -> None:
    """``target[index] += values`` with repeated indices summed, on NumPy and CuPy."""
    xp = get_array_module(target)
    if xp is np:
        np.add.at(target, index, values)
    else:
        import cupyx

        cupyx.scatter_add(target, index, values)


def index_for(xp: Any, index: Any) -> Any:
    """``index`` with its lists and host arrays moved to ``xp`` (CuPy wants device index arrays)."""
    if xp is np:
        return index
    if isinstance(index, tuple):
        return tuple(index_for(xp, p) for p in index)
    if isinstance(index, (list, np.ndarray)):
        return xp.asarray(index)
    return index


def sigmoid(x: Any, out: Any = None) -> Any:
    """Overflow-free logistic: 0.5 * tanh(0.5 x) + 0.5."""
    xp = get_array_module(x)
    y = xp.asarray(xp.multiply(x, 0.5, out=out))  # asarray: a 0-d x gives a NumPy scalar, not an array
    xp.tanh(y, out=y)
    y *= 0.5
    y += 0.5
    return y
