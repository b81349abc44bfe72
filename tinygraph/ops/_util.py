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
    if xp is not np:
        xp.add.at(target, index, values)  # CuPy >= 13 (cupyx.scatter_add is deprecated)
    elif (
        isinstance(index, np.ndarray)
        and index.ndim == 1
        and index.dtype.kind in "iu"
        and index.size > 64
        and getattr(values, "shape", ())[:1] == index.shape
    ):
        # one id array over the first axis (an embedding's gradient): sort the ids, then one
        # reduceat per run of equal ids; np.add.at, which adds one row at a time, is much slower
        index = np.where(index < 0, index + target.shape[0], index)  # -1 and n-1 are one row
        order = np.argsort(index, kind="stable")
        ids = index[order]
        starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
        target[ids[starts]] += np.add.reduceat(values[order], starts, axis=0)
    else:
        np.add.at(target, index, values)


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
    """Logistic 1 / (1 + e^-x) from one exp (the cheapest transcendental on NumPy).

    e^-x overflows to inf for very negative x, and 1 / (1 + inf) = 0 is the exact limit, so the
    overflow is silenced rather than avoided.
    """
    xp = get_array_module(x)
    y = xp.asarray(xp.multiply(x, -1.0, out=out))  # asarray: a 0-d x gives a NumPy scalar, not an array
    with np.errstate(over="ignore"):
        xp.exp(y, out=y)
    y += 1.0
    xp.reciprocal(y, out=y)
    return y
