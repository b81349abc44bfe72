"""PyTorch as an oracle: models.RNN/LSTM/GRU equal torch.nn.RNN/LSTM/GRU given the same weights.

Outputs, final states and every gradient (weights, biases, input, initial state) in float64, for one
and two layers, with and without an initial state, with fused and with primitive cells, and with
the workspace pool reusing arrays of every size.  Skipped,
visibly, where torch is not installed.  (CIFG has no torch counterpart: test_models_layers.py checks
it against its equations written out in NumPy.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import models
import tinygraph as tg
from tinygraph import backend

# every check here runs with each CPU gate math of the fused cells (numba, and the NumPy reference)
pytestmark = pytest.mark.usefixtures("gate_math")

torch = pytest.importorskip("torch")

PAIRS = {
    "rnn": (models.RNN, torch.nn.RNN),
    "lstm": (models.LSTM, torch.nn.LSTM),
    "gru": (models.GRU, torch.nn.GRU),
}
TOL = 1e-10


def host(a: Any) -> np.ndarray:
    return backend.to_numpy(a)


def pair(cell: str, inp: int, hidden: int, layers: int, fused: bool) -> tuple[models.Recurrent, Any]:
    """Our layer and torch's with the same (torch-initialised) weights, both float64."""
    ours_cls, torch_cls = PAIRS[cell]
    torch.manual_seed(len(cell) * 10 + layers)
    theirs = torch_cls(inp, hidden, num_layers=layers, batch_first=True).double()
    ours = ours_cls(inp, hidden, layers, fused=fused).astype(np.float64)
    ours.load_state_dict({n: p.detach().numpy() for n, p in theirs.named_parameters()})
    return ours, theirs


@pytest.mark.parametrize("cell", list(PAIRS))
def test_parameter_names_and_shapes_are_torchs(cell: str) -> None:
    ours_cls, torch_cls = PAIRS[cell]
    ours = ours_cls(3, 5, num_layers=2)
    theirs = torch_cls(3, 5, num_layers=2, batch_first=True)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, tuple(p.shape)) for n, p in theirs.named_parameters()
    ]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no-state"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", list(PAIRS))
def test_layer_equals_torch(
    device: str, workspace_pool: bool, cell: str, layers: int, with_state: bool, fused: bool
) -> None:
    batch, steps, inp, hidden = 3, 6, 4, 5
    ours, theirs = pair(cell, inp, hidden, layers, fused)
    rs = np.random.default_rng(layers)
    x = rs.uniform(-1, 1, (batch, steps, inp))
    has_c = cell == "lstm"
    state = [rs.uniform(-1, 1, (layers, batch, hidden)) for _ in range(2 if has_c else 1)] if with_state else None

    # ours
    x_ours = tg.tensor(x, requires_grad=True)
    s_ours = None if state is None else [tg.tensor(s, requires_grad=True) for s in state]
    out, final = ours(x_ours, None if s_ours is None else (tuple(s_ours) if has_c else s_ours[0]))
    outs_ours = [out, *final] if has_c else [out, final]
    # torch
    x_torch = torch.tensor(x, requires_grad=True)
    s_torch = None if state is None else [torch.tensor(s, requires_grad=True) for s in state]
    out_t, final_t = theirs(x_torch, None if s_torch is None else (tuple(s_torch) if has_c else s_torch[0]))
    outs_torch = [out_t, *final_t] if has_c else [out_t, final_t]

    # one random projection of every output, the same on both sides
    weights = [rs.standard_normal(o.shape) for o in outs_torch]
    loss_ours = None
    for o, w in zip(outs_ours, weights):
        term = (o * tg.tensor(w)).sum()
        loss_ours = term if loss_ours is None else loss_ours + term
    loss_ours.backward()
    sum((o * torch.from_numpy(w)).sum() for o, w in zip(outs_torch, weights)).backward()

    assert len(outs_ours) == len(outs_torch) == (3 if has_c else 2)
    for k, (a, b) in enumerate(zip(outs_ours, outs_torch)):
        assert a.shape == tuple(b.shape), k
        np.testing.assert_allclose(host(a.data), b.detach().numpy(), rtol=TOL, atol=TOL, err_msg=f"output {k}")
    np.testing.assert_allclose(host(x_ours.grad), x_torch.grad.numpy(), rtol=TOL, atol=TOL, err_msg="grad x")
    for k, (a, b) in enumerate(zip(s_ours or [], s_torch or [])):
        np.testing.assert_allclose(host(a.grad), b.grad.numpy(), rtol=TOL, atol=TOL, err_msg=f"grad state {k}")
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        expected = theirs_params[name].grad.numpy()
        assert np.abs(expected).max() > 1e-3, name  # a gradient that is all but zero would prove nothing
        np.testing.assert_allclose(host(p.grad), expected, rtol=TOL, atol=TOL, err_msg=f"grad {name}")


@pytest.mark.parametrize("cell", list(PAIRS))
def test_inter_layer_dropout_is_off_in_eval_mode_as_in_torch(cell: str) -> None:
    ours, theirs = pair(cell, 3, 4, 2, True)
    ours.dropout, theirs.dropout = 0.5, 0.5
    ours.eval()
    theirs.eval()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 5, 3))
    out, _ = ours(tg.tensor(x))
    with torch.no_grad():
        expected, _ = theirs(torch.tensor(x))
    np.testing.assert_allclose(host(out.data), expected.numpy(), rtol=TOL, atol=TOL)
    # and in training mode it does change the output
    ours.train()
    out_train, _ = ours(tg.tensor(x))
    assert not np.allclose(host(out_train.data), expected.numpy())


def test_float32_layer_is_close_to_torch_in_float32() -> None:
    """The default dtype: float32 all the way, agreeing with torch to float32 precision."""
    ours_cls, torch_cls = PAIRS["lstm"]
    torch.manual_seed(0)
    theirs = torch_cls(4, 8, num_layers=2, batch_first=True)
    ours = ours_cls(4, 8, 2)
    ours.load_state_dict({n: p.detach().numpy() for n, p in theirs.named_parameters()})
    x = np.random.default_rng(0).uniform(-1, 1, (3, 10, 4)).astype(np.float32)
    out, (h, c) = ours(tg.tensor(x))
    assert out.dtype == np.float32 and h.dtype == np.float32 and c.dtype == np.float32
    with torch.no_grad():
        expected, (h_t, c_t) = theirs(torch.tensor(x))
    np.testing.assert_allclose(host(out.data), expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host(h.data), h_t.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(host(c.data), c_t.numpy(), rtol=1e-5, atol=1e-6)
