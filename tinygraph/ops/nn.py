"""Neural-network ops: softmax family, cross-entropy, embedding lookup, dropout."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from tinygraph.backend import get_array_module, is_gpu_array
from tinygraph.op import Op
from tinygraph.ops import workspace
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
        x = logits.reshape(-1, c)
        rows = xp.arange(t.shape[0])
        # -log softmax(x)[t] = log(sum exp(x - max)) - (x[t] - max); the probabilities are kept
        # for backward, so exp runs once per step, not once in each direction
        p = xp.subtract(x, x.max(axis=1, keepdims=True), out=workspace.empty(x.shape, x.dtype, xp))
        picked = p[rows, t].sum()
        xp.exp(p, out=p)
        sums = p.sum(axis=1, keepdims=True)
        p /= sums
        total = xp.log(sums).sum() - picked
        self.rows, self.t, self.shape, self.p = rows, t, logits.shape, p
        self.n = t.shape[0] if self.reduction == "mean" else 1
        return xp.asarray(total / self.n, dtype=logits.dtype)

    def backward(self, gy: Any) -> Any:
        xp = get_array_module(gy)
        scale = gy / self.n
        # a new array, not p itself: a kept graph may walk backward again
        g = xp.multiply(self.p, scale, out=workspace.empty(self.p.shape, self.p.dtype, xp))
        g[self.rows, self.t] -= scale
        return g.reshape(self.shape)


ONE_HOT_MAX_VOCAB = 256  # up to here Embedding.backward sums rows with a one-hot GEMM


class Embedding(Op):
    """Rows of a weight table picked by integer ids: out[...] = W[ids[...]]."""

    name = "embedding"

    def __init__(self, ids: Any):
        self.ids = ids

    def forward(self, w: Any) -> Any:
        self.w_shape = w.shape
        self.ids = _checked_ids(self.ids, w)
        return _pick_rows(w, self.ids)

    def backward(self, gy: Any) -> Any:
        return _sum_rows_by_id(self.ids, gy, self.w_shape[0])


def _checked_ids(ids: Any, table: Any) -> Any:
    """ids checked against the rows of ``table`` and moved to its device."""
    _check_ids(ids, table.shape[0], "embedding id")
    return get_array_module(table).asarray(ids)


def _pick_rows(table: Any, ids: Any) -> Any:
    """table[ids]; on the CPU into a workspace array (the next training step finds it again)."""
    if get_array_module(table) is not np:
        return table[ids]
    out = workspace.empty((*ids.shape, table.shape[1]), table.dtype)
    return np.take(table, ids, axis=0, out=out, mode="clip")  # the ids are checked: no wrapping


def _sum_rows_by_id(ids: Any, gy: Any, vocab: int) -> Any:
    """(vocab, width): row v is the sum of the rows of gy (..., width) whose id is v."""
    xp = get_array_module(gy)
    ids = ids.reshape(-1)
    g = gy.reshape(-1, gy.shape[-1])
    if xp is np and vocab <= ONE_HOT_MAX_VOCAB:
        # a small table (characters): the rows' sums are one GEMM with the one-hot matrix,
        # several times faster than np.add.at, which adds row by row
        one_hot = np.zeros((ids.shape[0], vocab), dtype=gy.dtype)
        one_hot[np.arange(ids.shape[0]), ids] = 1
        return one_hot.T @ g
    out = xp.zeros((vocab, g.shape[1]), dtype=gy.dtype)
    scatter_add(out, ids, g)
    return out


class EmbeddingLinear(Op):
    """weight[ids] W^T + b, computed as a lookup in the projected table weight W^T + b.

    Equal to ``linear(embedding(ids, weight), w, b)``, for less work when the vocabulary is
    smaller than the number of ids: forward projects the V table rows instead of every id's row,
    and backward sums the output gradient by id first, so both weight gradients come from V rows
    (a character model's first recurrent layer: V = 65 against T * B = 3,200 ids).
    """

    name = "embedding_linear"

    def __init__(self, ids: Any):
        self.ids = ids

    def forward(self, weight: Any, w: Any, b: Any = None) -> Any:
        self.ids = _checked_ids(self.ids, weight)
        self.weight, self.w, self.has_bias = weight, w, b is not None
        table = weight @ w.T
        if b is not None:
            table += b
        return _pick_rows(table, self.ids)

    def backward(self, gy: Any) -> tuple[Any, ...]:
        d = _sum_rows_by_id(self.ids, gy, self.weight.shape[0])  # dL/d(table), (V, out)
        need = self.needs_input_grad
        grads = (d @ self.w if need[0] else None, d.T @ self.weight if need[1] else None)
        if not self.has_bias:
            return grads
        return (*grads, d.sum(axis=0) if need[2] else None)


class Dropout(Op):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p)."""

    name = "dropout"

    def __init__(self, p: float, rng: Any, shared_axes: tuple[int, ...] = ()):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), not {p}")
        self.p, self.rng = p, rng
        # axes along which one mask value is shared (locked dropout: axis 0, time, of a (T, B, H) sequence)
        self.shared_axes = tuple(shared_axes)

    def describe(self) -> str:
        shared = f", shared over axes {self.shared_axes}" if self.shared_axes else ""
        return f"p={self.p}{shared}"

    def forward(self, x: Any) -> Any:
        xp = get_array_module(x)
        axes = {a % x.ndim for a in self.shared_axes}
        shape = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
        scale = x.dtype.type(1.0 / (1.0 - self.p))
        if xp is not np and isinstance(self.rng, np.random.Generator) and shape == tuple(x.shape):
            # on the device: one 64-bit seed from the host stream (so seeding and checkpoints
            # still govern it), the mask drawn by a kernel; no host draws, no transfer
            seed = self.rng.integers(0, 2**64, dtype=np.uint64)
            self.mask = xp.empty(x.shape, dtype=x.dtype)
            y = xp.empty(x.shape, dtype=x.dtype)
            _gpu_dropout_kernel()(x, seed, self.p, scale, self.mask, y)
            return y
        # a shared (locked) mask is small: drawn on the host on either backend
        keep = xp.asarray(self.rng.random(shape) >= self.p)
        self.mask = keep.astype(x.dtype) * scale
        return x * self.mask

    def backward(self, gy: Any) -> Any:
        return gy * self.mask  # a shared mask broadcasts back over the axes it spans


@cache
def _gpu_dropout_kernel() -> Any:
    """mask = scale where u >= p else 0, y = x * mask; u uniform in [0, 1) from (seed, element index).

    u comes from the splitmix64 finaliser of seed + (index + 1) * golden-ratio constant: a
    counter-based generator, so every element is independent of launch layout and thread count.
    """
    import cupy

    return cupy.ElementwiseKernel(
        "T x, uint64 seed, float64 p, T scale",
        "T mask, T y",
        r"""
        unsigned long long z = seed + (unsigned long long)(i + 1) * 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        const double u = (double)(z >> 11) * (1.0 / 9007199254740992.0);  // top 53 bits / 2^53
        const T m = u >= p ? scale : T(0);
        mask = m;
        y = x * m;
        """,
        "tinygraph_dropout",
    )
