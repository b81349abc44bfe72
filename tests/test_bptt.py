"""Backpropagation through time: the unrolled graph, fused against primitive cells, gradient checks.

Every recurrent layer is checked in both of its forms (one fused op per step, or the cell written
out in primitive ops) over several steps, two layers, a non-zero initial state and non-zero biases:
outputs, final states and the gradients of all parameters, of the input and of the initial state.
The edge sizes (one step, which is first and last; one hidden unit; a batch of one) and dropout
between the layers are checked too, and the checks run a second time with the workspace pool
reusing arrays of every size (``workspace_pool``), as it does for the large arrays of training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import bind

import models
import tinygraph as tg
from models.recurrent import CELLS
from tinygraph import backend

# every check here runs with each CPU gate math of the fused cells (numba, and the NumPy reference)
pytestmark = pytest.mark.usefixtures("gate_math")

# the gate tags a primitive step carries (besides "recurrent", "gates", "hidden")
PARTS = {
    "rnn": {"hidden"},
    "lstm": {"input gate", "forget gate", "cell candidate", "output gate", "cell", "hidden"},
    "cifg": {"input gate", "cell candidate", "output gate", "cell", "hidden"},
    "gru": {"reset gate", "update gate", "candidate", "hidden"},
}
TOL = 1e-6  # worst relative error of a float64 central-difference check
DROPOUT_SEED = 11  # set before every evaluation: each one draws the same dropout masks


def host(a: Any) -> np.ndarray:
    return backend.to_numpy(a)


def make_layer(
    cell: str,
    input_size: int,
    hidden: int,
    layers: int = 2,
    fused: bool = True,
    seed: int = 0,
    scale: float = 0.7,
    dropout: float = 0.0,
) -> models.Recurrent:
    """A float64 layer whose weights and (non-zero) biases are drawn from ``seed``, whatever the form."""
    layer = CELLS[cell](input_size, hidden, layers, dropout=dropout, fused=fused).astype(np.float64)
    rs = np.random.default_rng(seed)
    layer.load_state_dict({n: rs.uniform(-scale, scale, p.shape) for n, p in layer.named_parameters()})
    return layer


def initial_state(cell: str, layers: int, batch: int, hidden: int, seed: int = 1) -> list[np.ndarray]:
    rs = np.random.default_rng(seed)
    count = 2 if CELLS[cell].has_cell_state else 1
    return [rs.uniform(-0.9, 0.9, (layers, batch, hidden)) for _ in range(count)]


def layer_fn(layer: models.Recurrent, names: list[str]) -> Any:
    """fn(x, *state, *params) -> (outputs, *final state): every input a gradcheck can perturb."""
    n_state = 2 if layer.has_cell_state else 1

    def fn(x: tg.Tensor, *rest: tg.Tensor) -> tuple[tg.Tensor, ...]:
        state, params = rest[:n_state], rest[n_state:]
        bind(layer, dict(zip(names, params)))
        tg.manual_seed(DROPOUT_SEED)  # dropout draws from the framework's stream: the same masks every time
        out, final = layer(x, state if layer.has_cell_state else state[0])
        return (out, *final) if layer.has_cell_state else (out, final)

    return fn


def check_inputs(layer: models.Recurrent, x: np.ndarray, state: list[np.ndarray]) -> tuple[list[str], list[Any]]:
    names = [n for n, _ in layer.named_parameters()]
    return names, [x, *state, *(host(p.data) for _, p in layer.named_parameters())]


# --- gradient checks of the whole unrolled layer ----------------------------------------------------


# (batch, steps, input, hidden, layers, dropout between the layers)
SIZES = {
    "B2-T4-H2": (2, 4, 3, 2, 2, 0.0),
    "T1": (2, 1, 3, 2, 2, 0.0),  # the one step is the first and the last
    "H1": (2, 4, 3, 1, 2, 0.0),
    "B1": (1, 4, 3, 2, 2, 0.0),
    "dropout": (2, 4, 3, 2, 2, 0.4),
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_bptt_gradcheck_elementwise(device: str, workspace_pool: bool, cell: str, fused: bool, size: str) -> None:
    batch, steps, inp, hidden, layers, dropout = SIZES[size]
    layer = make_layer(cell, inp, hidden, layers, fused, dropout=dropout)
    x = np.random.default_rng(2).uniform(-1, 1, (batch, steps, inp))
    names, inputs = check_inputs(layer, x, initial_state(cell, layers, batch, hidden))
    fn = layer_fn(layer, names)
    if dropout:  # the masks drop something, and the same in every evaluation
        first, again = (host(fn(*map(tg.tensor, inputs))[0].data) for _ in range(2))
        np.testing.assert_array_equal(first, again)
        layer.eval()
        assert not np.allclose(host(fn(*map(tg.tensor, inputs))[0].data), first)
        layer.train()
    result = tg.gradcheck(fn, inputs, tol=TOL)
    assert result.ok, str(result)
    # every input was checked, and every one of them influences the outputs: its numerical
    # gradient (which does not trust the backward) is not zero
    assert len(result.errors) == len(inputs) == len(result.numeric_max)
    assert all(m is not None and m > 1e-3 for m in result.numeric_max), result.numeric_max


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_bptt_gradcheck_directional_long_unroll(device: str, workspace_pool: bool, cell: str, fused: bool) -> None:
    batch, steps, inp, hidden, layers = 3, 20, 4, 5, 2
    layer = make_layer(cell, inp, hidden, layers, fused, seed=3)
    x = np.random.default_rng(4).uniform(-1, 1, (batch, steps, inp))
    names, inputs = check_inputs(layer, x, initial_state(cell, layers, batch, hidden, seed=5))
    fn = layer_fn(layer, names)
    for seed in (0, 1):  # two random directions
        result = tg.gradcheck_directional(fn, inputs, tol=TOL, seed=seed)
        assert result.ok, str(result)


def test_gradcheck_notices_a_wrong_weight_gradient(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: a step op whose weight gradient is off by 1 % is caught."""
    layer = make_layer("rnn", 3, 2, 1, fused=True)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 4, 3))
    names, inputs = check_inputs(layer, x, initial_state("rnn", 1, 2, 2))
    original = models.cells.RNNStep.backward

    def off_by_one_percent(self: Any, gh: Any) -> Any:
        d, dh, dw = original(self, gh)
        return d, dh, None if dw is None else dw * 1.01

    monkeypatch.setattr(models.cells.RNNStep, "backward", off_by_one_percent)
    result = tg.gradcheck(layer_fn(layer, names), inputs, tol=TOL)
    assert not result.ok
    assert result.errors[names.index("weight_hh_l0") + 2] > 1e-3


# --- the two forms of every cell agree -----------------------------------------------------------


def run(layer: models.Recurrent, x: np.ndarray, state: list[np.ndarray] | None, seed: int = 9) -> dict[str, Any]:
    """Forward and backward of sum <output_k, R_k>; every value and gradient on the host."""
    for p in layer.parameters():
        p.grad = None
    xt = tg.tensor(x, requires_grad=True)
    st = None if state is None else [tg.tensor(s, requires_grad=True) for s in state]
    out, final = layer(xt, None if st is None else (tuple(st) if layer.has_cell_state else st[0]))
    outs = [out, *final] if layer.has_cell_state else [out, final]
    rs = np.random.default_rng(seed)
    loss = None
    for o in outs:
        term = (o * tg.tensor(rs.standard_normal(o.shape))).sum()
        loss = term if loss is None else loss + term
    loss.backward()
    result = {f"out{k}": host(o.data) for k, o in enumerate(outs)}
    result["grad x"] = host(xt.grad)
    for k, s in enumerate(st or []):
        result[f"grad state{k}"] = host(s.grad)
    for name, p in layer.named_parameters():
        result[f"grad {name}"] = host(p.grad)
    return result


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no-state"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_fused_and_primitive_agree(device: str, workspace_pool: bool, cell: str, with_state: bool) -> None:
    batch, steps, inp, hidden, layers = 3, 7, 4, 5, 2
    x = np.random.default_rng(0).uniform(-1, 1, (batch, steps, inp))
    state = initial_state(cell, layers, batch, hidden) if with_state else None
    fused = run(make_layer(cell, inp, hidden, layers, fused=True), x, state)
    primitive = run(make_layer(cell, inp, hidden, layers, fused=False), x, state)
    assert fused.keys() == primitive.keys()
    assert len(fused) == (2 if cell in ("lstm", "cifg") else 1) * (2 if with_state else 1) + 1 + 1 + 4 * layers
    for key in fused:
        assert fused[key].dtype == np.float64, key
        np.testing.assert_allclose(fused[key], primitive[key], rtol=1e-12, atol=1e-13, err_msg=key)
        assert np.abs(fused[key]).max() > 1e-3, f"{key} is (almost) zero: the comparison would prove nothing"


# hidden sizes whose W_hh (G*H x H) has 32K elements or more: the size at which the fused steps
# take dL/dh_{t-1} as the transposed product (W_hh^T dA^T)^T on the CPU for B <= 32
WIDE = {"rnn": 192, "lstm": 96, "cifg": 112, "gru": 112}


@pytest.mark.parametrize("cell", list(CELLS))
def test_fused_and_primitive_agree_where_backward_takes_the_transposed_product(
    device: str, cell: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch, steps, inp, hidden, layers = 3, 4, 5, WIDE[cell], 2
    taken = []
    original = models.cells.Sequence.back_through_w_hh

    def spy(self: Any, d: Any, w_hh: Any) -> Any:
        taken.append(self.transposed_backward)
        return original(self, d, w_hh)

    monkeypatch.setattr(models.cells.Sequence, "back_through_w_hh", spy)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, steps, inp))
    state = initial_state(cell, layers, batch, hidden)
    fused = run(make_layer(cell, inp, hidden, layers, fused=True, scale=0.1), x, state)
    primitive = run(make_layer(cell, inp, hidden, layers, fused=False, scale=0.1), x, state)
    # the GRU keeps the plain product (its step adds into dL/dh_{t-1}); the GPU always does
    assert taken and all(taken) == (device == "cpu" and cell != "gru")
    for key in fused:
        np.testing.assert_allclose(fused[key], primitive[key], rtol=1e-11, atol=1e-13, err_msg=key)


@pytest.mark.parametrize("cell", list(CELLS))
def test_fused_and_primitive_agree_on_a_graph_deeper_than_a_thousand_nodes(workspace_pool: bool, cell: str) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (2, 300, 3))
    primitive_layer = make_layer(cell, 3, 4, 1, fused=False, scale=0.4)
    primitive = run(primitive_layer, x, None)
    fused = run(make_layer(cell, 3, 4, 1, fused=True, scale=0.4), x, None)
    for key in fused:
        np.testing.assert_allclose(fused[key], primitive[key], rtol=1e-11, atol=1e-13, err_msg=key)
    out, _ = primitive_layer(tg.tensor(x))
    assert len(tg.Graph.of(out.sum()).nodes) > 1000


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_outputs_depend_only_on_the_past(cell: str, fused: bool) -> None:
    """d output_t / d x_s is zero for s > t and non-zero for s <= t: BPTT reaches back, never forward."""
    steps, t = 6, 3
    layer = make_layer(cell, 3, 4, 2, fused)
    x = tg.tensor(np.random.default_rng(0).uniform(-1, 1, (2, steps, 3)), requires_grad=True)
    out, _ = layer(x)
    out[:, t].sum().backward()
    per_step = np.abs(host(x.grad)).sum(axis=(0, 2))
    assert np.all(per_step[t + 1 :] == 0.0)
    assert np.all(per_step[: t + 1] > 1e-6)


# --- the unrolled graph: one group of nodes per step, the input projection hoisted ----------------


def unrolled_graph(cell: str, fused: bool, steps: int, layers: int) -> tuple[tg.Graph, models.Recurrent]:
    layer = make_layer(cell, 3, 4, layers, fused)
    state = [tg.tensor(s) for s in initial_state(cell, layers, 2, 4)]
    out, _ = layer(tg.tensor(np.ones((2, steps, 3))), tuple(state) if layer.has_cell_state else state[0])
    return tg.Graph.of(out.sum()), layer


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_unroll_tags_every_step_with_layer_and_time(cell: str, fused: bool) -> None:
    steps, layers = 5, 2
    graph, _ = unrolled_graph(cell, fused, steps, layers)
    stepped = [n for n in graph.nodes if "t" in n.scope]
    assert {(n.scope["layer"], n.scope["t"]) for n in stepped} == {(k, t) for k in range(layers) for t in range(steps)}
    assert all(n.scope["cell"] == cell for n in stepped)
    if fused:
        # exactly one node per (layer, step): the fused cell op
        assert len(stepped) == steps * layers
        assert {n.name for n in stepped} == {f"{cell}_step"}
    else:
        for k in range(layers):
            for t in range(steps):
                group = [n for n in stepped if n.scope["layer"] == k and n.scope["t"] == t]
                parts = {n.scope.get("part") for n in group}
                assert PARTS[cell] <= parts, (k, t, parts)
        # every step of a layer has the same ops: the group repeats
        sizes = {sum(1 for n in stepped if n.scope["t"] == t) for t in range(steps)}
        assert len(sizes) == 1
    # nodes within a layer come in step order (the tape is time-ordered)
    for k in range(layers):
        ts = [n.scope["t"] for n in stepped if n.scope["layer"] == k]
        assert ts == sorted(ts)


@pytest.mark.parametrize("cell", list(CELLS))
def test_every_node_of_a_primitive_step_names_its_part(cell: str) -> None:
    """A drawing groups a step's ops by their part: none may be left untagged."""
    graph, _ = unrolled_graph(cell, False, 3, 2)
    untagged = [n for n in graph.nodes if "t" in n.scope and "part" not in n.scope]
    assert untagged == []


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_input_projection_is_one_linear_node_per_layer_outside_the_loop(cell: str, fused: bool) -> None:
    steps, layers, batch, hidden = 6, 2, 2, 4
    graph, layer = unrolled_graph(cell, fused, steps, layers)
    for k in range(layers):
        outside = [n for n in graph.nodes if n.scope.get("layer") == k and "t" not in n.scope and n.name == "linear"]
        assert len(outside) == 1, outside
        node = outside[0]
        assert node.scope["part"] == "input projection"
        # all steps at once, time-major: (T, B, G*H)
        assert node.out_meta[0][0] == (steps, batch, CELLS[cell].gates * hidden)
        # the input weight is read by that node and by no node inside the time loop
        w_ih = layer._params[f"weight_ih_l{k}"]
        readers = [consumer for leaf, consumer, _ in graph.leaves if leaf is w_ih]
        assert readers == [node]
        # the recurrent weight is read once per step, inside the loop
        w_hh = layer._params[f"weight_hh_l{k}"]
        readers = [consumer for leaf, consumer, _ in graph.leaves if leaf is w_hh]
        assert len(readers) == steps
        assert sorted(n.scope["t"] for n in readers) == list(range(steps))


# --- truncated BPTT through the character model ---------------------------------------------------

LM_SPEC = [
    {"type": "Embedding", "dim": 5},
    {"type": "LSTM", "hidden_size": 6, "num_layers": 2},
    {"type": "GRU", "hidden_size": 4},
    {"type": "Dense", "size": "vocab"},
]
VOCAB = 7


def char_model(fused: bool = True) -> models.CharLM:
    tg.manual_seed(3)
    return models.CharLM.from_layers(VOCAB, LM_SPEC, fused=fused).astype(np.float64)


def windows(seed: int = 0) -> tuple[np.ndarray, ...]:
    ids = np.random.default_rng(seed).integers(0, VOCAB, (3, 2 * 6 + 1))
    return ids[:, :6], ids[:, 1:7], ids[:, 6:12], ids[:, 7:13]


def state_tensors(state: Any) -> list[tg.Tensor]:
    if isinstance(state, tg.Tensor):
        return [state]
    return [t for s in state for t in state_tensors(s)]


def grads(model: models.Module) -> dict[str, np.ndarray]:
    return {n: host(p.grad).copy() for n, p in model.named_parameters()}


def test_loss_returns_a_detached_state_that_carries_into_the_next_window(device: str) -> None:
    model = char_model()
    x1, y1, x2, y2 = windows()
    loss1, state1 = model.loss(x1, y1)
    assert len(state1) == 2 and isinstance(state1[0], tuple)  # (h, c) of the LSTM, h of the GRU
    carried = state_tensors(state1)
    assert len(carried) == 3
    assert all(t.creator is None and not t.requires_grad for t in carried)
    assert [t.shape for t in carried] == [(2, 3, 6), (2, 3, 6), (1, 3, 4)]

    loss2, _ = model.loss(x2, y2, state1)
    loss2.backward()
    truncated = grads(model)
    # the walk stopped at the carried state: the first window's graph was neither visited nor released
    first = tg.Graph.of(loss1).nodes
    assert first and all(n.op is not None and n.inputs for n in first)

    # the same numbers as a fresh model given the carried state as plain constant arrays
    fresh = char_model()
    fresh.load_state_dict(model.state_dict())
    constants = ((host(state1[0][0].data), host(state1[0][1].data)), host(state1[1].data))
    loss2_fresh, _ = fresh.loss(x2, y2, constants)
    loss2_fresh.backward()
    assert loss2_fresh.item() == pytest.approx(loss2.item(), rel=1e-14)
    for name, g in grads(fresh).items():
        np.testing.assert_allclose(truncated[name], g, rtol=1e-12, atol=1e-14, err_msg=name)

    # the first window's graph is still whole: it backpropagates on its own afterwards
    model_grads_before = grads(model)
    loss1.backward()
    assert any(not np.allclose(model_grads_before[n], g) for n, g in grads(model).items())


def test_without_truncation_the_gradient_reaches_the_first_window(device: str) -> None:
    """The comparison above is sensitive: an undetached state gives different parameter gradients."""
    model = char_model()
    x1, _, x2, y2 = windows()
    _, state1 = model.forward_time_major(tg.tensor(x1.T).data)
    assert any(t.creator is not None for t in state_tensors(state1))
    logits, _ = model.forward_time_major(tg.tensor(x2.T).data, state1)
    tg.softmax_cross_entropy(logits, y2.T).backward()
    full = grads(model)

    truncated_model = char_model()
    _, state1 = truncated_model.loss(x1, x2)  # any targets: only the carried state is used
    loss2, _ = truncated_model.loss(x2, y2, state1)
    loss2.backward()
    truncated = grads(truncated_model)
    assert loss2.item() == pytest.approx(float(tg.softmax_cross_entropy(logits, y2.T).item()), rel=1e-12)
    assert any(not np.allclose(full[n], truncated[n], rtol=1e-6) for n in full)
    # the embedding rows of the first window's characters get gradient only without truncation
    only_first = sorted(set(x1.ravel()) - set(x2.ravel()))
    if only_first:
        assert np.all(truncated["0.weight"][only_first] == 0.0)
        assert np.abs(full["0.weight"][only_first]).max() > 0.0


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
def test_charlm_gradcheck_over_two_truncated_windows(fused: bool) -> None:
    """The gradient of the second window's loss w.r.t. every weight and the carried state."""
    model = char_model(fused)
    x1, y1, x2, y2 = windows(1)
    _, state1 = model.loss(x1, y1)
    names = [n for n, _ in model.named_parameters()]
    carried = state_tensors(state1)

    def fn(h_lstm: tg.Tensor, c_lstm: tg.Tensor, h_gru: tg.Tensor, *params: tg.Tensor) -> tg.Tensor:
        bind(model, dict(zip(names, params)))
        return model.loss(x2[:, :4], y2[:, :4], ((h_lstm, c_lstm), h_gru))[0]

    inputs = [host(t.data) for t in carried] + [host(p.data) for p in model.parameters()]
    for seed in range(3):  # ~1,000 numbers: random directions instead of one element at a time
        result = tg.gradcheck_directional(fn, inputs, tol=TOL, seed=seed)
        assert result.ok, str(result)
