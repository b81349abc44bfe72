"""Tensor: construction and dtypes, array facts, repr, backward's preconditions, .T and .reshape forms."""

from __future__ import annotations

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import backend


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_])
def test_tensor_keeps_a_numpy_arrays_dtype(device: str, dtype: type) -> None:
    t = tg.tensor(np.zeros((2, 3), dtype=dtype))
    assert t.dtype == dtype
    assert t.shape == (2, 3)


def test_numpy_scalars_keep_their_dtype(device: str) -> None:
    assert tg.tensor(np.float64(1.5)).dtype == np.float64
    assert tg.tensor(np.int32(3)).dtype == np.int32


@pytest.mark.parametrize("data", [[1, 2, 3], [[1.5, 2.0], [3.0, 4.0]], 3, 2.5, [True, False], (1, 2)], ids=str)
def test_python_data_becomes_float32(device: str, data: object) -> None:
    t = tg.tensor(data)
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t.numpy(), np.asarray(data, dtype=np.float32))


def test_explicit_dtype_wins(device: str) -> None:
    assert tg.tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert tg.tensor(np.ones(2, dtype=np.float32), dtype=np.float64).dtype == np.float64


def test_tensor_lives_on_the_default_device(device: str) -> None:
    t = tg.tensor(np.ones(3))
    assert backend.device_of(t.data) == device
    assert tg.get_array_module(t.data) is (np if device == "cpu" else backend.default_xp())


def test_tensor_of_a_tensor_is_a_new_leaf(device: str) -> None:
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = tg.tensor(x * 2.0)
    assert y.creator is None and not y.requires_grad
    np.testing.assert_array_equal(y.numpy(), [2.0, 4.0])


def test_requires_grad_flag(device: str) -> None:
    assert not tg.tensor([1.0]).requires_grad
    x = tg.tensor([1.0], requires_grad=True)
    assert x.requires_grad and x.grad is None and x.creator is None
    y = x * 2.0
    assert y.requires_grad and y.creator is not None


def test_array_facts(device: str) -> None:
    a = np.arange(24.0).reshape(2, 3, 4)
    t = tg.tensor(a, name="w")
    assert t.shape == (2, 3, 4) and t.ndim == 3 and t.size == 24 and len(t) == 2
    assert t.dtype == np.float64
    assert isinstance(t.numpy(), np.ndarray)
    np.testing.assert_array_equal(t.numpy(), a)
    assert t.name == "w"


def test_item(device: str) -> None:
    assert tg.tensor(2.5).item() == 2.5
    assert tg.tensor([[7.0]]).item() == 7.0
    assert isinstance(tg.tensor(np.array(3)).item(), float)
    with pytest.raises(ValueError, match="only convert an array of size 1"):  # NumPy's message, as torch's
        tg.tensor([1.0, 2.0]).item()


def test_repr(device: str) -> None:
    x = tg.tensor([1.0, 2.0], requires_grad=True, name="x")
    r = repr(x)
    assert r.startswith("Tensor(") and "1." in r and "name='x'" in r and "requires_grad=True" in r
    assert "op=mul" in repr(x * 2.0)
    assert "requires_grad=False" in repr(tg.tensor(1.0))


def test_backward_on_a_non_scalar_without_a_gradient_errors(device: str) -> None:
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    with pytest.raises(tg.TinygraphError, match="one-element"):
        y.backward()
    with pytest.raises(RuntimeError, match="one-element"):  # also a RuntimeError, as in PyTorch
        y.backward()


def test_backward_on_a_one_element_tensor_of_any_rank(device: str) -> None:
    x = tg.tensor([[3.0]], requires_grad=True)
    (x * x).backward()
    np.testing.assert_array_equal(backend.to_numpy(x.grad), [[6.0]])


def test_backward_on_a_constant_errors(device: str) -> None:
    with pytest.raises(tg.TinygraphError, match="does not require grad"):
        tg.tensor(1.0).backward()


def test_backward_on_a_leaf_sets_its_own_grad(device: str) -> None:
    x = tg.tensor(2.0, requires_grad=True)
    x.backward()
    assert float(x.grad) == 1.0


def test_transpose_property(device: str) -> None:
    a = np.arange(6.0).reshape(2, 3)
    x = tg.tensor(a, requires_grad=True)
    np.testing.assert_array_equal(x.T.numpy(), a.T)
    (x.T * tg.tensor(np.arange(6.0).reshape(3, 2))).sum().backward()
    np.testing.assert_array_equal(backend.to_numpy(x.grad), np.arange(6.0).reshape(3, 2).T)
    np.testing.assert_array_equal(tg.tensor(np.ones((2, 3, 4))).T.shape, (4, 3, 2))


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.reshape(3, 4),
        lambda t: t.reshape((3, 4)),
        lambda t: t.reshape([3, 4]),
        lambda t: t.reshape(-1, 4),
        lambda t: t.reshape((3, -1)),
    ],
)
def test_reshape_forms(device: str, call: object) -> None:
    a = np.arange(12.0).reshape(2, 6)
    x = tg.tensor(a, requires_grad=True)
    y = call(x)
    assert y.shape == (3, 4)
    np.testing.assert_array_equal(y.numpy(), a.reshape(3, 4))
    (y * tg.tensor(np.arange(12.0).reshape(3, 4))).sum().backward()
    np.testing.assert_array_equal(backend.to_numpy(x.grad), np.arange(12.0).reshape(2, 6))


def test_reshape_to_a_flat_vector(device: str) -> None:
    x = tg.tensor(np.ones((2, 3)))
    assert x.reshape(-1).shape == (6,)
    assert x.reshape(6).shape == (6,)


def test_method_forms_match_the_functions(device: str) -> None:
    a = np.linspace(0.1, 2.0, 6).reshape(2, 3)
    x = tg.tensor(a)
    pairs = [
        (x.exp(), np.exp(a)),
        (x.log(), np.log(a)),
        (x.tanh(), np.tanh(a)),
        (x.sigmoid(), 1 / (1 + np.exp(-a))),
        ((-x).relu(), np.zeros_like(a)),
        (x.sum(), a.sum()),
        (x.sum(axis=0), a.sum(axis=0)),
        (x.mean(1, keepdims=True), a.mean(1, keepdims=True)),
    ]
    for got, expected in pairs:
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-15)


def test_iteration_yields_rows(device: str) -> None:
    a = np.arange(6.0).reshape(3, 2)
    rows = list(tg.tensor(a))
    assert len(rows) == 3
    np.testing.assert_array_equal(rows[2].numpy(), a[2])
