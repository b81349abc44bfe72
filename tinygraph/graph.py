"""The explicit computation graph: nodes, scopes, and backpropagation as a reverse walk.

Every op application with a gradient-carrying input records a :class:`Node`.  Nodes get a
creation number; since an op's inputs always exist before its outputs, sorting the nodes
reachable from the loss by that number, newest first, is a valid reverse topological order:
the "tape" of the guide, built on demand so that graphs nobody calls backward on are freed
by ordinary reference counting.  The walk is iterative, so a graph of any depth works.

Contracts of the walk, which ops may rely on:

* **Order.** Nodes are walked strictly newest first (descending creation number).  So of the
  steps of an unrolled layer, step 0 is walked last; a fused step op hands over the gradients of
  the whole sequence from there (``models.cells``).
* **What an op may overwrite.** Just before a node's backward, the walk sets
  ``op.may_overwrite_saved`` to True when it releases the graph (``keep_graph=False``): the op
  may then write its gradients over arrays it saved in forward.  Any other caller gets the
  default, False, and the saved arrays stay intact.
* **What is recorded.** With ``keep_graph=True`` each walked node keeps ``out_grads`` (dL/d of
  each output, summed over its consumers) and ``in_grads`` (what its backward handed to each
  input, None where nothing went).  Drawings and diagnostics read these records; nothing outside
  the walk calls an op's backward.
* **Where a leaf's gradient goes.** Into ``.grad``: the first gradient is bound as it is, later
  ones are added out of place (an op may hand one array to several inputs).  A leaf given a
  *home* with :func:`set_grad_home` (a preallocated array, e.g. its view of one flat buffer that
  an all-reduce reads) instead gets its gradient written into the home, in place, whenever its
  ``.grad`` is None or the home itself; ``.grad`` then is the home.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tinygraph.errors import TinygraphError

if TYPE_CHECKING:
    from tinygraph.op import Op
    from tinygraph.tensor import Tensor


class GraphError(TinygraphError, RuntimeError):
    """A misuse of the graph: backward twice over a released graph, a gradient of the wrong shape, ..."""


_counter = itertools.count()
_grad_enabled = True
_scope: dict[str, Any] = {}
# leaf -> the array its gradient is written into (see set_grad_home); weak, so a leaf is never kept alive
_grad_homes: weakref.WeakKeyDictionary[Tensor, Any] = weakref.WeakKeyDictionary()


class Node:
    """One op application: the op (holding what its backward needs), inputs, metadata."""

    __slots__ = ("op", "inputs", "seq", "name", "scope", "out_meta", "outputs", "out_grads", "in_grads")

    def __init__(self, op: Op, inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...]):
        self.op: Op | None = op
        self.inputs = inputs
        self.seq = next(_counter)
        self.name = op.name
        self.scope = _scope  # shared dict: the scope stack replaces, never mutates, it
        self.out_meta = tuple([(o.data.shape, o.data.dtype) for o in outputs])
        self.outputs = tuple([weakref.ref(o) for o in outputs])
        self.out_grads: list[Any] | None = None  # kept only with keep_graph=True: dL/d(each output)
        self.in_grads: list[Any] | None = None  # kept only with keep_graph=True: what backward sent each input

    @property
    def label(self) -> str:
        """Op name plus the op's own detail (a weight name, an axis), for drawings."""
        detail = self.op.describe() if self.op is not None else ""
        return f"{self.name}({detail})" if detail else self.name

    def __repr__(self) -> str:
        shapes = ", ".join(str(s) for s, _ in self.out_meta)
        return f"<Node #{self.seq} {self.name} -> {shapes} {self.scope}>"


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextmanager
def no_grad() -> Iterator[None]:
    """Build no graph inside (inference, sampling): memory stays flat."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


class scope:  # noqa: N801 - used like a function, as no_grad
    """Tag every node made inside, e.g. ``with scope(cell="lstm", layer=0, t=3, part="gates")``.

    Scopes nest; inner tags override outer ones of the same name.  A class rather than a
    generator context manager: an unrolled layer enters one per time step.
    """

    __slots__ = ("tags", "previous")

    def __init__(self, **tags: Any):
        self.tags = tags

    def __enter__(self) -> None:
        global _scope
        self.previous = _scope
        _scope = {**_scope, **self.tags}

    def __exit__(self, *exc: object) -> None:
        global _scope
        _scope = self.previous


def current_scope() -> dict[str, Any]:
    return _scope


def step_outputs(by_step: dict[int, list[Node]]) -> dict[int, Node]:
    """For the nodes of one unrolled layer grouped by time step: the node whose first output is h_t.

    A fused step is one node; a step written in primitive ops tags the ops computing h with
    ``part="hidden"``, the newest of them making h_t.  (The scope convention every recurrent cell
    follows, read by drawings and by the training probe.)
    """
    found = {}
    for t, group in by_step.items():
        hidden = [n for n in group if n.scope.get("part") == "hidden"]
        found[t] = max(hidden or group, key=operator.attrgetter("seq"))
    return found


def set_grad_home(leaf: Tensor, home: Any | None) -> None:
    """Make backward write ``leaf``'s gradient into ``home`` in place (None: back to plain ``.grad``).

    ``home`` must have the leaf's shape and dtype.  Its contents are overwritten by the first
    gradient after ``leaf.grad`` was set to None (``zero_grad``) and added to by later ones, so a
    flat buffer of homes holds the whole gradient when backward returns, with no packing copy.
    """
    if home is None:
        _grad_homes.pop(leaf, None)
        return
    if home.shape != leaf.data.shape or home.dtype != leaf.data.dtype:
        raise GraphError(
            f"a gradient home of shape {home.shape} and dtype {home.dtype} does not fit a tensor of shape "
            f"{leaf.data.shape} and dtype {leaf.data.dtype}"
        )
    _grad_homes[leaf] = home


def _to_leaf(x: Tensor, gx: Any) -> None:
    """Accumulate ``gx`` into the leaf ``x``: in its home when it has one, else into ``.grad`` out of place."""
    home = _grad_homes.get(x) if _grad_homes else None
    if home is not None and x.grad is None:
        home[...] = gx
        x.grad = home
    elif home is not None and x.grad is home:
        home += gx
    else:
        # out of place: an op may hand the same array to several inputs
        x.grad = gx if x.grad is None else _add(x.grad, gx)


def reachable_nodes(root: Tensor) -> list[Node]:
    """The nodes ``root`` depends on, oldest first (iterative: no recursion limit)."""
    if root.creator is None:
        return []
    seen = {root.creator}  # nodes hash by identity
    stack = [root.creator]
    nodes = []
    while stack:
        node = stack.pop()
        nodes.append(node)
        for x in node.inputs:
            c = x.creator
            if c is not None and c not in seen:
                seen.add(c)
                stack.append(c)
    nodes.sort(key=operator.attrgetter("seq"))  # creation order
    return nodes


def _zeros(meta: tuple[tuple[int, ...], Any], like: Any) -> Any:
    from tinygraph.backend import get_array_module

    return get_array_module(like).zeros(meta[0], dtype=meta[1])


def _add(a: Any, b: Any) -> Any:
    """a + b out of place (either may be shared), kept an array when both are 0-d."""
    s = a + b
    return np.asarray(s) if isinstance(s, np.generic) else s


def _fit_grad(node: Node, slot: int, x: Tensor, gx: Any) -> Any:
    """Check an op's gradient against its input and give it the input's dtype.

    A wrong shape is a bug in the op's backward: it is named here instead of surfacing as a
    broadcasting error (or silently wrong numbers) far away.  A dtype drift (a float64 constant
    in a float32 graph) is cast back, so a parameter's grad always has the parameter's dtype.
    """
    if isinstance(gx, np.generic):  # NumPy reductions of 0-d arrays give scalars, not arrays
        gx = np.asarray(gx)
    if gx.shape != x.data.shape:
        raise RuntimeError(
            f"{node.name}.backward returned a gradient of shape {gx.shape} for input {slot} of shape {x.data.shape}"
        )
    if gx.dtype != x.data.dtype and x.data.dtype.kind == "f":
        gx = gx.astype(x.data.dtype)
    return gx


def run_backward(root: Tensor, grad: Any, keep_graph: bool = False) -> None:
    """Backpropagate ``grad`` (dL/droot) through the graph behind ``root``.

    Gradients of leaves that require them accumulate into ``.grad``.  Without
    ``keep_graph`` every visited node drops its op (and with it the saved arrays) and its
    inputs, so memory is returned as the walk proceeds; with it, every visited node records
    the gradients it received and handed back (see the module's contracts).
    """
    if root.creator is None:
        if root.requires_grad:
            root.grad = grad if root.grad is None else _add(root.grad, grad)
        return
    nodes = reachable_nodes(root)
    pending: dict[Node, list[Any]] = {root.creator: [None] * len(root.creator.out_meta)}
    pending[root.creator][root.index] = grad
    for node in reversed(nodes):
        gys = pending.pop(node, None)
        if gys is None:
            continue  # no gradient reached this node
        op = node.op
        if op is None:
            raise GraphError(
                "this graph was already released by an earlier backward(); pass keep_graph=True to walk it again"
            )
        if len(gys) > 1 and any([g is None for g in gys]):
            ref = next(g for g in gys if g is not None)
            gys = [_zeros(m, ref) if g is None else g for g, m in zip(gys, node.out_meta)]
        if not keep_graph:
            op.may_overwrite_saved = True  # this node is released right after: its saved arrays are free
        gxs = op.backward(*gys)
        if not isinstance(gxs, tuple):
            gxs = (gxs,)
        if len(gxs) != len(node.inputs):
            raise RuntimeError(f"{node.name}.backward returned {len(gxs)} gradients for {len(node.inputs)} inputs")
        sent: list[Any] | None = [None] * len(gxs) if keep_graph else None  # the record, only for a kept graph
        for slot_index, (x, raw) in enumerate(zip(node.inputs, gxs)):
            if raw is None or not x.requires_grad:
                continue
            gx = _fit_grad(node, slot_index, x, raw)
            if sent is not None:
                sent[slot_index] = gx
            c = x.creator
            if c is None:
                _to_leaf(x, gx)
                continue
            slot = pending.get(c)
            if slot is None:
                slot = pending[c] = [None] * len(c.out_meta)
            old = slot[x.index]
            slot[x.index] = gx if old is None else _add(old, gx)
        if keep_graph:
            node.out_grads = list(gys)
            node.in_grads = sent
        else:
            node.op = None
            node.inputs = ()


@dataclass
class Graph:
    """A kept graph for inspection: nodes oldest first, edges, and the leaves feeding it."""

    nodes: list[Node]
    edges: list[tuple[Node, Node, int]] = field(default_factory=list)  # (producer, consumer, input slot)
    leaves: list[tuple[Tensor, Node, int]] = field(default_factory=list)  # (leaf, consumer, input slot)

    @classmethod
    def of(cls, root: Tensor) -> Graph:
        nodes = reachable_nodes(root)
        graph = cls(nodes)
        for node in nodes:
            for slot, x in enumerate(node.inputs):
                if x.creator is not None:
                    graph.edges.append((x.creator, node, slot))
                else:
                    graph.leaves.append((x, node, slot))
        return graph
