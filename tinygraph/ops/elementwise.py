"""Element-wise ops with NumPy broadcasting; gradients reduced by ``unbroadcast``."""

from __future__ import annotations

from typing import Any

from tinygraph.backend import get_array_module
from tinygraph.op import Op
from tinygraph.ops._util import sigmoid, unbroadcast


class _Binary(Op):
    def forward(self, a: Any, b: Any) -> Any:
        self.a_shape, self.b_shape = a.shape, b.shape
        return self.compute(a, b)

    def compute(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def reduce(self, ga: Any, gb: Any) -> tuple[Any, Any]:
        return (
            unbroadcast(ga, self.a_shape) if ga is not None else None,
            unbroadcast(gb, self.b_shape) if gb is not None else None,
        )


class Add(_Binary):
    name = "add"

    def compute(self, a: Any, b: Any) -> Any:
        return a + b

    def backward(self, gy: Any) -> tuple[Any, Any]:
        return self.reduce(gy, gy)


class Sub(_Binary):
    name = "sub"

    def compute(self, a: Any, b: Any) -> Any:
        return a - b

    def backward(self, gy: Any) -> tuple[Any, Any]:
        return self.reduce(gy, -gy if self.needs_input_grad[1] else None)


class Mul(_Binary):
    name = "mul"

    def compute(self, a: Any, b: Any) -> Any:
        self.a = a if self.needs_input_grad[1] else None
        self.b = b if self.needs_input_grad[0] else None
        return a * b

    def backward(self, gy: Any) -> tuple[Any, Any]:
        ga = gy * self.b if self.needs_input_grad[0] else None
        gb = gy * self.a if self.needs_input_grad[1] else None
        return self.reduce(ga, gb)


class Div(_Binary):
    name = "div"

    def compute(self, a: Any, b: Any) -> Any:
        y = a / b
        self.b = b
        self.y = y if self.needs_input_grad[1] else None
        return y

    def backward(self, gy: Any) -> tuple[Any, Any]:
        ga = gy / self.b if self.needs_input_grad[0] else None
        gb = -gy * self.y / self.b if self.needs_input_grad[1] else None
        return self.reduce(ga, gb)


class Pow(_Binary):
    """a ** b; the exponent may be a constant or a tensor (then d/db = a**b log a)."""

    name = "pow"

    def compute(self, a: Any, b: Any) -> Any:
        y = a**b
        self.a, self.b, self.y = a, b, y
        return y

    def backward(self, gy: Any) -> tuple[Any, Any]:
        xp = get_array_module(gy)
        ga = gy * self.b * self.a ** (self.b - 1) if self.needs_input_grad[0] else None
        gb = gy * self.y * xp.log(self.a) if self.needs_input_grad[1] else None
        return self.reduce(ga, gb)


class Neg(Op):
    name = "neg"

    def forward(self, x: Any) -> Any:
        return -x

    def backward(self, gy: Any) -> Any:
        return -gy


class Exp(Op):
    name = "exp"

    def forward(self, x: Any) -> Any:
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, gy: Any) -> Any:
        return gy * self.y


class Log(Op):
    name = "log"

    def forward(self, x: Any) -> Any:
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, gy: Any) -> Any:
        return gy / self.x


class Tanh(Op):
    name = "tanh"

    def forward(self, x: Any) -> Any:
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, gy: Any) -> Any:
        return gy * (1 - self.y * self.y)


class Sigmoid(Op):
    name = "sigmoid"

    def forward(self, x: Any) -> Any:
        self.y = sigmoid(x)
        return self.y

    def backward(self, gy: Any) -> Any:
        return gy * self.y * (1 - self.y)


class Relu(Op):
    name = "relu"

    def forward(self, x: Any) -> Any:
        self.mask = x > 0
        return x * self.mask

    def backward(self, gy: Any) -> Any:
        return gy * self.mask
