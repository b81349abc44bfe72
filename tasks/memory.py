"""The classic long-memory tasks, a model for them and a training loop that says when they are solved.

**The adding problem** (Hochreiter & Schmidhuber 1997, in the form of Arjovsky et al. 2016).  Each
of the T steps of a sequence carries two numbers: a value drawn from U(0, 1) and a marker, which is
1 at exactly two steps (one in the first half, one in the second) and 0 elsewhere.  After the last
step the net must output the sum of the two marked values.  Always answering 1, the mean of the
sum, scores a mean squared error of 1/6 (the variance of a sum of two U(0, 1)): that is the
baseline a net without memory reaches.  **Solved** here means an MSE on held-out sequences below
``Adding.threshold`` = 0.01, 6 % of the baseline: the net then explains 94 % of the target's
variance, which it can only do by finding and adding the two marked values (a net that finds only
one of them, and guesses the mean of the other, scores 1/12).

**The copy task** (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).  A sequence of T steps
starts with ``span`` symbols drawn from an alphabet of ``symbols``, followed by blanks; the last
blank before the final ``span`` steps carries a "go" marker, and over those final steps the net must
output the symbols it saw at the start, in order.  Each step is one-hot over the alphabet, the
blank and the marker.  The loss is the cross-entropy of the recalled symbols only.  Guessing gets
1 - 1/symbols of them wrong: the baseline.  **Solved**: at least 99 % of the recalled symbols right
on held-out sequences (``Copy.threshold`` = 0.01 error).

In both tasks ``length`` is the whole sequence's T: the two marked values of the adding problem lie
on average T/2 steps apart, and the copy task's symbols must be carried over T - span steps.

The model (:class:`MemoryNet`) is one recurrent layer of any cell of ``models.recurrent.CELLS`` and
a Dense head on the steps that answer; :func:`train` runs Adam with global-norm gradient clipping
on fresh random batches, evaluates on a fixed held-out set every ``eval_every`` steps and reports
the first evaluated step at which the task was solved and the error at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

import tinygraph as tg
from models.layers import Dense
from models.module import Module
from models.recurrent import CELLS
from tinygraph.errors import TinygraphError


class TaskError(TinygraphError, ValueError):
    """A task or training setting out of range: the message names it."""


# --- the tasks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adding:
    """The adding problem over sequences of ``length`` steps: inputs (B, T, 2), target (B, 1, 1)."""

    length: int
    name: ClassVar[str] = "adding"
    threshold: ClassVar[float] = 0.01  # MSE below which the task counts as solved
    baseline: ClassVar[float] = 1.0 / 6.0  # MSE of always answering 1
    metric: ClassVar[str] = "MSE"

    def __post_init__(self) -> None:
        _check_int("length", self.length, 2)

    @property
    def inputs(self) -> int:
        return 2

    @property
    def outputs(self) -> int:
        return 1

    @property
    def answer_steps(self) -> int:
        return 1

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``size`` sequences: x (size, T, 2) float32 and the sums y (size, 1, 1)."""
        t = self.length
        x = np.zeros((size, t, 2), dtype=np.float32)
        x[:, :, 0] = rng.random((size, t))
        half = t // 2
        rows = np.arange(size)
        first = rng.integers(0, half, size)
        second = rng.integers(half, t, size)
        x[rows, first, 1] = 1.0
        x[rows, second, 1] = 1.0
        y = (x[rows, first, 0] + x[rows, second, 0]).reshape(size, 1, 1)
        return x, y

    def loss(self, pred: tg.Tensor, y: np.ndarray) -> tg.Tensor:
        d = pred - tg.tensor(y)
        return (d * d).mean()

    def error(self, pred: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean((pred.astype(np.float64) - y) ** 2))


@dataclass(frozen=True)
class Copy:
    """The copy task: see ``span`` symbols of ``symbols``, wait, recall them in order at the end.

    Inputs (B, T, symbols + 2): one-hot over the alphabet, the blank (index ``symbols``) and the
    go marker (``symbols + 1``); targets (B, span) integer symbols.
    """

    length: int
    symbols: int = 8
    span: int = 3
    name: ClassVar[str] = "copy"
    threshold: ClassVar[float] = 0.01  # error rate (1 - accuracy) on the recalled symbols
    metric: ClassVar[str] = "error rate"

    def __post_init__(self) -> None:
        _check_int("symbols", self.symbols, 2)
        _check_int("span", self.span, 1)
        _check_int("length", self.length, 2 * self.span + 1, "2 * span + 1")

    @property
    def baseline(self) -> float:
        return 1.0 - 1.0 / self.symbols

    @property
    def inputs(self) -> int:
        return self.symbols + 2

    @property
    def outputs(self) -> int:
        return self.symbols

    @property
    def answer_steps(self) -> int:
        return self.span

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        t, n, k = self.length, self.span, self.symbols
        seq = rng.integers(0, k, (size, n))
        ids = np.full((size, t), k)  # blanks
        ids[:, :n] = seq
        ids[:, t - n - 1] = k + 1  # go: recall from the next step on
        x = np.eye(k + 2, dtype=np.float32)[ids]
        return x, seq

    def loss(self, pred: tg.Tensor, y: np.ndarray) -> tg.Tensor:
        return tg.softmax_cross_entropy(pred, y)

    def error(self, pred: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(pred.argmax(axis=-1) != y))


Task = Adding | Copy
TASKS: dict[str, type[Adding] | type[Copy]] = {"adding": Adding, "copy": Copy}


def make_task(name: str, length: int, **options: Any) -> Task:
    """The task called ``name`` ("adding" or "copy") over sequences of ``length`` steps."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name](length, **options)


def _check_int(what: str, value: Any, low: int, low_text: str | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise TaskError(f"{what} must be an integer >= {low_text or low}, got {value!r}")


# --- the model ----------------------------------------------------------------------------------


class MemoryNet(Module):
    """One recurrent layer and a Dense head applied to the last ``answer_steps`` outputs.

    ``forget_bias`` (LSTM only): the forget gate's bias starts there instead of at torch's small
    random values, so the untrained gate keeps sigmoid(1) = 73 % of the cell per step rather than
    about half of it (Gers et al. 2000; Jozefowicz et al. 2015).  None keeps torch's initialisation.
    """

    def __init__(
        self,
        cell: str,
        inputs: int,
        hidden: int,
        outputs: int,
        answer_steps: int,
        fused: bool = True,
        forget_bias: float | None = 1.0,
    ):
        super().__init__()
        if cell not in CELLS:
            raise TaskError(f"unknown cell {cell!r}: choose one of {', '.join(CELLS)}")
        self.rnn = self.add_module("rnn", CELLS[cell](inputs, hidden, fused=fused))
        self.head = self.add_module("head", Dense(hidden, outputs))
        self.answer_steps = answer_steps
        if cell == "lstm" and forget_bias is not None:
            forget = slice(hidden, 2 * hidden)  # gate order (i, f, g, o); the two biases are summed
            self.rnn.bias_ih_l0.data[forget] = forget_bias
            self.rnn.bias_hh_l0.data[forget] = 0.0

    def forward(self, x: Any) -> tg.Tensor:
        """x (B, T, inputs) -> predictions (B, answer_steps, outputs)."""
        out, _ = self.rnn(x if isinstance(x, tg.Tensor) else tg.tensor(x))
        return self.head(out[:, -self.answer_steps :])


# --- training -----------------------------------------------------------------------------------


@dataclass
class Result:
    """What one training run reached.  ``history`` holds (step, held-out error) at each evaluation."""

    task: str
    cell: str
    length: int
    steps: int
    solved_at: int | None
    final_error: float
    baseline: float
    threshold: float
    metric: str
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def solved(self) -> bool:
        return self.solved_at is not None

    def summary(self) -> str:
        solved = f"solved at step {self.solved_at}" if self.solved else f"not solved in {self.steps} steps"
        return (
            f"{self.task} T={self.length} {self.cell}: {solved}; final {self.metric} {self.final_error:.4f} "
            f"(baseline {self.baseline:.4f}, solved below {self.threshold})"
        )


def train(
    task: Task,
    cell: str = "lstm",
    hidden: int = 64,
    batch: int = 32,
    steps: int = 2000,
    lr: float = 1e-2,
    clip: float = 1.0,
    eval_every: int = 50,
    eval_size: int = 256,
    seed: int = 0,
    stop_when_solved: bool = True,
    fused: bool = True,
    forget_bias: float | None = 1.0,
    on_eval: Callable[[int, float], None] | None = None,
) -> Result:
    """Train a :class:`MemoryNet` with ``cell`` on ``task``; evaluate every ``eval_every`` steps.

    Each step draws a fresh batch.  The held-out set (``eval_size`` sequences) is fixed by ``seed``
    and never trained on.  Evaluation runs at step 0 and then every ``eval_every`` steps; the run
    stops at the first evaluation below the task's threshold unless ``stop_when_solved`` is False,
    and always at ``steps``.  ``on_eval(step, error)`` is called at each evaluation.
    """
    for what, value, low in (
        ("hidden", hidden, 1),
        ("batch", batch, 1),
        ("steps", steps, 0),
        ("eval_every", eval_every, 1),
        ("eval_size", eval_size, 1),
    ):
        _check_int(what, value, low)
    if not (lr > 0 and math.isfinite(lr)):
        raise TaskError(f"lr must be a finite number > 0, got {lr}")
    if not (clip > 0 and math.isfinite(clip)):
        raise TaskError(f"clip must be a finite number > 0, got {clip}")
    tg.manual_seed(seed)
    model = MemoryNet(cell, task.inputs, hidden, task.outputs, task.answer_steps, fused, forget_bias)
    params = model.parameters()
    opt = tg.optim.Adam(params, lr=lr)
    data = np.random.default_rng(seed)
    held_out = task.batch(np.random.default_rng([seed, 1]), eval_size)

    def evaluate() -> float:
        with tg.no_grad():
            return task.error(model(held_out[0]).numpy(), held_out[1])

    start = time.perf_counter()
    history = [(0, evaluate())]
    solved_at = 0 if history[-1][1] < task.threshold else None
    if on_eval is not None:
        on_eval(*history[-1])
    step = 0
    while step < steps and not (solved_at is not None and stop_when_solved):
        x, y = task.batch(data, batch)
        loss = task.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        norm = tg.optim.clip_grad_norm(params, clip)
        if not math.isfinite(norm):
            raise TaskError(f"the gradient became {norm} at step {step + 1}: try a smaller lr")
        opt.step()
        step += 1
        if step % eval_every == 0 or step == steps:
            history.append((step, evaluate()))
            if solved_at is None and history[-1][1] < task.threshold:
                solved_at = step
            if on_eval is not None:
                on_eval(*history[-1])
    return Result(
        task.name,
        cell,
        task.length,
        step,
        solved_at,
        history[-1][1],
        task.baseline,
        task.threshold,
        task.metric,
        time.perf_counter() - start,
        history,
    )
