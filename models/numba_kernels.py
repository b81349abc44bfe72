"""Compiled (numba) twins of the NumPy gate math of the fused recurrent cells in ``models.cells``.

Each public function has the signature and the in-place semantics of its NumPy reference
(``lstm_pointwise_forward`` and so on, ``rnn_pointwise_forward``/``rnn_pointwise_backward`` for
the two lines of ``RNNStep``), so a step op can call either.  ``available`` is False where numba
cannot be imported: the module still imports, ``warm_up`` does nothing, a kernel called anyway
raises, and callers keep the NumPy path.  Kernels compile on first use and are cached on disk
(``cache=True``).

How the kernels are built, and why (measured on a 2-core AVX-512 x86, float32, B = 32, H = 256):

* Contiguous passes.  A loop that stores into one gate block of a row while loading another block
  of the same row cannot be proved free of overlap (the distance, H, is only known at run time),
  so LLVM leaves it scalar.  Every loop here either stores into ``a`` exactly where it loads, or
  stores only into arrays it does not load (which LLVM vectorises behind one run-time overlap
  check).  Where the reference lets an output be an input (``da is a``, ``dx is a``, ``a is x``)
  the kernel detects it and goes through a one-row scratch, or passes the one array in both roles
  so that LLVM sees one pointer.
* No libm in the float32 path: numba's ``math.tanh``/``math.exp`` are scalar calls here (no SVML).
  tanh is an odd rational minimax fit evaluated branch-free (clamp, selects, copysign), so it
  vectorises, and sigmoid(x) = (1 + tanh(x / 2)) / 2 reuses it, with exact limits 0 and 1.
* float64 keeps libm (``math.tanh``, ``math.exp``): the gradient checks need float64 precision.
* ``fastmath`` is only contraction (FMA) and no-signed-zeros: the no-NaN and no-inf flags would
  let LLVM drop the NaN-propagating clamp and the +-inf limits.
* Serial over the batch: ``parallel=True`` made a T = 50 step loop with its GEMMs 2.5 to 18
  times slower here (OpenMP's waiting threads and OpenBLAS's compete for the two cores).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:
    from numba import njit, types
    from numba.extending import overload

    available: bool = True
except ImportError:  # optional dependency: nothing is compiled, callers keep the NumPy gate math
    available = False
    types = None

    def njit(*_args: Any, **_kwargs: Any) -> Any:
        def unavailable(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("models.numba_kernels: numba is not installed (check `available` first)")

        return lambda _fn: unavailable

    def overload(*_args: Any, **_kwargs: Any) -> Any:
        return lambda fn: fn


__all__ = [
    "available",
    "cifg_pointwise_backward",
    "cifg_pointwise_forward",
    "gru_pointwise_backward",
    "gru_pointwise_forward",
    "lstm_pointwise_backward",
    "lstm_pointwise_forward",
    "rnn_pointwise_backward",
    "rnn_pointwise_forward",
    "warm_up",
]

# error_model "numpy": a division by zero gives inf/NaN instead of a branch that raises (and blocks
# vectorisation)
_FLAGS = {"fastmath": {"contract", "nsz"}, "error_model": "numpy"}
_JIT = {**_FLAGS, "cache": True, "nogil": True}

# --- transcendentals ------------------------------------------------------------------------------

# tanh(y) ~ y P(y^2) / Q(y^2) on [0, 9]: a near-minimax fit (Lawson-weighted Loeb iteration) of
# tanh(y) / y, weighted so that its error is relative below y = 1 and absolute above: 2.0e-8 at
# most in exact arithmetic, 3.4e-8 with the coefficients rounded to float32.  All coefficients are
# positive, so Horner adds no cancellation; its float32 roundings (four per polynomial, then the
# product and the quotient) make the rest: 3.1e-7 at most over every float32 (at y = 5.36), the
# order of the reference's own float32 g gate, 2 sigmoid(2x) - 1 (1.8e-7).  Evaluated in float64,
# the same fit is 5e-8 off, but the LSTM forward then takes 1.8 times as long.
# Past 9, 1 - tanh(y) = 2 e^-2y < 3.1e-8, half a float32 ulp below 1.
_F32 = np.float32
_SATURATE = _F32(9.0)
_P0, _P1, _P2, _P3, _P4 = (
    _F32(9.9999997986787359e-01),
    _F32(1.3379718087798023e-01),
    _F32(3.4940728953418471e-03),
    _F32(2.0585714563180057e-05),
    _F32(1.3325262578300054e-08),
)
_Q1, _Q2, _Q3, _Q4 = (
    _F32(4.6713032529128710e-01),
    _F32(2.5871118839139220e-02),
    _F32(3.2832240443185620e-04),
    _F32(7.7638944263968340e-07),
)
_ONE, _HALF = _F32(1.0), _F32(0.5)


@njit(**_JIT)
def _tanh_rational(x: np.float32) -> np.float32:
    """tanh of a float32, branch-free: +-1 exactly past saturation, NaN propagated."""
    ax = abs(x)
    # selects whose false arm is the input, so that a NaN falls through every one of them
    y = _SATURATE if ax > _SATURATE else ax
    t = y * y
    p = (((_P4 * t + _P3) * t + _P2) * t + _P1) * t + _P0
    q = (((_Q4 * t + _Q3) * t + _Q2) * t + _Q1) * t + _ONE
    r = y * p / q
    r = _ONE if ax >= _SATURATE else r  # exactly 1, so that sigmoid(-inf) is exactly 0
    r = _ONE if r > _ONE else r  # never past the limit: 1 - g^2 and s (1 - s) stay >= 0
    return math.copysign(r, x)


def _tanh(x):  # no annotations: numba compares them with the overload's
    """tanh of one float32 or float64 (the overload below picks the implementation by type)."""
    raise NotImplementedError("compiled only")


def _sigmoid(x):
    """The logistic function of one float32 or float64 (see the overload)."""
    raise NotImplementedError("compiled only")


@overload(_tanh, jit_options=_FLAGS)
def _tanh_typed(x):
    if x == types.float32:

        def tanh32(x):
            return _tanh_rational(x)

        return tanh32

    def tanh64(x):
        return math.tanh(x)

    return tanh64


@overload(_sigmoid, jit_options=_FLAGS)
def _sigmoid_typed(x):
    if x == types.float32:

        def sigmoid32(x):
            return _HALF * _tanh_rational(_HALF * x) + _HALF  # (1 + tanh(x / 2)) / 2

        return sigmoid32

    def sigmoid64(x):
        # e^-x = inf below about -709 gives 1 / inf = 0, the exact limit (numba raises nothing)
        return 1.0 / (1.0 + math.exp(-x))

    return sigmoid64


# --- passes over one contiguous block --------------------------------------------------------------


@njit(**_JIT)
def _sigmoid_block(v: Any) -> None:
    for j in range(v.size):
        x = v[j]
        v[j] = _sigmoid(x)


@njit(**_JIT)
def _tanh_block(v: Any) -> None:
    for j in range(v.size):
        x = v[j]
        v[j] = _tanh(x)


@njit(**_JIT)
def _span(x: Any) -> tuple[int, int]:
    """The byte range [lo, hi) that array x touches (empty when x has no elements)."""
    lo = hi = x.ctypes.data
    if x.size == 0:
        return lo, lo
    for k in range(x.ndim):
        reach = (x.shape[k] - 1) * x.strides[k]
        if reach < 0:
            lo += reach
        else:
            hi += reach
    return lo, hi + x.itemsize


@njit(**_JIT)
def _overlap(x: Any, y: Any) -> bool:
    xlo, xhi = _span(x)
    ylo, yhi = _span(y)
    return xlo < yhi and ylo < xhi


@njit(**_JIT)
def _same(x: Any, y: Any) -> bool:
    return x.ctypes.data == y.ctypes.data and x.shape == y.shape and x.strides == y.strides


# --- LSTM: gates (i, f, g, o); c = f c_prev + i g, h = o tanh(c) ------------------------------------


@njit(**_JIT)
def _lstm_forward(a: Any, c_prev: Any, c: Any, tc: Any, h: Any) -> None:
    n = a.shape[1] // 4
    for b in range(a.shape[0]):
        row, cpr, cr, tcr, hr = a[b], c_prev[b], c[b], tc[b], h[b]
        _sigmoid_block(row[: 2 * n])
        _tanh_block(row[2 * n : 3 * n])
        _sigmoid_block(row[3 * n :])
        for j in range(n):  # stores go to c, tc, h only: a is read, never written, here
            cj = row[n + j] * cpr[j] + row[j] * row[2 * n + j]
            tj = _tanh(cj)
            cr[j] = cj
            tcr[j] = tj
            hr[j] = row[3 * n + j] * tj


@njit(**_JIT)
def _lstm_backward_row(ar: Any, cpr: Any, tcr: Any, ghr: Any, gcr: Any, out: Any, dcr: Any) -> None:
    # out = [i', f', g', o'] * [dc g, dc c_prev, dc i, gh tanh(c)], the reference's two blocks
    # multiplied element by element; every store goes to out or dc, never to ar (see module doc)
    n = dcr.size
    one = ar.dtype.type(1.0)
    for j in range(n):
        t, oo, gj = tcr[j], ar[3 * n + j], ghr[j]
        dc = gcr[j] + gj * oo * (one - t * t)  # the cell gradient from both outputs of the step
        ii, ff, gg = ar[j], ar[n + j], ar[2 * n + j]
        out[j] = dc * gg * (ii * (one - ii))
        out[n + j] = dc * cpr[j] * (ff * (one - ff))
        out[2 * n + j] = dc * ii * (one - gg * gg)
        out[3 * n + j] = gj * t * (oo * (one - oo))
        dcr[j] = dc * ff


@njit(**_JIT)
def _lstm_backward(a: Any, c_prev: Any, tc: Any, gh: Any, gc: Any, da: Any) -> Any:
    dc = np.empty(tc.shape, a.dtype)
    if _overlap(a, da):  # da is a: each row goes through scratch, so no loop stores into a
        tmp = np.empty(a.shape[1], a.dtype)
        for b in range(a.shape[0]):
            _lstm_backward_row(a[b], c_prev[b], tc[b], gh[b], gc[b], tmp, dc[b])
            dar = da[b]
            for j in range(tmp.size):
                dar[j] = tmp[j]
    else:
        for b in range(a.shape[0]):
            _lstm_backward_row(a[b], c_prev[b], tc[b], gh[b], gc[b], da[b], dc[b])
    return dc


# --- CIFG: gates (i, g, o), f = 1 - i; c = c_prev + i (g - c_prev) ------------------------------------


@njit(**_JIT)
def _cifg_forward(a: Any, c_prev: Any, c: Any, tc: Any, h: Any) -> None:
    n = a.shape[1] // 3
    for b in range(a.shape[0]):
        row, cpr, cr, tcr, hr = a[b], c_prev[b], c[b], tc[b], h[b]
        _sigmoid_block(row[:n])
        _tanh_block(row[n : 2 * n])
        _sigmoid_block(row[2 * n :])
        for j in range(n):
            cp = cpr[j]
            cj = (row[n + j] - cp) * row[j] + cp
            tj = _tanh(cj)
            cr[j] = cj
            tcr[j] = tj
            hr[j] = row[2 * n + j] * tj


@njit(**_JIT)
def _cifg_backward_row(ar: Any, cpr: Any, tcr: Any, ghr: Any, gcr: Any, out: Any, dcr: Any) -> None:
    # [i', g', o'] * [dc (g - c_prev), dc i, gh tanh(c)]; dc/di = g - c_prev counts both i g and
    # the coupled forget gate (1 - i) c_prev, and dc_prev = dc f = dc (1 - i)
    n = dcr.size
    one = ar.dtype.type(1.0)
    for j in range(n):
        t, oo, gj = tcr[j], ar[2 * n + j], ghr[j]
        dc = gcr[j] + gj * oo * (one - t * t)
        ii, gg = ar[j], ar[n + j]
        out[j] = dc * (gg - cpr[j]) * (ii * (one - ii))
        out[n + j] = dc * ii * (one - gg * gg)
        out[2 * n + j] = gj * t * (oo * (one - oo))
        dcr[j] = dc * (one - ii)


@njit(**_JIT)
def _cifg_backward(a: Any, c_prev: Any, tc: Any, gh: Any, gc: Any, da: Any) -> Any:
    dc = np.empty(tc.shape, a.dtype)
    if _overlap(a, da):
        tmp = np.empty(a.shape[1], a.dtype)
        for b in range(a.shape[0]):
            _cifg_backward_row(a[b], c_prev[b], tc[b], gh[b], gc[b], tmp, dc[b])
            dar = da[b]
            for j in range(tmp.size):
                dar[j] = tmp[j]
    else:
        for b in range(a.shape[0]):
            _cifg_backward_row(a[b], c_prev[b], tc[b], gh[b], gc[b], da[b], dc[b])
    return dc


# --- GRU: gates (r, z, n); n = tanh(x_n + r A_n), h = n + z (h_prev - n) ------------------------------


@njit(inline="always", **_JIT)
def _gru_forward_row(xr: Any, rr: Any, ar: Any, hpr: Any, hr: Any, tmp: Any) -> None:
    # xr may be ar: every store into ar is at the position just loaded from xr, and r A_n (which
    # crosses blocks) goes through tmp
    n = hr.size
    for j in range(2 * n):
        ar[j] = _sigmoid(xr[j] + rr[j])
    for j in range(n):
        tmp[j] = ar[j] * rr[2 * n + j]
    for j in range(n):
        ar[2 * n + j] = _tanh(xr[2 * n + j] + tmp[j])
    for j in range(n):
        nj = ar[2 * n + j]
        hr[j] = (hpr[j] - nj) * ar[n + j] + nj


@njit(**_JIT)
def _gru_forward(x: Any, rec: Any, a: Any, h_prev: Any, h: Any) -> None:
    tmp = np.empty(h.shape[1], a.dtype)
    if _same(x, a):  # one array in both roles, so LLVM sees one pointer and no overlap to check
        for b in range(a.shape[0]):
            row = a[b]
            _gru_forward_row(row, rec[b], row, h_prev[b], h[b], tmp)
    else:
        for b in range(a.shape[0]):
            _gru_forward_row(x[b], rec[b], a[b], h_prev[b], h[b], tmp)


@njit(**_JIT)
def _gru_backward(a: Any, rec: Any, h_prev: Any, gh: Any, dx: Any, drec: Any) -> Any:
    n = a.shape[1] // 3
    off = 2 * n if rec.shape[1] == a.shape[1] else 0  # rec is all of A_t, or only A_n
    direct = np.empty(gh.shape, a.dtype)
    dn = np.empty(n, a.dtype)
    one = a.dtype.type(1.0)
    for b in range(a.shape[0]):
        ar, rr, hpr, ghr, dr, dir_ = a[b], rec[b], h_prev[b], gh[b], drec[b], direct[b]
        # all of row b of a is read into drec, direct and dn before dx (maybe a) is written.  Two
        # loops of three and two stores: one loop storing all five took 15 us here, these 11.
        for j in range(n):
            z, nj, gj = ar[n + j], ar[2 * n + j], ghr[j]
            ghz = gj * (one - z)
            dn[j] = (one - nj * nj) * ghz  # dn_pre = gh (1 - z) (1 - n^2)
            dr[n + j] = (hpr[j] - nj) * ghz * z  # dz_pre = gh (h_prev - n) z (1 - z)
            dir_[j] = gj * z
        for j in range(n):
            r, dnj = ar[j], dn[j]
            dr[j] = dnj * rr[off + j] * (r * (one - r))  # dr_pre = dn_pre A_n r (1 - r)
            dr[2 * n + j] = dnj * r  # dA_n = dn_pre r
        dxr = dx[b]
        for j in range(2 * n):
            dxr[j] = dr[j]
        for j in range(n):
            dxr[2 * n + j] = dn[j]
    return direct


# --- RNN: h = tanh(x + h_prev W_hh^T) -----------------------------------------------------------------


@njit(**_JIT)
def _rnn_forward(h: Any, work: Any) -> None:
    for b in range(h.shape[0]):
        hr, wr = h[b], work[b]
        for j in range(hr.size):
            hr[j] = _tanh(hr[j] + wr[j])


@njit(**_JIT)
def _rnn_backward(h: Any, gh: Any, da: Any) -> None:
    one = h.dtype.type(1.0)
    for b in range(h.shape[0]):
        hr, gr, dr = h[b], gh[b], da[b]
        for j in range(hr.size):
            hj = hr[j]
            dr[j] = (one - hj * hj) * gr[j]


# --- the public functions: the signatures of models.cells ------------------------------------------


def lstm_pointwise_forward(a: Any, c_prev: Any, c: Any, tc: Any, h: Any) -> None:
    """Pre-activations a (B, 4H) -> activated in place; c, tanh(c) and h written."""
    _lstm_forward(a, c_prev, c, tc, h)


def lstm_pointwise_backward(
    a: Any, c_prev: Any, tc: Any, gh: Any, gc: Any, da: Any, scratch: tuple[Any, Any] | None = None
) -> Any:
    """Activations a, dL/dh and dL/dc of the step -> pre-activation grads in da (may be a); returns
    dL/dc_prev.  ``scratch`` is accepted for the reference's signature and not needed."""
    return _lstm_backward(a, c_prev, tc, gh, gc, da)


def cifg_pointwise_forward(a: Any, c_prev: Any, c: Any, tc: Any, h: Any) -> None:
    """Pre-activations a (B, 3H) in gate order (i, g, o); c = c_prev + i (g - c_prev)."""
    _cifg_forward(a, c_prev, c, tc, h)


def cifg_pointwise_backward(
    a: Any, c_prev: Any, tc: Any, gh: Any, gc: Any, da: Any, scratch: tuple[Any, Any] | None = None
) -> Any:
    """As the LSTM's, for gates (i, g, o) with f = 1 - i; returns dL/dc_prev = dc (1 - i)."""
    return _cifg_backward(a, c_prev, tc, gh, gc, da)


def gru_pointwise_forward(x: Any, rec: Any, a: Any, h_prev: Any, h: Any) -> None:
    """x = x_t W_ih^T + b_ih, rec = h_prev W_hh^T + b_hh (B, 3H) -> a = (r, z, n) and h; a may be x."""
    _gru_forward(x, rec, a, h_prev, h)


def gru_pointwise_backward(a: Any, rec: Any, h_prev: Any, gh: Any, dx: Any, drec: Any) -> Any:
    """dL/dh -> d xproj_t in dx (may be a), dA_t in drec; returns the direct part gh z of dL/dh_prev.

    rec is the whole (B, 3H) A_t or only its candidate part A_n (B, H).
    """
    return _gru_backward(a, rec, h_prev, gh, dx, drec)


def rnn_pointwise_forward(h: Any, work: Any) -> None:
    """h = tanh(h + work) in place (h holds x_t, work the recurrent GEMM's product)."""
    _rnn_forward(h, work)


def rnn_pointwise_backward(h: Any, gh: Any, da: Any) -> None:
    """da = (1 - h^2) gh, the pre-activation gradient of h = tanh(.)."""
    _rnn_backward(h, gh, da)


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel for float32 and float64, on tiny arrays."""
    if not available:
        return
    for dtype in (np.float32, np.float64):
        b, n = 2, 3
        for gates, fwd, bwd in ((4, _lstm_forward, _lstm_backward), (3, _cifg_forward, _cifg_backward)):
            a = np.zeros((b, gates * n), dtype)
            st = [np.zeros((b, n), dtype) for _ in range(5)]
            fwd(a, st[0], st[1], st[2], st[3])
            bwd(a, st[0], st[2], st[3], st[4], np.zeros_like(a))
        a = np.zeros((b, 3 * n), dtype)
        st = [np.zeros((b, n), dtype) for _ in range(3)]
        _gru_forward(a, np.zeros_like(a), a, st[0], st[1])
        _gru_backward(a, np.zeros_like(a), st[0], st[1], np.zeros_like(a), np.zeros_like(a))
        _gru_backward(a, st[2], st[0], st[1], np.zeros_like(a), np.zeros_like(a))
        _rnn_forward(st[0], st[1])
        _rnn_backward(st[0], st[1], st[2])
