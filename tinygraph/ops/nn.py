"""Neural-network ops: softmax family, cross-entropy, embedding lookup, dropout."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinygraph.backend import get_array_module, is_gpu_array
from tinygraph.op import Op
from tinygraph.ops._util import scatter_add


def _log_softmax(x: Any, axis: int) -> Any:
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)  # exp never overflows
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def _check_ids(ids: Any, n: int, what: str) -> None:
    """Integer ids in [0, n): a negative id would silently wrap to the end of the table.

    The range is checked only for host arrays and Python data (a device array would cost a sync).
    """
    if is_gpu_array(ids):
        if ids.dtype.kind not in "iu":
            raise ValueError(f"{what}s must be integers, not {ids.dtype}")
        return
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{what}s must be integers, not {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"{what} out of range: got values in [{a.min()}, {a.max()}], valid is [0, {n - 1}]")


class Softmax(Op):
    name = "softmax"

    def __init__(self, axis: int = -1):
        self.axis = axis

    def forward(self, x: Any) -> Any:
        self.y = get_array_module(x).exp(_log_softmax(x, self.axis))
        return self.y

    def backward(self, gy: Any) -> Any:
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Op):
    name = "log_softmax"

    def __init__(self, axis: int = -1):
        self.axis = axis

    def forward(self, x: Any) -> Any:
        self.y = _log_softmax(x, self.axis)
        return self.y

    def backward(self, gy: Any) -> Any:
        xp = get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True)


class SoftmaxCrossEntropy(Op):
    """Mean (or summed) negative log-likelihood of integer targets under softmax(logits).

    logits (..., C), targets (...) of integer class ids.  The gradient is the classic
    (softmax - one_hot) / N, computed without forming the one-hot matrix.
    """

    name = "softmax_cross_entropy"

    def __init__(self, targets: Any, reduction: str = "mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
        self.targets, self.reduction = targets, reduction

    def forward(self, logits: Any) -> Any:
        xp = get_array_module(logits)
        c = logits.shape[-1]
        targets = xp.asarray(self.targets)
        # targets shaped like the logits without the class axis; for 2-D (N, C) logits any
        # targets of N ids (the caller flattened both in the same order)
        if targets.shape != logits.shape[:-1] and not (logits.ndim == 2 and targets.size == logits.shape[0]):
            raise ValueError(f"targets of shape {targets.shape} do not match logits of shape {logits.shape}")
        _check_ids(self.targets, c, "target")
        t = targets.reshape(-1)
        logp = _log_softmax(logits.reshape(-1, c), axis=1)
        self.rows, self.t, self.shape = xp.arange(t.shape[0]), t, logits.shape
        picked = logp[self.rows, t]
        self.logp = logp
        total = -picked.sum()
        n = t.shape[0] if self.reduction == "mean" else 1
        self.n = n
        return xp.asarray(total / n, dtype=logits.dtype)

    def backward(self, gy: Any) -> Any:
        xp = get_array_module(gy)
        g = xp.exp(self.logp)
        g[self.rows, self.t] -= 1
        g *= gy / self.n
        return g.reshape(self.shape)


class Embedding(Op):
    """Rows of a weight table picked by integer ids: out[...] = W[ids[...]]."""

    name = "embedding"

    def __init__(self, ids: Any):
        self.ids = ids

    def forward(self, w: Any) -> Any:
        self.w_shape = w.shape
        _check_ids(self.ids, w.shape[0], "embedding id")
        self.ids = get_array_module(w).asarray(self.ids)
        return w[self.ids]

    def backward(self, gy: Any) -> Any:
        xp = get_array_module(gy)
        gw = xp.zeros(self.w_shape, dtype=gy.dtype)
        scatter_add(gw, xp.asarray(self.ids).reshape(-1), gy.reshape(-1, self.w_shape[1]))
        return gw


class Dropout(Op):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p)."""

    name = "dropout"

    def __init__(self, p: float, rng: Any):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), not {p}")
        self.p, self.rng = p, rng

    def describe(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Any) -> Any:
        xp = get_array_module(x)
        keep = xp.asarray(self.rng.random(x.shape) >= self.p)
        self.mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self.mask

    def backward(self, gy: Any) -> Any:
        return gy * self.mask
