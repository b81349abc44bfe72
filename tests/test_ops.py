"""One test per op: a float64 gradient check on several shapes and forward values against NumPy.

Every test takes the ``device`` fixture, so it runs on NumPy and (where CuPy and a GPU exist) on
CuPy; inputs are made on the host and moved by ``tg.tensor`` / ``tg.gradcheck``.  Every gradient
check is also element-wise (``rtol_each``): the plain check is normalised by the largest gradient
entry and would let an error confined to tiny entries pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import backend
from tinygraph.ops import _util, nn

TOL = 1e-6  # worst relative error allowed by every gradient check here
RTOL_EACH = 1e-5  # and per element: |a - n| <= RTOL_EACH * (|n| + 1e-4)


def rand(*shape: int, seed: int = 0, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def away_from_zero(*shape: int, seed: int = 0) -> np.ndarray:
    """Values in +-[0.5, 2]: no kink (relu) or pole (div) within a finite-difference step."""
    rs = np.random.default_rng(seed)
    return rs.uniform(0.5, 2.0, size=shape) * rs.choice([-1.0, 1.0], size=shape)


def check(fn: Callable[..., Any], *inputs: Any) -> None:
    result = tg.gradcheck(fn, list(inputs), tol=TOL, rtol_each=RTOL_EACH)
    assert result.ok, str(result)
    assert result.worst <= TOL and result.worst_each <= RTOL_EACH


def forward(fn: Callable[..., Any], *inputs: Any) -> Any:
    """fn on float64 tensors made from host arrays (constants pass through), result on the host."""
    ts = [tg.tensor(x) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x for x in inputs]
    out = fn(*ts)
    if isinstance(out, tuple):
        return tuple(o.numpy() for o in out)
    return out.numpy()


def assert_close(actual: Any, expected: Any) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


# --- element-wise binary ops, with NumPy broadcasting -------------------------------------------

BROADCAST_SHAPES = [
    ((3,), (3,)),
    ((2, 3), (3,)),
    ((4, 1, 3), (1, 5, 1)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((1,), (1,)),
    ((3, 1), (1, 1)),
]

BINARY = {
    "add": (tg.add, np.add),
    "sub": (tg.sub, np.subtract),
    "mul": (tg.mul, np.multiply),
    "div": (tg.div, np.divide),
    "pow": (tg.pow, np.power),
}


@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
@pytest.mark.parametrize("name", list(BINARY))
def test_binary_op(device: str, name: str, shapes: tuple) -> None:
    fn, ref = BINARY[name]
    a, b = rand(*shapes[0], seed=1), away_from_zero(*shapes[1], seed=2)
    if name == "pow":  # a ** b with b differentiated needs a > 0 (d/db = a**b log a)
        a = rand(*shapes[0], seed=1, low=0.5, high=2.0)
    out = forward(fn, a, b)
    assert out.shape == np.broadcast_shapes(a.shape, b.shape)
    assert_close(out, ref(a, b))
    check(fn, a, b)


@pytest.mark.parametrize("exponent", [2, 3, 0.5, -1.5])
def test_pow_constant_exponent(device: str, exponent: float) -> None:
    a = rand(2, 3, low=0.5, high=2.0)
    assert_close(forward(lambda x: x**exponent, a), a**exponent)
    check(lambda x: x**exponent, a)
    # an integer power of negative numbers is fine: only d/db needs log(a)
    neg = -a
    check(lambda x: x**2, neg)


# --- element-wise unary ops ---------------------------------------------------------------------

UNARY_SHAPES = [(), (1,), (5,), (2, 3), (3, 1, 4)]

UNARY = {
    "neg": (tg.neg, np.negative, away_from_zero),
    "exp": (tg.exp, np.exp, rand),
    "log": (tg.log, np.log, lambda *s, seed=0: rand(*s, seed=seed, low=0.2, high=3.0)),
    "tanh": (tg.tanh, np.tanh, rand),
    "sigmoid": (tg.sigmoid, lambda x: 1 / (1 + np.exp(-x)), rand),
    "relu": (tg.relu, lambda x: np.maximum(x, 0), away_from_zero),
}


@pytest.mark.parametrize("shape", UNARY_SHAPES, ids=str)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_op(device: str, name: str, shape: tuple) -> None:
    fn, ref, make = UNARY[name]
    x = make(*shape, seed=3)
    out = forward(fn, x)
    assert out.shape == x.shape
    assert_close(out, ref(x))
    check(fn, x)


def test_log_of_large_and_small_values(device: str) -> None:
    x = np.array([1e-300, 1e-30, 1.0, 1e30, 1e300])
    t = tg.tensor(x, requires_grad=True)
    y = tg.log(t)
    np.testing.assert_allclose(y.numpy(), np.log(x), rtol=1e-15)
    y.sum().backward()
    np.testing.assert_allclose(backend.to_numpy(t.grad), 1 / x, rtol=1e-15)
    # the finite-difference step is absolute (1e-6): keep it well inside the domain
    check(tg.log, np.array([1e-2, 1.0, 1e3, 1e8]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_of_huge_inputs_stays_finite(device: str, dtype: type) -> None:
    x = tg.tensor(np.array([-1000.0, -100.0, 0.0, 100.0, 1000.0], dtype=dtype), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = tg.sigmoid(x)
        y.sum().backward()
    out, grad = y.numpy(), backend.to_numpy(x.grad)
    assert np.isfinite(out).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-30)
    np.testing.assert_allclose(grad, [0.0, 0.0, 0.25, 0.0, 0.0], atol=1e-30)
    assert y.dtype == dtype and x.grad.dtype == dtype


def test_exp_of_large_negative_is_zero_not_nan(device: str) -> None:
    out = forward(tg.exp, np.array([-1000.0, 0.0, 1.0]))
    assert_close(out, [0.0, 1.0, np.e])


def test_relu_gradient_is_the_mask(device: str) -> None:
    x = tg.tensor(np.array([-2.0, -0.5, 0.5, 3.0]), requires_grad=True)
    tg.relu(x).sum().backward()
    np.testing.assert_array_equal(backend.to_numpy(x.grad), [0.0, 0.0, 1.0, 1.0])


LOGITS_FAR_APART = np.array([[-15.0, -5.0, 0.0, 12.0], [3.0, -9.0, 8.0, 0.5]])
# ops whose gradient entries span many orders of magnitude: a wrong tiny entry is invisible to a
# check normalised by the largest one, so these are the checks the element-wise test is for
SPREAD = {
    "sigmoid": (tg.sigmoid, np.linspace(-18.0, 18.0, 7)),  # sigmoid' from 1.5e-8 to 0.25
    "tanh": (tg.tanh, np.linspace(-9.0, 9.0, 7)),
    "exp": (tg.exp, np.linspace(-20.0, 2.0, 7)),
    "softmax": (lambda t: tg.softmax(t, -1), LOGITS_FAR_APART),
    "cross-entropy": (lambda t: tg.softmax_cross_entropy(t, np.array([3, 1])), LOGITS_FAR_APART),
    "div": (lambda t: 1e-3 / t, np.array([1e-1, 1.0, 30.0, 300.0])),
}


@pytest.mark.parametrize("name", list(SPREAD))
def test_gradients_spanning_orders_of_magnitude(device: str, name: str) -> None:
    fn, x = SPREAD[name]
    result = tg.gradcheck(fn, [x], tol=TOL, rtol_each=RTOL_EACH)
    assert result.ok, str(result)
    assert result.numeric_max[0] > 1e4 * _smallest_gradient(fn, x)  # the spread the test is about


def _smallest_gradient(fn: Callable[..., Any], x: np.ndarray) -> float:
    t = tg.tensor(x, requires_grad=True)
    y = fn(t)
    (y * tg.tensor(np.random.default_rng(0).standard_normal(y.shape))).sum().backward()
    return float(np.abs(backend.to_numpy(t.grad)).min())


# --- Tensor operators, reflected forms included -------------------------------------------------

OPERATORS = {
    "a + b": (lambda a, b: a + b, np.add),
    "a - b": (lambda a, b: a - b, np.subtract),
    "a * b": (lambda a, b: a * b, np.multiply),
    "a / b": (lambda a, b: a / b, np.divide),
    "a ** b": (lambda a, b: a**b, np.power),
}


@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 3), (1, 3)), ((4,), ())], ids=str)
@pytest.mark.parametrize("expr", list(OPERATORS))
def test_tensor_operators(device: str, expr: str, shapes: tuple) -> None:
    fn, ref = OPERATORS[expr]
    a, b = away_from_zero(*shapes[0], seed=4), away_from_zero(*shapes[1], seed=5)
    if expr == "a ** b":  # d/db = a**b log a needs a > 0
        a = np.abs(a)
    assert_close(forward(fn, a, b), ref(a, b))
    check(fn, a, b)


SCALAR_FORMS = {
    "x + 2": (lambda x: x + 2, lambda x: x + 2),
    "2 + x": (lambda x: 2 + x, lambda x: 2 + x),
    "x - 2": (lambda x: x - 2, lambda x: x - 2),
    "2 - x": (lambda x: 2 - x, lambda x: 2 - x),
    "x * 3": (lambda x: x * 3, lambda x: x * 3),
    "3 * x": (lambda x: 3 * x, lambda x: 3 * x),
    "x / 4": (lambda x: x / 4, lambda x: x / 4),
    "4 / x": (lambda x: 4 / x, lambda x: 4 / x),
    "x ** 2": (lambda x: x**2, lambda x: x**2),
    "2 ** x": (lambda x: 2**x, lambda x: 2.0**x),
    "-x": (lambda x: -x, lambda x: -x),
    "1.5 * x - x / 3": (lambda x: 1.5 * x - x / 3, lambda x: 1.5 * x - x / 3),
}


@pytest.mark.parametrize("expr", list(SCALAR_FORMS))
def test_operators_with_python_scalars(device: str, expr: str) -> None:
    fn, ref = SCALAR_FORMS[expr]
    x = rand(2, 3, seed=6, low=0.5, high=2.0)
    assert_close(forward(fn, x), ref(x))
    check(fn, x)


def test_operators_with_numpy_operands_on_the_left(device: str) -> None:
    x = rand(2, 3, seed=7, low=0.5, high=2.0)
    c = rand(2, 3, seed=8)
    t = tg.tensor(x)
    dev_c = backend.to_device(c)
    for out, expected in [
        (dev_c + t, c + x),
        (dev_c - t, c - x),
        (dev_c * t, c * x),
        (dev_c / t, c / x),
        (np.float64(2.0) * t, 2 * x),
    ]:
        assert isinstance(out, tg.Tensor)
        assert_close(out.numpy(), expected)
    check(lambda a: backend.to_device(c) * a - np.float64(2.0) / a, x)


# --- matmul and linear --------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3,), (3,)),  # dot product -> scalar
    ((3,), (3, 4)),  # vector @ matrix
    ((2, 3), (3,)),  # matrix @ vector
    ((2, 3), (3, 4)),
    ((1, 1), (1, 1)),
    ((5, 2, 3), (5, 3, 4)),  # batched
    ((2, 1, 3, 4), (5, 4, 2)),  # batch dims broadcast against each other
    ((4,), (2, 4, 3)),  # 1-D against a batch
    ((2, 3, 4), (4,)),
    ((3, 1, 2), (2, 5)),  # a plain matrix broadcast over the batch
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul(device: str, shapes: tuple) -> None:
    a, b = rand(*shapes[0], seed=9), rand(*shapes[1], seed=10)
    assert_close(forward(tg.matmul, a, b), np.matmul(a, b))
    assert_close(forward(lambda x, y: x @ y, a, b), a @ b)
    check(tg.matmul, a, b)


def test_matmul_with_a_constant_on_the_left(device: str) -> None:
    a, b = rand(2, 3, seed=11), rand(3, 4, seed=12)
    check(lambda y: backend.to_device(a) @ y, b)


LINEAR_SHAPES = [  # (x, W): W is (out, in)
    ((5,), (3, 5)),
    ((3, 5), (3, 5)),
    ((2, 4, 5), (3, 5)),  # a (B, T, in) batch
    ((1, 5), (3, 5)),
    ((1, 1), (1, 1)),
    ((4, 1), (3, 1)),  # one input feature
    ((2, 3, 4), (1, 4)),  # one output
    ((1, 1, 3), (7, 3)),
    ((3, 2, 1, 7), (5, 7)),  # two leading dims and a 1
    ((7, 3), (5, 3)),  # odd sizes
]


@pytest.mark.parametrize("shapes", LINEAR_SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(device: str, workspace_pool: bool, shapes: tuple, bias: bool) -> None:
    (x_shape, w_shape), out = shapes, shapes[1][0]
    x, w, b = rand(*x_shape, seed=13), rand(*w_shape, seed=14), rand(out, seed=15)
    inputs = [x, w, b] if bias else [x, w]
    expected = x @ w.T + (b if bias else 0)
    assert_close(forward(tg.linear, *inputs), expected)
    check(tg.linear, *inputs)


# --- reductions ---------------------------------------------------------------------------------

REDUCTIONS = [
    ((2, 3, 4), None, False),
    ((2, 3, 4), 0, False),
    ((2, 3, 4), -1, True),
    ((2, 3, 4), (0, 2), False),
    ((2, 3, 4), (-1, 0), True),
    ((2, 3, 4), (0, 1, 2), True),
    ((5,), 0, False),
    ((), None, False),
    ((1, 3), 0, True),
    ((3, 1), -1, False),
]


@pytest.mark.parametrize(("shape", "axis", "keepdims"), REDUCTIONS, ids=str)
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_reduction(device: str, name: str, shape: tuple, axis: Any, keepdims: bool) -> None:
    fn = getattr(tg, name)
    ref = getattr(np, name)
    x = rand(*shape, seed=16)
    out = forward(lambda t: fn(t, axis=axis, keepdims=keepdims), x)
    expected = ref(x, axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(expected)
    assert_close(out, expected)
    check(lambda t: fn(t, axis, keepdims), x)
    # the method forms agree
    assert_close(forward(lambda t: getattr(t, name)(axis, keepdims), x), expected)


def test_sum_accepts_a_list_of_axes(device: str) -> None:
    x = rand(2, 3, 4, seed=17)
    assert_close(forward(lambda t: tg.sum(t, axis=[0, 2]), x), x.sum(axis=(0, 2)))
    check(lambda t: tg.mean(t, axis=[0, -1]), x)


def test_mean_gradient_is_one_over_count(device: str) -> None:
    x = tg.tensor(np.zeros((4, 5)), requires_grad=True)
    tg.mean(x, axis=1).sum().backward()
    np.testing.assert_allclose(backend.to_numpy(x.grad), np.full((4, 5), 0.2), rtol=1e-15)


# --- shape ops ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "new"),
    [((2, 3, 4), (4, 6)), ((2, 3, 4), (-1,)), ((2, 3, 4), (3, -1, 2)), ((), (1, 1)), ((1, 5), (5,))],
    ids=str,
)
def test_reshape(device: str, shape: tuple, new: tuple) -> None:
    x = rand(*shape, seed=18)
    assert_close(forward(lambda t: tg.reshape(t, new), x), x.reshape(new))
    assert_close(forward(lambda t: t.reshape(*new), x), x.reshape(new))
    check(lambda t: tg.reshape(t, new), x)


@pytest.mark.parametrize(
    ("shape", "axes"),
    [((2, 3), None), ((2, 3, 4), None), ((2, 3, 4), (1, 0, 2)), ((2, 3, 4), (0, -1, 1)), ((2, 3, 4), (-1, -3, -2))],
    ids=str,
)
def test_transpose(device: str, shape: tuple, axes: Any) -> None:
    x = rand(*shape, seed=19)
    assert_close(forward(lambda t: tg.transpose(t, axes), x), np.transpose(x, axes))
    check(lambda t: tg.transpose(t, axes), x)


def test_transpose_property_and_method_forms(device: str) -> None:
    x = rand(2, 3, 4, seed=20)
    assert_close(forward(lambda t: t.T, x), x.T)
    assert_close(forward(lambda t: t.transpose(2, 0, 1), x), x.transpose(2, 0, 1))
    assert_close(forward(lambda t: t.transpose((2, 0, 1)), x), x.transpose(2, 0, 1))
    check(lambda t: t.T, x)


GETITEM_CASES = {  # name: (input shape, index)
    "int": ((4, 3), 1),
    "negative int": ((4, 3), -1),
    "basic slice": ((4, 3), slice(1, 3)),
    "negative step": ((4, 3), (slice(None), slice(None, None, -1))),
    "step -2 and int": ((4, 3), (slice(None, None, -2), 1)),
    "ellipsis and newaxis": ((4, 3), (Ellipsis, None, 0)),
    "empty slice": ((4, 3), slice(2, 2)),
    "int array with repeats": ((4, 3), np.array([0, 3, 0, 0, 2])),
    "list with repeats": ((4, 3), [1, 1, 2]),
    "two int arrays": ((4, 3), (np.array([0, 1, 1, 3]), np.array([2, 2, 0, 2]))),
    "slice and int array": ((4, 3), (slice(1, None), np.array([2, 2, 1]))),
    "2-D int array": ((4, 3), np.array([[0, 1], [1, 0]])),
    "boolean mask rows": ((4, 3), np.array([True, False, True, True])),
    "boolean mask elements": ((4, 3), rand(4, 3, seed=21) > 0),
    # a vector
    "1-D int": ((7,), 3),
    "1-D negative int": ((7,), -7),
    "1-D step 3": ((7,), slice(1, None, 3)),
    "1-D negative step from a negative start": ((7,), slice(-2, None, -2)),
    "1-D fancy with negatives and repeats": ((7,), np.array([6, -1, 0, -7, 6, 2])),
    "1-D fancy, negatives aliasing positives": ((7,), np.array([6, -1, 0, -7, 3])),  # no value repeats
    "1-D boolean mask": ((7,), np.array([True, False, False, True, True, False, True])),
    # a (B, T, H) batch, as a recurrent layer's output
    "3-D int int": ((3, 4, 2), (1, -1)),
    "3-D last step": ((3, 4, 2), (slice(None), -1)),
    "3-D steps and reversed units": ((3, 4, 2), (slice(None), slice(None, None, 2), slice(None, None, -1))),
    "3-D ellipsis and int": ((3, 4, 2), (Ellipsis, 1)),
    "3-D fancy with repeats on an inner axis": ((3, 4, 2), (slice(None), np.array([3, 0, 3, -1]))),
    "3-D fancy split by a slice": ((3, 4, 2), (np.array([0, 2, 0]), slice(None), np.array([1, 0, 1]))),
    "3-D fancy, step slice and int": ((3, 4, 2), (np.array([2, 2, 0]), slice(1, None, 2), -1)),
    "3-D 2-D boolean mask": ((3, 4, 2), rand(3, 4, seed=24) > 0),
    "3-D boolean mask then int": ((3, 4, 2), (np.array([False, True, True]), slice(None), 0)),
    # sizes of 1
    "(1, 1) int int": ((1, 1), (0, -1)),
    "(1, 1) repeated fancy": ((1, 1), np.array([0, 0, -1])),
    "(1, 1) boolean mask": ((1, 1), np.array([[True]])),
    "(1, 3) new axis and reversed": ((1, 3), (None, 0, slice(None, None, -1))),
}


@pytest.mark.parametrize("name", list(GETITEM_CASES))
def test_getitem(device: str, name: str) -> None:
    shape, index = GETITEM_CASES[name]
    x = rand(*shape, seed=22)
    assert_close(forward(lambda t: t[index], x), x[index])
    assert_close(forward(lambda t: tg.getitem(t, index), x), x[index])
    check(lambda t: t[index], x)


def test_getitem_repeated_indices_add_their_gradients(device: str) -> None:
    x = tg.tensor(np.zeros(4), requires_grad=True)
    x[np.array([0, 2, 0, 0])].sum().backward()
    np.testing.assert_array_equal(backend.to_numpy(x.grad), [3.0, 0.0, 1.0, 0.0])


def test_getitem_with_an_integer_tensor_index(device: str) -> None:
    x = rand(4, 3, seed=23)
    idx = tg.tensor(np.array([3, 0, 3]))
    assert_close(forward(lambda t: t[idx], x), x[[3, 0, 3]])
    assert_close(forward(lambda t: t[:, idx], x.T), x.T[:, [3, 0, 3]])
    check(lambda t: t[idx], x)


@pytest.mark.parametrize(
    ("shapes", "axis"),
    [([(2, 3), (4, 3)], 0), ([(2, 1), (2, 3), (2, 2)], 1), ([(2, 3, 1), (2, 3, 2)], -1), ([(5,)], 0)],
    ids=str,
)
def test_concat(device: str, shapes: list, axis: int) -> None:
    xs = [rand(*s, seed=30 + i) for i, s in enumerate(shapes)]
    assert_close(forward(lambda *ts: tg.concat(list(ts), axis=axis), *xs), np.concatenate(xs, axis=axis))
    check(lambda *ts: tg.concat(ts, axis), *xs)


@pytest.mark.parametrize(("shape", "axis", "n"), [((), 0, 3), ((3,), 0, 2), ((2, 3), 1, 3), ((2, 3), -1, 1)], ids=str)
def test_stack(device: str, shape: tuple, axis: int, n: int) -> None:
    xs = [rand(*shape, seed=40 + i) for i in range(n)]
    assert_close(forward(lambda *ts: tg.stack(list(ts), axis=axis), *xs), np.stack(xs, axis=axis))
    check(lambda *ts: tg.stack(ts, axis), *xs)


# a recurrent layer's step outputs are rows of one buffer: stacked, they are a view of it, no copy
@pytest.mark.parametrize(
    ("rows", "is_view"),
    [((0, 1, 2, 3), True), ((1, 3, 5), True), ((0, 1, 3), False), ((3, 2, 1), False), ((2, 2), False)],
    ids=str,
)
def test_stack_of_equally_spaced_rows_of_one_buffer_is_a_read_only_view(rows: tuple, is_view: bool) -> None:
    buffer = np.arange(24.0).reshape(6, 4)
    y = tg.stack([tg.Tensor(buffer[i]) for i in rows]).data
    np.testing.assert_array_equal(y, buffer[list(rows)])
    assert np.shares_memory(y, buffer) == is_view
    assert y.flags.writeable != is_view  # writing would change what the producers saved for backward


@pytest.mark.parametrize(
    ("shape", "sections", "axis"),
    [((6, 2), 3, 0), ((2, 5), [1, 4], 1), ((3, 4), [2], -1), ((4,), 1, 0), ((2, 6), [0, 3], 1)],
    ids=str,
)
def test_split(device: str, shape: tuple, sections: Any, axis: int) -> None:
    x = rand(*shape, seed=50)
    pieces = forward(lambda t: tg.split(t, sections, axis), x)
    expected = np.split(x, sections, axis=axis)
    assert len(pieces) == len(expected)
    for p, e in zip(pieces, expected):
        assert p.shape == e.shape
        assert_close(p, e)
    check(lambda t: tg.split(t, sections, axis), x)


# --- softmax family -----------------------------------------------------------------------------


def np_log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


SOFTMAX_CASES = [((5,), -1), ((2, 3), 1), ((2, 3), 0), ((2, 3, 4), -1), ((2, 3, 4), 1), ((3, 1), -1)]


@pytest.mark.parametrize(("shape", "axis"), SOFTMAX_CASES, ids=str)
def test_softmax(device: str, shape: tuple, axis: int) -> None:
    x = rand(*shape, seed=60)
    out = forward(lambda t: tg.softmax(t, axis), x)
    assert_close(out, np.exp(np_log_softmax(x, axis)))
    np.testing.assert_allclose(out.sum(axis=axis), 1.0, rtol=1e-14)
    check(lambda t: tg.softmax(t, axis), x)


@pytest.mark.parametrize(("shape", "axis"), SOFTMAX_CASES, ids=str)
def test_log_softmax(device: str, shape: tuple, axis: int) -> None:
    x = rand(*shape, seed=61)
    assert_close(forward(lambda t: tg.log_softmax(t, axis), x), np_log_softmax(x, axis))
    check(lambda t: tg.log_softmax(t, axis), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family_is_stable_for_huge_logits(device: str, dtype: type) -> None:
    x = np.array([[1e4, 0.0, -1e4], [3e38, 3e38, 0.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise"):
        logp = tg.log_softmax(tg.tensor(x)).numpy()
        p = tg.softmax(tg.tensor(x)).numpy()
    assert np.isfinite(logp).all() and np.isfinite(p).all()
    np.testing.assert_allclose(logp[0], [0.0, -1e4, -2e4], rtol=1e-6)
    np.testing.assert_allclose(logp[1, :2], [-np.log(2.0)] * 2, rtol=1e-6)
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], atol=1e-7)
    check(tg.log_softmax, np.array([[1e4, 1e4 + 1.0, -1e4]]))


def np_cross_entropy(logits: np.ndarray, targets: np.ndarray, reduction: str) -> float:
    logp = np_log_softmax(logits, -1)
    picked = np.take_along_axis(logp, targets[..., None], axis=-1)
    return float(-picked.sum() / (targets.size if reduction == "mean" else 1))


CE_CASES = [((4, 5), "mean"), ((2, 3, 4), "mean"), ((4, 5), "sum"), ((2, 3, 4), "sum"), ((1, 1), "mean"), ((7,), "sum")]


@pytest.mark.parametrize(("shape", "reduction"), CE_CASES, ids=str)
def test_softmax_cross_entropy(device: str, shape: tuple, reduction: str) -> None:
    logits = rand(*shape, seed=70)
    targets = np.random.default_rng(71).integers(0, shape[-1], size=shape[:-1])
    out = forward(lambda t: tg.softmax_cross_entropy(t, targets, reduction=reduction), logits)
    assert out.shape == ()
    np.testing.assert_allclose(out, np_cross_entropy(logits, targets, reduction), rtol=1e-13)
    check(lambda t: tg.softmax_cross_entropy(t, targets, reduction), logits)


def test_softmax_cross_entropy_accepts_flattened_logits(device: str) -> None:
    logits = rand(2, 3, 4, seed=72)
    targets = np.random.default_rng(73).integers(0, 4, size=(2, 3))
    flat = forward(lambda t: tg.softmax_cross_entropy(t.reshape(6, 4), targets), logits)
    np.testing.assert_allclose(flat, np_cross_entropy(logits, targets, "mean"), rtol=1e-13)


def test_softmax_cross_entropy_rejects_bad_targets(device: str) -> None:
    logits = tg.tensor(rand(2, 3, 4, seed=74))
    with pytest.raises(ValueError, match="do not match"):
        tg.softmax_cross_entropy(logits, np.zeros((3, 2), dtype=np.int64))  # (T, B) for (B, T, C)
    with pytest.raises(ValueError, match="out of range"):
        tg.softmax_cross_entropy(logits, np.full((2, 3), -1))
    with pytest.raises(ValueError, match="out of range"):
        tg.softmax_cross_entropy(logits, np.full((2, 3), 4))
    with pytest.raises(ValueError, match="integers"):
        tg.softmax_cross_entropy(logits, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="reduction"):
        tg.softmax_cross_entropy(logits, np.zeros((2, 3), dtype=np.int64), reduction="none")


# --- embedding and dropout ----------------------------------------------------------------------


@pytest.mark.parametrize("ids", [[0, 3, 0, 0, 2], [[1, 1], [4, 0], [1, 3]], 2], ids=str)
def test_embedding(device: str, ids: Any) -> None:
    ids = np.array(ids)
    w = rand(5, 3, seed=80)
    assert_close(forward(lambda t: tg.embedding(ids, t), w), w[ids])
    check(lambda t: tg.embedding(ids, t), w)


@pytest.mark.parametrize(
    "n_ids",
    [20, 100],
    ids=["np.add.at", "sorted reduceat"],  # scatter_add's two branches (> 64 ids)
)
def test_embedding_over_a_vocabulary_too_large_for_the_one_hot_gemm(device: str, n_ids: int) -> None:
    vocab = nn.ONE_HOT_MAX_VOCAB + 44
    rs = np.random.default_rng(84)
    ids = rs.integers(0, 30, size=n_ids)  # many repeats
    ids[:4] = [0, vocab - 1, vocab - 1, 150]  # the first and last rows too
    ids = ids.reshape(-1, 4) if n_ids > 64 else ids  # (N/4, 4) ids are flattened to N
    w = rand(vocab, 2, seed=85)
    assert_close(forward(lambda t: tg.embedding(ids, t), w), w[ids])
    check(lambda t: tg.embedding(ids, t), w)
    # the repeated rows' gradients are sums: the fast branch adds each run of equal ids once
    g = tg.tensor(np.zeros((vocab, 2)), requires_grad=True)
    tg.embedding(ids, g).backward(np.ones((*ids.shape, 2)))
    counts = np.bincount(ids.reshape(-1), minlength=vocab).astype(float)
    np.testing.assert_array_equal(backend.to_numpy(g.grad), np.stack([counts, counts], axis=1))


def test_getitem_with_more_than_64_indices_negative_and_repeated(device: str) -> None:
    """A 1-D integer index over the first axis of more than 64 entries takes scatter_add's sorted path."""
    rs = np.random.default_rng(86)
    index = rs.integers(-10, 10, size=100)
    index[:3] = [-1, 9, -10]  # -1 and 9 are the same row, as are -10 and 0
    x = rand(10, 2, seed=87)
    assert_close(forward(lambda t: t[index], x), x[index])
    check(lambda t: t[index], x)


@pytest.mark.parametrize("n", [1, 64, 65, 300])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16])
def test_scatter_add_equals_np_add_at(n: int, dtype: Any) -> None:
    rs = np.random.default_rng(n)
    low = 0 if np.dtype(dtype).kind == "u" else -12
    index = rs.integers(low, 12, size=n).astype(dtype)
    values = rs.standard_normal((n, 3))
    target = rs.standard_normal((12, 3))
    want = target.copy()
    np.add.at(want, index, values)
    _util.scatter_add(target, index, values)
    np.testing.assert_allclose(target, want, rtol=1e-13, atol=1e-13)


def test_embedding_repeated_ids_add_their_gradients(device: str) -> None:
    w = tg.tensor(np.zeros((4, 2)), requires_grad=True)
    out = tg.embedding(np.array([[1, 3], [1, 1]]), w)
    out.backward(np.ones((2, 2, 2)))
    np.testing.assert_array_equal(backend.to_numpy(w.grad), [[0, 0], [3, 3], [0, 0], [1, 1]])


def test_embedding_rejects_bad_ids(device: str) -> None:
    w = tg.tensor(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="out of range"):
        tg.embedding(np.array([0, -1]), w)
    with pytest.raises(ValueError, match="out of range"):
        tg.embedding([4], w)
    with pytest.raises(ValueError, match="integers"):
        tg.embedding(np.array([0.0, 1.0]), w)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("vocab", [5, nn.ONE_HOT_MAX_VOCAB + 3], ids=["one-hot GEMM", "scatter_add"])
def test_embedding_linear_is_linear_of_embedding(device: str, vocab: int, bias: bool) -> None:
    ids = np.random.default_rng(88).integers(0, 5, size=(4, 3))  # repeats: rows are summed by id
    ids[0, 0] = vocab - 1
    table, w, b = rand(vocab, 3, seed=89), rand(7, 3, seed=90), rand(7, seed=91)
    args = (table, w, b) if bias else (table, w)
    assert_close(forward(lambda *t: tg.embedding_linear(ids, *t), *args), table[ids] @ w.T + (b if bias else 0))
    check(lambda *t: tg.embedding_linear(ids, *t), *args)
    # the gradients of every input equal those of the two ops it replaces
    gy = rand(4, 3, 7, seed=92)
    fused = [tg.tensor(a, requires_grad=True) for a in args]
    tg.embedding_linear(ids, *fused).backward(gy)
    plain = [tg.tensor(a, requires_grad=True) for a in args]
    tg.linear(tg.embedding(ids, plain[0]), *plain[1:]).backward(gy)
    for f, p in zip(fused, plain):
        np.testing.assert_allclose(backend.to_numpy(f.grad), backend.to_numpy(p.grad), rtol=1e-12, atol=1e-12)


def test_embedding_linear_rejects_bad_ids(device: str) -> None:
    table, w = tg.tensor(np.zeros((4, 2))), tg.tensor(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="out of range"):
        tg.embedding_linear(np.array([0, 4]), table, w)


def test_dropout_mask_statistics(device: str) -> None:
    p = 0.3
    y = tg.dropout(tg.tensor(np.ones(20_000)), p).numpy()
    dropped = (y == 0).mean()
    # binomial standard deviation sqrt(p (1-p) / n) ~ 0.0032: five of them
    assert abs(dropped - p) < 0.017
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-15)
    assert abs(y.mean() - 1.0) < 0.03  # inverted dropout keeps the expectation


def test_dropout_identity_when_p_is_zero_or_not_training(device: str) -> None:
    x = tg.tensor(rand(3, 4, seed=81), requires_grad=True)
    assert tg.dropout(x, 0.0) is x
    assert tg.dropout(x, 0.5, training=False) is x
    with pytest.raises(ValueError, match="dropout"):
        tg.dropout(x, 1.0)
    with pytest.raises(ValueError, match="dropout"):
        tg.dropout(x, -0.1, training=False)


def test_dropout_gradient_is_the_mask(device: str) -> None:
    x = tg.tensor(rand(50, 4, seed=82, low=0.5, high=2.0), requires_grad=True)
    y = tg.dropout(x, 0.5)
    y.sum().backward()
    mask = y.numpy() / x.numpy()
    assert set(np.unique(mask)) <= {0.0, 2.0} and 0 < (mask == 0).sum() < mask.size
    np.testing.assert_array_equal(backend.to_numpy(x.grad), mask)


def test_dropout_is_reproducible_with_manual_seed(device: str) -> None:
    x = tg.tensor(np.ones((8, 8)))
    tg.manual_seed(123)
    first = tg.dropout(x, 0.5).numpy()
    second = tg.dropout(x, 0.5).numpy()
    tg.manual_seed(123)
    again = tg.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)  # the stream moves on between calls


def test_dropout_gradcheck_with_a_fixed_mask(device: str) -> None:
    def fn(t: tg.Tensor) -> tg.Tensor:
        tg.manual_seed(5)  # every evaluation draws the same mask
        return tg.dropout(t, 0.4)

    check(fn, rand(3, 5, seed=83))
