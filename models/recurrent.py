"""Recurrent layers unrolled into an explicit time graph: RNN, LSTM, CIFG-LSTM, GRU.

``layer(x, state)`` takes batch-first x (B, T, I) and returns (outputs (B, T, H), state) with the
state shaped as PyTorch's: h (num_layers, B, H), or (h, c) for LSTM and CIFG.  Parameters are named
and shaped as in torch.nn.RNN/LSTM/GRU (``weight_ih_l0`` (G*H, I), ``weight_hh_l0`` (G*H, H),
``bias_ih_l0``, ``bias_hh_l0``), so weights move between the two as plain arrays.

Each layer of the stack is unrolled time-major: the input projection of all T steps is one
linear op outside the loop, then one group of nodes per step, tagged ``scope(cell, layer, t)``:
a single fused step op (``fused=True``, models.cells) or the cell written out in primitive ops
(``fused=False``, models.primitive_cells), whose nodes also carry the gate as ``part``.
Backpropagation through time is the reverse walk of that graph; nothing here runs it by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import tinygraph as tg
from models import cells, primitive_cells
from models.layers import Lookup
from models.module import Module
from tinygraph import backend, init

State = Any  # h, or (h, c): tensors of shape (num_layers, B, H)


class Recurrent(Module):
    """A stack of one recurrent cell type; each subclass carries that cell's facts.

    ``CELLS`` below is built from the subclasses: every table of cells (configs, the CLI, the
    benchmark, the PyTorch peer) reads these attributes instead of keeping its own copy.
    """

    cell: ClassVar[str] = ""  # "rnn", "lstm", "cifg", "gru": the scope tag, the CLI's --cell
    gates: ClassVar[int] = 1  # the width of the input and recurrent projections, in units of H
    # the (B, H) blocks of those projections in order, named by the ``part`` tag the primitive cell
    # gives the same gate (PyTorch's orders)
    blocks: ClassVar[tuple[str, ...]] = ("hidden",)
    has_cell_state: ClassVar[bool] = False
    kept_per_step: ClassVar[int] = 1  # (B, H) blocks BPTT keeps per layer and step (the memory model)
    separate_recurrent_bias: ClassVar[bool] = False  # b_hh used inside the cell, not summed with b_ih
    torch_name: ClassVar[str | None] = None  # the torch.nn class with the same equations, if any
    fused_step: ClassVar[type[cells.Step]]  # one node per step, hand-derived backward (models.cells)
    primitive_cell: ClassVar[Callable[..., tuple[Any, Any]]]  # the step in primitive ops (models.primitive_cells)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        fused: bool = True,
        *,
        weight_drop: float = 0.0,
        locked: bool = False,
    ):
        super().__init__()
        for what, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{type(self).__name__} {what} must be a positive integer, not {v!r}")
        for what, p in (("dropout", dropout), ("weight_drop", weight_drop)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{what} probability must be in [0, 1), not {p}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.fused = dropout, fused
        # regularisers (AWD-LSTM's): DropConnect on W_hh, one mask per window; and the dropout
        # between layers locked, one mask per sequence shared by all its time steps
        self.weight_drop, self.locked = weight_drop, locked
        bound = 1.0 / math.sqrt(hidden_size)  # torch's default: every weight and bias U(-1/sqrt(H), 1/sqrt(H))
        rows = self.gates * hidden_size
        for k in range(num_layers):
            cols = input_size if k == 0 else hidden_size
            for name, shape in (
                (f"weight_ih_l{k}", (rows, cols)),
                (f"weight_hh_l{k}", (rows, hidden_size)),
                (f"bias_ih_l{k}", (rows,)),
                (f"bias_hh_l{k}", (rows,)),
            ):
                self.add_parameter(name, init.uniform(shape, -bound, bound))

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def weights(self, k: int) -> tuple[tg.Tensor, ...]:
        p = self._params
        return p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"], p[f"bias_ih_l{k}"], p[f"bias_hh_l{k}"]

    def forward(self, x: tg.Tensor, state: State = None) -> tuple[tg.Tensor, State]:
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"{type(self).__name__} expects input (batch, time, {self.input_size}), got shape {tuple(x.shape)}"
            )
        out, state = self.unroll(tg.transpose(x, (1, 0, 2)), state)
        return tg.transpose(out, (1, 0, 2)), state

    def unroll(self, x: tg.Tensor | Lookup, state: State = None) -> tuple[tg.Tensor, State]:
        """Time-major x (T, B, I) -> outputs (T, B, H) and the final state.

        x may be a :class:`Lookup` of embedding rows: the first layer then projects the table.
        """
        h0, c0 = self._initial_state(x, state)
        finals_h, finals_c = [], []
        for k in range(self.num_layers):
            with tg.scope(cell=self.cell, layer=k):
                hk = h0[k] if h0 is not None else None
                ck = c0[k] if c0 is not None else None
                x, h, c = self._unroll_layer(k, x, hk, ck)
            finals_h.append(h)
            finals_c.append(c)
            if self.dropout and k < self.num_layers - 1:
                x = tg.dropout(x, self.dropout, training=self.training, shared_axes=(0,) if self.locked else ())
        h = tg.stack(finals_h)
        return x, ((h, tg.stack(finals_c)) if self.has_cell_state else h)

    def _initial_state(self, x: tg.Tensor, state: State) -> tuple[Any, Any]:
        shape = (self.num_layers, x.shape[1], self.hidden_size)
        if state is None:
            return None, None
        parts = state if self.has_cell_state else (state,)
        if not isinstance(parts, (tuple, list)) or len(parts) != (2 if self.has_cell_state else 1):
            raise ValueError(f"{type(self).__name__} state must be {'(h, c)' if self.has_cell_state else 'h'}")
        for p in parts:
            if tuple(p.shape) != shape:
                raise ValueError(f"{type(self).__name__} state of shape {tuple(p.shape)}, expected {shape}")
        h0 = tg.tensor(parts[0]) if not isinstance(parts[0], tg.Tensor) else parts[0]
        c0 = None
        if self.has_cell_state:
            c0 = tg.tensor(parts[1]) if not isinstance(parts[1], tg.Tensor) else parts[1]
        return h0, c0

    def _zeros(self, x: Any, like: tg.Tensor) -> tg.Tensor:
        xp = backend.get_array_module(like.data)
        return tg.Tensor(xp.zeros((x.shape[1], self.hidden_size), dtype=x.dtype))

    def _unroll_layer(self, k: int, x: tg.Tensor | Lookup, h: Any, c: Any) -> tuple[tg.Tensor, tg.Tensor, Any]:
        """One layer over all steps: (outputs (T, B, H), final h, final c or None)."""
        w_ih, w_hh, b_ih, b_hh = self.weights(k)
        if self.weight_drop and self.training:
            # DropConnect once per window, before the unroll: every step uses the same dropped
            # weight, so the time loop (and the fused step) is unchanged, and the gradient that
            # reaches W_hh is masked alike
            with tg.scope(part="weight drop"):
                w_hh = tg.dropout(w_hh, self.weight_drop)
        h = self._zeros(x, w_hh) if h is None else h
        if self.has_cell_state:
            c = self._zeros(x, w_hh) if c is None else c
        # torch adds b_ih and b_hh separately; where both only shift the pre-activation they are summed once
        bias = b_ih if self.separate_recurrent_bias else b_ih + b_hh
        with tg.scope(part="input projection"):
            xproj = x.project(w_ih, bias) if isinstance(x, Lookup) else tg.linear(x, w_ih, bias)
        outputs = (
            self._steps_fused(xproj, h, c, w_hh, b_hh) if self.fused else self._steps_primitive(xproj, h, c, w_hh, b_hh)
        )
        hs, h, c = outputs
        return tg.stack(hs), h, c

    def _steps_fused(self, xproj: tg.Tensor, h: Any, c: Any, w_hh: Any, b_hh: Any) -> tuple[list, Any, Any]:
        step = self.fused_step
        seq = step.sequence(xproj.data, h.data, None if c is None else c.data, self.hidden_size)
        hs = []
        for t in range(xproj.shape[0]):
            with tg.scope(t=t):
                h, c = step.apply(seq, t, xproj, h, c, w_hh, b_hh)
            hs.append(h)
        return hs, h, c

    def _steps_primitive(self, xproj: tg.Tensor, h: Any, c: Any, w_hh: Any, b_hh: Any) -> tuple[list, Any, Any]:
        steps = xproj.shape[0]
        with tg.scope(part="input projection"):
            xs = tg.split(xproj, steps, axis=0) if steps > 1 else (xproj,)
        hs = []
        for t in range(steps):
            with tg.scope(t=t):
                with tg.scope(part="input projection"):
                    x_t = tg.reshape(xs[t], xproj.shape[1:])
                h, c = self.primitive_cell(x_t, h, c, w_hh, b_hh)
            hs.append(h)
        return hs, h, c


class RNN(Recurrent):
    """Elman RNN with tanh: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)."""

    cell, gates, torch_name = "rnn", 1, "RNN"
    kept_per_step = 1  # h_t (tanh' = 1 - h^2)
    fused_step = cells.RNNStep
    primitive_cell = staticmethod(primitive_cells.rnn_cell)


class LSTM(Recurrent):
    """LSTM with PyTorch's equations and gate order (i, f, g, o)."""

    cell, gates, has_cell_state, torch_name = "lstm", 4, True, "LSTM"
    blocks = ("input gate", "forget gate", "cell candidate", "output gate")
    kept_per_step = 6  # the 4 gate activations, c_t, h_t
    fused_step = cells.LSTMStep
    primitive_cell = staticmethod(primitive_cells.lstm_cell)


class CIFG(Recurrent):
    """Coupled input-forget gate LSTM (Greff et al. 2015): f = 1 - i; gates (i, g, o)."""

    cell, gates, has_cell_state = "cifg", 3, True
    blocks = ("input gate", "cell candidate", "output gate")
    kept_per_step = 5  # the 3 gate activations, c_t, h_t
    fused_step = cells.CIFGStep
    primitive_cell = staticmethod(primitive_cells.cifg_cell)


class GRU(Recurrent):
    """GRU with PyTorch's equations and gate order (r, z, n)."""

    cell, gates, torch_name = "gru", 3, "GRU"
    blocks = ("reset gate", "update gate", "candidate")
    kept_per_step = 5  # the 3 gate activations, h W_hn^T + b_hn (which dr needs), h_t
    separate_recurrent_bias = True  # the reset gate scales h W_hn^T + b_hn
    fused_step = cells.GRUStep
    primitive_cell = staticmethod(primitive_cells.gru_cell)


CELLS: dict[str, type[Recurrent]] = {c.cell: c for c in (RNN, LSTM, CIFG, GRU)}


def detach_state(state: Any) -> Any:
    """The same arrays cut from the graph: truncated BPTT carries the final state into the next batch."""
    if state is None:
        return None
    if isinstance(state, tg.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)
