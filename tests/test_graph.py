"""The graph: fan-out, reuse, skipped branches, depth, multi-output ops, no_grad, scopes, keep_graph."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import backend


def host(a: Any) -> np.ndarray:
    return backend.to_numpy(a)


def leaf(values: Any, dtype: Any = np.float64) -> tg.Tensor:
    return tg.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


class Explodes(tg.Op):
    """An identity whose backward must never run."""

    name = "explodes"

    def forward(self, x: Any) -> Any:
        return x.copy()

    def backward(self, gy: Any) -> Any:
        raise AssertionError("backward of a node that does not lead to the loss was called")


class Twice(tg.Op):
    """y = 2 x, counting its backward calls."""

    name = "twice"
    calls = 0

    def forward(self, x: Any) -> Any:
        return 2 * x

    def backward(self, gy: Any) -> Any:
        Twice.calls += 1
        return 2 * gy


# --- gradient accumulation ----------------------------------------------------------------------


def test_fan_out_accumulates(device: str) -> None:
    x = leaf([1.0, 2.0, 3.0])
    y = x * 3.0
    loss = (y * y).sum() + y.sum() + tg.tanh(y).sum()  # y feeds three consumers
    loss.backward()
    y_ = 3 * np.array([1.0, 2.0, 3.0])
    expected = 3 * (2 * y_ + 1 + (1 - np.tanh(y_) ** 2))
    np.testing.assert_allclose(host(x.grad), expected, rtol=1e-14)


def test_reused_intermediate(device: str) -> None:
    a = leaf([1.5, -2.0])
    b = a + a
    c = b + b
    c.backward(np.ones(2))
    np.testing.assert_array_equal(host(a.grad), [4.0, 4.0])
    # and through a product: d = b * b = 4 a^2, dd/da = 8 a
    a2 = leaf([1.5, -2.0])
    b2 = a2 + a2
    (b2 * b2).sum().backward()
    np.testing.assert_allclose(host(a2.grad), 8 * np.array([1.5, -2.0]), rtol=1e-15)


def test_same_leaf_in_both_slots_of_an_op(device: str) -> None:
    x = leaf([3.0])
    (x * x).sum().backward()
    np.testing.assert_array_equal(host(x.grad), [6.0])


def test_leaf_grads_accumulate_over_two_backward_calls(device: str) -> None:
    x = leaf([1.0, 2.0])
    (x * 2.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(host(x.grad), [2.0 + 2.0, 2.0 + 4.0], rtol=1e-15)
    x.zero_grad()
    assert x.grad is None


def test_parameter_grads_do_not_share_memory_unsafely(device: str) -> None:
    # add hands the same gradient array to both inputs; accumulating into one must not change the other
    a, b = leaf([1.0, 1.0]), leaf([2.0, 2.0])
    (a + b).sum().backward()
    (a * 5.0).sum().backward()
    np.testing.assert_array_equal(host(a.grad), [6.0, 6.0])
    np.testing.assert_array_equal(host(b.grad), [1.0, 1.0])


# --- what the walk visits -----------------------------------------------------------------------


def test_branch_not_leading_to_the_loss_is_not_visited(device: str) -> None:
    x = leaf([1.0, 2.0])
    side = Explodes()(x * 4.0)  # built, requires grad, but the loss never uses it
    side2 = Explodes()(side)
    loss = (x * x).sum()
    loss.backward()
    np.testing.assert_array_equal(host(x.grad), [2.0, 4.0])
    assert side2.requires_grad and side2.creator is not None
    assert not any(n.name == "explodes" for n in tg.Graph.of((x * x).sum()).nodes)


def test_an_explodes_op_on_the_path_is_visited(device: str) -> None:
    # the control for the test above: the same op on the loss's path does run its backward
    x = leaf([1.0])
    with pytest.raises(AssertionError, match="does not lead to the loss"):
        Explodes()(x).sum().backward()


def test_input_without_grad_gets_none_and_stays_none(device: str) -> None:
    x = leaf([1.0, 2.0])
    c = tg.tensor(np.array([5.0, 6.0]))
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(host(x.grad), [5.0, 6.0])


def test_each_node_runs_its_backward_once(device: str) -> None:
    Twice.calls = 0
    x = leaf([1.0])
    y = Twice()(x)
    (y + y * y + tg.exp(y)).sum().backward()  # y fans out three ways; one backward call for Twice
    assert Twice.calls == 1
    np.testing.assert_allclose(host(x.grad), 2 * (1 + 2 * 2.0 + np.exp(2.0)), rtol=1e-14)


# --- depth --------------------------------------------------------------------------------------


def test_deep_chain_of_20000_nodes(device: str) -> None:
    x = leaf([0.5])
    h = x
    for _ in range(20_000):
        h = tg.tanh(h) * 1.0001  # two nodes per step: 40,000 in all
    h.sum().backward()
    # the same product of local derivatives by hand
    v, g = 0.5, 1.0
    for _ in range(20_000):
        t = np.tanh(v)
        g *= (1 - t * t) * 1.0001
        v = t * 1.0001
    np.testing.assert_allclose(host(h.data), [v], rtol=1e-10)
    np.testing.assert_allclose(host(x.grad), [g], rtol=1e-8)


def test_graph_of_100000_nodes_with_a_shared_weight(device: str) -> None:
    w = leaf([1.0])
    h = leaf([0.0])
    for _ in range(100_000):
        h = h + w
    assert len(tg.Graph.of(h).nodes) == 100_000
    h.sum().backward()
    np.testing.assert_array_equal(host(w.grad), [100_000.0])
    np.testing.assert_array_equal(host(h.data), [100_000.0])


def test_dropping_a_deep_graph_unvisited_does_not_overflow(device: str) -> None:
    x = leaf([0.0])
    h = x
    probes = []
    for k in range(100_000):
        h = h * 1.0
        if k in (0, 50_000, 99_998):  # the first, a middle and the next-to-last tensor of the chain
            probes.append(weakref.ref(h))
    assert all(p() is not None for p in probes)  # the chain keeps them alive...
    gc.disable()
    try:
        del h  # ...until it goes: freeing it node by node must not recurse in C either
        gone = [p() is None for p in probes]
    finally:
        gc.enable()
    assert gone == [True, True, True]  # freed at once, by reference counts, not left for the collector
    assert x.grad is None and x.data.shape == (1,)


# --- multi-output ops ---------------------------------------------------------------------------


def test_split_with_an_unused_output_gets_zeros(device: str) -> None:
    x = leaf(np.arange(6.0))
    a, b, c = tg.split(x, 3)
    assert a.creator is b.creator is c.creator and (a.index, b.index, c.index) == (0, 1, 2)
    (a * 2.0 + c * c).sum().backward()  # b unused
    np.testing.assert_array_equal(host(x.grad), [2.0, 2.0, 0.0, 0.0, 8.0, 10.0])


def test_multi_output_op_with_two_used_outputs(device: str) -> None:
    x = leaf(np.arange(4.0))
    lo, hi = tg.split(x, [1])
    (lo.sum() * 3.0 + (hi * hi).sum()).backward()
    np.testing.assert_array_equal(host(x.grad), [3.0, 2.0, 4.0, 6.0])


class SinCos(tg.Op):
    """A user-defined two-output op, to check the protocol itself."""

    name = "sincos"

    def forward(self, x: Any) -> tuple[Any, Any]:
        xp = tg.get_array_module(x)
        self.x = x
        return xp.sin(x), xp.cos(x)

    def backward(self, gs: Any, gc: Any) -> Any:
        xp = tg.get_array_module(gs)
        return gs * xp.cos(self.x) - gc * xp.sin(self.x)


def test_user_defined_multi_output_op_gradchecks(device: str) -> None:
    x = np.linspace(-2.0, 2.0, 7)
    result = tg.gradcheck(lambda t: SinCos()(t), [x])  # noqa: PLW0108 - a new op per call
    assert result.ok, str(result)
    result = tg.gradcheck(lambda t: SinCos()(t)[1], [x])  # first output unused: zeros filled in
    assert result.ok, str(result)


# --- no_grad, detach ----------------------------------------------------------------------------


def test_no_grad_builds_nothing(device: str) -> None:
    x = leaf([1.0, 2.0])
    with tg.no_grad():
        assert not tg.is_grad_enabled()
        y = tg.tanh(x * 2.0 + 1.0)
        pieces = tg.split(x, 2)
    assert tg.is_grad_enabled()
    for t in (y, *pieces):
        assert t.creator is None and not t.requires_grad
    with pytest.raises(tg.TinygraphError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_restores_the_mode_after_an_exception(device: str) -> None:
    with pytest.raises(KeyError, match="boom"), tg.no_grad():
        raise KeyError("boom")
    assert tg.is_grad_enabled()
    assert (leaf([1.0]) * 2.0).creator is not None


def test_ops_on_constants_only_build_nothing(device: str) -> None:
    y = tg.tensor([1.0, 2.0]) * 3.0
    assert y.creator is None and not y.requires_grad


def test_detach_cuts_the_graph(device: str) -> None:
    x = leaf([1.0, 2.0])
    y = (x * 2.0).detach()
    assert y.creator is None and not y.requires_grad
    np.testing.assert_array_equal(host(y.data), [2.0, 4.0])
    (y * x).sum().backward()
    np.testing.assert_array_equal(host(x.grad), [2.0, 4.0])  # y treated as a constant, not 4 x


# --- metadata and scopes ------------------------------------------------------------------------


def test_scope_metadata_is_recorded_and_nested_scopes_override(device: str) -> None:
    x = leaf(np.ones((2, 3)))
    with tg.scope(cell="lstm", layer=1):
        a = x * 2.0
        with tg.scope(t=7, part="forget gate"):
            b = tg.sigmoid(a)
            with tg.scope(layer=2):
                c = b + 1.0
        d = c.sum()
    e = d * 1.0
    assert a.creator.scope == {"cell": "lstm", "layer": 1}
    assert b.creator.scope == {"cell": "lstm", "layer": 1, "t": 7, "part": "forget gate"}
    assert c.creator.scope == {"cell": "lstm", "layer": 2, "t": 7, "part": "forget gate"}
    assert d.creator.scope == {"cell": "lstm", "layer": 1}
    assert e.creator.scope == {}
    assert b.creator.name == "sigmoid" and b.creator.out_meta == (((2, 3), np.dtype(np.float64)),)
    assert "sigmoid" in repr(b.creator)


def test_scope_is_restored_after_an_exception(device: str) -> None:
    with pytest.raises(ValueError, match="inside the scope"), tg.scope(t=1):
        raise ValueError("inside the scope")
    assert (leaf([1.0]) * 2.0).creator.scope == {}


def test_node_label_carries_the_op_detail(device: str) -> None:
    x = leaf(np.ones((2, 3)))
    assert x.sum(axis=1).creator.label == "sum(axis=1)"
    assert tg.exp(x).creator.label == "exp"


# --- keeping and releasing the graph ------------------------------------------------------------


def test_keep_graph_keeps_out_grads_and_allows_a_second_backward(device: str) -> None:
    x = leaf([1.0, 2.0])
    y = x * 3.0
    loss = (y * y).sum()
    loss.backward(keep_graph=True)
    assert y.creator.op is not None
    np.testing.assert_allclose(host(y.creator.out_grads[0]), 2 * np.array([3.0, 6.0]), rtol=1e-15)  # 2 y
    np.testing.assert_allclose(host(loss.creator.out_grads[0]), 1.0)
    first = host(x.grad).copy()
    loss.backward()
    np.testing.assert_allclose(host(x.grad), 2 * first, rtol=1e-15)


def test_default_backward_releases_the_graph(device: str) -> None:
    x = leaf([1.0, 2.0])
    y = x * 3.0
    loss = (y * y).sum()
    loss.backward()
    for node in (y.creator, loss.creator):
        assert node.op is None and node.inputs == () and node.out_grads is None
    with pytest.raises(RuntimeError, match="already released"):
        loss.backward()
    with pytest.raises(tg.TinygraphError, match="keep_graph=True"):
        (y * 1.0).sum().backward()  # a new loss built on a released part of the graph


def test_graph_of_lists_nodes_edges_and_leaves(device: str) -> None:
    x, w = leaf(np.ones((2, 3))), leaf(np.ones((3, 4)))
    h = x @ w
    y = tg.tanh(h)
    z = y * 2.0
    loss = z.sum()
    g = tg.Graph.of(loss)
    assert [n.name for n in g.nodes] == ["matmul", "tanh", "mul", "sum"]
    mm, th, mul, sm = g.nodes
    assert (mm, th, mul, sm) == (h.creator, y.creator, z.creator, loss.creator)
    assert {(id(p), id(c), slot) for p, c, slot in g.edges} == {
        (id(mm), id(th), 0),
        (id(th), id(mul), 0),
        (id(mul), id(sm), 0),
    }
    leaves = {(id(t), c.name, slot) for t, c, slot in g.leaves}
    assert (id(x), "matmul", 0) in leaves and (id(w), "matmul", 1) in leaves
    assert len(g.leaves) == 3  # x, w and the constant 2.0
    assert tg.Graph.of(x).nodes == []


# --- dtypes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        lambda x: x * 2,
        lambda x: 1 - x,
        lambda x: x / 3,
        lambda x: 2.5 + x,
        lambda x: x**2,
        lambda x: 2**x,
        lambda x: -x * 0.5,
        lambda x: tg.mean(tg.tanh(x) * 2),
        lambda x: tg.softmax_cross_entropy(x, np.array([0, 2])),
        lambda x: x * np.float64(2.0),
    ],
)
def test_float32_stays_float32_with_python_scalars(device: str, expr: Any) -> None:
    x = tg.tensor(np.array([[0.5, -1.0, 2.0], [1.0, 0.25, -0.5]], dtype=np.float32), requires_grad=True)
    y = expr(x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_leaf_grad_keeps_the_leaf_dtype_when_a_float64_constant_sneaks_in(device: str) -> None:
    x = tg.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = x * tg.tensor(np.full(3, 2.0))  # float64 constant: NumPy promotes the product
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(host(x.grad), [2.0, 2.0, 2.0])


def test_integer_tensor_times_a_float_is_a_float(device: str) -> None:
    y = tg.tensor(np.array([1, 2, 3])) * 0.5
    np.testing.assert_array_equal(y.numpy(), [0.5, 1.0, 1.5])
    assert (tg.tensor(np.array([1, 2])) * 2).dtype == np.int64


def test_scalar_results_are_arrays(device: str) -> None:
    x = leaf(2.0)
    y = x * x
    assert y.data.shape == () and type(y.data) is type(x.data)  # not a NumPy scalar
    y.backward()
    assert type(x.grad) is type(x.data) and float(x.grad) == 4.0
    x.grad[...] = 0.0  # in-place updates (optimizers, clipping) need arrays
    y.data[...] = 1.0


# --- protocol errors in an op's backward are named ----------------------------------------------


class WrongShape(tg.Op):
    name = "wrong_shape"

    def forward(self, x: Any) -> Any:
        return x.sum(axis=0)

    def backward(self, gy: Any) -> Any:
        return gy  # forgot to broadcast back to the input's shape


def test_gradient_of_the_wrong_shape_names_the_op(device: str) -> None:
    x = leaf(np.ones((3, 2)))
    with pytest.raises(RuntimeError, match=r"wrong_shape.backward returned a gradient of shape \(2,\)"):
        WrongShape()(x).sum().backward()


def test_backward_with_a_given_gradient_checks_its_shape(device: str) -> None:
    x = leaf(np.ones((2, 3)))
    y = x * 2.0
    with pytest.raises(tg.TinygraphError, match="shape"):
        y.backward(np.ones((3, 2)))
    y.backward([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # a nested list is fine
    np.testing.assert_array_equal(host(x.grad), [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]])
