"""Ops that move elements without arithmetic: reshape, transpose, index, concat, stack, split."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinygraph.backend import get_array_module
from tinygraph.op import Op
from tinygraph.ops._util import index_for, scatter_add


class Reshape(Op):
    name = "reshape"

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)

    def describe(self) -> str:
        return str(self.shape)

    def forward(self, x: Any) -> Any:
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy: Any) -> Any:
        return gy.reshape(self.in_shape)


class Transpose(Op):
    name = "transpose"

    def __init__(self, axes: tuple[int, ...] | None = None):
        self.axes = None if axes is None else tuple(axes)

    def forward(self, x: Any) -> Any:
        if self.axes is not None:
            # normalise negative axes before inverting the permutation (argsort of (0, -1, 1) is wrong)
            self.inverse = tuple(int(i) for i in np.argsort([a % x.ndim for a in self.axes]))
        return x.transpose(self.axes)

    def backward(self, gy: Any) -> Any:
        if self.axes is None:
            return gy.transpose()
        return gy.transpose(self.inverse)


_BASIC = (int, np.integer, slice, type(None), type(Ellipsis))


def _is_basic(index: Any) -> bool:
    """Basic indexing (ints, slices, None, ...) picks each element at most once."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, _BASIC) for p in parts)


def _picks_once(index: Any) -> bool:
    """True when no element can be picked twice: basic parts and boolean masks only."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, _BASIC) or getattr(getattr(p, "dtype", None), "kind", "") == "b" for p in parts)


class GetItem(Op):
    name = "getitem"

    def __init__(self, index: Any):
        self.index = index

    def describe(self) -> str:
        return str(self.index) if _is_basic(self.index) else "..."

    def forward(self, x: Any) -> Any:
        self.in_shape, self.dtype = x.shape, x.dtype
        self.index = index_for(get_array_module(x), self.index)
        return x[self.index]

    def backward(self, gy: Any) -> Any:
        gx = get_array_module(gy).zeros(self.in_shape, dtype=gy.dtype)
        if _picks_once(self.index):
            gx[self.index] = gy
        else:  # integer-array indexing may repeat an element: its gradients add up
            scatter_add(gx, self.index, gy)
        return gx


class Concat(Op):
    name = "concat"

    def __init__(self, axis: int = 0):
        self.axis = axis

    def forward(self, *xs: Any) -> Any:
        self.sizes = [x.shape[self.axis] for x in xs]
        return get_array_module(*xs).concatenate(xs, axis=self.axis)

    def backward(self, gy: Any) -> tuple[Any, ...]:
        bounds = np.cumsum(self.sizes)[:-1]
        return tuple(get_array_module(gy).split(gy, bounds, axis=self.axis))


def _address(a: Any) -> int:
    """Where an array's first element lives (NumPy or CuPy)."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def _as_one_view(xs: tuple[Any, ...]) -> Any:
    """The stack of ``xs`` along a new axis 0 as a view, when they are equally spaced views of one
    buffer (a recurrent layer's step outputs are the rows of its state buffer); else None."""
    first = xs[0]
    base = first.base
    if base is None or len(xs) < 2:
        return None
    shape, strides, dtype = first.shape, first.strides, first.dtype
    for x in xs:
        if x.base is not base or x.shape != shape or x.strides != strides or x.dtype != dtype:
            return None
    addresses = [_address(x) for x in xs]
    step = addresses[1] - addresses[0]
    if step <= 0 or addresses != list(range(addresses[0], addresses[0] + step * len(xs), step)):
        return None
    as_strided = get_array_module(first).lib.stride_tricks.as_strided
    view = as_strided(first, shape=(len(xs), *shape), strides=(step, *strides))
    if isinstance(view, np.ndarray):
        view.flags.writeable = False  # writing into it would change what the producers saved for backward
    return view


class Stack(Op):
    name = "stack"

    def __init__(self, axis: int = 0):
        self.axis = axis

    def forward(self, *xs: Any) -> Any:
        if self.axis == 0:
            view = _as_one_view(xs)
            if view is not None:
                return view
        return get_array_module(*xs).stack(xs, axis=self.axis)

    def backward(self, gy: Any) -> tuple[Any, ...]:
        # views of gy, no copies: gradients are only read downstream
        lead = (slice(None),) * (self.axis % gy.ndim)
        return tuple(gy[(*lead, i)] for i in range(gy.shape[self.axis]))


class Split(Op):
    """Several outputs: pieces along ``axis`` (a section count or split points, as NumPy)."""

    name = "split"

    def __init__(self, indices_or_sections: Any, axis: int = 0):
        self.sections, self.axis = indices_or_sections, axis

    def forward(self, x: Any) -> tuple[Any, ...]:
        return tuple(get_array_module(x).split(x, self.sections, axis=self.axis))

    def backward(self, *gys: Any) -> Any:
        return get_array_module(*gys).concatenate(gys, axis=self.axis)
