"""Optimizers (SGD, Adagrad, RMSprop, Adam, AdamW), global-norm gradient clipping, and their state.

The update formulas are PyTorch's (``torch.optim``), bias correction and all, so a run here can be
checked step by step against one there.  Updates are in place on ``p.data`` and on moment buffers
allocated once per parameter; the few temporaries an update needs go into scratch arrays reused
across steps (and across parameters of the same shape), since ``step()`` runs once per training step.
Gradients are only read, never written: the graph may hand one gradient array to several parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from tinygraph import backend, compiled
from tinygraph.errors import TinygraphError
from tinygraph.tensor import Tensor


def _check_range(name: str, value: float, low: float = 0.0, high: float = math.inf, high_open: bool = False) -> float:
    value = float(value)
    ok = low <= value < high if high_open else low <= value <= high
    if not ok or math.isnan(value):
        bound = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise TinygraphError(f"optimizer {name}={value} is out of range {bound}")
    return value


class Optimizer:
    """Base class: keeps the parameter list, the learning rate, per-parameter buffers and step counts.

    Subclasses set ``kind``, ``buffer_names`` (moment buffers, saved by :meth:`state_dict`) and
    ``hyper_names`` (attributes saved as metadata) and implement ``_update(i, p, g)``.
    """

    kind: ClassVar[str] = "optimizer"
    buffer_names: ClassVar[tuple[str, ...]] = ()
    hyper_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: list[Tensor], lr: float):
        params = list(params)
        if not params:
            raise TinygraphError("an optimizer needs at least one parameter (got an empty list)")
        seen: set[int] = set()
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TinygraphError(f"optimizer parameter {i} is a {type(p).__name__}, not a Tensor")
            if id(p) in seen:
                raise TinygraphError(f"optimizer parameter {i} appears twice in the list (it would be updated twice)")
            seen.add(id(p))
        self.params = params
        self.lr = _check_range("lr", lr)
        self.step_count = 0
        # per parameter, as in torch: Adam's bias correction counts only the steps that parameter took
        self.param_steps = [0] * len(params)
        self.state: dict[str, list[Any]] = {name: [None] * len(params) for name in self.buffer_names}
        self._scratch_arrays: dict[tuple[Any, ...], Any] = {}

    # --- the training step ---------------------------------------------------------
    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        self.step_count += 1
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if g.shape != p.data.shape:
                raise TinygraphError(
                    f"gradient of parameter {i}{_name(p)} has shape {tuple(g.shape)}, "
                    f"the parameter {tuple(p.data.shape)}"
                )
            self.param_steps[i] += 1
            self._update(i, p.data, g)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _update(self, i: int, p: Any, g: Any) -> None:
        raise NotImplementedError

    def _buffer(self, name: str, i: int, like: Any) -> Any:
        """The moment buffer ``name`` of parameter ``i``, zeros on first use (torch's initial state)."""
        buf = self.state[name][i]
        if buf is None:
            buf = self.state[name][i] = backend.get_array_module(like).zeros_like(like)
        return buf

    def _scratch(self, like: Any, slot: int) -> Any:
        """A reusable temporary shaped like ``like``; contents are garbage between uses."""
        key = (slot, like.shape, like.dtype.str, type(like))
        s = self._scratch_arrays.get(key)
        if s is None:
            s = self._scratch_arrays[key] = backend.get_array_module(like).empty_like(like)
        return s

    def _with_l2(self, p: Any, g: Any, weight_decay: float) -> Any:
        """g + weight_decay * p (torch's coupled weight decay), in scratch slot 0; g itself when 0."""
        if not weight_decay:
            return g
        xp = backend.get_array_module(p)
        d = xp.multiply(p, weight_decay, out=self._scratch(p, 0))
        d += g
        return d

    # --- state -----------------------------------------------------------------------
    def hyper(self) -> dict[str, Any]:
        out = {}
        for name in self.hyper_names:
            v = getattr(self, name)
            out[name] = list(v) if isinstance(v, tuple) else v
        return out

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """Host copies of the buffers, named ``"<buffer>.<parameter index>"``, and JSON-able metadata."""
        arrays = {}
        for name, bufs in self.state.items():
            for i, b in enumerate(bufs):
                if b is not None:
                    host = backend.to_numpy(b)  # a copy already when b lives on the GPU
                    arrays[f"{name}.{i}"] = host.copy() if host is b else host
        meta = {
            "kind": self.kind,
            "lr": self.lr,
            "hyper": self.hyper(),
            "step": self.step_count,
            "param_steps": list(self.param_steps),
            "shapes": [list(p.data.shape) for p in self.params],
        }
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, Any], meta: dict) -> None:
        """Restore a :meth:`state_dict` exactly (buffers go to each parameter's device and dtype).

        Everything is checked before anything changes, so a mismatch leaves this optimizer as it was.
        Hyper-parameters and the learning rate come back too; set ``lr`` afterwards to override it.
        """
        try:
            kind = meta["kind"]
            shapes = [tuple(int(n) for n in s) for s in meta["shapes"]]
            param_steps = [int(n) for n in meta["param_steps"]]
            step = int(meta["step"])
            lr = float(meta["lr"])
            hyper = dict(meta["hyper"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TinygraphError(f"optimizer state metadata is incomplete or malformed ({exc!r})") from exc
        if kind != self.kind:
            raise TinygraphError(f"optimizer state is for {kind!r}, this optimizer is {self.kind!r}")
        if len(shapes) != len(self.params) or len(param_steps) != len(self.params):
            raise TinygraphError(f"optimizer state has {len(shapes)} parameters, this optimizer {len(self.params)}")
        for i, (s, p) in enumerate(zip(shapes, self.params)):
            if s != tuple(p.data.shape):
                raise TinygraphError(
                    f"optimizer state for parameter {i}{_name(p)} has shape {s}, the parameter {tuple(p.data.shape)}"
                )
        missing = [h for h in self.hyper_names if h not in hyper]
        if missing:
            raise TinygraphError(f"optimizer state lacks hyper-parameters {missing}")
        state: dict[str, list[Any]] = {name: [None] * len(self.params) for name in self.buffer_names}
        for key, arr in arrays.items():
            name, _, idx = key.rpartition(".")
            if name not in state or not idx.isdigit() or int(idx) >= len(self.params):
                raise TinygraphError(f"optimizer state has an unexpected array {key!r} for {self.kind!r}")
            p = self.params[int(idx)].data
            if tuple(arr.shape) != tuple(p.shape):
                raise TinygraphError(
                    f"optimizer state array {key!r} has shape {tuple(arr.shape)}, the parameter {tuple(p.shape)}"
                )
            state[name][int(idx)] = _copy_like(arr, p)
        for h in self.hyper_names:
            v = hyper[h]
            setattr(self, h, tuple(v) if isinstance(v, list) else v)
        self.lr, self.step_count, self.param_steps, self.state = lr, step, param_steps, state

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({len(self.params)} params, lr={self.lr}{', ' + hyper if hyper else ''})"


def _name(p: Tensor) -> str:
    return f" ({p.name})" if p.name else ""


def _copy_like(arr: Any, like: Any) -> Any:
    """A private copy of ``arr`` on ``like``'s device with ``like``'s dtype."""
    xp = backend.get_array_module(like)
    if xp is np:
        return np.array(backend.to_numpy(arr), dtype=like.dtype, copy=True)
    return xp.array(arr, dtype=like.dtype, copy=True)


class SGD(Optimizer):
    """p -= lr * d, d = g + wd p, with momentum buf = mu buf + d and Nesterov d + mu buf (torch's form)."""

    kind = "sgd"
    buffer_names = ("buf",)
    hyper_names = ("momentum", "nesterov", "weight_decay")

    def __init__(
        self,
        params: list[Tensor],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr)
        self.momentum = _check_range("momentum", momentum)
        self.weight_decay = _check_range("weight_decay", weight_decay)
        if nesterov and self.momentum <= 0:
            raise TinygraphError("SGD with nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)

    def _update(self, i: int, p: Any, g: Any) -> None:
        xp = backend.get_array_module(p)
        d = self._with_l2(p, g, self.weight_decay)
        mu = self.momentum
        if mu:
            buf = self._buffer("buf", i, p)
            # zeros at first, so the first step leaves buf = d, as torch's clone does
            buf *= mu
            buf += d
            if self.nesterov:
                t = xp.multiply(buf, mu, out=self._scratch(p, 1))
                t += d
                d = t
            else:
                d = buf
        t = xp.multiply(d, self.lr, out=self._scratch(p, 1))
        p -= t


class Adagrad(Optimizer):
    """sum += g^2; p -= lr * g / (sqrt(sum) + eps)."""

    kind = "adagrad"
    buffer_names = ("sum",)
    hyper_names = ("eps", "weight_decay")

    def __init__(self, params: list[Tensor], lr: float, eps: float = 1e-10, *, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.eps = _check_range("eps", eps)
        self.weight_decay = _check_range("weight_decay", weight_decay)

    def _update(self, i: int, p: Any, g: Any) -> None:
        xp = backend.get_array_module(p)
        g = self._with_l2(p, g, self.weight_decay)
        acc = self._buffer("sum", i, p)
        t = xp.multiply(g, g, out=self._scratch(p, 1))
        acc += t
        xp.sqrt(acc, out=t)
        t += self.eps
        xp.divide(g, t, out=t)
        t *= self.lr
        p -= t


class RMSprop(Optimizer):
    """sq = alpha sq + (1 - alpha) g^2; step g / (sqrt(sq) + eps), through a momentum buffer if mu > 0."""

    kind = "rmsprop"
    buffer_names = ("sq", "buf")
    hyper_names = ("alpha", "eps", "momentum", "weight_decay")

    def __init__(
        self,
        params: list[Tensor],
        lr: float,
        alpha: float = 0.99,
        eps: float = 1e-8,
        momentum: float = 0.0,
        *,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr)
        self.alpha = _check_range("alpha", alpha, 0.0, 1.0)
        self.eps = _check_range("eps", eps)
        self.momentum = _check_range("momentum", momentum)
        self.weight_decay = _check_range("weight_decay", weight_decay)

    def _update(self, i: int, p: Any, g: Any) -> None:
        xp = backend.get_array_module(p)
        g = self._with_l2(p, g, self.weight_decay)
        sq = self._buffer("sq", i, p)
        sq *= self.alpha
        t = xp.multiply(g, g, out=self._scratch(p, 1))
        t *= 1.0 - self.alpha
        sq += t
        xp.sqrt(sq, out=t)
        t += self.eps
        xp.divide(g, t, out=t)
        if self.momentum:
            buf = self._buffer("buf", i, p)
            buf *= self.momentum
            buf += t
            xp.multiply(buf, self.lr, out=t)
        else:
            t *= self.lr
        p -= t


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is L2 added to the gradient (torch.optim.Adam)."""

    kind = "adam"
    buffer_names = ("m", "v")
    hyper_names = ("betas", "eps", "weight_decay")
    decoupled = False
    default_weight_decay = 0.0

    def __init__(
        self,
        params: list[Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
    ):
        super().__init__(params, lr)
        if weight_decay is None:
            weight_decay = self.default_weight_decay
        if len(betas) != 2:
            raise TinygraphError(f"Adam betas must be two numbers, got {betas!r}")
        self.betas = (
            _check_range("beta1", betas[0], 0.0, 1.0, high_open=True),
            _check_range("beta2", betas[1], 0.0, 1.0, high_open=True),
        )
        self.eps = _check_range("eps", eps)
        self.weight_decay = _check_range("weight_decay", weight_decay)

    def _update(self, i: int, p: Any, g: Any) -> None:
        m, v = self._buffer("m", i, p), self._buffer("v", i, p)
        step = self.param_steps[i]
        hyper = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}
        if compiled.adam_update(p, g, m, v, **hyper, decoupled=self.decoupled, step=step):
            return  # one compiled pass; below, the NumPy reference (and CuPy's path)
        xp = backend.get_array_module(p)
        b1, b2 = self.betas
        if self.decoupled:
            if self.weight_decay:
                p *= 1.0 - self.lr * self.weight_decay
        else:
            g = self._with_l2(p, g, self.weight_decay)
        # m = lerp(m, g, 1 - b1), the form torch uses for small weights
        t = xp.subtract(g, m, out=self._scratch(p, 1))
        t *= 1.0 - b1
        m += t
        v *= b2
        xp.multiply(g, g, out=t)
        t *= 1.0 - b2
        v += t
        bias1, bias2 = 1.0 - b1**step, 1.0 - b2**step
        # p -= (lr / bias1) * m / (sqrt(v) / sqrt(bias2) + eps)
        xp.sqrt(v, out=t)
        t /= math.sqrt(bias2)
        t += self.eps
        xp.divide(m, t, out=t)
        t *= self.lr / bias1
        p -= t


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr * wd before the Adam step (torch.optim.AdamW)."""

    kind = "adamw"
    decoupled = True
    default_weight_decay = 0.01  # torch.optim.AdamW's default


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
}


def make(name: str, params: list[Tensor], lr: float, weight_decay: float = 0.0, **kw: Any) -> Optimizer:
    """The optimizer called ``name`` (sgd, adagrad, rmsprop, adam, adamw); ``kw`` are its own options."""
    cls = OPTIMIZERS.get(str(name).lower())
    if cls is None:
        raise TinygraphError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    try:
        return cls(params, lr, weight_decay=weight_decay, **kw)
    except TypeError as exc:  # an option this optimizer does not have
        raise TinygraphError(f"optimizer {name!r}: {exc}") from exc


def _memory_root(a: Any) -> Any:
    while getattr(a, "base", None) is not None:
        a = a.base
    return a


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients by one factor so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping.  The factor is torch's ``max_norm / (norm + 1e-6)``, applied
    only when the norm exceeds ``max_norm``.  A non-finite norm is returned without touching the
    gradients, so the caller can see it and skip the step.
    """
    max_norm = float(max_norm)
    if not max_norm > 0:
        raise TinygraphError(f"clip_grad_norm needs max_norm > 0, got {max_norm}")
    holders = list({id(p): p for p in params if p.grad is not None}.values())  # each parameter once
    if not holders:
        return 0.0
    total = None
    for p in holders:
        g = p.grad
        flat = g.reshape(-1)
        sq = backend.get_array_module(g).dot(flat, flat)  # no temporary for contiguous grads
        total = sq if total is None else total + sq
    norm = math.sqrt(float(total))
    if not math.isfinite(norm) or norm <= max_norm:
        return norm
    scale = max_norm / (norm + 1e-6)
    # The graph may hand several parameters one gradient array, or views of one block (a concat's
    # backward slices its output gradient).  Scaling such memory in place would scale it twice, or
    # not at all; so grads sharing a block get scaled copies, computed before any in-place write.
    by_root: dict[int, list[Tensor]] = {}
    for p in holders:
        by_root.setdefault(id(_memory_root(p.grad)), []).append(p)
    in_place = []
    for group in by_root.values():
        if len(group) == 1 and getattr(group[0].grad.flags, "writeable", True):
            in_place.append(group[0])
        else:
            for p in group:
                p.grad = p.grad * scale
    for p in in_place:
        p.grad *= scale
    return norm
