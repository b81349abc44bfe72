"""The workspace pool (tinygraph.ops.workspace): reuse of large work arrays from step to step.

What must hold: an array still in use -- through a view, a kept graph, a tensor's data or .grad --
is never handed out again; a freed one is; the pool keeps at most PER_SHAPE arrays of one shape and
drops free arrays, least recently used first, past MAX_BYTES; clear() forgets them all.  Most tests
take ``pooled_workspace`` (MIN_BYTES = 0, so small arrays are pooled too) and compare arrays by
identity through weak references: a freed array's address may be reused by malloc, its object not.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import models
import tinygraph as tg
from tinygraph.ops import workspace

SHAPE = (4, 6)
NBYTES = 4 * 6 * 8  # float64


def empty(shape: tuple[int, ...] = SHAPE, dtype: Any = np.float64) -> np.ndarray:
    return workspace.empty(shape, dtype)


def test_arrays_below_min_bytes_are_not_pooled_and_large_ones_are() -> None:
    workspace.clear()
    try:
        small = workspace.empty((workspace.MIN_BYTES // 8 - 1,), np.float64)
        assert small.shape == (workspace.MIN_BYTES // 8 - 1,) and workspace.held_bytes() == 0
        large = workspace.empty((workspace.MIN_BYTES // 8,), np.float64)
        assert workspace.held_bytes() == large.nbytes == workspace.MIN_BYTES
    finally:
        workspace.clear()


def test_a_freed_array_is_handed_out_again(pooled_workspace: None) -> None:
    a = empty()
    assert a.shape == SHAPE and a.dtype == np.float64
    first = weakref.ref(a)
    del a
    b = empty([4, np.int64(6)])  # any sequence of integers names the same shape
    assert b is first()
    assert workspace.held_bytes() == NBYTES
    # another shape or dtype is another array
    assert empty((6, 4)) is not b and empty(SHAPE, np.float32) is not b
    assert workspace.held_bytes() == 2 * NBYTES + NBYTES // 2


def _with_grad(a: np.ndarray) -> tg.Tensor:
    t = tg.tensor(np.zeros(SHAPE), requires_grad=True)
    t.grad = a
    return t


# ways of keeping an array in use once the name it was handed out under is gone
HOLDERS: dict[str, Callable[[np.ndarray], Any]] = {
    "the array itself": lambda a: a,
    "a row view": lambda a: a[1:],
    "a transposed view": lambda a: a.T,
    "a reshaped view": lambda a: a.reshape(-1),
    "a strided view": lambda a: np.lib.stride_tricks.as_strided(a, shape=(2, 6), strides=(96, 8)),
    "a view of a view": lambda a: a[1:][::2],
    "a list": lambda a: [a],
    "a tensor's data": tg.Tensor,
    "a tensor's grad": _with_grad,
}


def _memory_of(holder: Any) -> np.ndarray:
    if isinstance(holder, list):
        return holder[0]
    if isinstance(holder, tg.Tensor):
        return holder.grad if holder.grad is not None else holder.data
    return holder


@pytest.mark.parametrize("how", list(HOLDERS))
def test_an_array_in_use_is_never_handed_out(pooled_workspace: None, how: str) -> None:
    a = empty()
    a[...] = 7.0
    holder = HOLDERS[how](a)
    original = weakref.ref(a)
    del a
    others = [empty() for _ in range(workspace.PER_SHAPE + 1)]  # more than the pool can hold of a shape
    for b in others:
        assert not np.shares_memory(b, _memory_of(holder)), how
        b[...] = -1.0
    assert (_memory_of(holder) == 7.0).all()
    # once the holder lets go, the array is free again and comes back (it is the first of its shape)
    del holder, others
    assert empty() is original()


def _two_linears(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> tuple[tg.Tensor, list[tg.Tensor], list]:
    """loss = sum(linear(linear(x, w1), w2) * R), the leaves, and their gradients worked out in NumPy.

    The second linear saves the first one's pooled output for its weight gradient.
    """
    leaves = [tg.tensor(a, requires_grad=True) for a in (x, w1, w2)]
    y = tg.linear(tg.linear(leaves[0], leaves[1]), leaves[2])
    r = np.random.default_rng(1).standard_normal(y.shape)
    gy1 = r @ w2
    expected = [gy1 @ w1, gy1.T @ x, r.T @ (x @ w1.T)]
    return (y * tg.tensor(r)).sum(), leaves, expected


def test_arrays_a_kept_graph_holds_are_not_handed_out(pooled_workspace: None) -> None:
    rs = np.random.default_rng(0)
    x, w1, w2 = rs.standard_normal((5, 3)), rs.standard_normal((4, 3)), rs.standard_normal((2, 4))
    loss, leaves, expected = _two_linears(x, w1, w2)
    loss.backward(keep_graph=True)
    assert workspace.held_bytes() > 0
    for _ in range(3):  # other steps of the same shapes take (and overwrite) every free pooled array
        other, _, _ = _two_linears(-2.0 * x, w1 + 1.0, w2 - 1.0)
        other.backward()
    for walk in ("first", "again"):
        for leaf, want in zip(leaves, expected):
            np.testing.assert_allclose(leaf.grad, want, rtol=1e-12, atol=1e-12, err_msg=walk)
            leaf.grad = None
        if walk == "first":
            loss.backward()  # the kept graph again: its saved arrays must be as they were


def test_a_tensors_grad_is_not_handed_out(pooled_workspace: None) -> None:
    rs = np.random.default_rng(0)
    x, w1, w2 = rs.standard_normal((5, 3)), rs.standard_normal((4, 3)), rs.standard_normal((2, 4))
    loss, leaves, expected = _two_linears(x, w1, w2)
    loss.backward()
    assert leaves[0].grad.base is not None and workspace.held_bytes() > 0  # a view of a pooled array
    for _ in range(3):
        other, _, _ = _two_linears(3.0 * x, w1 - 0.5, w2 * 2.0)
        other.backward()
    np.testing.assert_allclose(leaves[0].grad, expected[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_kept_recurrent_graph_walks_again_after_other_steps(pooled_workspace: None, cell: str) -> None:
    """What viz does: keep a step's graph, train on, walk the kept graph again -- same gradients."""
    layer = models.recurrent.CELLS[cell](3, 4, num_layers=2).astype(np.float64)
    rs = np.random.default_rng(0)
    x = tg.tensor(rs.uniform(-1, 1, (2, 5, 3)), requires_grad=True)
    out, _ = layer(x)
    loss = (out * tg.tensor(rs.standard_normal(out.shape))).sum()
    loss.backward(keep_graph=True)
    first = [x.grad.copy()] + [p.grad.copy() for p in layer.parameters()]
    for _ in range(2):
        other, _ = layer(tg.tensor(rs.uniform(-1, 1, (2, 5, 3))))
        (other * 3.0).sum().backward()
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    loss.backward()
    again = [x.grad] + [p.grad for p in layer.parameters()]
    for k, (a, b) in enumerate(zip(again, first)):
        np.testing.assert_array_equal(a, b, err_msg=str(k))


def test_a_training_step_reuses_the_previous_steps_arrays(pooled_workspace: None) -> None:
    w = tg.tensor(np.ones((4, 3)), requires_grad=True)
    y = tg.linear(tg.tensor(np.ones((5, 3))), w)
    before = weakref.ref(y.data.base if y.data.base is not None else y.data)
    del y
    y = tg.linear(tg.tensor(np.ones((5, 3))), w)
    assert np.shares_memory(y.data, before())


def test_at_most_per_shape_arrays_of_one_shape_are_kept(pooled_workspace: None) -> None:
    held = [empty() for _ in range(workspace.PER_SHAPE)]
    assert len({id(a) for a in held}) == workspace.PER_SHAPE
    assert workspace.held_bytes() == workspace.PER_SHAPE * NBYTES
    extra = empty()  # all busy and the shape is full: a plain array the pool does not keep
    assert all(extra is not a for a in held)
    assert workspace.held_bytes() == workspace.PER_SHAPE * NBYTES
    gone = weakref.ref(extra)
    del extra
    assert gone() is None
    freed = weakref.ref(held.pop(3))
    assert empty() is freed()


def test_past_max_bytes_the_least_recently_used_free_arrays_are_dropped(
    pooled_workspace: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workspace, "MAX_BYTES", 3 * NBYTES)
    refs = {}
    for shape in ((4, 6), (6, 4), (2, 12)):  # three free arrays: the pool is full
        refs[shape] = weakref.ref(empty(shape))
    assert workspace.held_bytes() == 3 * NBYTES
    assert all(r() is not None for r in refs.values())  # the pool keeps them alive
    assert empty((6, 4)) is refs[(6, 4)]()  # (6, 4) used again: now (4, 6) is the least recent
    fourth = empty((24,))
    assert workspace.held_bytes() == 3 * NBYTES
    assert refs[(4, 6)]() is None  # dropped
    assert refs[(6, 4)]() is not None and refs[(2, 12)]() is not None
    # arrays in use are neither dropped to make room nor handed out: the pool goes over its bound
    busy = [fourth, empty((6, 4)), empty((2, 12))]
    del fourth
    kept = [weakref.ref(b) for b in busy]
    more = empty((3, 8))
    assert all(more is not b for b in busy)
    assert workspace.held_bytes() == 4 * NBYTES  # nothing was free to drop
    del busy
    assert [empty((24,)) is kept[0](), empty((6, 4)) is kept[1](), empty((2, 12)) is kept[2]()] == [True] * 3


def test_clear_forgets_every_array(pooled_workspace: None) -> None:
    in_use = empty()
    in_use[...] = 3.0
    free = weakref.ref(empty((6, 4)))
    assert free() is not None and workspace.held_bytes() == 2 * NBYTES
    workspace.clear()
    assert workspace.held_bytes() == 0
    assert free() is None  # nothing kept it but the pool
    again = empty()  # a new array: the pool no longer knows the one in use
    assert again is not in_use
    again[...] = 0.0
    assert (in_use == 3.0).all()
    del in_use
    assert all(empty() is not again for _ in range(2))  # a new array each time: `again` is in use
