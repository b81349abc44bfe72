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
    # Set True by the graph walk, just before backward, when it releases the graph afterwards: only
    # then may backward write over arrays forward saved.  The default is the safe choice for any
    # other caller (a test, a second walk of a kept graph).
    may_overwrite_saved: bool = False

    def forward(self, *xs: Any) -> Any:
        raise NotImplementedError

    def backward(self, *gys: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """Short detail shown next to the op name in drawings ('' for none)."""
        return ""

    def __call__(self, *inputs: Any) -> Any:
        # Runs once per node (per cell and time step in an unrolled RNN), so it is kept lean:
        # list comprehensions, no generators, constants wrapped only when there are any.
        ts = inputs if all([isinstance(x, Tensor) for x in inputs]) else _as_tensors(inputs)
        needs = tuple([t.requires_grad for t in ts])
        record = graph._grad_enabled and any(needs)
        self.needs_input_grad = needs if record else (False,) * len(ts)
        ys = self.forward(*[t.data for t in ts])
        multi = isinstance(ys, tuple)
        outs = tuple([Tensor(_array(y), record) for y in ys]) if multi else (Tensor(_array(ys), record),)
        if record:
            node = graph.Node(self, ts, outs)
            for i, o in enumerate(outs):
                o.creator = node
                o.index = i
        return outs if multi else outs[0]


def _as_tensors(inputs: tuple[Any, ...]) -> tuple[Tensor, ...]:
    """Inputs with constants wrapped; Python scalars take the dtype of the first tensor."""
    like = next((x for x in inputs if isinstance(x, Tensor)), None)
    return tuple(as_tensor(x, like) for x in inputs)
