"""Fused recurrent step ops: one graph node per cell per time step, with a hand-derived backward.

A layer call creates one sequence object (the buffers its T steps share) and T step ops.  Step t
reads the input projection of all steps ``xproj`` (T, B, G*H), computed before the loop in one
GEMM, and the recurrent weight; it writes its results into the sequence's buffers, so the forward
allocates nothing per step and backward finds what it needs in place.

Backward, walked from step T-1 down to 0, writes each step's pre-activation gradients into one
(T, B, G*H) array and returns only dh_prev (and dc_prev).  Step 0, the last step walked, then
hands over the gradients of the whole sequence at once: d xproj is that array, and
dW_hh = sum_t dA_t^T h_{t-1} becomes ONE GEMM over all T*B rows instead of T thin ones.
Step 0 is always walked when any step is: every later step passes a gradient to its h_prev.

Memory (NumPy): the input projection is consumed in place.  Step t reads x_t once, so it writes
what backward needs over it -- the gate activations (LSTM, CIFG, GRU) or h_t itself (RNN) -- and,
when the walk says it releases the graph (``Op.may_overwrite_saved``, set by the walk only when
``keep_graph`` is False), backward writes the step's pre-activation gradients over the activations
it has just read.  Called any other way, backward leaves what forward saved intact, so a kept
graph can be walked again with the same result.  One
(T, B, G*H) array thus serves as x W_ih^T, as the activations and as their gradients, and a step
keeps little beyond what BPTT must (docs/bench_cpu.md counts it).  The large buffers come from
``tinygraph.ops.workspace``, so the next training step finds them without page faults.

Gate math lives in plain functions over NumPy arrays (``*_pointwise_*``), the readable reference.
Where numba is installed, their compiled twins (``models.numba_kernels``, 3-6x faster) run instead
by default: ``set_gate_math("numpy")`` or ``TINYGRAPH_GATE_MATH=numpy`` picks the reference (a
sequence keeps the choice made when it was created).  On CuPy the same step ops call one fused
elementwise kernel per step instead (``models.cuda_kernels``) and keep their activations and
gradients in buffers of their own.  Gate orders follow PyTorch: LSTM (i, f, g, o),
GRU (r, z, n); CIFG (i, g, o) with f = 1 - i.

Why the NumPy gate math looks the way it does (measured on a 2-core x86 CPU, float32, B = 32): exp
is the one transcendental worth calling (about 2.2 ns an element; tanh 3.6; on other CPUs the two
are closer, see docs/bench_cpu.md), and an op on a gate's (B, H) column block of a (B, G*H) row
costs two to three times an op on the contiguous whole.  So every sigmoid AND the candidate's tanh
of a step come from ONE pass of the framework's sigmoid (``tinygraph.ops.sigmoid``, one exp)
over the whole gate block, with tanh(x) = 2 sigmoid(2x) - 1.  Pre-activations are always held as
they are (one sign convention on both backends).  Backward multiplies whole blocks --
the gates' local derivatives and what each gate's output is multiplied with -- instead of three
column-block ops per gate.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import numpy as np

from models import numba_kernels
from tinygraph import compiled
from tinygraph.backend import get_array_module
from tinygraph.errors import TinygraphError
from tinygraph.op import Op
from tinygraph.ops import sigmoid, workspace


def _cuda() -> Any:
    from models import cuda_kernels

    return cuda_kernels


# --- gate math shared by the cells ---------------------------------------------------------------------


def _gates_(a: Any, tanh_cols: slice | None) -> None:
    """In place: pre-activations a -> sigmoid(a), and tanh(a) in ``tanh_cols``, from one exp pass.

    tanh(x) = 2 sigmoid(2x) - 1, so the tanh block is doubled, goes through the same sigmoid as
    the gates, and is mapped back.
    """
    if tanh_cols is not None:
        a[:, tanh_cols] *= 2.0
    sigmoid(a, out=a)
    if tanh_cols is not None:
        g = a[:, tanh_cols]
        g *= 2.0
        g -= 1.0


def _local_derivatives(a: Any, out: Any, tanh_cols: slice, tmp: Any = None) -> None:
    """s (1 - s) of sigmoid activations s, and 1 - g^2 of the tanh ones in ``tanh_cols``, into out
    (which may be a itself: every element is read before it is written); tmp is scratch like a."""
    g = a[:, tanh_cols]
    keep = np.multiply(g, g)
    np.subtract(1.0, keep, out=keep)
    one_minus = np.subtract(1.0, a, out=tmp)
    np.multiply(one_minus, a, out=out)
    np.copyto(out[:, tanh_cols], keep)


# --- the sequence: buffers one layer call shares among its steps ------------------------------------


class Sequence:
    """Buffers shared by the T step ops of one RNN, LSTM or CIFG layer call (time-major).

    ``hs[t]`` is h_{t-1}, the input of step t, and ``hs[1:]`` the layer's output (for the RNN,
    ``hs[1:]`` is the input projection's own array, written over step by step).
    """

    def __init__(self, xproj: Any, h0: Any, hidden: int, gates: int, cell: str, cell_state: Any = None):
        xp = get_array_module(xproj)
        steps, batch, width = xproj.shape
        dtype = xproj.dtype
        self.xp, self.steps, self.batch, self.hidden, self.dtype = xp, steps, batch, hidden, dtype
        self.gpu = xp is not np
        # the CPU gate math of this cell, NumPy's or numba's, looked up once here rather than per step
        math = _GATE_MATHS[_gate_math]
        self.gate_forward = getattr(math, f"{cell}_pointwise_forward")
        self.gate_backward = getattr(math, f"{cell}_pointwise_backward")
        self.xproj = xproj
        self.h0 = h0
        if gates == 1:  # RNN: h_t is written over x_t
            self.acts = None
            self.outs = xproj
        else:
            self.hs = workspace.empty((steps + 1, batch, hidden), dtype, xp)
            self.hs[0] = h0
            # on the CPU the activations go over the input projection; the CUDA kernels want their own
            self.acts = workspace.empty(xproj.shape, dtype, xp) if self.gpu else xproj
        if cell_state is not None:
            self.cs = workspace.empty((steps + 1, batch, hidden), dtype, xp)
            self.cs[0] = cell_state
            self.tcs = workspace.empty((steps, batch, hidden), dtype, xp)  # tanh(c_t), reused by backward
        self.work = workspace.empty((batch, width), dtype, xp)  # the recurrent GEMM's product, per step
        # whether back_through_w_hh takes the transposed product: B <= 32 and W_hh (G*H x H) of 32K
        # elements or more, on the CPU
        self.transposed_backward = not self.gpu and batch <= 32 and width * hidden >= 32768
        self.d_pre: Any = None  # (T, B, G*H) pre-activation gradients, made by the first step walked
        self.scratch: Any = None
        self._w_t: Any = None

    # --- forward ---
    def recurrent_weight(self, w_hh: Any, t: int) -> Any:
        """W_hh^T (H, G*H) in row-major order, made once for the sequence's steps.

        The per-step GEMM h_prev W_hh^T is thin (B rows): OpenBLAS runs it 20-30% faster with its
        right operand row-major than as the transposed view ``w_hh.T`` (2-core x86, B = 32, H =
        128 to 512).
        """
        w = self._w_t
        if w is None:
            w = self._w_t = self.xp.empty(w_hh.T.shape, dtype=w_hh.dtype)  # a copy even where w_hh.T is C-ordered
            compiled.transpose_into(w, w_hh)
        if t == self.steps - 1 and not self.transposed_backward:
            self._w_t = None  # backward multiplies by W_hh itself
        return w

    # --- backward ---
    def back_through_w_hh(self, d: Any, w_hh: Any) -> Any:
        """d W_hh, (B, G*H) -> (B, H): the recurrent part of dL/dh_{t-1}.

        For B <= 32 and a W_hh of 32K elements or more, on the CPU, as (W_hh^T d^T)^T, a transposed
        view: OpenBLAS splits that product over its two threads better (measured on a 2-core x86, B
        = 32: 17-30% faster for H = 128 to 512; slower at B = 64, and for a smaller W_hh).
        """
        if not self.transposed_backward:
            return d @ w_hh
        w_t = self._w_t if self._w_t is not None else w_hh.T  # W_hh^T row-major, kept from forward
        out = np.empty((self.hidden, self.batch), dtype=self.dtype)
        np.matmul(w_t, d.T, out=out)
        return out.T

    def _new_grad(self, t: int, shape: tuple[int, ...], reuse: Any = None) -> Any:
        # Steps walked are always 0..t (each hands a gradient to its predecessor) and each fills
        # its own slot, so only the slots after t, of steps no gradient reached, need zeros.
        # ``reuse``: an array forward saved, given only when the walk lets it be overwritten.
        if reuse is not None and not self.gpu:
            d = reuse  # what step s needs is read before its gradient goes over it
        else:
            d = workspace.empty(shape, self.dtype, self.xp)
        d[t + 1 :] = 0
        return d

    def grad_buffer(self, t: int, overwrite: bool) -> Any:
        """Slot t of the pre-activation gradients (the first call, from the last step walked, makes them).

        ``overwrite``: the walk releases the graph, so the gradients may go over the activations.
        """
        if self.d_pre is None:
            self.d_pre = self._new_grad(t, self.xproj.shape, self.acts if overwrite else None)
        return self.d_pre[t]

    def take_grad_buffer(self) -> Any:
        """The filled gradient array, detached from the sequence (a kept graph may walk again)."""
        d, self.d_pre = self.d_pre, None
        self.scratch = None
        return d

    def backward_scratch(self) -> tuple[Any, Any]:
        if self.scratch is None:
            shape = self.work.shape
            self.scratch = (workspace.empty(shape, self.dtype, self.xp), workspace.empty(shape, self.dtype, self.xp))
        return self.scratch

    def weight_grad(self, d_rec: Any) -> Any:
        """dW_hh = sum over steps of dA_t^T h_{t-1}: one GEMM with T*B as the inner dimension."""
        g, h = d_rec.shape[-1], self.hidden
        if self.acts is not None:
            return d_rec.reshape(-1, g).T @ self.hs[:-1].reshape(-1, h)
        # RNN: h_{t-1} is outs[t-1] for t >= 1 and h0 for t = 0
        dw = d_rec[0].T @ self.h0
        if self.steps > 1:
            dw += d_rec[1:].reshape(-1, g).T @ self.outs[:-1].reshape(-1, h)
        return dw


class Step(Op):
    """Step t of a sequence; subclasses set ``name``, ``cell`` (which names their gate functions and
    CUDA kernels), the inputs they take and the math.

    ``apply`` is the one signature the time loop calls for every cell: (x, h, c, w_hh, b_hh) ->
    (h, c), with c None for cells without a cell state; each step op takes only what it uses.
    """

    def __init__(self, seq: Any, t: int):
        self.seq, self.t = seq, t

    @classmethod
    def sequence(cls, xproj: Any, h0: Any, c0: Any, hidden: int) -> Sequence:
        """The buffers one layer call's steps share (raw arrays: x W_ih^T + b (T, B, G*H), h0, c0)."""
        gates = xproj.shape[-1] // hidden
        return Sequence(xproj, h0, hidden, gates, cls.cell, c0)

    @classmethod
    def apply(cls, seq: Sequence, t: int, x: Any, h: Any, c: Any, w_hh: Any, b_hh: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"t={self.t}"


# --- RNN: h = tanh(x W_ih^T + b_ih + h_prev W_hh^T + b_hh) -------------------------------------------


class RNNStep(Step):
    name = "rnn_step"
    cell = "rnn"

    @classmethod
    def apply(cls, seq: Sequence, t: int, x: Any, h: Any, c: Any, w_hh: Any, b_hh: Any) -> tuple[Any, Any]:
        return cls(seq, t)(x, h, w_hh), None

    def forward(self, xproj: Any, h_prev: Any, w_hh: Any) -> Any:
        s, t = self.seq, self.t
        h = s.outs[t]  # holds x_t until the tanh goes over it
        s.xp.matmul(h_prev, s.recurrent_weight(w_hh, t), out=s.work)
        if s.gpu:
            h += s.work
            s.xp.tanh(h, out=h)
        else:
            s.gate_forward(h, s.work)
        self.w_hh = w_hh
        return h

    def backward(self, gh: Any) -> tuple[Any, ...]:
        s, t = self.seq, self.t
        da = s.grad_buffer(t, self.may_overwrite_saved)
        h = s.outs[t]
        if s.gpu:
            s.xp.multiply(h, h, out=da)
            s.xp.subtract(1.0, da, out=da)
            da *= gh
        else:
            s.gate_backward(h, gh, da)
        dh_prev = s.back_through_w_hh(da, self.w_hh) if self.needs_input_grad[1] else None
        if t:
            return None, dh_prev, None
        d = s.take_grad_buffer()
        return d, dh_prev, s.weight_grad(d)


def rnn_pointwise_forward(h: Any, work: Any) -> None:
    """h = tanh(h + work) in place: h holds x_t, work the recurrent GEMM's product."""
    h += work
    np.tanh(h, out=h)


def rnn_pointwise_backward(h: Any, gh: Any, da: Any) -> None:
    """da = (1 - h^2) gh, the pre-activation gradient of h = tanh(.)."""
    np.multiply(h, h, out=da)
    np.subtract(1.0, da, out=da)
    da *= gh


# --- LSTM -------------------------------------------------------------------------------------------


def lstm_pointwise_forward(a: Any, c_prev: Any, c: Any, tc: Any, h: Any) -> None:
    """Pre-activations a (B, 4H) -> activated in place; c, tanh(c) and h written."""
    n = a.shape[1] // 4
    _gates_(a, slice(2 * n, 3 * n))
    i, f, g, o = a[:, :n], a[:, n : 2 * n], a[:, 2 * n : 3 * n], a[:, 3 * n :]
    np.multiply(f, c_prev, out=c)
    np.multiply(i, g, out=tc)  # tc is free until tanh(c) goes there
    c += tc
    np.tanh(c, out=tc)
    np.multiply(o, tc, out=h)


def lstm_pointwise_backward(
    a: Any, c_prev: Any, tc: Any, gh: Any, gc: Any, da: Any, scratch: tuple[Any, Any] | None = None
) -> Any:
    """Activations a, dL/dh and dL/dc of the step -> pre-activation grads in da; returns dL/dc_prev.

    da = (local derivative of each gate) * (what multiplies that gate's output), both as whole
    (B, 4H) blocks: [i', f', g', o'] * [dc g, dc c_prev, dc i, gh tanh(c)].  da may be a itself.
    """
    n = a.shape[1] // 4
    i, f, g, o = a[:, :n], a[:, n : 2 * n], a[:, 2 * n : 3 * n], a[:, 3 * n :]
    m = np.empty_like(a) if scratch is None else scratch[0]
    # dc = gc + gh * o * (1 - tanh(c)^2): the cell gradient from both of the step's outputs
    dc = np.multiply(tc, tc)
    np.subtract(1.0, dc, out=dc)
    dc *= o
    dc *= gh
    dc += gc
    np.multiply(dc, g, out=m[:, :n])
    np.multiply(dc, c_prev, out=m[:, n : 2 * n])
    np.multiply(dc, i, out=m[:, 2 * n : 3 * n])
    np.multiply(gh, tc, out=m[:, 3 * n :])
    dc *= f
    _local_derivatives(a, da, slice(2 * n, 3 * n), None if scratch is None else scratch[1])
    da *= m
    return dc


class LSTMStep(Step):
    """One LSTM step; CIFG reuses it with its own gate math (its ``cell``)."""

    name = "lstm_step"
    cell = "lstm"

    @classmethod
    def apply(cls, seq: Sequence, t: int, x: Any, h: Any, c: Any, w_hh: Any, b_hh: Any) -> tuple[Any, Any]:
        return cls(seq, t)(x, h, c, w_hh)

    def forward(self, xproj: Any, h_prev: Any, c_prev: Any, w_hh: Any) -> tuple[Any, Any]:
        s, t = self.seq, self.t
        a, c, tc, h = s.acts[t], s.cs[t + 1], s.tcs[t], s.hs[t + 1]
        if s.gpu:
            s.xp.matmul(h_prev, s.recurrent_weight(w_hh, t), out=a)
            getattr(_cuda(), f"{self.cell}_forward")(a, xproj[t], c_prev, c, tc, h)
        else:
            np.matmul(h_prev, s.recurrent_weight(w_hh, t), out=s.work)
            a += s.work  # a held x_t: now x_t + h_prev W_hh^T
            s.gate_forward(a, c_prev, c, tc, h)
        self.w_hh = w_hh
        return h, c

    def backward(self, gh: Any, gc: Any) -> tuple[Any, ...]:
        s, t = self.seq, self.t
        da = s.grad_buffer(t, self.may_overwrite_saved)
        if s.gpu:
            dc_prev = getattr(_cuda(), f"{self.cell}_backward")(s.acts[t], s.cs[t], s.tcs[t], gh, gc, da)
        else:
            dc_prev = s.gate_backward(s.acts[t], s.cs[t], s.tcs[t], gh, gc, da, s.backward_scratch())
        dh_prev = s.back_through_w_hh(da, self.w_hh) if self.needs_input_grad[1] else None
        if t:
            return None, dh_prev, dc_prev, None
        d = s.take_grad_buffer()
        return d, dh_prev, dc_prev, s.weight_grad(d)


# --- CIFG-LSTM: the forget gate coupled to the input gate, f = 1 - i --------------------------------


def cifg_pointwise_forward(a: Any, c_prev: Any, c: Any, tc: Any, h: Any) -> None:
    """Pre-activations a (B, 3H) in gate order (i, g, o); c = c_prev + i (g - c_prev)."""
    n = a.shape[1] // 3
    _gates_(a, slice(n, 2 * n))
    i, g, o = a[:, :n], a[:, n : 2 * n], a[:, 2 * n :]
    np.subtract(g, c_prev, out=c)
    c *= i
    c += c_prev
    np.tanh(c, out=tc)
    np.multiply(o, tc, out=h)


def cifg_pointwise_backward(
    a: Any, c_prev: Any, tc: Any, gh: Any, gc: Any, da: Any, scratch: tuple[Any, Any] | None = None
) -> Any:
    """As the LSTM's, with [i', g', o'] * [dc (g - c_prev), dc i, gh tanh(c)] and dc_prev = dc (1 - i)."""
    n = a.shape[1] // 3
    i, g, o = a[:, :n], a[:, n : 2 * n], a[:, 2 * n :]
    m = np.empty_like(a) if scratch is None else scratch[0]
    dc = np.multiply(tc, tc)
    np.subtract(1.0, dc, out=dc)
    dc *= o
    dc *= gh
    dc += gc
    # dc/di = g - c_prev (through both i g and the coupled forget gate (1 - i) c_prev)
    mi = m[:, :n]
    np.subtract(g, c_prev, out=mi)
    mi *= dc
    np.multiply(dc, i, out=m[:, n : 2 * n])
    np.multiply(gh, tc, out=m[:, 2 * n :])
    f = np.subtract(1.0, i)
    dc *= f  # dc_prev = dc * f = dc * (1 - i)
    _local_derivatives(a, da, slice(n, 2 * n), None if scratch is None else scratch[1])
    da *= m
    return dc


class CIFGStep(LSTMStep):
    name = "cifg_step"
    cell = "cifg"


# --- GRU: r, z from x and h; n = tanh(x_n + r * (h W_hn^T + b_hn)); h = (1 - z) n + z h_prev ----------


class GRUSequence(Sequence):
    """A GRU also needs, in backward, the candidate's recurrent term A_n = h W_hn^T + b_hn, and
    the recurrent pre-activations' gradients dA, which differ from d xproj in the candidate part
    (dA_n = dx_n * r).

    On the CPU only A_n is kept, (T, B, H), and dA_n; a step's whole (B, 3H) A and dA live in
    per-step scratch.  The CUDA kernels take whole (T, B, 3H) rows of both.
    """

    def __init__(self, xproj: Any, h0: Any, hidden: int):
        super().__init__(xproj, h0, hidden, 3, "gru")
        shape = (self.steps, self.batch, hidden if not self.gpu else 3 * hidden)
        self.rec = workspace.empty(shape, self.dtype, self.xp)
        self.d_rec: Any = None
        # the step adds its direct part into dL/dh_{t-1}; into a transposed view that add cost more
        # than the transposed GEMM saved (M GRU: 0.6-1.9 ms a training step slower)
        self.transposed_backward = False

    def rec_grad_buffer(self, t: int, overwrite: bool) -> Any:
        if self.d_rec is None:
            self.d_rec = self._new_grad(t, self.rec.shape, self.rec if overwrite else None)
        return self.d_rec[t]

    def take_rec_grad_buffer(self) -> Any:
        d, self.d_rec = self.d_rec, None
        return d

    def weight_grads(self, dx: Any, d_rec: Any) -> tuple[Any, Any]:
        """dW_hh and db_hh from d xproj (r, z parts) and dA_n (CPU: kept apart) or dA (GPU)."""
        if self.gpu:
            return self.weight_grad(d_rec), d_rec.sum(axis=(0, 1))
        h, n2 = self.hidden, 2 * self.hidden
        hs = self.hs[:-1].reshape(-1, h)
        dw = np.empty((3 * h, h), dtype=self.dtype)
        np.matmul(dx.reshape(-1, 3 * h)[:, :n2].T, hs, out=dw[:n2])
        np.matmul(d_rec.reshape(-1, h).T, hs, out=dw[n2:])
        db = np.concatenate((dx[..., :n2].sum(axis=(0, 1)), d_rec.sum(axis=(0, 1))))
        return dw, db


def gru_pointwise_forward(x: Any, rec: Any, a: Any, h_prev: Any, h: Any) -> None:
    """x = x_t W_ih^T + b_ih, rec = h_prev W_hh^T + b_hh (B, 3H) -> a = (r, z, n) and h.

    a may be x itself (x is read before each part of a is written); rec is only read.
    """
    n_ = a.shape[1] // 3
    rz = a[:, : 2 * n_]
    np.add(x[:, : 2 * n_], rec[:, : 2 * n_], out=rz)
    _gates_(rz, None)
    r, z, n = a[:, :n_], a[:, n_ : 2 * n_], a[:, 2 * n_ :]
    np.multiply(r, rec[:, 2 * n_ :], out=h)  # h is free until the end
    np.add(x[:, 2 * n_ :], h, out=n)
    np.tanh(n, out=n)
    # h = n + z (h_prev - n)
    np.subtract(h_prev, n, out=h)
    h *= z
    h += n


def gru_pointwise_backward(a: Any, rec: Any, h_prev: Any, gh: Any, dx: Any, drec: Any) -> Any:
    """dL/dh -> d xproj_t in dx, dA_t in drec; returns the direct part gh * z of dL/dh_prev.

    rec may be the whole (B, 3H) A_t or only its candidate part A_n (B, H); dx may be a itself
    (all of a is read, into drec, before dx is written).
    """
    n_ = a.shape[1] // 3
    rec_n = rec[:, 2 * n_ :] if rec.shape[1] == a.shape[1] else rec
    r, z, n = a[:, :n_], a[:, n_ : 2 * n_], a[:, 2 * n_ :]
    dr, dz, dan = drec[:, :n_], drec[:, n_ : 2 * n_], drec[:, 2 * n_ :]
    # dn_pre = gh (1 - z) (1 - n^2)
    ghz = np.subtract(1.0, z)
    ghz *= gh
    dn = np.multiply(n, n)
    np.subtract(1.0, dn, out=dn)
    dn *= ghz
    # dz_pre = gh (h_prev - n) z (1 - z)
    np.subtract(h_prev, n, out=dz)
    dz *= ghz
    dz *= z
    # dr_pre = dn_pre A_n r (1 - r)
    np.multiply(dn, rec_n, out=dr)
    dr *= r
    np.subtract(1.0, r, out=ghz)
    dr *= ghz
    np.multiply(dn, r, out=dan)  # dA_n = dn_pre r
    direct = np.multiply(gh, z, out=ghz)
    np.copyto(dx[:, : 2 * n_], drec[:, : 2 * n_])
    np.copyto(dx[:, 2 * n_ :], dn)
    return direct


class GRUStep(Step):
    name = "gru_step"
    cell = "gru"
    seq: GRUSequence

    @classmethod
    def sequence(cls, xproj: Any, h0: Any, c0: Any, hidden: int) -> GRUSequence:
        return GRUSequence(xproj, h0, hidden)

    @classmethod
    def apply(cls, seq: Sequence, t: int, x: Any, h: Any, c: Any, w_hh: Any, b_hh: Any) -> tuple[Any, Any]:
        return cls(seq, t)(x, h, w_hh, b_hh), None

    def forward(self, xproj: Any, h_prev: Any, w_hh: Any, b_hh: Any) -> Any:
        s, t = self.seq, self.t
        a, h = s.acts[t], s.hs[t + 1]
        if s.gpu:
            rec = s.rec[t]
            s.xp.matmul(h_prev, s.recurrent_weight(w_hh, t), out=rec)
            rec += b_hh
            _cuda().gru_forward(xproj[t], rec, a, h_prev, h)
        else:
            rec = s.work
            np.matmul(h_prev, s.recurrent_weight(w_hh, t), out=rec)
            rec += b_hh
            s.gate_forward(a, rec, a, h_prev, h)  # a held x_t
            np.copyto(s.rec[t], rec[:, 2 * s.hidden :])
        self.w_hh = w_hh
        return h

    def backward(self, gh: Any) -> tuple[Any, ...]:
        s, t = self.seq, self.t
        dx = s.grad_buffer(t, self.may_overwrite_saved)
        if s.gpu:
            drec = s.rec_grad_buffer(t, self.may_overwrite_saved)
            dh_direct = _cuda().gru_backward(s.acts[t], s.rec[t], s.hs[t], gh, dx, drec)
        else:
            drec = s.backward_scratch()[0]
            d_an = s.rec_grad_buffer(t, self.may_overwrite_saved)  # over A_n, read just now, if allowed
            dh_direct = s.gate_backward(s.acts[t], s.rec[t], s.hs[t], gh, dx, drec)
            np.copyto(d_an, drec[:, 2 * s.hidden :])
        dh_prev = None
        if self.needs_input_grad[1]:
            dh_prev = s.back_through_w_hh(drec, self.w_hh)
            dh_prev += dh_direct
        if t:
            return None, dh_prev, None, None
        d_rec = s.take_rec_grad_buffer()
        d = s.take_grad_buffer()
        dw, db = s.weight_grads(d, d_rec)
        return d, dh_prev, dw, db


# --- which gate math runs on the CPU ----------------------------------------------------------------

NUMPY_GATE_MATH = SimpleNamespace(
    **{
        f"{cell}_pointwise_{way}": globals()[f"{cell}_pointwise_{way}"]
        for cell in ("rnn", "lstm", "cifg", "gru")
        for way in ("forward", "backward")
    }
)
_GATE_MATHS: dict[str, Any] = {"numpy": NUMPY_GATE_MATH}
if numba_kernels.available:
    _GATE_MATHS["numba"] = numba_kernels


def gate_maths() -> tuple[str, ...]:
    """The gate-math implementations this machine has, the default first."""
    return tuple(sorted(_GATE_MATHS, key=lambda name: name != "numba"))


def get_gate_math() -> str:
    return _gate_math


def set_gate_math(name: str) -> None:
    """Run the fused cells' CPU gate math with ``name``: "numba" (compiled) or "numpy" (the reference)."""
    global _gate_math
    if name not in ("numba", "numpy"):
        raise GateMathError(f"unknown gate math {name!r}: use 'numba' or 'numpy'")
    if name not in _GATE_MATHS:
        raise GateMathError("gate math 'numba' needs numba: pip install numba (or make, which installs it)")
    _gate_math = name


class GateMathError(TinygraphError):
    """The compiled gate math was asked for where numba is not installed."""


_gate_math = gate_maths()[0]
if os.environ.get("TINYGRAPH_GATE_MATH"):
    set_gate_math(os.environ["TINYGRAPH_GATE_MATH"])
