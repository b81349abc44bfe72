"""The recurrent cells' step equations written plainly in float64: the reference for their gate math.

Not models.cells, whose NumPy gate math is tuned for speed and may change form: both the CUDA
kernels (test_gpu.py) and the NumPy functions (test_cell_math.py) are compared with these.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(1000) = inf gives the exact limit 0
        return 1.0 / (1.0 + np.exp(-x))


def lstm_reference(pre: np.ndarray, c_prev: np.ndarray, gh: np.ndarray, gc: np.ndarray, cifg: bool) -> dict:
    """Activations, c, tanh(c), h and the step's gradients (d pre-activations, dc_prev) in float64."""
    if cifg:
        ai, ag, ao = np.split(pre, 3, axis=1)
        i, g, o = sigmoid(ai), np.tanh(ag), sigmoid(ao)
        f = 1.0 - i
    else:
        ai, af, ag, ao = np.split(pre, 4, axis=1)
        i, f, g, o = sigmoid(ai), sigmoid(af), np.tanh(ag), sigmoid(ao)
    c = f * c_prev + i * g
    tc = np.tanh(c)
    dc = gc + gh * o * (1 - tc**2)
    do = gh * tc * o * (1 - o)
    dg = dc * i * (1 - g**2)
    if cifg:
        # i feeds c twice: through i g and through the forget gate 1 - i
        di = dc * (g - c_prev) * i * (1 - i)
        acts, d_pre = [i, g, o], [di, dg, do]
    else:
        di, df = dc * g * i * (1 - i), dc * c_prev * f * (1 - f)
        acts, d_pre = [i, f, g, o], [di, df, dg, do]
    return {
        "a": np.concatenate(acts, axis=1),
        "c": c,
        "tc": tc,
        "h": o * tc,
        "da": np.concatenate(d_pre, axis=1),
        "dc_prev": dc * f,
    }


def gru_reference(x: np.ndarray, rec: np.ndarray, h_prev: np.ndarray, gh: np.ndarray) -> dict:
    xr, xz, xn = np.split(x, 3, axis=1)
    ar, az, an = np.split(rec, 3, axis=1)
    r, z = sigmoid(xr + ar), sigmoid(xz + az)
    n = np.tanh(xn + r * an)
    dn = gh * (1 - z) * (1 - n**2)
    dz = gh * (h_prev - n) * z * (1 - z)
    dr = dn * an * r * (1 - r)
    return {
        "a": np.concatenate([r, z, n], axis=1),
        "h": (1 - z) * n + z * h_prev,
        "dx": np.concatenate([dr, dz, dn], axis=1),
        "drec": np.concatenate([dr, dz, dn * r], axis=1),
        "direct": gh * z,
    }


def gate_inputs(batch: int, hidden: int, gates: int, dtype: Any, seed: int) -> dict[str, np.ndarray]:
    """Step inputs; the wide ones shaped (T=2, B, G*H) like the sequence buffers, of which row 1 is used.

    A few pre-activations are huge (+-1000): the naive 1 / (1 + exp(-x)) overflows there.
    """
    rs = np.random.default_rng(seed)
    wide = (2, batch, gates * hidden)
    out = {
        "rec": rs.uniform(-2, 2, wide),
        "x": rs.uniform(-2, 2, wide),
        "state": rs.uniform(-1, 1, (batch, hidden)),
        "gh": rs.standard_normal((batch, hidden)),
        "gc": rs.standard_normal((batch, hidden)),
    }
    out["x"][1, 0, :: hidden + 1] = 1000.0
    out["x"][1, -1, 1 :: hidden + 2] = -1000.0
    return {k: v.astype(dtype) for k, v in out.items()}
