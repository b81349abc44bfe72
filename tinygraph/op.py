"""The op protocol: a local forward over raw arrays and a local backward.

Subclasses implement ``forward(*arrays)`` returning an array or a tuple of arrays, and
``backward(*grad_outputs)`` returning one gradient per input (``None`` where none is
needed).  ``self.needs_input_grad`` is set before ``forward`` so an op saves only what its
backward will use.  One op body serves NumPy and CuPy: take ``xp`` from the arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinygraph import graph
from tinygraph.tensor import Tensor, as_tensor


def _array(y: Any) -> Any:
    # NumPy gives a scalar, not a 0-d array, for arithmetic on 0-d arrays; a tensor's .data
    # is always an array (writable, with .flags), so in-place updates work on it
    return np.asarray(y) if isinstance(y, np.generic) else y


class Op:
    name: str = "op"
    needs_input_grad: tuple[bool, ...] = ()

    def forward(self, *xs: Any) -> Any:
        raise NotImplementedError

    def backward(self, *gys: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """Short detail shown next to the op name in drawings ('' for none)."""
        return ""

    def __call__(self, *inputs: Any) -> Any:
        like = next((x for x in inputs if isinstance(x, Tensor)), None)
        ts = tuple(as_tensor(x, like) for x in inputs)
        record = graph._grad_enabled and any(t.requires_grad for t in ts)
        self.needs_input_grad = tuple(t.requires_grad for t in ts) if record else (False,) * len(ts)
        ys = self.forward(*(t.data for t in ts))
        if isinstance(ys, tuple):
            outs = tuple(Tensor(_array(y), requires_grad=record) for y in ys)
        else:
            outs = (Tensor(_array(ys), requires_grad=record),)
        if record:
            node = graph.Node(self, ts, outs)
            for i, o in enumerate(outs):
                o.creator = node
                o.index = i
        return outs if isinstance(ys, tuple) else outs[0]
