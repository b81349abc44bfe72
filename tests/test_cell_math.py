"""The NumPy gate math of the fused cells (``models.cells.*_pointwise_forward/backward``).

The same checks as the CUDA kernels get in test_gpu.py, against the same float64 step equations
(tests/cell_reference.py): random pre-activations with a few at +-1000, where a naive
1 / (1 + exp(-x)) overflows; then every gate saturated, at +-1000 and at +-inf, where the outputs
must be exactly the limits (gates 0 or 1, tanh -1 or 1) and every gradient finite.  Every call runs
under ``np.errstate`` raising on invalid results, division by zero and overflow (outside the
sigmoid, which expects exp(1000) = inf): an inf - inf or 0 * inf anywhere fails the test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cell_reference import gate_inputs, gru_reference, lstm_reference

import models
import tinygraph as tg
from models import cells
from models.recurrent import CELLS

TOLERANCES = {np.float64: 1e-12, np.float32: 1e-5}
STRICT = {"invalid": "raise", "divide": "raise", "over": "raise"}  # exp(-1000) may underflow to 0
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
# the gradient buffer may be the activations' own array (the walk that releases the graph does that)
ALIAS = pytest.mark.parametrize("in_place", [False, True], ids=["own-buffer", "in-place"])
FORWARD = {"lstm": cells.lstm_pointwise_forward, "cifg": cells.cifg_pointwise_forward}
BACKWARD = {"lstm": cells.lstm_pointwise_backward, "cifg": cells.cifg_pointwise_backward}
GATES = {"lstm": 4, "cifg": 3, "gru": 3}


def run_lstm(cell: str, pre: np.ndarray, c_prev: np.ndarray, gh: np.ndarray, gc: np.ndarray, in_place: bool) -> dict:
    """One step of the NumPy gate math: the activations, c, tanh(c), h, d pre-activations, dc_prev."""
    a = pre.copy()
    batch, hidden = c_prev.shape
    c, tc, h = (np.zeros((batch, hidden), pre.dtype) for _ in range(3))
    scratch = (np.empty_like(a), np.empty_like(a))
    with np.errstate(**STRICT):
        FORWARD[cell](a, c_prev, c, tc, h)
        got = {"a": a.copy(), "c": c, "tc": tc, "h": h}
        da = a if in_place else np.full_like(a, np.nan)
        got["dc_prev"] = BACKWARD[cell](a, c_prev, tc, gh, gc, da, scratch)
    got["da"] = da
    return got


def run_gru(x: np.ndarray, rec: np.ndarray, h_prev: np.ndarray, gh: np.ndarray, in_place: bool) -> dict:
    """One GRU step as the CPU step op runs it: a over x, and only A_n kept for backward."""
    hidden = h_prev.shape[1]
    a = x.copy() if in_place else np.full_like(x, np.nan)
    h = np.zeros_like(h_prev)
    with np.errstate(**STRICT):
        cells.gru_pointwise_forward(x.copy() if not in_place else a, rec, a, h_prev, h)
        got = {"a": a.copy(), "h": h}
        dx = a if in_place else np.full_like(a, np.nan)
        drec = np.full_like(a, np.nan)
        got["direct"] = cells.gru_pointwise_backward(a, rec[:, 2 * hidden :].copy(), h_prev, gh, dx, drec)
    got["dx"], got["drec"] = dx, drec
    return got


def compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray], dtype: Any) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].dtype == dtype and got[key].shape == value.shape, key
        assert np.isfinite(got[key]).all(), key
        tol = TOLERANCES[dtype]
        np.testing.assert_allclose(got[key], value.astype(dtype), rtol=tol, atol=tol, err_msg=key)


def as64(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: a.astype(np.float64) for k, a in v.items()}


# --- random pre-activations, a few of them huge ---------------------------------------------------------


@ALIAS
@DTYPES
@pytest.mark.parametrize("cell", ["lstm", "cifg"])
def test_lstm_and_cifg_gate_math_matches_the_step_equations(cell: str, dtype: Any, in_place: bool) -> None:
    v = gate_inputs(3, 5, GATES[cell], dtype, seed=1)
    pre = v["rec"][1] + v["x"][1]
    f = as64({**v, "pre": pre})
    want = lstm_reference(f["pre"], f["state"], f["gh"], f["gc"], cell == "cifg")
    compare(run_lstm(cell, pre, v["state"], v["gh"], v["gc"], in_place), want, dtype)
    assert (np.abs(pre) >= 900).any()  # the huge ones are there
    assert all(np.abs(w).max() > 1e-2 for w in want.values())  # no comparison of zeros


@ALIAS
@DTYPES
def test_gru_gate_math_matches_the_step_equations(dtype: Any, in_place: bool) -> None:
    v = gate_inputs(4, 3, 3, dtype, seed=2)
    f = as64(v)
    want = gru_reference(f["x"][1], f["rec"][1], f["state"], f["gh"])
    compare(run_gru(v["x"][1], v["rec"][1], v["state"], v["gh"], in_place), want, dtype)
    assert all(np.abs(w).max() > 1e-2 for w in want.values())


# --- every gate saturated: the limits exactly -------------------------------------------------------------


def saturated(shape: tuple[int, ...], big: float, dtype: Any, seed: int) -> np.ndarray:
    """+-big in a random pattern of signs (both signs in every gate block)."""
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=shape)
    signs[0, ::2], signs[-1, 1::2] = 1.0, -1.0
    return (signs * big).astype(dtype)


@pytest.mark.parametrize("big", [1000.0, np.inf], ids=["1000", "inf"])
@ALIAS
@DTYPES
@pytest.mark.parametrize("cell", ["lstm", "cifg"])
def test_saturated_lstm_and_cifg_gates_reach_their_limits(cell: str, dtype: Any, in_place: bool, big: float) -> None:
    batch, hidden, gates = 3, 4, GATES[cell]
    rs = np.random.default_rng(3)
    pre = saturated((batch, gates * hidden), big, dtype, seed=4)
    c_prev, gh, gc = (rs.uniform(-1, 1, (batch, hidden)).astype(dtype) for _ in range(3))
    got = run_lstm(cell, pre, c_prev, gh, gc, in_place)
    # the activations are the limits: sigmoid 0 or 1, tanh -1 or 1, exactly
    limits = (pre > 0).astype(dtype)
    g = slice(2 * hidden, 3 * hidden) if cell == "lstm" else slice(hidden, 2 * hidden)
    limits[:, g] = np.sign(pre[:, g])
    np.testing.assert_array_equal(got["a"], limits)
    # and so are c, h and the gradients: the equations at the limits (the reference handles +-inf too)
    f = as64({"pre": pre, "c_prev": c_prev, "gh": gh, "gc": gc})
    want = lstm_reference(f["pre"], f["c_prev"], f["gh"], f["gc"], cell == "cifg")
    compare(got, want, dtype)
    np.testing.assert_array_equal(got["da"], 0.0)  # a saturated gate passes no gradient
    assert np.abs(got["dc_prev"]).max() > 0 and np.abs(got["h"]).max() > 0


@pytest.mark.parametrize("big", [1000.0, np.inf], ids=["1000", "inf"])
@ALIAS
@DTYPES
def test_saturated_gru_gates_reach_their_limits(dtype: Any, in_place: bool, big: float) -> None:
    batch, hidden = 3, 4
    rs = np.random.default_rng(5)
    x = saturated((batch, 3 * hidden), big, dtype, seed=6)
    rec = rs.uniform(-2, 2, (batch, 3 * hidden)).astype(dtype)  # h W_hh^T + b_hh is finite: h is
    h_prev, gh = (rs.uniform(-1, 1, (batch, hidden)).astype(dtype) for _ in range(2))
    got = run_gru(x, rec, h_prev, gh, in_place)
    limits = (x > 0).astype(dtype)
    limits[:, 2 * hidden :] = np.sign(x[:, 2 * hidden :])
    np.testing.assert_array_equal(got["a"], limits)
    want = gru_reference(*(a.astype(np.float64) for a in (x, rec, h_prev, gh)))
    compare(got, want, dtype)
    z = limits[:, hidden : 2 * hidden]
    ulps = 4 * np.finfo(dtype).eps  # h = n + z (h_prev - n): h_prev up to rounding where z = 1
    np.testing.assert_allclose(got["h"], np.where(z == 1.0, h_prev, limits[:, 2 * hidden :]), rtol=ulps, atol=ulps)
    np.testing.assert_array_equal(got["dx"], 0.0)
    np.testing.assert_array_equal(got["direct"], gh * z)


# --- whole layers driven into saturation -------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_layers_with_huge_pre_activations_stay_finite(device: str, cell: str, fused: bool) -> None:
    """Biases of +-1000 saturate every gate of every step: outputs are the limits, gradients finite."""
    layer: models.Recurrent = CELLS[cell](3, 4, num_layers=2, fused=fused)
    for k in range(layer.num_layers):
        bias = layer._params[f"bias_ih_l{k}"]
        bias.data[...] = tg.backend.to_device(saturated((bias.shape[0], 1), 1000.0, np.float32, seed=8 + k)[:, 0])
    rs = np.random.default_rng(7)
    x = tg.tensor(rs.uniform(-1, 1, (2, 5, 3)).astype(np.float32), requires_grad=True)
    out, _ = layer(x)
    (out * tg.tensor(rs.standard_normal(out.shape).astype(np.float32))).sum().backward()
    h = tg.backend.to_numpy(out.data)
    assert np.isfinite(h).all() and np.abs(h).max() > 0.5
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    assert all(g is not None and np.isfinite(tg.backend.to_numpy(g)).all() for g in grads)
    if cell == "rnn":  # tanh(+-1000 + something small) is +-1 exactly
        np.testing.assert_array_equal(np.abs(h), 1.0)
