"""Layers and modules: Embedding, Dense, Dropout, parameters and state dicts, recurrent layer API.

Also the recurrent layers against their equations written out in NumPy (CIFG has no PyTorch
counterpart, so this is its oracle; the others are checked against torch in test_torch_oracle.py).
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


def host(a: Any) -> np.ndarray:
    return backend.to_numpy(a)


# --- Embedding ---------------------------------------------------------------------------------


def test_embedding_looks_up_rows_for_ids_of_any_shape(device: str) -> None:
    emb = models.Embedding(7, 3)
    assert emb.weight.shape == (7, 3) and emb.weight.dtype == np.float32
    ids = np.array([[0, 6, 2], [2, 2, 5]])
    out = emb(ids)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(host(out.data), host(emb.weight.data)[ids])
    assert emb(np.array(4)).shape == (3,)


def test_embedding_gradient_adds_up_over_repeated_ids(device: str) -> None:
    emb = models.Embedding(5, 2).astype(np.float64)
    ids = np.array([[1, 3, 1], [1, 0, 3]])
    g = np.random.default_rng(0).standard_normal((2, 3, 2))
    (emb(ids) * tg.tensor(g)).sum().backward()
    expected = np.zeros((5, 2))
    np.add.at(expected, ids, g)
    np.testing.assert_allclose(host(emb.weight.grad), expected, rtol=1e-14)
    assert np.all(host(emb.weight.grad)[[2, 4]] == 0.0)  # ids never seen get no gradient


# --- Dense -------------------------------------------------------------------------------------


def test_dense_applies_to_every_time_step(device: str) -> None:
    dense = models.Dense(4, 3).astype(np.float64)
    w, b = host(dense.weight.data), host(dense.bias.data)
    assert w.shape == (3, 4) and b.shape == (3,)
    bound = 1 / np.sqrt(4)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound and np.abs(b).max() > 0
    x = np.random.default_rng(0).standard_normal((2, 5, 4))
    out = dense(tg.tensor(x))
    assert out.shape == (2, 5, 3)
    np.testing.assert_allclose(host(out.data), x @ w.T + b, rtol=1e-13)
    # the same as applying it step by step
    for t in range(5):
        np.testing.assert_allclose(host(dense(tg.tensor(x[:, t])).data), host(out.data)[:, t], rtol=1e-13)


def test_dense_without_bias(device: str) -> None:
    dense = models.Dense(4, 2, bias=False)
    assert dense.bias is None
    assert [n for n, _ in dense.named_parameters()] == ["weight"]
    x = np.ones((3, 4), dtype=np.float32)
    np.testing.assert_allclose(host(dense(tg.tensor(x)).data), x @ host(dense.weight.data).T, rtol=1e-6)


def test_dense_gradcheck(device: str) -> None:
    rs = np.random.default_rng(0)
    x, w, b = rs.standard_normal((2, 3, 4)), rs.standard_normal((5, 4)), rs.standard_normal(5)
    dense = models.Dense(4, 5)

    def fn(x: tg.Tensor, w: tg.Tensor, b: tg.Tensor) -> tg.Tensor:
        dense.weight, dense.bias = w, b
        return dense(x)

    result = tg.gradcheck(fn, [x, w, b])
    assert result.ok, str(result)


# --- Dropout -----------------------------------------------------------------------------------


def test_dropout_is_the_identity_in_eval_mode(device: str) -> None:
    drop = models.Dropout(0.5).eval()
    x = tg.tensor(np.random.default_rng(0).standard_normal((4, 6, 8)), requires_grad=True)
    y = drop(x)
    np.testing.assert_array_equal(host(y.data), host(x.data))
    y.sum().backward()
    np.testing.assert_array_equal(host(x.grad), np.ones((4, 6, 8)))


def test_dropout_in_training_is_inverted_dropout(device: str) -> None:
    p = 0.25
    drop = models.Dropout(p)
    assert drop.training
    x = tg.tensor(np.random.default_rng(0).uniform(1, 2, (50, 40)), requires_grad=True)
    y = drop(x)
    kept = host(y.data) != 0
    # the survivors are scaled by 1 / (1 - p), so the expected value is unchanged
    np.testing.assert_allclose(host(y.data)[kept], host(x.data)[kept] / (1 - p), rtol=1e-14)
    assert 0.2 < 1 - kept.mean() < 0.3  # 2,000 draws: the dropped fraction is near p
    g = np.random.default_rng(1).standard_normal((50, 40))
    (y * tg.tensor(g)).sum().backward()
    np.testing.assert_allclose(host(x.grad), np.where(kept, g / (1 - p), 0.0), rtol=1e-14)
    # a new mask on every call
    assert not np.array_equal(host(drop(x).data) != 0, kept)


def test_dropout_zero_is_the_identity_even_in_training(device: str) -> None:
    x = tg.tensor(np.arange(6.0))
    np.testing.assert_array_equal(host(models.Dropout(0.0)(x).data), np.arange(6.0))


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_a_bad_probability(p: float) -> None:
    with pytest.raises(ValueError, match="dropout probability"):
        models.Dropout(p)


def test_train_and_eval_switch_every_submodule() -> None:
    model = models.CharLM.from_layers(
        5, [{"type": "Embedding", "dim": 3}, {"type": "Dropout", "p": 0.5}, {"type": "Dense", "size": "vocab"}]
    )
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


# --- parameters and state dicts ----------------------------------------------------------------


def small_model(seed: int = 0) -> models.CharLM:
    tg.manual_seed(seed)
    return models.CharLM.from_layers(
        6,
        [
            {"type": "Embedding", "dim": 4},
            {"type": "LSTM", "hidden_size": 5, "num_layers": 2},
            {"type": "RNNBlock", "hidden_size": 3, "cell": "GRU"},
            {"type": "Dense", "size": "vocab"},
        ],
    )


def test_named_parameters_are_dotted_paths_in_order() -> None:
    model = small_model()
    names = [n for n, _ in model.named_parameters()]
    rnn = [f"{kind}_l{k}" for k in range(2) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert names == [
        "0.weight",
        *(f"1.{n}" for n in rnn),
        *(f"2.rnn.{n}" for n in rnn[:4]),
        "2.proj.weight",
        "2.proj.bias",
        "3.weight",
        "3.bias",
    ]
    params = model.parameters()
    assert [id(p) for p in params] == [id(p) for _, p in model.named_parameters()]
    assert len({id(p) for p in params}) == len(params)
    assert all(p.requires_grad for p in params)
    # a parameter carries its own (local) name, shown on the graph nodes that use it
    assert dict(model.named_parameters())["1.weight_hh_l1"].name == "weight_hh_l1"


def test_state_dict_round_trip_gives_the_same_model(device: str) -> None:
    a, b = small_model(0), small_model(1)
    ids = np.array([[1, 2, 3, 0], [5, 4, 3, 2]])
    assert not np.allclose(host(a(ids)[0].data), host(b(ids)[0].data))
    sd = a.state_dict()
    assert list(sd) == [n for n, _ in a.named_parameters()]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    b.load_state_dict(sd)
    for name, p in b.named_parameters():
        np.testing.assert_array_equal(host(p.data), sd[name])
    np.testing.assert_array_equal(host(a(ids)[0].data), host(b(ids)[0].data))


def test_state_dict_is_a_copy_and_loading_keeps_the_tensors(device: str) -> None:
    model = small_model()
    sd = model.state_dict()
    before = host(model.parameters()[0].data).copy()
    sd["0.weight"][...] = 0.0  # editing the dict does not touch the model
    np.testing.assert_array_equal(host(model.parameters()[0].data), before)
    tensors = model.parameters()
    model.load_state_dict({n: v.astype(np.float64) for n, v in sd.items()})
    # loaded in place: the same tensor objects (an optimizer holding them stays valid), dtype kept
    assert all(p is q for p, q in zip(tensors, model.parameters()))
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert np.all(host(model.parameters()[0].data) == 0.0)


def test_load_state_dict_errors_name_the_weights() -> None:
    model = small_model()
    sd = model.state_dict()
    zeros = {k: np.zeros_like(v) for k, v in sd.items()}
    missing = {k: v for k, v in zeros.items() if k != "1.bias_hh_l1"}
    with pytest.raises(models.StateDictError, match=r"missing \['1.bias_hh_l1'\]"):
        model.load_state_dict(missing)
    with pytest.raises(models.StateDictError, match=r"unexpected \['extra'\]"):
        model.load_state_dict({**zeros, "extra": np.zeros(2)})
    # names are checked before anything is copied: the model is untouched
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(host(p.data), sd[name])
    wrong = {**sd, "3.weight": np.zeros((6, 3))}
    with pytest.raises(models.StateDictError, match=r"3.weight has shape \(6, 3\).*expects \(6, 5\)"):
        model.load_state_dict(wrong)
    assert issubclass(models.StateDictError, tg.TinygraphError)
    for exc_input, message in ((missing, "missing"), (wrong, "has shape")):
        with pytest.raises(tg.TinygraphError, match=message) as info:
            model.load_state_dict(exc_input)
        assert "\n" not in str(info.value)


def test_astype_float64_converts_parameters_and_computation(device: str) -> None:
    model = small_model()
    tensors = model.parameters()
    before = {n: host(p.data).copy() for n, p in model.named_parameters()}
    assert model.astype(np.float64) is model
    assert all(p is q for p, q in zip(tensors, model.parameters()))
    for name, p in model.named_parameters():
        assert p.dtype == np.float64, name
        np.testing.assert_array_equal(host(p.data), before[name].astype(np.float64))
    ids = np.array([[1, 2, 3]])
    loss, state = model.loss(ids, ids)
    assert loss.dtype == np.float64
    assert state[0][0].dtype == np.float64 and state[1].dtype == np.float64
    loss.backward()
    assert all(p.grad.dtype == np.float64 for p in model.parameters())


# --- recurrent layers: the API -----------------------------------------------------------------

CELLS = {"rnn": models.RNN, "lstm": models.LSTM, "cifg": models.CIFG, "gru": models.GRU}
GATES = {"rnn": 1, "lstm": 4, "cifg": 3, "gru": 3}


@pytest.mark.parametrize("cell", list(CELLS))
def test_recurrent_parameters_are_named_and_shaped_as_torch(cell: str) -> None:
    layer = CELLS[cell](3, 5, num_layers=2)
    g = GATES[cell] * 5
    assert [(n, p.shape) for n, p in layer.named_parameters()] == [
        ("weight_ih_l0", (g, 3)),
        ("weight_hh_l0", (g, 5)),
        ("bias_ih_l0", (g,)),
        ("bias_hh_l0", (g,)),
        ("weight_ih_l1", (g, 5)),
        ("weight_hh_l1", (g, 5)),
        ("bias_ih_l1", (g,)),
        ("bias_hh_l1", (g,)),
    ]
    # the defaults: one layer, no dropout, fused cells
    single = CELLS[cell](3, 5)
    assert (single.num_layers, single.dropout, single.fused) == (1, 0.0, True)
    assert len(single.parameters()) == 4
    bound = 1 / np.sqrt(5)  # torch's default initialisation range
    for _, p in layer.named_parameters():
        assert p.dtype == np.float32
        assert np.abs(host(p.data)).max() <= bound and np.abs(host(p.data)).max() > 0


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_recurrent_call_shapes_and_state_continuation(device: str, cell: str, fused: bool) -> None:
    """layer(x, state): batch-first in and out; running two halves with the carried state = one run."""
    layer = CELLS[cell](3, 4, num_layers=2, fused=fused).astype(np.float64)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 6, 3))
    out, state = layer(tg.tensor(x))
    assert out.shape == (2, 6, 4)
    parts = state if layer.has_cell_state else (state,)
    assert len(parts) == (2 if cell in ("lstm", "cifg") else 1)
    assert all(p.shape == (2, 2, 4) for p in parts)
    # the final h of the top layer is the last output
    np.testing.assert_array_equal(host(parts[0].data)[-1], host(out.data)[:, -1])
    first, mid = layer(tg.tensor(x[:, :2]))
    second, end = layer(tg.tensor(x[:, 2:]), models.detach_state(mid))
    np.testing.assert_allclose(host(first.data), host(out.data)[:, :2], rtol=1e-14)
    np.testing.assert_allclose(host(second.data), host(out.data)[:, 2:], rtol=1e-12, atol=1e-14)
    ends = end if layer.has_cell_state else (end,)
    for a, b in zip(ends, parts):
        np.testing.assert_allclose(host(a.data), host(b.data), rtol=1e-12, atol=1e-14)
    # no state is the same as a zero state
    zeros = tuple(tg.tensor(np.zeros((2, 2, 4))) for _ in parts)
    out0, _ = layer(tg.tensor(x), zeros if layer.has_cell_state else zeros[0])
    np.testing.assert_array_equal(host(out0.data), host(out.data))


@pytest.mark.parametrize("cell", list(CELLS))
def test_recurrent_layer_rejects_bad_input_and_state(cell: str) -> None:
    layer = CELLS[cell](3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"expects input \(batch, time, 3\)"):
        layer(tg.tensor(np.zeros((2, 5, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"expects input"):
        layer(tg.tensor(np.zeros((5, 3), dtype=np.float32)))
    bad = tg.tensor(np.zeros((1, 2, 4), dtype=np.float32))  # one layer's worth, the layer has two
    with pytest.raises(ValueError, match="state"):
        layer(tg.tensor(np.zeros((2, 5, 3), dtype=np.float32)), (bad, bad) if layer.has_cell_state else bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 0}, r"^LSTM hidden_size must be a positive integer, not 0$"),
        ({"hidden_size": 2.0}, r"^LSTM hidden_size must be a positive integer, not 2\.0$"),
        ({"num_layers": 0}, r"^LSTM num_layers must be a positive integer, not 0$"),
        ({"input_size": True}, r"^LSTM input_size must be a positive integer, not True$"),
        ({"dropout": 1.0}, r"^dropout probability must be in \[0, 1\), not 1\.0$"),
    ],
    ids=["hidden_size 0", "hidden_size 2.0", "num_layers 0", "input_size True", "dropout 1"],
)
def test_recurrent_layer_rejects_bad_sizes(kwargs: dict[str, Any], message: str) -> None:
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        models.LSTM(**args)


# --- recurrent layers against their equations in NumPy ------------------------------------------


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def reference(cell: str, weights: dict[str, np.ndarray], x: np.ndarray, state: list[np.ndarray], layers: int) -> Any:
    """The cell equations, one step and one layer at a time, plainly."""
    hs, cs = [], []
    seq = x
    for k in range(layers):
        w_ih, w_hh = weights[f"weight_ih_l{k}"], weights[f"weight_hh_l{k}"]
        b_ih, b_hh = weights[f"bias_ih_l{k}"], weights[f"bias_hh_l{k}"]
        h = state[0][k]
        c = state[1][k] if len(state) > 1 else None
        outs = []
        for t in range(seq.shape[1]):
            xa = seq[:, t] @ w_ih.T + b_ih
            ha = h @ w_hh.T + b_hh
            if cell == "rnn":
                h = np.tanh(xa + ha)
            elif cell == "lstm":
                i, f, g, o = np.split(xa + ha, 4, axis=1)
                c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
                h = sigmoid(o) * np.tanh(c)
            elif cell == "cifg":
                ai, ag, ao = np.split(xa + ha, 3, axis=1)
                i, g, o = sigmoid(ai), np.tanh(ag), sigmoid(ao)
                c = (1 - i) * c + i * g
                h = o * np.tanh(c)
            else:
                xr, xz, xn = np.split(xa, 3, axis=1)
                hr, hz, hn = np.split(ha, 3, axis=1)
                r, z = sigmoid(xr + hr), sigmoid(xz + hz)
                n = np.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
            outs.append(h)
        seq = np.stack(outs, axis=1)
        hs.append(h)
        cs.append(c)
    return seq, np.stack(hs), (np.stack(cs) if cs[0] is not None else None)


# hidden 1: W_hh^T is then already row-major, and the fused steps must still copy it, not alias it
@pytest.mark.parametrize("hidden", [6, 1])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_recurrent_layer_matches_the_numpy_equations(device: str, cell: str, fused: bool, hidden: int) -> None:
    layers, batch, steps, inp = 2, 3, 5, 4
    layer = CELLS[cell](inp, hidden, layers, fused=fused).astype(np.float64)
    rs = np.random.default_rng(7)
    weights = {n: rs.uniform(-0.8, 0.8, p.shape) for n, p in layer.named_parameters()}
    layer.load_state_dict(weights)
    x = rs.uniform(-1, 1, (batch, steps, inp))
    state = [rs.uniform(-1, 1, (layers, batch, hidden)) for _ in range(2 if layer.has_cell_state else 1)]
    out, final = layer(
        tg.tensor(x), tuple(tg.tensor(s) for s in state) if layer.has_cell_state else tg.tensor(state[0])
    )
    ref_out, ref_h, ref_c = reference(cell, weights, x, state, layers)
    np.testing.assert_allclose(host(out.data), ref_out, rtol=1e-12, atol=1e-14)
    h = final[0] if layer.has_cell_state else final
    np.testing.assert_allclose(host(h.data), ref_h, rtol=1e-12, atol=1e-14)
    if layer.has_cell_state:
        np.testing.assert_allclose(host(final[1].data), ref_c, rtol=1e-12, atol=1e-14)
    for name, p in layer.named_parameters():  # the forward pass left every weight as it was
        np.testing.assert_array_equal(host(p.data), weights[name], err_msg=name)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
def test_cifg_gradients_match_differences_of_the_numpy_equations(device: str, fused: bool) -> None:
    """CIFG's backward against central differences of the independent NumPy reference, per parameter."""
    layers, batch, steps, inp, hidden = 2, 2, 4, 3, 3
    layer = models.CIFG(inp, hidden, layers, fused=fused).astype(np.float64)
    rs = np.random.default_rng(11)
    weights = {n: rs.uniform(-0.8, 0.8, p.shape) for n, p in layer.named_parameters()}
    layer.load_state_dict(weights)
    x = rs.uniform(-1, 1, (batch, steps, inp))
    state = [rs.uniform(-1, 1, (layers, batch, hidden)) for _ in range(2)]
    r_out, r_h, r_c = (rs.standard_normal(s) for s in ((batch, steps, hidden), *(2 * [(layers, batch, hidden)])))

    def ref_loss(w: dict[str, np.ndarray], x: np.ndarray, state: list[np.ndarray]) -> float:
        out, h, c = reference("cifg", w, x, state, layers)
        return float((out * r_out).sum() + (h * r_h).sum() + (c * r_c).sum())

    xt = tg.tensor(x, requires_grad=True)
    st = [tg.tensor(s, requires_grad=True) for s in state]
    out, (h, c) = layer(xt, tuple(st))
    ((out * tg.tensor(r_out)).sum() + (h * tg.tensor(r_h)).sum() + (c * tg.tensor(r_c)).sum()).backward()
    analytic = {n: host(p.grad) for n, p in layer.named_parameters()}
    analytic["x"], analytic["h0"], analytic["c0"] = host(xt.grad), host(st[0].grad), host(st[1].grad)

    eps = 1e-6
    for name, g in analytic.items():
        numeric = np.zeros_like(g)
        for idx in np.ndindex(g.shape):
            values = []
            for sign in (1, -1):
                w = {k: v.copy() for k, v in weights.items()}
                xs, ss = x.copy(), [s.copy() for s in state]
                target = {"x": xs, "h0": ss[0], "c0": ss[1]}.get(name, w.get(name))
                target[idx] += sign * eps
                values.append(ref_loss(w, xs, ss))
            numeric[idx] = (values[0] - values[1]) / (2 * eps)
        err = np.abs(g - numeric).max() / max(np.abs(numeric).max(), 1e-12)
        assert err < 1e-6, (name, err)
