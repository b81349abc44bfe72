"""CUDA kernels for the fused recurrent step ops of ``models.cells`` (CuPy arrays only).

On the GPU a step's gate math is ONE ``cupy.ElementwiseKernel`` launch instead of a dozen small
array ops: each thread owns one (batch row b, hidden unit j) and every gate of that unit.  The
(B, H) arrays (c, h, gradients) are ordinary kernel arguments indexed by the kernel itself; the
(B, G*H) gate arrays are ``raw`` arguments read and written at row b, columns g*H + j (CuPy's raw
indexing by a logical C-order position honours strides, so row views of the sequence buffers work).

The step equations are those of the NumPy path of ``models.cells`` (same inputs, outputs and
buffers); gate orders follow PyTorch: LSTM (i, f, g, o), CIFG (i, g, o) with f = 1 - i, GRU (r, z, n).
Kernels are compiled on first use; ``T`` is a type template, so one kernel object serves float32
and float64 (CuPy compiles and caches one binary per dtype).  CuPy is imported only inside
functions: this module imports, and its sources can be read, on a machine without it.
"""

from __future__ import annotations

from functools import cache
from typing import Any, NamedTuple

# sigmoid(x) = 0.5 tanh(0.5 x) + 0.5: no exp(-x) that overflows for large negative x.  The template
# parameter is not called T: CuPy typedefs the kernel's T ahead of this preamble.
PREAMBLE = r"""
template <typename U>
__device__ __forceinline__ U tg_sigmoid(const U x) {
    return U(0.5) * tanh(U(0.5) * x) + U(0.5);
}
"""


class KernelSource(NamedTuple):
    """What ``cupy.ElementwiseKernel`` needs: parameter lists, body, name."""

    in_params: str
    out_params: str
    body: str
    name: str


# Every body starts from the loop index i over the (B, H) arguments: hid = H, at = the flat
# position of gate 0 of unit (b, j) in a (B, G*H) array; gate g of that unit sits at at + g*hid.

LSTM_FORWARD = KernelSource(
    "raw T x, T c_prev",
    "raw T a, T c, T tc, T h",
    r"""
    const ptrdiff_t hid = a.shape()[1] / 4;
    const ptrdiff_t at = (i / hid) * 4 * hid + i % hid;
    const T gi = tg_sigmoid(a[at] + x[at]);
    const T gf = tg_sigmoid(a[at + hid] + x[at + hid]);
    const T gg = tanh(a[at + 2 * hid] + x[at + 2 * hid]);
    const T go = tg_sigmoid(a[at + 3 * hid] + x[at + 3 * hid]);
    a[at] = gi;
    a[at + hid] = gf;
    a[at + 2 * hid] = gg;
    a[at + 3 * hid] = go;
    const T cn = gf * c_prev + gi * gg;
    const T tcn = tanh(cn);
    c = cn;
    tc = tcn;
    h = go * tcn;
    """,
    "tinygraph_lstm_forward",
)

LSTM_BACKWARD = KernelSource(
    "raw T a, T c_prev, T tc, T gh, T gc",
    "raw T da, T dc_prev",
    r"""
    const ptrdiff_t hid = a.shape()[1] / 4;
    const ptrdiff_t at = (i / hid) * 4 * hid + i % hid;
    const T gi = a[at];
    const T gf = a[at + hid];
    const T gg = a[at + 2 * hid];
    const T go = a[at + 3 * hid];
    // the cell gradient from both of the step's outputs: dc = gc + gh o (1 - tanh(c)^2)
    const T dc = gc + gh * go * (T(1) - tc * tc);
    da[at] = dc * gg * gi * (T(1) - gi);
    da[at + hid] = dc * c_prev * gf * (T(1) - gf);
    da[at + 2 * hid] = dc * gi * (T(1) - gg * gg);
    da[at + 3 * hid] = gh * tc * go * (T(1) - go);
    dc_prev = dc * gf;
    """,
    "tinygraph_lstm_backward",
)

CIFG_FORWARD = KernelSource(
    "raw T x, T c_prev",
    "raw T a, T c, T tc, T h",
    r"""
    const ptrdiff_t hid = a.shape()[1] / 3;
    const ptrdiff_t at = (i / hid) * 3 * hid + i % hid;
    const T gi = tg_sigmoid(a[at] + x[at]);
    const T gg = tanh(a[at + hid] + x[at + hid]);
    const T go = tg_sigmoid(a[at + 2 * hid] + x[at + 2 * hid]);
    a[at] = gi;
    a[at + hid] = gg;
    a[at + 2 * hid] = go;
    const T cp = c_prev;
    const T cn = cp + gi * (gg - cp);  // (1 - i) c_prev + i g
    const T tcn = tanh(cn);
    c = cn;
    tc = tcn;
    h = go * tcn;
    """,
    "tinygraph_cifg_forward",
)

CIFG_BACKWARD = KernelSource(
    "raw T a, T c_prev, T tc, T gh, T gc",
    "raw T da, T dc_prev",
    r"""
    const ptrdiff_t hid = a.shape()[1] / 3;
    const ptrdiff_t at = (i / hid) * 3 * hid + i % hid;
    const T gi = a[at];
    const T gg = a[at + hid];
    const T go = a[at + 2 * hid];
    const T dc = gc + gh * go * (T(1) - tc * tc);
    // dc/di = g - c_prev: through i g and through the coupled forget gate (1 - i) c_prev
    da[at] = (gg - c_prev) * dc * gi * (T(1) - gi);
    da[at + hid] = dc * gi * (T(1) - gg * gg);
    da[at + 2 * hid] = gh * tc * go * (T(1) - go);
    dc_prev = dc * (T(1) - gi);
    """,
    "tinygraph_cifg_backward",
)

GRU_FORWARD = KernelSource(
    "raw T x, raw T rec, T h_prev",
    "raw T a, T h",
    r"""
    const ptrdiff_t hid = a.shape()[1] / 3;
    const ptrdiff_t at = (i / hid) * 3 * hid + i % hid;
    const T r = tg_sigmoid(x[at] + rec[at]);
    const T z = tg_sigmoid(x[at + hid] + rec[at + hid]);
    // the reset gate scales the whole recurrent term of the candidate, b_hn included
    const T cand = tanh(r * rec[at + 2 * hid] + x[at + 2 * hid]);
    a[at] = r;
    a[at + hid] = z;
    a[at + 2 * hid] = cand;
    h = cand + z * (h_prev - cand);
    """,
    "tinygraph_gru_forward",
)

GRU_BACKWARD = KernelSource(
    "raw T a, raw T rec, T h_prev, T gh",
    "raw T dx, raw T drec, T gz",
    r"""
    const ptrdiff_t hid = a.shape()[1] / 3;
    const ptrdiff_t at = (i / hid) * 3 * hid + i % hid;
    const T r = a[at];
    const T z = a[at + hid];
    const T cand = a[at + 2 * hid];
    const T dn = gh * (T(1) - z) * (T(1) - cand * cand);
    const T dz = gh * (h_prev - cand) * z * (T(1) - z);
    const T dr = dn * rec[at + 2 * hid] * r * (T(1) - r);
    dx[at] = dr;
    dx[at + hid] = dz;
    dx[at + 2 * hid] = dn;
    // d rec differs from d x only in the candidate part: rec_n enters scaled by r
    drec[at] = dr;
    drec[at + hid] = dz;
    drec[at + 2 * hid] = dn * r;
    gz = gh * z;
    """,
    "tinygraph_gru_backward",
)

KERNELS: dict[str, KernelSource] = {
    "lstm_forward": LSTM_FORWARD,
    "lstm_backward": LSTM_BACKWARD,
    "cifg_forward": CIFG_FORWARD,
    "cifg_backward": CIFG_BACKWARD,
    "gru_forward": GRU_FORWARD,
    "gru_backward": GRU_BACKWARD,
}


@cache
def _kernel(key: str) -> Any:
    """The compiled-on-demand kernel ``key``, built once per process."""
    import cupy

    src = KERNELS[key]
    return cupy.ElementwiseKernel(src.in_params, src.out_params, src.body, src.name, preamble=PREAMBLE)


def lstm_forward(a: Any, x_t: Any, c_prev: Any, c: Any, tc: Any, h: Any) -> None:
    """a (B, 4H) holds h_prev W_hh^T: add x_t, activate in place; write c, tanh(c) and h."""
    _kernel("lstm_forward")(x_t, c_prev, a, c, tc, h)


def lstm_backward(a: Any, c_prev: Any, tc: Any, gh: Any, gc: Any, da: Any) -> Any:
    """Pre-activation gradients into da (B, 4H); returns dL/dc_prev (a new array)."""
    dc_prev = _empty_like(c_prev)
    _kernel("lstm_backward")(a, c_prev, tc, gh, gc, da, dc_prev)
    return dc_prev


def cifg_forward(a: Any, x_t: Any, c_prev: Any, c: Any, tc: Any, h: Any) -> None:
    """As lstm_forward with gates (i, g, o) and f = 1 - i."""
    _kernel("cifg_forward")(x_t, c_prev, a, c, tc, h)


def cifg_backward(a: Any, c_prev: Any, tc: Any, gh: Any, gc: Any, da: Any) -> Any:
    """As lstm_backward with gates (i, g, o) and f = 1 - i."""
    dc_prev = _empty_like(c_prev)
    _kernel("cifg_backward")(a, c_prev, tc, gh, gc, da, dc_prev)
    return dc_prev


def gru_forward(x_t: Any, rec: Any, a: Any, h_prev: Any, h: Any) -> None:
    """x_t, rec = h_prev W_hh^T + b_hh (B, 3H) -> activations a = (r, z, n) and h."""
    _kernel("gru_forward")(x_t, rec, h_prev, a, h)


def gru_backward(a: Any, rec: Any, h_prev: Any, gh: Any, dx: Any, drec: Any) -> Any:
    """d x_t into dx, dA_t into drec; returns the direct part gh * z of dL/dh_prev."""
    gz = _empty_like(h_prev)
    _kernel("gru_backward")(a, rec, h_prev, gh, dx, drec, gz)
    return gz


def _empty_like(a: Any) -> Any:
    import cupy

    # C order whatever the layout of ``a``: the kernels write it element by element
    return cupy.empty(a.shape, dtype=a.dtype)
