"""The CuPy backend: fused-cell kernels and layers against the CPU, CharLM training, checkpoints, dropout.

Tests that compare the GPU with the CPU take the ``gpu`` fixture and skip, with the reason, where
CuPy or a GPU is missing (they fail instead where TINYGRAPH_REQUIRE_GPU=1 says a GPU must be
there).  Tests that take ``device`` run on NumPy everywhere and on CuPy where it runs.  The rest
run anywhere: the kernel module must import without CuPy, and its wrappers and kernel sources are
checked against each other (the sources are compiled only where CuPy runs).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cell_reference import gate_inputs, gru_reference, lstm_reference
from conftest import skip_without_gpu

import models
import tinygraph as tg
from models import cuda_kernels
from models.charlm import CharLM
from tinygraph import backend, checkpoint

ROOT = Path(__file__).resolve().parents[1]
CELLS: dict[str, type[models.Recurrent]] = {
    "rnn": models.RNN,
    "lstm": models.LSTM,
    "cifg": models.CIFG,
    "gru": models.GRU,
}
# (dtype, rtol = atol) for GPU against CPU: summation orders differ (cuBLAS, atomics), nothing else
TOLERANCES = {np.float64: 1e-10, np.float32: 1e-5}


@pytest.fixture
def gpu() -> Iterator[Any]:
    """The cupy module, for tests that compare the GPU with the CPU; skipped with the reason if none
    (a failure under TINYGRAPH_REQUIRE_GPU=1)."""
    skip_without_gpu()
    import cupy

    previous = tg.get_device()
    try:
        yield cupy
    finally:
        tg.set_device(previous)


@contextmanager
def on(device: str) -> Iterator[None]:
    previous = tg.get_device()
    tg.set_device(device)
    try:
        yield
    finally:
        tg.set_device(previous)


def host(a: Any) -> np.ndarray:
    return backend.to_numpy(a)


def assert_same_results(gpu_run: dict[str, np.ndarray], cpu_run: dict[str, np.ndarray], tol: float) -> None:
    assert gpu_run.keys() == cpu_run.keys()
    for key, want in cpu_run.items():
        got = gpu_run[key]
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape, key
        assert np.isfinite(got).all(), key
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=key)


# --- the kernels against the step equations ----------------------------------------------------------
# The references are the cell equations written plainly in float64 (tests/cell_reference.py, which
# test_cell_math.py also holds the NumPy gate math to); the whole-layer tests below compare with it.


def compare_step(got: dict[str, Any], want: dict[str, np.ndarray], dtype: Any) -> None:
    assert_same_results(
        {k: host(v) for k, v in got.items()}, {k: v.astype(dtype) for k, v in want.items()}, TOLERANCES[dtype]
    )
    assert all(np.abs(v).max() > 1e-2 for v in want.values())  # no comparison of zeros


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("cell", ["lstm", "cifg"])
def test_lstm_and_cifg_kernels_match_the_step_equations(gpu: Any, cell: str, dtype: Any) -> None:
    batch, hidden = 3, 5
    cifg = cell == "cifg"
    forward = cuda_kernels.cifg_forward if cifg else cuda_kernels.lstm_forward
    backward = cuda_kernels.cifg_backward if cifg else cuda_kernels.lstm_backward
    v = gate_inputs(batch, hidden, 3 if cifg else 4, dtype, seed=1)
    f64 = {k: a.astype(np.float64) for k, a in v.items()}
    want = lstm_reference(f64["rec"][1] + f64["x"][1], f64["state"], f64["gh"], f64["gc"], cifg)

    g = {k: gpu.asarray(a) for k, a in v.items()}
    a = g["rec"].copy()  # holds h_prev W_hh^T on entry
    c, tc, h = (gpu.zeros((batch, hidden), dtype) for _ in range(3))
    forward(a[1], g["x"][1], g["state"], c, tc, h)
    da = gpu.zeros_like(a)
    dc_prev = backward(a[1], g["state"], tc, g["gh"], g["gc"], da[1])
    compare_step({"a": a[1], "c": c, "tc": tc, "h": h, "da": da[1], "dc_prev": dc_prev}, want, dtype)
    np.testing.assert_array_equal(host(a[0]), v["rec"][0])  # the other row of the buffers is untouched
    assert (host(da[0]) == 0).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_gru_kernels_match_the_step_equations(gpu: Any, dtype: Any) -> None:
    batch, hidden = 4, 3
    v = gate_inputs(batch, hidden, 3, dtype, seed=2)
    f64 = {k: a.astype(np.float64) for k, a in v.items()}
    want = gru_reference(f64["x"][1], f64["rec"][1], f64["state"], f64["gh"])

    g = {k: gpu.asarray(a) for k, a in v.items()}
    a = gpu.zeros_like(g["rec"])
    h = gpu.zeros((batch, hidden), dtype)
    cuda_kernels.gru_forward(g["x"][1], g["rec"][1], a[1], g["state"], h)
    dx, drec = gpu.zeros_like(a), gpu.zeros_like(a)
    direct = cuda_kernels.gru_backward(a[1], g["rec"][1], g["state"], g["gh"], dx[1], drec[1])
    compare_step({"a": a[1], "h": h, "dx": dx[1], "drec": drec[1], "direct": direct}, want, dtype)
    assert (host(a[0]) == 0).all() and (host(dx[0]) == 0).all() and (host(drec[0]) == 0).all()


# --- whole layers: GPU against CPU ---------------------------------------------------------------------


def run_layer(cell: str, device: str, dtype: Any, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Forward and backward of a 2-layer unroll with a carried initial state; everything on the host."""
    batch, steps, inp, hidden, layers = 3, 6, 4, 5, 2
    rs = np.random.default_rng(7)
    x = rs.uniform(-1, 1, (batch, steps, inp)).astype(dtype)
    state = [rs.uniform(-0.9, 0.9, (layers, batch, hidden)).astype(dtype) for _ in range(2)]
    with on(device):
        layer = CELLS[cell](inp, hidden, layers).astype(dtype)
        layer.load_state_dict(weights)
        xt = tg.tensor(x, requires_grad=True)
        st = [tg.tensor(s, requires_grad=True) for s in state[: 2 if layer.has_cell_state else 1]]
        out, final = layer(xt, tuple(st) if layer.has_cell_state else st[0])
        outs = [out, *final] if layer.has_cell_state else [out, final]
        loss = None
        for o in outs:
            term = (o * tg.tensor(rs.standard_normal(o.shape).astype(dtype))).sum()
            loss = term if loss is None else loss + term
        loss.backward()
        assert backend.device_of(out.data) == device and out.dtype == dtype
        result = {f"out{k}": host(o.data) for k, o in enumerate(outs)}
        result["grad x"] = host(xt.grad)
        result.update({f"grad state{k}": host(s.grad) for k, s in enumerate(st)})
        result.update({f"grad {n}": host(p.grad) for n, p in layer.named_parameters()})
    return result


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_fused_layer_on_gpu_equals_cpu(gpu: Any, cell: str, dtype: Any) -> None:
    rs = np.random.default_rng(3)
    with on("cpu"):
        shapes = {n: p.shape for n, p in CELLS[cell](4, 5, 2).named_parameters()}
    weights = {n: rs.uniform(-0.7, 0.7, s) for n, s in shapes.items()}  # biases non-zero too
    cpu_run = run_layer(cell, "cpu", dtype, weights)
    gpu_run = run_layer(cell, "gpu", dtype, weights)
    assert len(cpu_run) == 1 + 1 + 8 + (4 if cell in ("lstm", "cifg") else 2)
    assert_same_results(gpu_run, cpu_run, TOLERANCES[dtype])
    assert all(np.abs(v).max() > 1e-3 for v in cpu_run.values())  # no comparison of zeros


# --- the character model ---------------------------------------------------------------------------------

VOCAB = 7
STATE_ARRAYS = 6  # the carried state of ALL_CELLS: LSTM (h, c), GRU block h, CIFG (h, c), RNN h
ALL_CELLS = [
    {"type": "Embedding", "dim": 6},
    {"type": "LSTM", "hidden_size": 7, "num_layers": 2},
    {"type": "RNNBlock", "hidden_size": 5, "cell": "GRU"},
    {"type": "CIFG", "hidden_size": 6},
    {"type": "RNN", "hidden_size": 4},
    {"type": "Dense", "size": "vocab"},
]


def batches(count: int, batch: int = 3, steps: int = 8, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Windows of a periodic id sequence with a little noise: learnable in a few steps."""
    rs = np.random.default_rng(seed)
    ids = np.arange(count * batch * steps + 1) % (VOCAB - 2)
    ids[rs.random(ids.size) < 0.05] = VOCAB - 1
    x, y = ids[:-1].reshape(count, batch, steps), ids[1:].reshape(count, batch, steps)
    return [(x[k], y[k]) for k in range(count)]


def train(model: CharLM, opt: tg.optim.Optimizer, data: list, state: Any = None) -> tuple[list[float], Any]:
    losses = []
    for x, y in data:
        loss, state = model.loss(backend.to_device(x), backend.to_device(y), state)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        tg.optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
    return losses, state


def new_model(spec: list[dict[str, Any]], dtype: Any = np.float32, seed: int = 0) -> CharLM:
    tg.manual_seed(seed)
    return CharLM.from_layers(VOCAB, spec).astype(dtype)


def test_charlm_training_steps_on_gpu_equal_cpu(gpu: Any) -> None:
    with on("cpu"):
        cpu_model = new_model(ALL_CELLS, np.float64)
        start = cpu_model.state_dict()
        cpu_losses, cpu_state = train(cpu_model, tg.optim.Adam(cpu_model.parameters(), lr=0.01), batches(3))
    with on("gpu"):
        gpu_model = new_model(ALL_CELLS, np.float64, seed=1)
        gpu_model.load_state_dict(start)
        gpu_losses, gpu_state = train(gpu_model, tg.optim.Adam(gpu_model.parameters(), lr=0.01), batches(3))
    assert all(isinstance(p.data, gpu.ndarray) for p in gpu_model.parameters())
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-10)
    for (name, p), q in zip(gpu_model.named_parameters(), cpu_model.parameters()):
        np.testing.assert_allclose(host(p.data), q.data, rtol=1e-10, atol=1e-10, err_msg=name)
        assert np.abs(q.data - start[name]).max() > 1e-3, f"{name} was not trained"
    # the carried (detached) state of every recurrent layer, h and c alike
    flat_gpu, flat_cpu = [], []
    for g_s, c_s in zip(gpu_state, cpu_state):
        g_parts = g_s if isinstance(g_s, tuple) else (g_s,)
        c_parts = c_s if isinstance(c_s, tuple) else (c_s,)
        flat_gpu += [host(t.data) for t in g_parts]
        flat_cpu += [t.data for t in c_parts]
    assert len(flat_gpu) == STATE_ARRAYS
    for a, b in zip(flat_gpu, flat_cpu):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_charlm_with_dropout_trains_on_the_default_device(device: str) -> None:
    spec = [
        {"type": "Embedding", "dim": 8},
        {"type": "LSTM", "hidden_size": 16, "num_layers": 2, "dropout": 0.2},
        {"type": "Dropout", "p": 0.2},
        {"type": "GRU", "hidden_size": 12},
        {"type": "Dense", "size": "vocab"},
    ]
    model = new_model(spec)  # float32, the training default
    opt = tg.optim.Adam(model.parameters(), lr=0.03)
    losses, state = train(model, opt, batches(40, batch=4, steps=10))
    xp = backend.default_xp()
    assert all(isinstance(p.data, xp.ndarray) and p.dtype == np.float32 for p in model.parameters())
    assert all(isinstance(t.data, xp.ndarray) for s in state for t in (s if isinstance(s, tuple) else (s,)))
    assert np.isfinite(losses).all()
    # from ln(7) = 1.95 nats: the period-5 pattern is learnt despite the dropout noise
    assert np.mean(losses[-5:]) < 0.4 * np.mean(losses[:5]), losses


# --- checkpoints written from the GPU ------------------------------------------------------------------


def save_run(path: Path, model: CharLM, opt: tg.optim.Optimizer, state: Any) -> None:
    o_arrays, o_meta = opt.state_dict()
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": v for k, v in o_arrays.items()})
    parts = [t for s in state for t in (s if isinstance(s, tuple) else (s,))]
    arrays.update({f"state/{k}": t.data for k, t in enumerate(parts)})  # device arrays, as the trainer has them
    checkpoint.save(path, arrays, {"optimizer": o_meta})


def load_run(path: Path, device: str, spec: list) -> tuple[CharLM, tg.optim.Optimizer, dict[str, np.ndarray]]:
    arrays, meta = checkpoint.load(path)
    assert all(type(a) is np.ndarray for a in arrays.values())  # host arrays whatever wrote them
    with on(device):
        model = new_model(spec, np.float64, seed=99)  # other weights until loaded
        model.load_state_dict({k[6:]: a for k, a in arrays.items() if k.startswith("model/")})
        opt = tg.optim.Adam(model.parameters(), lr=0.01)
        opt.load_state_dict({k[6:]: a for k, a in arrays.items() if k.startswith("optim/")}, meta["optimizer"])
    return model, opt, arrays


def test_gpu_checkpoint_loads_on_cpu_and_back(gpu: Any, tmp_path: Path) -> None:
    data = batches(4)
    with on("gpu"):
        model = new_model(ALL_CELLS, np.float64)
        opt = tg.optim.Adam(model.parameters(), lr=0.01)
        _, state = train(model, opt, data[:2])
    path = tmp_path / "gpu.npz"
    save_run(path, model, opt, state)

    cpu_model, cpu_opt, arrays = load_run(path, "cpu", ALL_CELLS)
    gpu_model, gpu_opt, _ = load_run(path, "gpu", ALL_CELLS)
    assert any(k.startswith("optim/m.") for k in arrays) and any(k.startswith("state/") for k in arrays)
    for (name, p), q, r in zip(model.named_parameters(), cpu_model.parameters(), gpu_model.parameters()):
        assert isinstance(q.data, np.ndarray) and isinstance(r.data, gpu.ndarray)
        np.testing.assert_array_equal(q.data, host(p.data), err_msg=name)
        np.testing.assert_array_equal(host(r.data), host(p.data), err_msg=name)
    for name, bufs in opt.state.items():
        for b, cb, gb in zip(bufs, cpu_opt.state[name], gpu_opt.state[name]):
            assert isinstance(cb, np.ndarray) and isinstance(gb, gpu.ndarray)
            np.testing.assert_array_equal(cb, host(b))
            np.testing.assert_array_equal(host(gb), host(b))

    # training goes on alike from the file on either device and from the live GPU run
    def carried(device: str) -> tuple[Any, ...]:
        saved = iter(arrays[f"state/{k}"] for k in range(STATE_ARRAYS))
        with on(device):
            return tuple(
                tuple(tg.tensor(next(saved)) for _ in s) if isinstance(s, tuple) else tg.tensor(next(saved))
                for s in state
            )

    with on("gpu"):
        live, _ = train(model, opt, data[2:], state)
        from_file_gpu, _ = train(gpu_model, gpu_opt, data[2:], carried("gpu"))
    with on("cpu"):
        from_file_cpu, _ = train(cpu_model, cpu_opt, data[2:], carried("cpu"))
    np.testing.assert_allclose(from_file_gpu, live, rtol=1e-12)
    np.testing.assert_allclose(from_file_cpu, live, rtol=1e-10)


def test_checkpoint_from_the_default_device_holds_host_arrays(device: str, tmp_path: Path) -> None:
    model = new_model(ALL_CELLS, np.float64)
    opt = tg.optim.Adam(model.parameters(), lr=0.01)
    _, state = train(model, opt, batches(1))
    path = tmp_path / "run.npz"
    save_run(path, model, opt, state)
    cpu_model, cpu_opt, arrays = load_run(path, "cpu", ALL_CELLS)
    assert sum(k.startswith("state/") for k in arrays) == STATE_ARRAYS
    for (name, p), q in zip(model.named_parameters(), cpu_model.parameters()):
        np.testing.assert_array_equal(q.data, host(p.data), err_msg=name)
    assert cpu_opt.step_count == 1 and cpu_opt.state["m"][0] is not None


# --- dropout drawn on the device ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_dropout_mask_is_drawn_on_the_gpu(gpu: Any, dtype: Any) -> None:
    p, shape = 0.3, (300, 200)
    with on("gpu"):
        x = tg.tensor(np.random.default_rng(0).uniform(0.5, 2.0, shape).astype(dtype), requires_grad=True)
        tg.manual_seed(11)
        y = tg.dropout(x, p)
        after = tg.random.get_rng().bit_generator.state
        y.sum().backward()  # x.grad is the mask
        again = tg.dropout(x, p)
        tg.manual_seed(11)
        replay = tg.dropout(x, p)
    assert isinstance(y.data, gpu.ndarray) and isinstance(x.grad, gpu.ndarray) and y.dtype == dtype
    mask = host(x.grad)
    scale = dtype(1 / (1 - p))
    assert set(np.unique(mask)) == {0.0, scale}
    np.testing.assert_array_equal(host(y.data), host(x.data) * mask)
    kept = (mask != 0).mean()
    assert abs(kept - (1 - p)) < 0.01  # binomial sd ~0.0019 over 60,000 draws: five of them
    # rows and columns alike: no stripes from the element index feeding the generator (sd < 0.033)
    assert np.abs((mask != 0).mean(axis=0) - (1 - p)).max() < 0.2
    assert np.abs((mask != 0).mean(axis=1) - (1 - p)).max() < 0.2
    np.testing.assert_array_equal(host(replay.data), host(y.data))  # reproducible from the seed
    both = ((host(again.data) != 0) & (mask != 0)).mean()
    assert abs(both - (1 - p) ** 2) < 0.01  # the next call draws an independent mask
    # one 64-bit draw from the host stream per call, not one number per element
    expected = np.random.default_rng(11)
    expected.integers(0, 2**64, dtype=np.uint64)
    assert after == expected.bit_generator.state


def test_dropout_on_the_cpu_draws_from_the_host_stream() -> None:
    """The NumPy path keeps its definition: keep where rng.random(shape) >= p, scale by 1 / (1 - p)."""
    with on("cpu"):
        x = tg.tensor(np.ones((6, 7)), requires_grad=True)
        tg.manual_seed(4)
        y = tg.dropout(x, 0.4)
    keep = np.random.default_rng(4).random((6, 7)) >= 0.4
    np.testing.assert_array_equal(y.data, keep * (1 / 0.6))


# --- what runs anywhere: the kernel module without CuPy ---------------------------------------------------


def test_kernel_module_imports_without_cupy() -> None:
    """CuPy is imported inside the functions only: hide it, and the import still works."""
    code = (
        "import sys\n"
        "sys.modules['cupy'] = None  # any 'import cupy' now raises ImportError\n"
        "import models.cells, models.cuda_kernels as k\n"
        "assert sorted(k.KERNELS) == ['cifg_backward', 'cifg_forward', 'gru_backward', 'gru_forward',"
        " 'lstm_backward', 'lstm_forward']\n"
        "import numpy as np\n"
        "try:\n"
        "    k.lstm_forward(*[np.zeros((2, 4))] * 6)\n"
        "except ImportError:\n"
        "    print('needs cupy at call time')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "needs cupy at call time"


def params(spec: str) -> list[tuple[str, bool]]:
    """'raw T a, T c' -> [('a', True), ('c', False)]."""
    out = []
    for part in spec.split(","):
        words = part.split()
        out.append((words[-1], words[0] == "raw"))
    return out


GATES = {"lstm": 4, "cifg": 3, "gru": 3}


@pytest.mark.parametrize("key", list(cuda_kernels.KERNELS))
def test_kernel_sources_use_their_parameters_as_declared(key: str) -> None:
    src = cuda_kernels.KERNELS[key]
    body = re.sub(r"//[^\n]*", "", src.body)
    ins, outs = params(src.in_params), params(src.out_params)
    names = [n for n, _ in ins + outs]
    assert len(set(names)) == len(names) and "i" not in names
    assert src.name.startswith("tinygraph_") and src.name.isidentifier()
    assert body.count("(") == body.count(")") and body.count("[") == body.count("]")
    gates = GATES[key.partition("_")[0]]
    assert f"a.shape()[1] / {gates};" in body and f"* {gates} * hid" in body
    for name, raw in ins + outs:
        uses = re.findall(rf"(?<![\w.]){name}\b(\s*\[|\.shape\(\))?", body)
        assert uses, f"{key}: parameter {name} is never used"
        if raw:  # a (B, G*H) array: only ever indexed at a gate position (or asked its shape)
            assert all(u for u in uses), f"{key}: raw {name} used without an index"
        else:  # a (B, H) element: never indexed
            assert not any(u for u in uses), f"{key}: element {name} indexed"
    for name, raw in outs:
        if raw:  # every gate of the unit is written
            for g in range(gates):
                offset = "" if g == 0 else (" + hid" if g == 1 else f" + {g} * hid")
                assert re.search(rf"\b{name}\[at{re.escape(offset)}\] =", body), f"{key}: {name} gate {g}"
        else:
            assert re.search(rf"(?<![\w.]){name} =", body), f"{key}: output {name} never assigned"
    for name, _ in ins:
        assert not re.search(rf"(?<![\w.]){name}(\[[^\]]*\])? =(?!=)", body), f"{key}: input {name} written"


# kernel parameter -> wrapper parameter, where the names differ
KERNEL_TO_WRAPPER = {"x": "x_t", "dc_prev": "<result>", "gz": "<result>"}


@pytest.mark.parametrize("key", list(cuda_kernels.KERNELS))
def test_wrappers_pass_their_arguments_in_kernel_order(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each wrapper hands the kernel its arrays in the kernel's (inputs, outputs) order."""
    src = cuda_kernels.KERNELS[key]
    kernel_names = [n for n, _ in params(src.in_params) + params(src.out_params)]
    calls: list[tuple[Any, ...]] = []
    made: list[np.ndarray] = []

    def fake_empty_like(a: np.ndarray) -> np.ndarray:
        made.append(np.empty_like(a))
        return made[-1]

    monkeypatch.setattr(cuda_kernels, "_kernel", lambda k: lambda *args: calls.append((k, args)))
    monkeypatch.setattr(cuda_kernels, "_empty_like", fake_empty_like)
    wrapper = getattr(cuda_kernels, key)
    arg_names = list(inspect.signature(wrapper).parameters)
    args = {n: np.full((2, 3), float(k)) for k, n in enumerate(arg_names)}
    returned = wrapper(*args.values())
    assert len(calls) == 1 and calls[0][0] == key
    passed = calls[0][1]
    assert len(passed) == len(kernel_names)
    # name what the kernel got after the wrapper parameter (or the allocated result) it is
    by_id = {id(v): n for n, v in args.items()} | {id(m): "<result>" for m in made}
    got = [by_id.get(id(p), "?") for p in passed]
    assert got == [KERNEL_TO_WRAPPER.get(n, n) for n in kernel_names]
    if made:
        assert returned is made[0]
    else:
        assert returned is None
