"""Reductions: sum and mean over axes."""

from __future__ import annotations

from typing import Any

from tinygraph.backend import get_array_module
from tinygraph.op import Op


def _normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    return tuple(sorted(a % ndim for a in axes))


class Sum(Op):
    name = "sum"

    def __init__(self, axis: Any = None, keepdims: bool = False):
        self.axis = tuple(axis) if isinstance(axis, list) else axis  # NumPy wants a tuple of axes
        self.keepdims = keepdims

    def describe(self) -> str:
        return "" if self.axis is None else f"axis={self.axis}"

    def forward(self, x: Any) -> Any:
        self.in_shape = x.shape
        self.axes = _normalize_axes(self.axis, x.ndim)
        return self.reduce(x)

    def reduce(self, x: Any) -> Any:
        return get_array_module(x).asarray(x.sum(axis=self.axis, keepdims=self.keepdims))

    def scale(self) -> float:
        return 1.0

    def backward(self, gy: Any) -> Any:
        xp = get_array_module(gy)
        if not self.keepdims:
            gy = gy.reshape([1 if i in self.axes else n for i, n in enumerate(self.in_shape)])
        s = self.scale()
        # a fresh array, not a broadcast view: callers may update gradients in place
        gx = xp.empty(self.in_shape, dtype=gy.dtype)
        gx[...] = gy * s if s != 1.0 else gy
        return gx


class Mean(Sum):
    name = "mean"

    def reduce(self, x: Any) -> Any:
        return get_array_module(x).asarray(x.mean(axis=self.axis, keepdims=self.keepdims))

    def scale(self) -> float:
        count = 1
        for a in self.axes:
            count *= self.in_shape[a]
        return 1.0 / count
