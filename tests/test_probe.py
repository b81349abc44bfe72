"""The BPTT probe: what it reads off the kept graph equals what is computed independently, it leaves the
model as it found it, and its history in the run directory survives a resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import models
import tinygraph as tg
from charlm.probe import (
    PROBE_FILE,
    SATURATION,
    ProbeError,
    ProbeHistory,
    RunProbe,
    load_probe,
    probe_window,
    run_probe,
)
from tinygraph import random as tg_random

VOCAB, EMBED, H = 7, 5, 6


def charlm(cell: str, fused: bool = True, num_layers: int = 1, extra: list | None = None) -> models.CharLM:
    tg.manual_seed(3)
    spec = [
        {"type": "Embedding", "dim": EMBED},
        {"type": cell, "hidden_size": H, "num_layers": num_layers},
        *(extra or []),
        {"type": "Dense", "size": "vocab"},
    ]
    model = models.CharLM.from_layers(VOCAB, spec, fused=fused).astype(np.float64)
    for _, p in model.named_parameters():  # non-zero biases everywhere, and weights large enough to matter
        p.data[...] = np.random.default_rng(p.data.size).uniform(-0.9, 0.9, p.data.shape)
    return model


def window(steps: int = 6, rows: int = 3) -> tg.Tensor:
    ids = np.random.default_rng(5).integers(0, VOCAB, 400)
    return probe_window(ids, steps // 2, rows)


def state_after(model: models.CharLM, ids: np.ndarray) -> tuple:
    """The recurrent state after reading ``ids`` (B, t): arrays."""
    with tg.no_grad():
        _, state = model(ids)
    return state


def last_step_loss(model: models.CharLM, ids: np.ndarray, y: np.ndarray, state: object) -> tg.Tensor:
    logits, _ = model.forward_time_major(np.ascontiguousarray(ids.T), state)
    return tg.softmax_cross_entropy(logits[ids.shape[1] - 1], y)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "CIFG", "GRU"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
def test_norms_equal_the_gradient_of_the_run_restarted_from_h_t(cell: str, fused: bool) -> None:
    model = charlm(cell, fused)
    w = window()
    result = run_probe(model, w)
    steps = w.x.shape[1]
    assert result.layers == [f"{cell} layer 0"] and result.norms.shape == (1, steps)
    for t in range(steps):
        state = state_after(model, w.x[:, : t + 1])
        h = tg.Tensor(
            state[0][0].data.copy() if isinstance(state[0], tuple) else state[0].data.copy(), requires_grad=True
        )
        if t == steps - 1:  # no step left: the loss reads h_{T-1} through the dense layer alone
            loss = tg.softmax_cross_entropy(model.layers[-1](h[0]), w.y)
        else:
            restart = ((h, state[0][1]),) if isinstance(state[0], tuple) else (h,)
            loss = last_step_loss(model, w.x[:, t + 1 :], w.y, restart)
        loss.backward()
        expected = np.linalg.norm(h.grad[0])
        assert result.norms[0, t] == pytest.approx(expected, rel=1e-9, abs=1e-300), f"t={t}"
    assert result.loss == pytest.approx(last_step_loss(model, w.x, w.y, None).item(), rel=1e-12)


def test_the_top_layer_of_a_stack_equals_the_restarted_run_and_both_forms_agree() -> None:
    w = window(8)
    fused, primitive = run_probe(charlm("GRU", True, 2), w), run_probe(charlm("GRU", False, 2), w)
    assert fused.layers == ["GRU layer 0", "GRU layer 1"]
    np.testing.assert_allclose(primitive.norms, fused.norms, rtol=1e-10)
    np.testing.assert_allclose(primitive.gate_mean, fused.gate_mean, rtol=1e-12)
    model = charlm("GRU", True, 2)
    t = 3
    (h0,) = state_after(model, w.x[:, : t + 1])
    h = tg.Tensor(h0.data.copy(), requires_grad=True)  # (2, B, H): layer 1's h_t is h[1]
    last_step_loss(model, w.x[:, t + 1 :], w.y, (h,)).backward()
    assert fused.norms[1, t] == pytest.approx(np.linalg.norm(h.grad[1]), rel=1e-9)


def test_two_recurrent_modules_are_two_tracks() -> None:
    model = charlm("LSTM", extra=[{"type": "GRU", "hidden_size": 4}])
    result = run_probe(model, window())
    assert result.layers == ["LSTM #1 layer 0", "GRU #2 layer 0"]
    assert result.gates == ["input gate", "forget gate", "output gate", "reset gate", "update gate"]
    assert np.isnan(result.gate_mean[0, 3]) and np.isnan(result.gate_mean[1, 0])
    assert np.all(result.norms > 0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
def test_lstm_gates_equal_a_forward_written_out_in_numpy(fused: bool) -> None:
    model = charlm("LSTM", fused)
    for _, p in model.named_parameters():
        p.data *= 3.0  # saturate some gates
    w = window(10)
    result = run_probe(model, w)
    p = {name: p.data for name, p in model.named_parameters()}
    x = p["0.weight"][w.x]  # (B, T, E)
    b, steps = w.x.shape
    h, c = np.zeros((b, H)), np.zeros((b, H))
    acts: dict[str, list[np.ndarray]] = {"input gate": [], "forget gate": [], "output gate": []}
    for t in range(steps):
        a = x[:, t] @ p["1.weight_ih_l0"].T + p["1.bias_ih_l0"] + h @ p["1.weight_hh_l0"].T + p["1.bias_hh_l0"]
        i, f, g, o = sigmoid(a[:, :H]), sigmoid(a[:, H : 2 * H]), np.tanh(a[:, 2 * H : 3 * H]), sigmoid(a[:, 3 * H :])
        c = f * c + i * g
        h = o * np.tanh(c)
        for name, v in (("input gate", i), ("forget gate", f), ("output gate", o)):
            acts[name].append(v)
    assert result.gates == list(acts)
    for j, name in enumerate(result.gates):
        v = np.stack(acts[name])
        assert result.gate_mean[0, j] == pytest.approx(v.mean(), rel=1e-12)
        assert result.gate_low[0, j] == pytest.approx((v < SATURATION).mean())
        assert result.gate_high[0, j] == pytest.approx((v > 1 - SATURATION).mean())
    assert (result.gate_low + result.gate_high).max() > 0.1, "the weights were meant to saturate some gates"


def test_the_probe_leaves_the_model_grads_mode_and_random_stream_as_they_were() -> None:
    model = charlm("LSTM", extra=[{"type": "Dropout", "p": 0.5}])
    model.train()
    grads = {name: np.full(p.shape, 7.0) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = grads[name]
    weights = model.state_dict()
    stream = tg_random.get_state()
    w = window()
    first, second = run_probe(model, w), run_probe(model, w)
    np.testing.assert_array_equal(first.norms, second.norms)  # eval mode: no dropout mask drawn
    assert tg_random.get_state() == stream
    assert model.training
    for name, p in model.named_parameters():
        assert p.grad is grads[name], name
        np.testing.assert_array_equal(p.data, weights[name])


def test_a_model_without_recurrent_layers_is_refused() -> None:
    tg.manual_seed(0)
    model = models.CharLM.from_layers(VOCAB, [{"type": "Embedding", "dim": 3}, {"type": "Dense", "size": "vocab"}])
    with pytest.raises(ProbeError, match="no recurrent layer"):
        run_probe(model, window())


def test_the_window_is_twice_the_training_window_spread_over_the_text() -> None:
    ids = np.arange(1000) % VOCAB
    w = probe_window(ids, 16, rows=4)
    assert w.x.shape == (4, 32) and w.y.shape == (4,)
    assert list(w.starts) == [0, 322, 644, 967]  # from the first character to the last window
    for row, start in enumerate(w.starts):
        np.testing.assert_array_equal(w.x[row], ids[start : start + 32])
        assert w.y[row] == ids[start + 32]
    short = probe_window(np.arange(10) % VOCAB, 16)
    assert short.x.shape == (1, 9)  # as long as the text allows
    with pytest.raises(ProbeError, match="at least 2"):
        probe_window(np.arange(1), 16)


def test_history_is_written_atomically_and_a_resume_keeps_it_up_to_its_step(tmp_path: Path) -> None:
    model = charlm("LSTM")
    ids = np.random.default_rng(1).integers(0, VOCAB, 300)
    probe = RunProbe(model, ids, 4, tmp_path, resumed_at=None)
    assert not (tmp_path / PROBE_FILE).exists()  # step 0 waits for the first evaluation
    for step in (5, 10, 15):
        probe.record(step, elapsed=step * 0.1)
    history = load_probe(tmp_path)
    assert isinstance(history, ProbeHistory)
    assert list(history.steps) == [0, 5, 10, 15]
    assert history.norms.shape == (4, 1, 8) and history.gate_mean.shape == (4, 1, 3)
    assert list(history.elapsed) == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert not list(tmp_path.glob(".*.tmp"))
    resumed = RunProbe(model, np.zeros(300, dtype=np.int64), 99, tmp_path, resumed_at=10)  # the window comes back
    np.testing.assert_array_equal(resumed.window.x, history.window.x)
    resumed.record(12, elapsed=1.2)
    again = load_probe(tmp_path)
    assert list(again.steps) == [0, 5, 10, 12]
    np.testing.assert_array_equal(again.norms[:3], history.norms[:3])


def test_a_damaged_probe_file_is_an_error_naming_it(tmp_path: Path) -> None:
    assert load_probe(tmp_path) is None
    (tmp_path / PROBE_FILE).write_bytes(b"not a zip")
    with pytest.raises(ProbeError, match=PROBE_FILE):
        load_probe(tmp_path)
