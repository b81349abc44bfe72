"""Fused recurrent step ops: one graph node per cell per time step, with a hand-derived backward.

A layer call creates one ``Sequence`` (the buffers its T steps share) and T step ops.  Step t
reads the input projection of all steps ``xproj`` (T, B, G*H), computed before the loop in one
GEMM, and the recurrent weight; it writes its activations into the sequence's buffers, so the
forward allocates nothing per step and backward finds what it needs in place.

Backward, walked from step T-1 down to 0, writes each step's pre-activation gradients into one
(T, B, G*H) array and returns only dh_prev (and dc_prev).  Step 0, the last step walked, then
hands over the gradients of the whole sequence at once: d xproj is that array, and
dW_hh = sum_t dA_t^T h_{t-1} becomes ONE GEMM over all T*B rows instead of T thin ones.
Step 0 is always walked when any step is: every later step passes a gradient to its h_prev.

Gate math lives in plain functions over NumPy arrays (``*_pointwise_*``); on CuPy the same
step ops call one fused elementwise kernel per step instead (``models.cuda_kernels``).
Gate orders follow PyTorch: LSTM (i, f, g, o), GRU (r, z, n); CIFG (i, g, o) with f = 1 - i.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinygraph.backend import get_array_module
from tinygraph.op import Op


def _sigmoid_(a: Any) -> None:
    """In place, overflow-free: sigmoid(x) = 0.5 * tanh(0.5 x) + 0.5."""
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5


def _cuda() -> Any:
    from models import cuda_kernels

    return cuda_kernels


class Sequence:
    """Buffers shared by the T step ops of one layer call (time-major, step t at index t)."""

    def __init__(self, xproj: Any, h0: Any, hidden: int, gates: int, cell_state: Any = None):
        xp = get_array_module(xproj)
        steps, batch, _ = xproj.shape
        dtype = xproj.dtype
        self.xp, self.steps, self.hidden = xp, steps, hidden
        self.gpu = xp is not np
        # hs[t] is h_{t-1}: the input of step t and, as hs[1:], the output of the layer
        self.hs = xp.empty((steps + 1, batch, hidden), dtype=dtype)
        self.hs[0] = h0
        self.acts = xp.empty((steps, batch, gates * hidden), dtype=dtype)
        if cell_state is not None:
            self.cs = xp.empty((steps + 1, batch, hidden), dtype=dtype)
            self.cs[0] = cell_state
            self.tcs = xp.empty((steps, batch, hidden), dtype=dtype)  # tanh(c_t), reused by backward
        self.d_pre: Any = None  # (T, B, G*H) pre-activation gradients, made by the first step walked

    def grad_buffer(self) -> Any:
        if self.d_pre is None:
            self.d_pre = self.xp.zeros_like(self.acts)
        return self.d_pre

    def take_grad_buffer(self) -> Any:
        """The filled gradient array, detached from the sequence (a kept graph may walk again)."""
        d, self.d_pre = self.grad_buffer(), None
        return d

    def weight_grad(self, d_rec: Any) -> Any:
        """dW_hh = sum over steps of dA_t^T h_{t-1}: one GEMM with T*B as the inner dimension."""
        g = d_rec.shape[-1]
        return d_rec.reshape(-1, g).T @ self.hs[:-1].reshape(-1, self.hidden)


class _Step(Op):
    """Step t of a sequence; subclasses set ``name`` and the math."""

    def __init__(self, seq: Sequence, t: int):
        self.seq, self.t = seq, t

    def describe(self) -> str:
        return f"t={self.t}"


# --- RNN: h = tanh(x W_ih^T + b_ih + h_prev W_hh^T + b_hh) -------------------------------------------


class RNNStep(_Step):
    name = "rnn_step"

    def forward(self, xproj: Any, h_prev: Any, w_hh: Any) -> Any:
        s, t = self.seq, self.t
        h = s.hs[t + 1]
        s.xp.matmul(h_prev, w_hh.T, out=h)
        h += xproj[t]
        s.xp.tanh(h, out=h)
        self.w_hh = w_hh
        return h

    def backward(self, gh: Any) -> tuple[Any, ...]:
        s, t = self.seq, self.t
        da = s.grad_buffer()[t]
        h = s.hs[t + 1]
        s.xp.multiply(h, h, out=da)
        s.xp.subtract(1.0, da, out=da)
        da *= gh
        dh_prev = da @ self.w_hh if self.needs_input_grad[1] else None
        if t:
            return None, dh_prev, None
        d = s.take_grad_buffer()
        return d, dh_prev, s.weight_grad(d)


# --- LSTM -------------------------------------------------------------------------------------------


def lstm_pointwise_forward(a: Any, c_prev: Any, c: Any, tc: Any, h: Any) -> None:
    """Pre-activations a (B, 4H) -> activated in place; c, tanh(c) and h written."""
    n = a.shape[1] // 4
    _sigmoid_(a[:, : 2 * n])
    np.tanh(a[:, 2 * n : 3 * n], out=a[:, 2 * n : 3 * n])
    _sigmoid_(a[:, 3 * n :])
    i, f, g, o = a[:, :n], a[:, n : 2 * n], a[:, 2 * n : 3 * n], a[:, 3 * n :]
    np.multiply(f, c_prev, out=c)
    c += i * g
    np.tanh(c, out=tc)
    np.multiply(o, tc, out=h)


def lstm_pointwise_backward(a: Any, c_prev: Any, tc: Any, gh: Any, gc: Any, da: Any) -> Any:
    """Activations a, dL/dh and dL/dc of the step -> pre-activation grads in da; returns dL/dc_prev."""
    n = a.shape[1] // 4
    i, f, g, o = a[:, :n], a[:, n : 2 * n], a[:, 2 * n : 3 * n], a[:, 3 * n :]
    di, df, dg, do = da[:, :n], da[:, n : 2 * n], da[:, 2 * n : 3 * n], da[:, 3 * n :]
    # dc = gc + gh * o * (1 - tanh(c)^2): the cell gradient from both of the step's outputs
    dc = tc * tc
    np.subtract(1.0, dc, out=dc)
    dc *= o
    dc *= gh
    dc += gc
    scratch = np.subtract(1.0, o)
    np.multiply(gh, tc, out=do)
    do *= o
    do *= scratch  # o' = o (1 - o)
    np.subtract(1.0, i, out=scratch)
    np.multiply(dc, g, out=di)
    di *= i
    di *= scratch
    np.subtract(1.0, f, out=scratch)
    np.multiply(dc, c_prev, out=df)
    df *= f
    df *= scratch
    np.multiply(g, g, out=scratch)
    np.subtract(1.0, scratch, out=scratch)
    scratch *= i
    np.multiply(dc, scratch, out=dg)
    dc *= f
    return dc


class LSTMStep(_Step):
    name = "lstm_step"

    def forward(self, xproj: Any, h_prev: Any, c_prev: Any, w_hh: Any) -> tuple[Any, Any]:
        s, t = self.seq, self.t
        a, c, tc, h = s.acts[t], s.cs[t + 1], s.tcs[t], s.hs[t + 1]
        s.xp.matmul(h_prev, w_hh.T, out=a)
        if s.gpu:
            _cuda().lstm_forward(a, xproj[t], c_prev, c, tc, h)
        else:
            a += xproj[t]
            lstm_pointwise_forward(a, c_prev, c, tc, h)
        self.w_hh = w_hh
        return h, c

    def backward(self, gh: Any, gc: Any) -> tuple[Any, ...]:
        s, t = self.seq, self.t
        da = s.grad_buffer()[t]
        if s.gpu:
            dc_prev = _cuda().lstm_backward(s.acts[t], s.cs[t], s.tcs[t], gh, gc, da)
        else:
            dc_prev = lstm_pointwise_backward(s.acts[t], s.cs[t], s.tcs[t], gh, gc, da)
        dh_prev = da @ self.w_hh if self.needs_input_grad[1] else None
        if t:
            return None, dh_prev, dc_prev, None
        d = s.take_grad_buffer()
        return d, dh_prev, dc_prev, s.weight_grad(d)


# --- CIFG-LSTM: the forget gate coupled to the input gate, f = 1 - i --------------------------------


def cifg_pointwise_forward(a: Any, c_prev: Any, c: Any, tc: Any, h: Any) -> None:
    """Pre-activations a (B, 3H) in gate order (i, g, o); c = c_prev + i (g - c_prev)."""
    n = a.shape[1] // 3
    _sigmoid_(a[:, :n])
    np.tanh(a[:, n : 2 * n], out=a[:, n : 2 * n])
    _sigmoid_(a[:, 2 * n :])
    i, g, o = a[:, :n], a[:, n : 2 * n], a[:, 2 * n :]
    np.subtract(g, c_prev, out=c)
    c *= i
    c += c_prev
    np.tanh(c, out=tc)
    np.multiply(o, tc, out=h)


def cifg_pointwise_backward(a: Any, c_prev: Any, tc: Any, gh: Any, gc: Any, da: Any) -> Any:
    n = a.shape[1] // 3
    i, g, o = a[:, :n], a[:, n : 2 * n], a[:, 2 * n :]
    di, dg, do = da[:, :n], da[:, n : 2 * n], da[:, 2 * n :]
    dc = tc * tc
    np.subtract(1.0, dc, out=dc)
    dc *= o
    dc *= gh
    dc += gc
    scratch = np.subtract(1.0, o)
    np.multiply(gh, tc, out=do)
    do *= o
    do *= scratch
    # dc/di = g - c_prev (through both i g and the coupled forget gate (1 - i) c_prev)
    np.subtract(g, c_prev, out=di)
    di *= dc
    np.subtract(1.0, i, out=scratch)
    di *= i
    di *= scratch
    np.multiply(g, g, out=dg)
    np.subtract(1.0, dg, out=dg)
    dg *= i
    dg *= dc
    dc *= scratch  # dc_prev = dc * f = dc * (1 - i)
    return dc


class CIFGStep(LSTMStep):
    name = "cifg_step"

    def forward(self, xproj: Any, h_prev: Any, c_prev: Any, w_hh: Any) -> tuple[Any, Any]:
        s, t = self.seq, self.t
        a, c, tc, h = s.acts[t], s.cs[t + 1], s.tcs[t], s.hs[t + 1]
        s.xp.matmul(h_prev, w_hh.T, out=a)
        if s.gpu:
            _cuda().cifg_forward(a, xproj[t], c_prev, c, tc, h)
        else:
            a += xproj[t]
            cifg_pointwise_forward(a, c_prev, c, tc, h)
        self.w_hh = w_hh
        return h, c

    def backward(self, gh: Any, gc: Any) -> tuple[Any, ...]:
        s, t = self.seq, self.t
        da = s.grad_buffer()[t]
        if s.gpu:
            dc_prev = _cuda().cifg_backward(s.acts[t], s.cs[t], s.tcs[t], gh, gc, da)
        else:
            dc_prev = cifg_pointwise_backward(s.acts[t], s.cs[t], s.tcs[t], gh, gc, da)
        dh_prev = da @ self.w_hh if self.needs_input_grad[1] else None
        if t:
            return None, dh_prev, dc_prev, None
        d = s.take_grad_buffer()
        return d, dh_prev, dc_prev, s.weight_grad(d)


# --- GRU: r, z from x and h; n = tanh(x_n + r * (h W_hn^T + b_hn)); h = (1 - z) n + z h_prev ----------


class GRUSequence(Sequence):
    """A GRU also keeps the recurrent pre-activations A = h W_hh^T + b_hh, and two gradient arrays:
    d xproj and dA differ in the candidate part (dA_n = dx_n * r)."""

    def __init__(self, xproj: Any, h0: Any, hidden: int):
        super().__init__(xproj, h0, hidden, 3)
        self.rec = self.xp.empty_like(self.acts)
        self.d_rec: Any = None

    def rec_grad_buffer(self) -> Any:
        if self.d_rec is None:
            self.d_rec = self.xp.zeros_like(self.acts)
        return self.d_rec

    def take_rec_grad_buffer(self) -> Any:
        d, self.d_rec = self.rec_grad_buffer(), None
        return d


def gru_pointwise_forward(x: Any, rec: Any, a: Any, h_prev: Any, h: Any) -> None:
    """x = x_t W_ih^T + b_ih, rec = h_prev W_hh^T + b_hh (B, 3H) -> a = (r, z, n) and h."""
    n_ = a.shape[1] // 3
    np.add(x[:, : 2 * n_], rec[:, : 2 * n_], out=a[:, : 2 * n_])
    _sigmoid_(a[:, : 2 * n_])
    r, z, n = a[:, :n_], a[:, n_ : 2 * n_], a[:, 2 * n_ :]
    np.multiply(r, rec[:, 2 * n_ :], out=n)
    n += x[:, 2 * n_ :]
    np.tanh(n, out=n)
    # h = n + z (h_prev - n)
    np.subtract(h_prev, n, out=h)
    h *= z
    h += n


def gru_pointwise_backward(a: Any, rec: Any, h_prev: Any, gh: Any, dx: Any, drec: Any) -> Any:
    """dL/dh -> d xproj_t in dx, dA_t in drec; returns the direct part gh * z of dL/dh_prev."""
    n_ = a.shape[1] // 3
    r, z, n = a[:, :n_], a[:, n_ : 2 * n_], a[:, 2 * n_ :]
    dr, dz, dn = dx[:, :n_], dx[:, n_ : 2 * n_], dx[:, 2 * n_ :]
    # dn_pre = gh (1 - z) (1 - n^2)
    np.multiply(n, n, out=dn)
    np.subtract(1.0, dn, out=dn)
    scratch = np.subtract(1.0, z)
    dn *= scratch
    dn *= gh
    # dz_pre = gh (h_prev - n) z (1 - z)
    np.subtract(h_prev, n, out=dz)
    dz *= gh
    dz *= z
    dz *= scratch
    # dr_pre = dn_pre A_n r (1 - r)
    np.multiply(dn, rec[:, 2 * n_ :], out=dr)
    dr *= r
    np.subtract(1.0, r, out=scratch)
    dr *= scratch
    drec[:, : 2 * n_] = dx[:, : 2 * n_]
    np.multiply(dn, r, out=drec[:, 2 * n_ :])
    return gh * z


class GRUStep(_Step):
    name = "gru_step"
    seq: GRUSequence

    def forward(self, xproj: Any, h_prev: Any, w_hh: Any, b_hh: Any) -> Any:
        s, t = self.seq, self.t
        rec, a, h = s.rec[t], s.acts[t], s.hs[t + 1]
        s.xp.matmul(h_prev, w_hh.T, out=rec)
        rec += b_hh
        if s.gpu:
            _cuda().gru_forward(xproj[t], rec, a, h_prev, h)
        else:
            gru_pointwise_forward(xproj[t], rec, a, h_prev, h)
        self.w_hh = w_hh
        return h

    def backward(self, gh: Any) -> tuple[Any, ...]:
        s, t = self.seq, self.t
        dx, drec = s.grad_buffer()[t], s.rec_grad_buffer()[t]
        if s.gpu:
            dh_direct = _cuda().gru_backward(s.acts[t], s.rec[t], s.hs[t], gh, dx, drec)
        else:
            dh_direct = gru_pointwise_backward(s.acts[t], s.rec[t], s.hs[t], gh, dx, drec)
        dh_prev = None
        if self.needs_input_grad[1]:
            dh_prev = drec @ self.w_hh
            dh_prev += dh_direct
        if t:
            return None, dh_prev, None, None
        d_rec = s.take_rec_grad_buffer()
        return s.take_grad_buffer(), dh_prev, s.weight_grad(d_rec), d_rec.sum(axis=(0, 1))
