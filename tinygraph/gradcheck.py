"""Gradient checking: analytic backward against central differences in float64.

What ``gradcheck`` measures, and what it cannot see: the error of an input is
max |a - n| / max(max |a|, max |n|), a and n its analytic and numerical gradients.  Normalised by
the largest entry, it is robust where single entries are (almost) zero, but an error confined to
entries much smaller than the largest one passes: next to an entry of 1, an entry of 1e-8 may be
wrong by 100 % and still stay under ``tol = 1e-6``.  Ops whose gradients span orders of magnitude
(saturated sigmoids, softmax over logits far apart, exp of negative values) need the per-element
test too: pass ``rtol_each`` and every element must also satisfy
|a - n| <= rtol_each * (|n| + atol_each).  ``atol_each`` is where relative turns into absolute:
central differences in float64 with eps = 1e-6 carry an absolute noise of about 1e-10 times the
projected loss, so entries below ``atol_each`` (default 1e-4) are held to rtol_each * atol_each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinygraph import backend
from tinygraph.graph import no_grad
from tinygraph.tensor import Tensor


def _worst(errors: list[float | None]) -> float:
    checked = [e for e in errors if e is not None]
    if any(math.isnan(e) for e in checked):  # a NaN anywhere is the worst (max() would skip it by position)
        return float("nan")
    return max(checked, default=0.0)


@dataclass
class GradcheckResult:
    """Worst relative error per checked input (None for inputs not differentiated).

    ``each``: the worst element-wise error |a - n| / (|n| + atol_each) per input, filled when the
    check was asked for one (``rtol_each``); ``numeric_max``: the largest |numerical gradient| per
    input, which says, without trusting the backward, whether the output depends on it at all.
    """

    errors: list[float | None]
    tol: float
    each: list[float | None] = field(default_factory=list)
    rtol_each: float | None = None
    numeric_max: list[float | None] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return _worst(self.errors)

    @property
    def worst_each(self) -> float:
        return _worst(self.each)

    @property
    def ok(self) -> bool:
        if not self.worst <= self.tol:  # written so that a NaN fails
            return False
        return self.rtol_each is None or self.worst_each <= self.rtol_each

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        errs = ", ".join("-" if e is None else f"{e:.2e}" for e in self.errors)
        text = f"gradcheck {'ok' if self.ok else 'FAILED'}: worst rel. error per input [{errs}] (tol {self.tol:.0e})"
        if self.rtol_each is not None:
            each = ", ".join("-" if e is None else f"{e:.2e}" for e in self.each)
            text += f"; worst element-wise error per input [{each}] (rtol_each {self.rtol_each:.0e})"
        return text


def _prepare(inputs: Sequence[Any]) -> list[Tensor]:
    """float64 leaf copies of floating inputs; integer inputs stay constants."""
    xp = backend.default_xp()
    out = []
    for x in inputs:
        a = x.data if isinstance(x, Tensor) else x
        a = xp.asarray(backend.to_device(a) if xp is not np else backend.to_numpy(a))
        if a.dtype.kind == "f":
            # a C-ordered copy: the check perturbs it through a flat view (a transposed input
            # would otherwise be perturbed in a temporary copy, and the user's array never)
            out.append(Tensor(xp.array(a, dtype=xp.float64, order="C", copy=True), requires_grad=True))
        else:
            out.append(Tensor(a))
    return out


def _outputs(fn: Callable[..., Any], xs: list[Tensor]) -> list[Tensor]:
    y = fn(*xs)
    return list(y) if isinstance(y, (tuple, list)) else [y]


def _projection(ys: list[Tensor], weights: list[Any]) -> float:
    return float(sum((y.data * w).sum() for y, w in zip(ys, weights)))


def _analytic(fn: Callable[..., Any], xs: list[Tensor], seed: int) -> tuple[list[Any], list[Any]]:
    """Gradients of L = sum_k <y_k, R_k> for fixed random R_k, by one backward pass."""
    xp = backend.default_xp()
    rs = np.random.default_rng(seed)
    ys = _outputs(fn, xs)
    weights = [xp.asarray(rs.standard_normal(y.shape)) for y in ys]
    loss = None
    for y, w in zip(ys, weights):
        if y.requires_grad:
            term = (y * Tensor(w)).sum()
            loss = term if loss is None else loss + term
    if loss is None:
        raise ValueError("gradcheck: no output depends on a floating input")
    loss.backward()
    return weights, [x.grad if x.requires_grad else None for x in xs]


def _rel_error(analytic: Any, numeric: Any) -> float:
    """max |a - n| over the gradient's own scale: robust where single entries are ~0."""
    a, n = backend.to_numpy(analytic), backend.to_numpy(numeric)
    scale = max(np.abs(a).max(initial=0.0), np.abs(n).max(initial=0.0), 1e-12)
    return float(np.abs(a - n).max(initial=0.0) / scale)


def _each_error(analytic: Any, numeric: Any, atol: float) -> float:
    """max |a - n| / (|n| + atol): every element on its own scale (NaN if any element is NaN)."""
    a, n = backend.to_numpy(analytic), backend.to_numpy(numeric)
    return float((np.abs(a - n) / (np.abs(n) + atol)).max(initial=0.0))


def gradcheck(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    eps: float = 1e-6,
    tol: float = 1e-6,
    seed: int = 0,
    rtol_each: float | None = None,
    atol_each: float = 1e-4,
) -> GradcheckResult:
    """Element-wise check of every floating input of ``fn`` (returns a tensor or tuple).

    Each input passes when max |a - n| <= tol * max(max |a|, max |n|) -- a scale set by its
    largest gradient entry, blind to errors confined to much smaller entries (see the module's
    docstring).  With ``rtol_each``, every element must also satisfy
    |a - n| <= rtol_each * (|n| + atol_each).
    """
    xs = _prepare(inputs)
    weights, grads = _analytic(fn, xs, seed)
    errors: list[float | None] = []
    each: list[float | None] = []
    numeric_max: list[float | None] = []
    with no_grad():
        for x, g in zip(xs, grads):
            if not x.requires_grad:
                errors.append(None)
                each.append(None)
                numeric_max.append(None)
                continue
            xp = backend.get_array_module(x.data)
            analytic = xp.zeros_like(x.data) if g is None else g  # None: the output does not depend on x
            # zeros_like, not x * 0: NumPy turns 0-d arithmetic into a scalar, and writes through
            # the flat view below would then be lost
            numeric = xp.zeros_like(x.data)
            flat, num = x.data.reshape(-1), numeric.reshape(-1)
            for i in range(flat.size):
                old = float(flat[i])
                flat[i] = old + eps
                high = float(flat[i])  # the step actually taken: old +- eps is rounded where |old| is large
                plus = _projection(_outputs(fn, xs), weights)
                flat[i] = old - eps
                low = float(flat[i])
                minus = _projection(_outputs(fn, xs), weights)
                flat[i] = old
                num[i] = (plus - minus) / (high - low)
            errors.append(_rel_error(analytic, numeric))
            each.append(_each_error(analytic, numeric, atol_each) if rtol_each is not None else None)
            numeric_max.append(float(np.abs(backend.to_numpy(numeric)).max(initial=0.0)))
    return GradcheckResult(errors, tol, each, rtol_each, numeric_max)


def gradcheck_directional(
    fn: Callable[..., Any], inputs: Sequence[Any], eps: float = 1e-6, tol: float = 1e-6, seed: int = 0
) -> GradcheckResult:
    """Chainer's cheap check: one random direction d, two forward passes.

    Compares the analytic directional derivative sum_i <grad_i, d_i> with
    (L(x + eps d) - L(x - eps d)) / (2 eps).  Suits large unrolls.
    """
    xs = _prepare(inputs)
    weights, grads = _analytic(fn, xs, seed)
    xp = backend.default_xp()
    rs = np.random.default_rng(seed + 1)
    dirs = [xp.asarray(rs.standard_normal(x.shape)) if x.requires_grad else None for x in xs]
    norm = float(np.sqrt(sum(float((d * d).sum()) for d in dirs if d is not None)))
    dirs = [None if d is None else d / norm for d in dirs]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, dirs) if g is not None and d is not None)
    with no_grad():
        originals = [x.data.copy() for x in xs]
        values = []
        for sign in (1.0, -1.0):
            for x, d, o in zip(xs, dirs, originals):
                if d is not None:
                    x.data = o + sign * eps * d
            values.append(_projection(_outputs(fn, xs), weights))
        for x, o in zip(xs, originals):
            x.data = o
    numeric = (values[0] - values[1]) / (2 * eps)
    err = abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-12)
    return GradcheckResult([err], tol)
