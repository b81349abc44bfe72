"""Gradient flow over time: dL/dh_t read off the kept graph equals dL/dh_t computed independently."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import models
import tinygraph as tg
from cli.main import main
from viz.gradflow import GradientFlowError, geometric_rate, gradient_norms, hidden_gradients, plot_gradient_flow

B, T, IN, H = 2, 5, 3, 4
CLASSES = {"rnn": models.RNN, "lstm": models.LSTM, "gru": models.GRU, "cifg": models.CIFG}


def make(cell: str, fused: bool = True) -> models.Recurrent:
    tg.manual_seed(1)
    return CLASSES[cell](IN, H, fused=fused).astype(np.float64)


def data() -> tuple[tg.Tensor, np.ndarray]:
    rng = np.random.default_rng(7)
    return tg.tensor(rng.standard_normal((B, T, IN))), rng.standard_normal(H)


def suffix_loss(layer: models.Recurrent, x: tg.Tensor, v: np.ndarray, t: int, h: tg.Tensor, c: tg.Tensor | None):
    """L = sum(out[:, -1] * v) with the layer restarted at step t+1 from the state (h_t, c_t)."""
    state = (h, c) if c is not None else h
    out, _ = layer(tg.tensor(x.data[:, t + 1 :]), state)
    return (out[:, -1] * tg.tensor(v)).sum()


def state_at(layer: models.Recurrent, x: tg.Tensor, t: int) -> tuple[np.ndarray, np.ndarray | None]:
    """h_t (and c_t) after running steps 0..t, as plain arrays (1, B, H)."""
    with tg.no_grad():
        _, state = layer(tg.tensor(x.data[:, : t + 1]))
    if isinstance(state, tuple):
        return state[0].data.copy(), state[1].data.copy()
    return state.data.copy(), None


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "cifg"])
def test_read_off_the_graph_equals_the_gradient_of_a_restarted_suffix(cell: str, device: str) -> None:
    layer = make(cell)
    x, v = data()
    grads = hidden_gradients(layer, x, v)
    assert len(grads) == T and all(g.shape == (B, H) for g in grads)
    # the last step: L = sum(h_{T-1} * v), so dL/dh_{T-1} = v on every row
    np.testing.assert_allclose(grads[-1], np.broadcast_to(v, (B, H)), rtol=1e-12)
    for t in range(T - 1):
        h_arr, c_arr = state_at(layer, x, t)
        h = tg.Tensor(h_arr, requires_grad=True)
        c = tg.Tensor(c_arr) if c_arr is not None else None
        suffix_loss(layer, x, v, t, h, c).backward()
        np.testing.assert_allclose(grads[t], tg.backend.to_numpy(h.grad)[0], rtol=1e-9, atol=1e-14, err_msg=f"t={t}")


def test_agrees_with_central_differences_on_a_tiny_lstm() -> None:
    layer = make("lstm")
    x, v = data()
    grads = hidden_gradients(layer, x, v)
    t, eps = 1, 1e-6
    h_arr, c_arr = state_at(layer, x, t)
    numeric = np.zeros((B, H))
    for idx in np.ndindex(B, H):
        losses = []
        for sign in (1, -1):
            h = h_arr.copy()
            h[(0, *idx)] += sign * eps
            with tg.no_grad():
                losses.append(suffix_loss(layer, x, v, t, tg.Tensor(h), tg.Tensor(c_arr)).item())
        numeric[idx] = (losses[0] - losses[1]) / (2 * eps)
    np.testing.assert_allclose(grads[t], numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_primitive_cells_give_the_same_flow(cell: str) -> None:
    x, v = data()
    fused = hidden_gradients(make(cell, fused=True), x, v)
    primitive = hidden_gradients(make(cell, fused=False), x, v)
    for t in range(T):
        np.testing.assert_allclose(primitive[t], fused[t], rtol=1e-10, atol=1e-14, err_msg=f"t={t}")


def test_norms_reads_the_top_layer_of_a_stack() -> None:
    tg.manual_seed(1)
    layer = models.GRU(IN, H, num_layers=2).astype(np.float64)
    x, v = data()
    norms = gradient_norms(layer, x, v)
    assert norms.shape == (T,)
    assert norms[-1] == pytest.approx(np.linalg.norm(np.broadcast_to(v, (B, H))), rel=1e-12)
    assert np.all(norms > 0)
    rate = geometric_rate(norms)
    assert rate == pytest.approx((norms[0] / norms[-1]) ** (1 / (T - 1)))


def test_a_layer_without_time_steps_is_refused() -> None:
    x, v = data()
    w = tg.tensor(np.ones((IN, H)), requires_grad=True)
    with pytest.raises(GradientFlowError, match="time step"):
        hidden_gradients(lambda x: (tg.tanh(x @ w), None), x, v)


def test_plot_is_deterministic_svg_with_one_line_per_cell(tmp_path: Path) -> None:
    flows = {"RNN": np.array([1e-6, 1e-3, 1.0]), "LSTM": np.array([0.0, 1e-2, 1.0])}
    a = plot_gradient_flow(flows, tmp_path / "a.svg", title="test")
    b = plot_gradient_flow(flows, tmp_path / "b.svg", title="test")
    assert a.read_bytes() == b.read_bytes()
    svg = "{http://www.w3.org/2000/svg}"
    root = ET.parse(a).getroot()
    lines = [g for g in root.iter(f"{svg}g") if g.get("id", "").startswith("line2d_")]
    # the data lines and grid lines are clipped to the axes; the legend's sample lines are not
    legend_samples = [
        g for g in lines if g.find(f"{svg}path") is not None and not g.find(f"{svg}path").get("clip-path")
    ]
    assert len(legend_samples) == len(flows)
    assert b"<dc:date>" not in a.read_bytes()


def test_command_writes_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "flow.svg"
    assert main(["gradflow", "--cell", "rnn,lstm,gru", "--steps", "12", "--hidden-size", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("RNN", "LSTM", "GRU")) and f"wrote {out}" in printed
    ET.parse(out)
    assert main(["gradflow", "--steps", "1", "--out", str(tmp_path / "x.svg")]) == 2
    assert main(["gradflow", "--out", str(tmp_path / "x.txt")]) == 2
    with pytest.raises(SystemExit, match=r"^2$"):  # argparse's exit status for a bad argument
        main(["gradflow", "--cell", "rnn,transformer"])
    assert "cells are a comma-separated list of rnn, lstm, cifg, gru; got 'rnn,transformer'" in capsys.readouterr().err
