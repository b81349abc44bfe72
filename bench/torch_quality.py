"""The PyTorch side of the quality benchmark: nn.LSTM (or GRU, RNN) of the config's size, trained for a budget.

This module imports torch: :mod:`bench.quality` imports it only when torch is installed.  It is
the plain recipe a torch user writes: Embedding -> nn.LSTM(dropout between layers) -> Linear,
Adam at the config's rate, global-norm clip, truncated BPTT with the state carried, no schedule.
It reads the very batches and validation windows tinygraph's trainer reads (``charlm.corpus``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from charlm.corpus import TrainingData
from models.recurrent import CELLS

Record = dict[str, Any]


class TorchLM(nn.Module):
    """Embedding -> recurrent stack -> Linear to the vocabulary, batch-first."""

    def __init__(self, vocab: int, emb: int, cell: str, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.rnn = getattr(nn, CELLS[cell].torch_name)(
            emb, hidden, num_layers=layers, dropout=dropout, batch_first=True
        )
        self.dense = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        out, state = self.rnn(self.embedding(x), state)
        return self.dense(out), state


def _detach(state: Any) -> Any:
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _ids(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def evaluate(model: TorchLM, data: TrainingData, windows: int) -> float:
    """Mean validation nats/char over the first ``windows`` windows, state carried (as ``charlm.evaluate``)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        state = None
        for b in data.val_batcher.windows_from_start(windows):
            logits, state = model(_ids(b.x), state)
            nll = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), _ids(b.y).reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += b.y.size
    model.train()
    return total / max(count, 1)


def train_for(
    data: TrainingData,
    size: dict[str, Any],
    train: dict[str, Any],
    seconds: float,
    threads: int,
    on_eval: Callable[[Record], None],
    marks: Sequence[float] = (),
) -> None:
    """Train for ``seconds`` of wall-clock, evaluating every ``train.eval_interval`` steps and at the end.

    Also evaluated the moment each of the ``marks`` (minutes) runs out; that record says ``mark``:
    the run's loss at a shorter budget (the recipe has no schedule to tell the budget).
    """
    torch.set_num_threads(threads)
    torch.manual_seed(train["seed"])
    model = TorchLM(len(data.vocab), size["emb"], size["cell"], size["hidden"], size["layers"], size["dropout"])
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=train["learning_rate"])
    vocab = len(data.vocab)
    state: Any = None
    pending = sorted(m for m in marks if m * 60.0 < seconds)
    step, start = 0, time.perf_counter()
    while True:
        batch = data.batcher.next()
        if batch.reset:
            state = None
        logits, state = model(_ids(batch.x), state)
        state = _detach(state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), _ids(batch.y).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train["clip"] > 0:
            nn.utils.clip_grad_norm_(params, train["clip"])
        opt.step()
        step += 1
        elapsed = time.perf_counter() - start
        over = elapsed >= seconds
        crossed = [m for m in pending if elapsed >= m * 60.0]
        if step % train["eval_interval"] == 0 or over or crossed:
            val = evaluate(model, data, train["eval_batches"])
            r: Record = {"step": step, "seconds": time.perf_counter() - start, "val_loss": val}
            if crossed and not over:
                r["mark"] = crossed[-1]
                pending = pending[len(crossed) :]
            on_eval(r)
            if over or not math.isfinite(val):
                return
