"""Weight initialisers: uniform, Xavier (Glorot) uniform, orthogonal.

Numbers are drawn on the host from the framework's random stream (``tinygraph.random``), so a seed
gives the same weights on NumPy and CuPy, then cast to ``dtype`` (float32 by default) and placed on
the default device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tinygraph import backend
from tinygraph.errors import TinygraphError
from tinygraph.random import get_rng

Shape = int | tuple[int, ...] | list[int]


def _shape(shape: Shape) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(isinstance(n, (int, np.integer)) and n >= 0 for n in dims):
        raise TinygraphError(f"an initialiser shape must be non-negative integers, got {shape!r}")
    return tuple(int(n) for n in dims)


def _place(host: np.ndarray, dtype: Any) -> Any:
    arr = host.astype(backend.DEFAULT_DTYPE if dtype is None else dtype, copy=False)
    xp = backend.default_xp()
    return arr if xp is np else xp.asarray(arr)


def _fans(shape: tuple[int, ...], who: str) -> tuple[int, int]:
    """(fan_in, fan_out) as torch counts them: shape[1] and shape[0], times any trailing receptive field."""
    if len(shape) < 2:
        raise TinygraphError(f"{who} needs a shape with at least 2 dimensions, got {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def uniform(shape: Shape, low: float, high: float, dtype: Any = None) -> Any:
    """Independent draws from U(low, high)."""
    shape = _shape(shape)
    if not low <= high:
        raise TinygraphError(f"uniform needs low <= high, got low={low}, high={high}")
    return _place(get_rng().uniform(low, high, size=shape), dtype)


def xavier_uniform(shape: Shape, gain: float = 1.0, dtype: Any = None) -> Any:
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)): keeps activation variance across layers."""
    shape = _shape(shape)
    fan_in, fan_out = _fans(shape, "xavier_uniform")
    bound = gain * math.sqrt(6.0 / max(1, fan_in + fan_out))
    return uniform(shape, -bound, bound, dtype)


def orthogonal(shape: Shape, gain: float = 1.0, dtype: Any = None) -> Any:
    """A (semi-)orthogonal matrix times ``gain``, flattened to (shape[0], rest) as torch does.

    Tall results have orthonormal columns (W^T W = I), wide ones orthonormal rows (W W^T = I).
    The QR factor's columns are multiplied by the signs of R's diagonal, which makes the result
    uniformly (Haar) distributed instead of biased by the QR convention.
    """
    shape = _shape(shape)
    if len(shape) < 2:
        raise TinygraphError(f"orthogonal needs a shape with at least 2 dimensions, got {shape}")
    rows, cols = shape[0], math.prod(shape[1:])
    if rows == 0 or cols == 0:
        return _place(np.zeros(shape), dtype)
    a = get_rng().standard_normal((rows, cols))
    if rows < cols:
        a = a.T  # QR of the tall transpose, transposed back: orthonormal rows
    q, r = np.linalg.qr(a)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q *= signs
    if rows < cols:
        q = q.T
    return _place((gain * q).reshape(shape), dtype)
