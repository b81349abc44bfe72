"""Learning-rate schedules: they set ``optimizer.lr`` and save their own state as JSON-able dicts.

Every schedule answers the same three events, so a training loop drives any of them without
asking which it is: ``on_step(step, progress)`` before optimizer step ``step`` (0-based), with the
fraction of the run done in [0, 1] when the loop knows it (None otherwise), ``on_eval(val_loss)``
after an evaluation, ``on_resume(state)`` with the ``state_dict()`` a run saved (or None).  A
schedule ignores the events it has no use for: ``ReduceLROnPlateau`` follows the validation loss,
``CosineWithWarmup`` the step, ``CosineToEnd`` the progress, ``FixedLR`` none.
"""

from __future__ import annotations

import math
from typing import Any

from tinygraph.errors import TinygraphError
from tinygraph.optim import Optimizer


def _check(name: str, ok: bool, value: Any, want: str) -> None:
    if not ok:
        raise TinygraphError(f"schedule {name}={value!r} is invalid: {want}")


def _restore(obj: object, kind: str, d: dict, fields: tuple[str, ...]) -> None:
    if not isinstance(d, dict) or d.get("kind") != kind:
        found = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise TinygraphError(f"schedule state is for {found!r}, this schedule is {kind!r}")
    missing = [f for f in fields if f not in d]
    if missing:
        raise TinygraphError(f"{kind} schedule state lacks {missing}")
    for f in fields:
        setattr(obj, f, d[f])


class Schedule:
    """What every schedule answers; an event a schedule has no use for is a no-op."""

    kind = "none"
    _fields: tuple[str, ...] = ()  # its state, as saved by state_dict()

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer

    def on_step(self, step: int, progress: float | None = None) -> None:
        """Before optimizer step ``step`` (0-based); ``progress``: the fraction of the run done, if known."""

    def on_eval(self, val_loss: float) -> None:
        """After an evaluation, with its validation loss."""

    def on_resume(self, state: dict | None) -> None:
        """When a run continues, with the ``state_dict()`` it saved (None if it saved none)."""

    def state_dict(self) -> dict:
        return {"kind": self.kind, **{f: getattr(self, f) for f in self._fields}}

    def load_state_dict(self, d: dict) -> None:
        _restore(self, self.kind, d, self._fields)


class FixedLR(Schedule):
    """No schedule: the learning rate stays what the optimizer (or the user) set."""


class ReduceLROnPlateau(Schedule):
    """Multiply the learning rate by ``factor`` once the metric has not improved for more than ``patience`` steps.

    As torch's (mode "min", relative threshold): a metric is an improvement when it is below
    ``best - threshold * |best|``.  After a reduction the count of bad steps starts again from 0.
    A NaN metric counts as no improvement.  The rate never goes below ``min_lr``.
    """

    kind = "plateau"
    _fields = ("factor", "patience", "min_lr", "threshold", "best", "num_bad", "num_reductions")

    def __init__(
        self,
        optimizer: Optimizer,
        factor: float = 0.5,
        patience: int = 3,
        min_lr: float = 0.0,
        threshold: float = 1e-4,
    ):
        _check("factor", 0.0 < factor < 1.0, factor, "needs 0 < factor < 1")
        _check("patience", int(patience) == patience and patience >= 0, patience, "needs an integer >= 0")
        _check("min_lr", min_lr >= 0.0, min_lr, "needs min_lr >= 0")
        _check("threshold", threshold >= 0.0, threshold, "needs threshold >= 0")
        super().__init__(optimizer)
        self.factor, self.patience = float(factor), int(patience)
        self.min_lr, self.threshold = float(min_lr), float(threshold)
        self.best: float | None = None  # None until the first metric (JSON has no infinity)
        self.num_bad = 0
        self.num_reductions = 0

    def is_better(self, metric: float) -> bool:
        return self.best is None or metric < self.best - self.threshold * abs(self.best)

    def step(self, metric: float) -> float:
        """Record one evaluation's metric; returns the learning rate now in force."""
        metric = float(metric)
        if not math.isnan(metric) and self.is_better(metric):
            self.best = metric
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.num_bad > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > 1e-12:  # already at the floor: nothing to do
                self.optimizer.lr = new
                self.num_reductions += 1
            self.num_bad = 0
        return self.optimizer.lr

    def on_eval(self, val_loss: float) -> None:
        self.step(val_loss)

    def on_resume(self, state: dict | None) -> None:
        """Take back the memory a run saved (best metric, bad evaluations); a state of another kind
        (the run changed its schedule) or none leaves this one fresh."""
        if isinstance(state, dict) and state.get("kind") == self.kind:
            self.load_state_dict(state)


class CosineWithWarmup(Schedule):
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then a half cosine down to ``min_lr`` at ``total_steps``.

    ``step(s)`` sets the rate for optimizer step ``s`` (0-based): ``base_lr * (s + 1) / warmup_steps``
    during warm-up (so the first step already moves), then
    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2``,
    which is ``base_lr`` at ``s = warmup_steps`` and ``min_lr`` from ``s = total_steps`` on.
    """

    kind = "cosine"
    _fields = ("base_lr", "warmup_steps", "total_steps", "min_lr", "last_step")

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float,
        warmup_steps: int,
        total_steps: int,
        min_lr: float = 0.0,
    ):
        _check("warmup_steps", int(warmup_steps) == warmup_steps and warmup_steps >= 0, warmup_steps, "needs >= 0")
        _check("total_steps", int(total_steps) == total_steps and total_steps >= 1, total_steps, "needs >= 1")
        _check("warmup_steps", warmup_steps <= total_steps, warmup_steps, f"needs <= total_steps ({total_steps})")
        _check("min_lr", 0.0 <= min_lr <= base_lr, min_lr, f"needs 0 <= min_lr <= base_lr ({base_lr})")
        super().__init__(optimizer)
        self.base_lr, self.min_lr = float(base_lr), float(min_lr)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.last_step: int | None = None

    def lr_at(self, step: int) -> float:
        """The rate for optimizer step ``step`` (0-based), without touching the optimizer."""
        if step < 0:
            raise TinygraphError(f"schedule step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / span) if span > 0 else 1.0
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def step(self, step: int) -> float:
        """Set ``optimizer.lr`` for optimizer step ``step``; returns it."""
        lr = self.lr_at(int(step))
        self.optimizer.lr = lr
        self.last_step = int(step)
        return lr

    def on_step(self, step: int, progress: float | None = None) -> None:
        self.step(step)

    def on_resume(self, state: dict | None) -> None:
        """Nothing to take back: the rate is a function of the step and of this schedule's settings,
        which a resumed run may have changed (a new ``total_steps``)."""


class CosineToEnd(Schedule):
    """Linear warm-up over ``warmup_steps``, times a half cosine over the run's progress: ``min_lr`` at its end.

    The training loop says, at each step, what fraction of the run is done (for a run with a time
    budget, the larger of the fraction of steps and the fraction of the budget spent), so the rate
    reaches ``min_lr`` exactly when the run stops, however fast the machine is:
    ``min_lr + (base_lr - min_lr) * w * (1 + cos(pi * progress)) / 2`` with the warm-up factor
    ``w = min(1, (step + 1) / warmup_steps)``.  Given no progress it falls back to ``step / total_steps``,
    a function of the step alone (so a run without a time budget resumes exactly).
    """

    kind = "cosine_to_end"
    _fields = ("base_lr", "warmup_steps", "total_steps", "min_lr", "last_progress")

    def __init__(self, optimizer: Optimizer, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0):
        _check("warmup_steps", int(warmup_steps) == warmup_steps and warmup_steps >= 0, warmup_steps, "needs >= 0")
        _check("total_steps", int(total_steps) == total_steps and total_steps >= 1, total_steps, "needs >= 1")
        _check("min_lr", 0.0 <= min_lr <= base_lr, min_lr, f"needs 0 <= min_lr <= base_lr ({base_lr})")
        super().__init__(optimizer)
        self.base_lr, self.min_lr = float(base_lr), float(min_lr)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.last_progress: float | None = None

    def lr_at(self, step: int, progress: float | None = None) -> float:
        """The rate for optimizer step ``step`` at ``progress`` (default ``step / total_steps``)."""
        if step < 0:
            raise TinygraphError(f"schedule step must be >= 0, got {step}")
        if progress is None:
            progress = step / self.total_steps
        progress = min(1.0, max(0.0, float(progress)))
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.base_lr - self.min_lr) * warm * cosine

    def on_step(self, step: int, progress: float | None = None) -> None:
        self.optimizer.lr = self.lr_at(int(step), progress)
        self.last_progress = progress

    def on_resume(self, state: dict | None) -> None:
        """Nothing to take back: a resumed run is a new invocation, whose progress the loop reports afresh."""
