"""Tensor: an array, its gradient, and the graph node that produced it."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinygraph import backend, graph


class Tensor:
    __slots__ = ("data", "grad", "requires_grad", "creator", "index", "name", "__weakref__")
    __array_priority__ = 1000  # numpy scalars defer to our reflected operators

    def __init__(self, data: Any, requires_grad: bool = False, name: str | None = None):
        self.data = data
        self.grad: Any = None
        self.requires_grad = requires_grad
        self.creator: graph.Node | None = None
        self.index = 0  # which output of ``creator`` this is
        self.name = name

    # --- array facts -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    def numpy(self) -> np.ndarray:
        return backend.to_numpy(self.data)

    def item(self) -> float:
        return float(self.data.item())

    def __repr__(self) -> str:
        tag = f", name={self.name!r}" if self.name else ""
        op = f", op={self.creator.name}" if self.creator is not None else ""
        return f"Tensor({self.numpy()!r}{tag}{op}, requires_grad={self.requires_grad})"

    # --- graph -------------------------------------------------------------------
    def backward(self, grad: Any = None, keep_graph: bool = False) -> None:
        """dL/dself = ``grad`` (ones for a scalar loss); walk the graph behind self."""
        if not self.requires_grad:
            raise graph.GraphError(
                "backward() on a tensor that does not require grad (made under no_grad, or a constant)"
            )
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise graph.GraphError(
                    f"backward() without a gradient needs a one-element tensor, not shape {self.shape}: "
                    "reduce it to a scalar loss first or pass grad="
                )
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            grad = xp.asarray(backend.to_device(grad, backend.device_of(self.data)), dtype=self.data.dtype)
            if grad.shape != self.shape:
                raise graph.GraphError(
                    f"backward() got a gradient of shape {grad.shape} for a tensor of shape {self.shape}"
                )
        graph.run_backward(self, grad, keep_graph=keep_graph)

    def detach(self) -> Tensor:
        """The same array, cut from the graph (truncated BPTT carries state this way)."""
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    # --- operators (bodies live in tinygraph.functional) ------------------------
    def __add__(self, o: Any) -> Tensor:
        return F.add(self, o)

    def __radd__(self, o: Any) -> Tensor:
        return F.add(o, self)

    def __sub__(self, o: Any) -> Tensor:
        return F.sub(self, o)

    def __rsub__(self, o: Any) -> Tensor:
        return F.sub(o, self)

    def __mul__(self, o: Any) -> Tensor:
        return F.mul(self, o)

    def __rmul__(self, o: Any) -> Tensor:
        return F.mul(o, self)

    def __truediv__(self, o: Any) -> Tensor:
        return F.div(self, o)

    def __rtruediv__(self, o: Any) -> Tensor:
        return F.div(o, self)

    def __matmul__(self, o: Any) -> Tensor:
        return F.matmul(self, o)

    def __rmatmul__(self, o: Any) -> Tensor:
        return F.matmul(o, self)

    def __pow__(self, o: Any) -> Tensor:
        return F.pow(self, o)

    def __rpow__(self, o: Any) -> Tensor:
        return F.pow(o, self)

    def __neg__(self) -> Tensor:
        return F.neg(self)

    def __getitem__(self, index: Any) -> Tensor:
        return F.getitem(self, index)

    # --- method forms ------------------------------------------------------------
    def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return F.sum(self, axis, keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return F.mean(self, axis, keepdims)

    def reshape(self, *shape: Any) -> Tensor:
        return F.reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)

    def transpose(self, *axes: Any) -> Tensor:
        return F.transpose(self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else (axes or None))

    @property
    def T(self) -> Tensor:  # noqa: N802 - NumPy's name
        return F.transpose(self)

    def exp(self) -> Tensor:
        return F.exp(self)

    def log(self) -> Tensor:
        return F.log(self)

    def tanh(self) -> Tensor:
        return F.tanh(self)

    def sigmoid(self) -> Tensor:
        return F.sigmoid(self)

    def relu(self) -> Tensor:
        return F.relu(self)


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None, name: str | None = None) -> Tensor:
    """Make a leaf tensor on the default device.

    An array keeps its dtype; Python lists and scalars become float32 (the default dtype).
    """
    if isinstance(data, Tensor):
        data = data.data
    if dtype is None and not hasattr(data, "dtype"):
        dtype = backend.DEFAULT_DTYPE
    xp = backend.default_xp()
    arr = xp.asarray(backend.to_device(data) if xp is not np else backend.to_numpy(data), dtype=dtype)
    return Tensor(arr, requires_grad=requires_grad, name=name)


def as_tensor(x: Any, like: Tensor | None = None) -> Tensor:
    """Wrap a constant (scalar, array) as a tensor that needs no grad.

    Python scalars take the dtype of ``like`` so ``x * 2`` stays float32.
    """
    if isinstance(x, Tensor):
        return x
    if like is not None:
        xp = backend.get_array_module(like.data)
        kind = like.data.dtype.kind
        # a Python scalar is "weak" (NumPy 2's rule): it takes the tensor's dtype unless that
        # would truncate it (int tensor * 0.5 is a float, as in NumPy)
        if isinstance(x, (int, float)) and (kind in "fc" or (kind in "iu" and isinstance(x, int))):
            return Tensor(xp.asarray(x, dtype=like.data.dtype))
        return Tensor(xp.asarray(x))
    if hasattr(x, "dtype"):
        return Tensor(x)
    return Tensor(backend.default_xp().asarray(x, dtype=backend.DEFAULT_DTYPE))


from tinygraph import functional as F  # noqa: E402 - operators need it; it needs Tensor
