"""Gradient homes (``tinygraph.graph.set_grad_home``): backward writes a leaf's gradient into a preset
array in place, which is how data-parallel training keeps every gradient in one flat buffer."""

from __future__ import annotations

import numpy as np
import pytest

import models
import tinygraph as tg
from charlm.distributed import FlatGradients
from tinygraph.graph import GraphError, set_grad_home


def leaf(values: list[float]) -> tg.Tensor:
    return tg.tensor(np.array(values, dtype=np.float64), requires_grad=True)


def test_the_gradient_is_written_into_the_home_and_grad_is_the_home() -> None:
    w = leaf([1.0, -2.0, 3.0])
    home = np.full(3, 99.0)  # stale contents: the first gradient overwrites them
    set_grad_home(w, home)
    (w * w).sum().backward()
    assert w.grad is home
    np.testing.assert_array_equal(home, [2.0, -4.0, 6.0])


def test_a_leaf_used_twice_accumulates_in_place_as_without_a_home() -> None:
    # the reused-intermediate shape of the guide's regressions, on a leaf: w reaches the loss by two paths
    x = tg.tensor(np.array([0.5, 1.5, -1.0]))
    plain, homed = leaf([1.0, 2.0, 3.0]), leaf([1.0, 2.0, 3.0])
    home = np.zeros(3)
    set_grad_home(homed, home)
    for w in (plain, homed):
        (w * x + w * w + w).sum().backward()
    assert homed.grad is home
    np.testing.assert_array_equal(home, plain.grad)


def test_zero_grad_then_backward_overwrites_and_a_second_backward_adds() -> None:
    w = leaf([1.0, 2.0])
    home = np.zeros(2)
    set_grad_home(w, home)
    (w * 3.0).sum().backward()
    (w * 3.0).sum().backward()  # .grad is the home: accumulate, as .grad accumulates without one
    np.testing.assert_array_equal(home, [6.0, 6.0])
    w.zero_grad()
    (w * 5.0).sum().backward()
    np.testing.assert_array_equal(home, [5.0, 5.0])


def test_a_grad_replaced_by_hand_is_accumulated_out_of_place_and_the_home_left_alone() -> None:
    w = leaf([1.0, 2.0])
    home = np.full(2, 7.0)
    set_grad_home(w, home)
    w.grad = np.array([1.0, 1.0])  # e.g. clip_grad_norm's scaled copy
    (w * 2.0).sum().backward()
    np.testing.assert_array_equal(w.grad, [3.0, 3.0])
    np.testing.assert_array_equal(home, [7.0, 7.0])


def test_removing_the_home_restores_plain_grads() -> None:
    w = leaf([1.0])
    home = np.zeros(1)
    set_grad_home(w, home)
    set_grad_home(w, None)
    (w * 4.0).sum().backward()
    assert w.grad is not home
    np.testing.assert_array_equal(w.grad, [4.0])


def test_a_home_of_the_wrong_shape_or_dtype_is_refused() -> None:
    w = leaf([1.0, 2.0])
    with pytest.raises(GraphError, match="shape"):
        set_grad_home(w, np.zeros(3))
    with pytest.raises(GraphError, match="dtype"):
        set_grad_home(w, np.zeros(2, dtype=np.float32))


def test_a_flat_buffer_holds_a_charlm_gradient_bit_for_bit() -> None:
    """Every parameter's gradient in one buffer, equal to the plain walk's, with no copy after backward."""
    layers = [
        {"type": "Embedding", "dim": 5},
        {"type": "LSTM", "hidden_size": 6, "num_layers": 2},
        {"type": "GRU", "hidden_size": 4},
        {"type": "Dense", "size": "vocab"},
    ]
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, size=(3, 7)), rng.integers(0, 11, size=(3, 7))
    grads = []
    for flat in (False, True):
        tg.manual_seed(1)
        model = models.CharLM.from_layers(11, layers).astype(np.float64)
        params = model.parameters()
        buffer = FlatGradients(params, extras=2) if flat else None
        for p in params:
            p.grad = None
        model.loss(x, y)[0].backward()
        if buffer is not None:
            assert all(p.grad is v for p, v in zip(params, buffer.views))
            assert all(np.shares_memory(p.grad, buffer.buffer) for p in params)
            buffer.release()
        grads.append([np.array(p.grad) for p in params])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_flat_gradients_collect_fills_what_backward_did_not_reach() -> None:
    a, b = leaf([1.0, 2.0]), leaf([3.0])
    flat = FlatGradients([a, b], extras=1)
    flat.buffer[:] = 5.0  # stale
    (a * 2.0).sum().backward()  # b gets no gradient
    flat.collect()
    np.testing.assert_array_equal(flat.grads, [2.0, 2.0, 0.0])
    assert b.grad is flat.views[1]
    assert flat.nbytes == 4 * 8
    flat.release()
