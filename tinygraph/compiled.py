"""Compiled (numba) loops the core runs on the CPU where numba is installed: Adam's update in one
pass, and a blocked transpose.

Each has a NumPy reference it must match (``tinygraph.optim.Adam``'s array code, ``out[...] = a.T``)
and is only an accelerator: ``available`` is False without numba, ``set_enabled(False)`` (or
``TINYGRAPH_COMPILED=0``) keeps the NumPy code, and callers fall back to it for anything the loops
do not take (CuPy arrays, non-contiguous arrays, dtypes other than float32 and float64).

Why these two (2-core AVX-512 x86, float32): Adam in NumPy is ten passes over every parameter-sized
array (about 3.2 ms a step for a 0.9 M-parameter model); fused it is one pass that reads p, g, m, v
and writes p, m, v.  NumPy's ``out[...] = w.T`` of a 2048 x 512 float32 matrix runs at 0.6 GB/s
(7.2 ms; every read of a column misses the cache), and the recurrent layers make W_hh^T once per
sequence.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

try:
    from numba import njit

    available: bool = True
except ImportError:  # optional: the NumPy code runs instead
    available = False

    def njit(*_args: Any, **_kwargs: Any) -> Any:
        return lambda fn: fn


_enabled = available and os.environ.get("TINYGRAPH_COMPILED", "1") != "0"

# as models.numba_kernels: contraction only (no flags that would let LLVM drop NaN or inf handling)
_JIT = {"fastmath": {"contract", "nsz"}, "error_model": "numpy", "cache": True, "nogil": True}


def enabled() -> bool:
    """True when the compiled loops run (numba installed and not switched off)."""
    return _enabled


def set_enabled(on: bool) -> None:
    """Run the compiled loops (True, where numba is installed) or the NumPy reference (False)."""
    global _enabled
    _enabled = bool(on) and available


def _takes(*arrays: Any) -> bool:
    """Whether the compiled loops take these arrays: NumPy, C-contiguous, all float32 or all float64."""
    first = arrays[0]
    if not _enabled or type(first) is not np.ndarray or first.dtype not in (np.float32, np.float64):
        return False
    return all([type(a) is np.ndarray and a.flags.c_contiguous and a.dtype == first.dtype for a in arrays])


# --- Adam ------------------------------------------------------------------------------------------


@njit(**_JIT)
def _adam(p, g, m, v, decay, l2, one_minus_b1, b2, one_minus_b2, step_size, sqrt_bias2, eps):
    # one element at a time, the same formulas as Adam._update's array code
    for k in range(p.size):
        pk = p[k]
        gk = g[k] + l2 * pk
        mk = m[k] + (gk - m[k]) * one_minus_b1
        vk = v[k] * b2 + gk * gk * one_minus_b2
        m[k] = mk
        v[k] = vk
        p[k] = pk * decay - step_size * mk / (math.sqrt(vk) / sqrt_bias2 + eps)


def adam_update(
    p: Any,
    g: Any,
    m: Any,
    v: Any,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
    step: int,
) -> bool:
    """One Adam (AdamW when ``decoupled``) step of ``p`` in place, with its moments ``m`` and ``v``.

    Returns False, touching nothing, where the compiled loop does not take the arrays: the caller
    then runs the NumPy code.
    """
    if not _takes(p, g, m, v):
        return False
    b1, b2 = betas
    decay = 1.0 - lr * weight_decay if decoupled else 1.0
    l2 = 0.0 if decoupled else weight_decay
    # the constants in the arrays' dtype, so a float32 update runs in float32 as NumPy's does
    # (float64 division and square root would make it compute-bound: 1.6x slower at 0.9 M parameters)
    hyper = [decay, l2, 1.0 - b1, b2, 1.0 - b2, lr / (1.0 - b1**step), math.sqrt(1.0 - b2**step), eps]
    _adam(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), *map(p.dtype.type, hyper))
    return True


# --- transpose -------------------------------------------------------------------------------------

_TILE = 32  # a 32 x 32 float32 tile of the source and of the result is 4 KiB each: both stay in L1


@njit(**_JIT)
def _transpose(out, a):
    rows, cols = a.shape
    for i0 in range(0, rows, _TILE):
        i1 = min(i0 + _TILE, rows)
        for j0 in range(0, cols, _TILE):
            j1 = min(j0 + _TILE, cols)
            for j in range(j0, j1):
                for i in range(i0, i1):
                    out[j, i] = a[i, j]


def transpose_into(out: Any, a: Any) -> None:
    """out[...] = a.T for a 2-D ``a``, tile by tile where the compiled loop takes the arrays."""
    if a.ndim == 2 and _takes(out, a) and out.shape == a.shape[::-1]:
        _transpose(out, a)
    else:
        out[...] = a.T
