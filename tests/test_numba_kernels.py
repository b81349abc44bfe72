"""The numba gate math (models.numba_kernels) against its NumPy reference (models.cells).

Every kernel is run beside the reference on the same inputs -- float32 and float64, B or H of 1,
odd H, a training-sized step -- with the outputs filled with NaN beforehand (a value the kernel
forgot to write fails), and with every aliasing the reference allows (da is a, dx is a, a is x,
both as the same object and as two views of one buffer, which is how the step ops call them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba is not installed: the NumPy gate math of models.cells is the only path")

from models import cells
from models import numba_kernels as nk

SHAPES = [(1, 1), (1, 7), (3, 7), (5, 1), (32, 256)]
DTYPES = [np.float32, np.float64]
LSTM_LIKE = [("lstm", 4), ("cifg", 3)]


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    nk.warm_up()


def rand(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(dtype)


def nans(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.full(shape, np.nan, dtype)


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """float64: 1e-12 relative (with a floor of 1e-15 near zero, where the reference's own tanh(x)
    = 2 sigmoid(2x) - 1 is only good to an ulp of 1); float32: 1e-6, the approximation's order."""
    assert got.dtype == want.dtype, what
    if got.dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=what)


def reference_lstm_like(cell: str, x: np.ndarray, c_prev: np.ndarray) -> tuple[np.ndarray, ...]:
    b, n = c_prev.shape
    a = x.copy()
    c, tc, h = (nans((b, n), x.dtype) for _ in range(3))
    with np.errstate(over="ignore", invalid="ignore"):
        getattr(cells, f"{cell}_pointwise_forward")(a, c_prev, c, tc, h)
    return a, c, tc, h


# --- LSTM and CIFG ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("cell", "gates"), LSTM_LIKE)
def test_lstm_like_forward_matches_reference(cell: str, gates: int, dtype: Any, shape: tuple) -> None:
    rng = np.random.default_rng(1)
    b, n = shape
    x, c_prev = rand(rng, (b, gates * n), dtype, 3.0), rand(rng, (b, n), dtype)
    want = reference_lstm_like(cell, x, c_prev)
    a = x.copy()
    c, tc, h = (nans((b, n), dtype) for _ in range(3))
    getattr(nk, f"{cell}_pointwise_forward")(a, c_prev, c, tc, h)
    for what, got, ref in zip(("activations", "c", "tanh(c)", "h"), (a, c, tc, h), want):
        assert_close(got, ref, f"{cell} {what}")


@pytest.mark.parametrize("alias", ["apart", "same object", "two views"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("cell", "gates"), LSTM_LIKE)
def test_lstm_like_backward_matches_reference(cell: str, gates: int, dtype: Any, shape: tuple, alias: str) -> None:
    rng = np.random.default_rng(2)
    b, n = shape
    c_prev = rand(rng, (b, n), dtype)
    acts, _, tc, _ = reference_lstm_like(cell, rand(rng, (b, gates * n), dtype, 2.0), c_prev)
    gh, gc = rand(rng, (b, n), dtype), rand(rng, (b, n), dtype)
    da_ref = nans(acts.shape, dtype)
    dc_ref = getattr(cells, f"{cell}_pointwise_backward")(acts, c_prev, tc, gh, gc, da_ref)

    buf = acts.copy()[None]  # (1, B, G*H), as the sequence's (T, B, G*H) buffers
    a = buf[0]
    da = {"apart": nans(acts.shape, dtype), "same object": a, "two views": buf[0]}[alias]
    dc = getattr(nk, f"{cell}_pointwise_backward")(a, c_prev, tc, gh, gc, da, None)
    assert_close(da, da_ref, f"{cell} da ({alias})")
    assert_close(dc, dc_ref, f"{cell} dc_prev ({alias})")
    if alias == "apart":
        np.testing.assert_array_equal(a, acts, err_msg="a must stay intact when da is another array")


def test_lstm_backward_takes_strided_gradients() -> None:
    """A non-contiguous dL/dh (a column slice) is read by its strides, not as if it were packed."""
    rng = np.random.default_rng(3)
    b, n = 4, 7
    c_prev = rand(rng, (b, n), np.float64)
    acts, _, tc, _ = reference_lstm_like("lstm", rand(rng, (b, 4 * n), np.float64), c_prev)
    wide = rand(rng, (b, 3 * n), np.float64)
    gh, gc = wide[:, n : 2 * n], rand(rng, (b, n), np.float64)
    da_ref, da = nans(acts.shape, np.float64), nans(acts.shape, np.float64)
    dc_ref = cells.lstm_pointwise_backward(acts, c_prev, tc, np.ascontiguousarray(gh), gc, da_ref)
    dc = nk.lstm_pointwise_backward(acts, c_prev, tc, gh, gc, da)
    assert_close(da, da_ref, "da")
    assert_close(dc, dc_ref, "dc_prev")


# --- GRU ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["apart", "same object", "two views"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_forward_matches_reference(dtype: Any, shape: tuple, alias: str) -> None:
    rng = np.random.default_rng(4)
    b, n = shape
    x0, rec, h_prev = rand(rng, (b, 3 * n), dtype, 2.0), rand(rng, (b, 3 * n), dtype), rand(rng, (b, n), dtype)
    a_ref, h_ref = nans(x0.shape, dtype), nans((b, n), dtype)
    cells.gru_pointwise_forward(x0, rec, a_ref, h_prev, h_ref)

    buf = x0.copy()[None]
    x = buf[0]
    a = {"apart": nans(x0.shape, dtype), "same object": x, "two views": buf[0]}[alias]
    h = nans((b, n), dtype)
    nk.gru_pointwise_forward(x, rec, a, h_prev, h)
    assert_close(a, a_ref, f"gru activations ({alias})")
    assert_close(h, h_ref, f"gru h ({alias})")
    if alias == "apart":
        np.testing.assert_array_equal(x, x0, err_msg="x must stay intact when a is another array")


@pytest.mark.parametrize("rec_part", ["whole", "candidate"])
@pytest.mark.parametrize("alias", ["apart", "same object", "two views"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_backward_matches_reference(dtype: Any, shape: tuple, alias: str, rec_part: str) -> None:
    rng = np.random.default_rng(5)
    b, n = shape
    rec, h_prev, gh = rand(rng, (b, 3 * n), dtype), rand(rng, (b, n), dtype), rand(rng, (b, n), dtype)
    acts = nans((b, 3 * n), dtype)
    cells.gru_pointwise_forward(rand(rng, (b, 3 * n), dtype, 2.0), rec, acts, h_prev, nans((b, n), dtype))
    if rec_part == "candidate":
        rec = np.ascontiguousarray(rec[:, 2 * n :])
    dx_ref, drec_ref = nans(acts.shape, dtype), nans(acts.shape, dtype)
    direct_ref = cells.gru_pointwise_backward(acts, rec, h_prev, gh, dx_ref, drec_ref)

    buf = acts.copy()[None]
    a = buf[0]
    dx = {"apart": nans(acts.shape, dtype), "same object": a, "two views": buf[0]}[alias]
    drec = nans(acts.shape, dtype)
    direct = nk.gru_pointwise_backward(a, rec, h_prev, gh, dx, drec)
    assert_close(dx, dx_ref, f"gru dx ({alias}, {rec_part} rec)")
    assert_close(drec, drec_ref, f"gru drec ({alias}, {rec_part} rec)")
    assert_close(direct, direct_ref, f"gru direct dh_prev ({alias}, {rec_part} rec)")
    if alias == "apart":
        np.testing.assert_array_equal(a, acts, err_msg="a must stay intact when dx is another array")


# --- RNN: the two lines of RNNStep --------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_matches_reference(dtype: Any, shape: tuple) -> None:
    rng = np.random.default_rng(6)
    x, work, gh = rand(rng, shape, dtype, 2.0), rand(rng, shape, dtype, 2.0), rand(rng, shape, dtype)
    h_ref = x.copy()
    h_ref += work
    np.tanh(h_ref, out=h_ref)
    da_ref = np.multiply(h_ref, h_ref)
    np.subtract(1.0, da_ref, out=da_ref)
    da_ref *= gh

    h = x.copy()
    nk.rnn_pointwise_forward(h, work)
    assert_close(h, h_ref, "rnn h")
    da = nans(shape, dtype)
    nk.rnn_pointwise_backward(h_ref, gh, da)
    assert_close(da, da_ref, "rnn da")


# --- edge values: saturation, infinities, NaN ---------------------------------------------------------

EXTREMES = [0.0, -0.0, 1.0, -1.0, 9.0, -9.0, 20.0, -20.0, 88.0, -88.0, 1000.0, -1000.0, 1e30, -1e30]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("cell", "gates"), LSTM_LIKE)
def test_lstm_like_forward_extreme_preactivations(cell: str, gates: int, dtype: Any) -> None:
    """Pre-activations of +-1000 and +-1e30 saturate to the reference's exact limits, never NaN."""
    vals = np.array([*EXTREMES, np.finfo(dtype).max, -np.finfo(dtype).max, np.inf, -np.inf], dtype)
    n = vals.size
    rng = np.random.default_rng(7)
    # every value in every gate, against a spread of c_prev
    x = np.stack([np.roll(np.tile(vals, gates), k) for k in range(5)])
    c_prev = rand(rng, (5, n), dtype, 3.0)
    want = reference_lstm_like(cell, x, c_prev)
    a = x.copy()
    c, tc, h = (nans((5, n), dtype) for _ in range(3))
    getattr(nk, f"{cell}_pointwise_forward")(a, c_prev, c, tc, h)
    for what, got, ref in zip(("activations", "c", "tanh(c)", "h"), (a, c, tc, h), want):
        assert not np.isnan(got).any(), f"{cell} {what}: NaN"
        assert_close(got, ref, f"{cell} {what}")
    big = np.abs(x) >= 1000  # the limits themselves, exactly: 0 and 1 for sigmoid, +-1 for tanh
    np.testing.assert_array_equal(a[big], want[0][big], err_msg=f"{cell} saturated gates")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gates_limits_and_nan(dtype: Any) -> None:
    """sigmoid(-inf) = 0 and sigmoid(inf) = 1 exactly, tanh(+-inf) = +-1, NaN stays NaN (as NumPy)."""
    x = np.array([[-np.inf, np.inf, -1000.0, 1000.0, np.nan, -0.0, 0.0]], dtype)
    n = x.shape[1]
    a = np.concatenate([x, x, x], axis=1)  # GRU r and z are sigmoids, n a tanh (with r * rec = 0)
    h = nans((1, n), dtype)
    nk.gru_pointwise_forward(a, np.zeros_like(a), a, np.zeros((1, n), dtype), h)
    sig = np.array([0.0, 1.0, 0.0, 1.0, np.nan, 0.5, 0.5], dtype)
    tanh = np.array([-1.0, 1.0, -1.0, 1.0, np.nan, -0.0, 0.0], dtype)
    np.testing.assert_array_equal(a[0, :n], sig)
    np.testing.assert_array_equal(a[0, n : 2 * n], sig)
    np.testing.assert_array_equal(a[0, 2 * n :], tanh)
    t = x.copy()
    nk.rnn_pointwise_forward(t, np.zeros_like(t))
    np.testing.assert_array_equal(t, tanh[None])


def test_float32_tanh_and_sigmoid_accuracy() -> None:
    """The rational approximation over a dense float32 grid, against float64.

    Over every float32 the worst cases are 3.14e-7 (tanh, at 5.356) and 1.83e-7 (sigmoid); NumPy's
    float32 2 sigmoid(2x) - 1, the reference's g gate, is 1.8e-7 off.
    """
    x = np.linspace(-30, 30, 600_001, dtype=np.float32)[None]
    exact = np.tanh(x.astype(np.float64))
    t = x.copy()
    nk.rnn_pointwise_forward(t, np.zeros_like(t))
    assert np.abs(t - exact).max() <= 3.2e-7
    assert np.abs(t).max() <= 1.0
    a = np.concatenate([x, x, x], axis=1)
    n = x.shape[1]
    nk.gru_pointwise_forward(a, np.zeros_like(a), a, np.zeros_like(x), np.empty_like(x))
    s = a[:, :n]
    assert np.abs(s - 1.0 / (1.0 + np.exp(-x.astype(np.float64)))).max() <= 2e-7
    assert s.min() >= 0.0 and s.max() <= 1.0


# --- packaging -----------------------------------------------------------------------------------------


def test_warm_up_compiles_both_dtypes() -> None:
    nk.warm_up()
    kernels = [nk._lstm_forward, nk._lstm_backward, nk._cifg_forward, nk._cifg_backward]
    kernels += [nk._gru_forward, nk._gru_backward, nk._rnn_forward, nk._rnn_backward]
    for kernel in kernels:
        dtypes = {str(sig[0].dtype) for sig in kernel.signatures}
        assert {"float32", "float64"} <= dtypes, kernel


def test_without_numba_the_module_imports_and_compiles_nothing() -> None:
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "from models import numba_kernels as nk\n"
        "assert nk.available is False\n"
        "nk.warm_up()\n"
        "try:\n"
        "    nk.rnn_pointwise_forward(np.zeros((1, 1)), np.zeros((1, 1)))\n"
        "except RuntimeError as e:\n"
        "    print('raised:', e)\n"
    )
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "raised: models.numba_kernels: numba is not installed" in out.stdout
