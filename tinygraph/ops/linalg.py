"""Matrix products: ``matmul`` with NumPy semantics and ``linear`` (x W^T + b)."""

from __future__ import annotations

from typing import Any

from tinygraph.backend import get_array_module
from tinygraph.op import Op
from tinygraph.ops import workspace
from tinygraph.ops._util import unbroadcast


class MatMul(Op):
    name = "matmul"

    def forward(self, a: Any, b: Any) -> Any:
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy: Any) -> tuple[Any, Any]:
        xp = get_array_module(gy)
        a, b = self.a, self.b
        if a.ndim == 1 and b.ndim == 1:  # dot product: gy is a scalar
            return gy * b, gy * a
        # promote vectors to matrices as NumPy does, then undo it on the gradients
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = gy
        if a.ndim == 1:
            g = xp.expand_dims(g, -2)
        if b.ndim == 1:
            g = xp.expand_dims(g, -1)
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(g @ xp.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(xp.swapaxes(a2, -1, -2) @ g, b2.shape).reshape(b.shape)
        return ga, gb


class Linear(Op):
    """y = x W^T + b over any leading dims: one GEMM forward, one per gradient.

    The (N, out) product and the input gradient are large for a sequence (N = T*B rows): they come
    from ``workspace``, which hands the previous step's arrays back instead of fresh pages.
    """

    name = "linear"

    def forward(self, x: Any, w: Any, b: Any = None) -> Any:
        xp = get_array_module(x, w)
        self.x, self.w, self.has_bias = x, w, b is not None
        x2 = x.reshape(-1, x.shape[-1])
        y = workspace.empty((x2.shape[0], w.shape[0]), xp.result_type(x, w), xp)
        xp.matmul(x2, w.T, out=y)
        if b is not None:
            y += b
        return y.reshape(*x.shape[:-1], w.shape[0])

    def backward(self, gy: Any) -> tuple[Any, ...]:
        xp = get_array_module(gy)
        g2 = gy.reshape(-1, gy.shape[-1])
        x2 = self.x.reshape(-1, self.x.shape[-1])
        gx = None
        if self.needs_input_grad[0]:
            gx = workspace.empty(x2.shape, xp.result_type(g2, self.w), xp)
            xp.matmul(g2, self.w, out=gx)
            gx = gx.reshape(self.x.shape)
        gw = g2.T @ x2 if self.needs_input_grad[1] else None
        if not self.has_bias:
            return gx, gw
        gb = g2.sum(axis=0) if self.needs_input_grad[2] else None
        return gx, gw, gb
