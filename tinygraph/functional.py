"""The ``tg.*`` functions: each applies one op, building a graph node when grads flow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tinygraph import random as _random
from tinygraph.ops.elementwise import Add, Div, Exp, Log, Mul, Neg, Pow, Relu, Sigmoid, Sub, Tanh
from tinygraph.ops.linalg import Linear, MatMul
from tinygraph.ops.nn import Dropout, Embedding, EmbeddingLinear, LogSoftmax, Softmax, SoftmaxCrossEntropy
from tinygraph.ops.reduce import Mean, Sum
from tinygraph.ops.shape import Concat, GetItem, Reshape, Split, Stack, Transpose
from tinygraph.tensor import Tensor

Like = Any  # a Tensor, an array or a Python scalar


def add(a: Like, b: Like) -> Tensor:
    return Add()(a, b)


def sub(a: Like, b: Like) -> Tensor:
    return Sub()(a, b)


def mul(a: Like, b: Like) -> Tensor:
    return Mul()(a, b)


def div(a: Like, b: Like) -> Tensor:
    return Div()(a, b)


def pow(a: Like, b: Like) -> Tensor:  # noqa: A001 - NumPy's and PyTorch's name
    return Pow()(a, b)


def neg(x: Like) -> Tensor:
    return Neg()(x)


def exp(x: Like) -> Tensor:
    return Exp()(x)


def log(x: Like) -> Tensor:
    return Log()(x)


def tanh(x: Like) -> Tensor:
    return Tanh()(x)


def sigmoid(x: Like) -> Tensor:
    return Sigmoid()(x)


def relu(x: Like) -> Tensor:
    return Relu()(x)


def matmul(a: Like, b: Like) -> Tensor:
    return MatMul()(a, b)


def linear(x: Like, weight: Like, bias: Like = None) -> Tensor:
    """x @ weight.T + bias, weight shaped (out, in) as in PyTorch."""
    return Linear()(x, weight) if bias is None else Linear()(x, weight, bias)


def sum(x: Like, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return Sum(axis, keepdims)(x)


def mean(x: Like, axis: Any = None, keepdims: bool = False) -> Tensor:
    return Mean(axis, keepdims)(x)


def reshape(x: Like, shape: Sequence[int]) -> Tensor:
    return Reshape(tuple(shape))(x)


def transpose(x: Like, axes: Sequence[int] | None = None) -> Tensor:
    return Transpose(None if axes is None else tuple(axes))(x)


def getitem(x: Like, index: Any) -> Tensor:
    """x[index] with NumPy's rules; integer-array indices may repeat (their gradients add up)."""
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem(index)(x)


def concat(xs: Sequence[Like], axis: int = 0) -> Tensor:
    return Concat(axis)(*xs)


def stack(xs: Sequence[Like], axis: int = 0) -> Tensor:
    return Stack(axis)(*xs)


def split(x: Like, indices_or_sections: Any, axis: int = 0) -> tuple[Tensor, ...]:
    return Split(indices_or_sections, axis)(x)


def softmax(x: Like, axis: int = -1) -> Tensor:
    return Softmax(axis)(x)


def log_softmax(x: Like, axis: int = -1) -> Tensor:
    return LogSoftmax(axis)(x)


def softmax_cross_entropy(logits: Like, targets: Any, reduction: str = "mean") -> Tensor:
    """Cross-entropy of integer ``targets`` (...) under softmax(``logits`` (..., C))."""
    if isinstance(targets, Tensor):
        targets = targets.data
    return SoftmaxCrossEntropy(targets, reduction)(logits)


def embedding(ids: Any, weight: Like) -> Tensor:
    """weight[ids]: rows of a (vocab, dim) table for integer ids of any shape."""
    if isinstance(ids, Tensor):
        ids = ids.data
    return Embedding(ids)(weight)


def embedding_linear(ids: Any, weight: Like, w: Like, b: Like = None) -> Tensor:
    """``linear(embedding(ids, weight), w, b)`` in one op, through the projected table (see EmbeddingLinear)."""
    if isinstance(ids, Tensor):
        ids = ids.data
    return EmbeddingLinear(ids)(weight, w) if b is None else EmbeddingLinear(ids)(weight, w, b)


def dropout(x: Like, p: float, training: bool = True, rng: Any = None, shared_axes: tuple[int, ...] = ()) -> Tensor:
    """Inverted dropout; the identity when not training or p == 0.

    ``shared_axes``: one mask value is drawn for all positions along these axes (locked, or
    variational, dropout of a time-major (T, B, H) sequence shares axis 0: one mask per sequence).
    Applied to a weight, it is DropConnect: the gradient reaching the weight is masked the same way.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), not {p}")
    if not training or p == 0.0:
        return x if isinstance(x, Tensor) else Tensor(x)
    return Dropout(p, rng if rng is not None else _random.get_rng(), shared_axes)(x)
