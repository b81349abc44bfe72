"""The character language model: built from a layer description, loss, forward, sampling, RNNBlock.

Ends with the proof that it learns: a two-layer LSTM overfits a 2,000-character text.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import bind

import models
import tinygraph as tg
from tinygraph import backend
from tinygraph import graph as tg_graph

VOCAB = 9


def host(a: Any) -> np.ndarray:
    return backend.to_numpy(a)


def spec(*middle: dict[str, Any], dim: int = 6) -> list[dict[str, Any]]:
    return [{"type": "Embedding", "dim": dim}, *middle, {"type": "Dense", "size": "vocab"}]


def ids(batch: int, steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, steps))


def state_parts(state: Any) -> list[tg.Tensor]:
    """h, or (h, c), as a list."""
    return [state] if isinstance(state, tg.Tensor) else list(state)


# --- building from a layer description ---------------------------------------------------------


def test_every_layer_type_builds_with_chained_sizes() -> None:
    layers = spec(
        {"type": "LSTM", "hidden_size": 8, "num_layers": 2, "dropout": 0.1},
        {"type": "Dropout", "p": 0.2},
        {"type": "GRU", "hidden_size": 7},
        {"type": "RNNBlock", "hidden_size": 5, "cell": "CIFG"},
        {"type": "RNN", "hidden_size": 4},
        {"type": "CIFG", "hidden_size": 3},
        {"type": "Dense", "size": 10},
    )
    model = models.CharLM.from_layers(VOCAB, layers)
    kinds = [type(m) for m in model.layers]
    assert kinds == [
        models.Embedding,
        models.LSTM,
        models.Dropout,
        models.GRU,
        models.RNNBlock,
        models.RNN,
        models.CIFG,
        models.Dense,
        models.Dense,
    ]
    emb, lstm, drop, gru, block, rnn, cifg, dense, out = model.layers
    assert (emb.vocab, emb.dim) == (VOCAB, 6)
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout) == (6, 8, 2, 0.1)
    assert drop.p == 0.2
    assert (gru.input_size, gru.hidden_size) == (8, 7)
    assert isinstance(block.rnn, models.CIFG) and (block.rnn.input_size, block.rnn.hidden_size) == (7, 5)
    assert (block.proj.in_features, block.proj.out_features) == (5, 7)
    assert (rnn.input_size, cifg.input_size, cifg.hidden_size) == (7, 4, 3)
    assert (dense.in_features, dense.out_features) == (3, 10)
    assert (out.in_features, out.out_features) == (10, VOCAB)
    assert len(model.recurrent_layers()) == 5
    assert model.layers_spec == layers and model.layers_spec is not layers
    logits, state = model(ids(2, 3))
    assert logits.shape == (2, 3, VOCAB) and len(state) == 5


def test_the_fused_flag_reaches_every_recurrent_layer_and_changes_no_number() -> None:
    layers = spec({"type": "LSTM", "hidden_size": 5}, {"type": "RNNBlock", "hidden_size": 4, "cell": "GRU"})
    fused = models.CharLM.from_layers(VOCAB, layers).astype(np.float64)
    primitive = models.CharLM.from_layers(VOCAB, layers, fused=False).astype(np.float64)
    assert fused.layers[1].fused and fused.layers[2].rnn.fused
    assert not primitive.layers[1].fused and not primitive.layers[2].rnn.fused
    primitive.load_state_dict(fused.state_dict())
    x, y = ids(3, 5), ids(3, 5, seed=1)
    a, b = fused.loss(x, y)[0], primitive.loss(x, y)[0]
    assert a.item() == pytest.approx(b.item(), rel=1e-13)


def test_a_dense_of_the_vocabulary_size_given_as_a_number_is_accepted() -> None:
    model = models.CharLM.from_layers(VOCAB, [{"type": "Embedding", "dim": 4}, {"type": "Dense", "size": VOCAB}])
    assert model.layers[-1].out_features == VOCAB


BAD_SPECS = {
    "empty list": ([], "non-empty list"),
    "not a list": ({"type": "Embedding", "dim": 4}, "non-empty list"),
    "first layer not Embedding": ([{"type": "LSTM", "hidden_size": 4}, {"type": "Dense", "size": "vocab"}], "layers"),
    "only a Dense": ([{"type": "Dense", "size": "vocab"}], r"layers\[0\] must be an Embedding"),
    "last layer not Dense": (spec({"type": "LSTM", "hidden_size": 4})[:-1], "last"),
    "last Dense not to vocab": ([*spec({"type": "Dense", "size": 8})[:-1], {"type": "Dense", "size": 5}], "last"),
    "second Embedding": (spec({"type": "Embedding", "dim": 4}), r"layers\[1\].*only come first"),
    "unknown type": (spec({"type": "Transformer", "hidden_size": 4}), r"layers\[1\].*unknown layer type"),
    "no type": (spec({"hidden_size": 4}), r"layers\[1\]"),
    "not a table": (spec("LSTM"), r"layers\[1\]"),  # type: ignore[arg-type]
    "unknown key": (spec({"type": "LSTM", "hidden_size": 4, "hiden": 2}), r"layers\[1\]\.hiden"),
    "key of another type": (spec({"type": "Dropout", "dropout": 0.1}), r"layers\[1\]\.dropout"),
    "missing key": (spec({"type": "GRU"}), r"layers\[1\].*needs hidden_size"),
    "zero hidden size": (spec({"type": "RNN", "hidden_size": 0}), r"hidden_size must be a positive integer"),
    "float hidden size": (spec({"type": "RNN", "hidden_size": 4.0}), r"hidden_size must be a positive integer"),
    "bool hidden size": (spec({"type": "RNN", "hidden_size": True}), r"hidden_size must be a positive integer"),
    "string hidden size": (spec({"type": "RNN", "hidden_size": "4"}), r"hidden_size must be a positive integer"),
    "zero layers": (spec({"type": "LSTM", "hidden_size": 4, "num_layers": 0}), r"num_layers"),
    "negative dim": (spec(dim=-3), r"layers\[0\]\.dim"),
    "bad dense size": (spec({"type": "Dense", "size": "big"}), r"layers\[1\]\.size"),
    "zero dense size": (spec({"type": "Dense", "size": 0}), r"layers\[1\]\.size"),
    "dropout of one": (spec({"type": "LSTM", "hidden_size": 4, "dropout": 1.0}), r"layers\[1\]\.dropout"),
    "negative dropout": (spec({"type": "Dropout", "p": -0.1}), r"layers\[1\]\.p"),
    "string dropout": (spec({"type": "Dropout", "p": "0.5"}), r"layers\[1\]\.p"),
    "bad block cell": (spec({"type": "RNNBlock", "hidden_size": 4, "cell": "Elman"}), r"layers\[1\]\.cell"),
}


@pytest.mark.parametrize("name", list(BAD_SPECS))
def test_a_bad_layer_description_is_one_clear_layer_error(name: str) -> None:
    layers, message = BAD_SPECS[name]
    with pytest.raises(models.LayerSpecError, match=message) as info:
        models.CharLM.from_layers(VOCAB, layers)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, tg.TinygraphError)


@pytest.mark.parametrize("vocab", [0, -1, 2.5])
def test_a_bad_vocabulary_size_is_a_layer_error(vocab: Any) -> None:
    with pytest.raises(models.LayerSpecError, match="vocabulary size"):
        models.CharLM.from_layers(vocab, spec())


# --- loss and forward --------------------------------------------------------------------------


def lm(cell: str = "LSTM", **kw: Any) -> models.CharLM:
    tg.manual_seed(1)
    return models.CharLM.from_layers(VOCAB, spec({"type": cell, "hidden_size": 5, "num_layers": 2}), **kw)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "CIFG", "GRU"])
def test_loss_is_the_mean_cross_entropy_of_the_forward_logits(device: str, cell: str) -> None:
    model = lm(cell).astype(np.float64)
    x, y = ids(3, 7), ids(3, 7, seed=1)
    logits, state = model(x)
    assert logits.shape == (3, 7, VOCAB)
    z = host(logits.data)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, y[..., None], -1).mean()
    loss, loss_state = model.loss(x, y)
    assert loss.shape == () and loss.requires_grad
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # the same final state from both calls, shaped as torch's: (layers, batch, hidden)
    for a, b in zip(state_parts(state[0]), state_parts(loss_state[0])):
        assert a.shape == (2, 3, 5)
        np.testing.assert_array_equal(host(a.data), host(b.data))
    # an untrained model is near the uniform guess
    assert abs(loss.item() - np.log(VOCAB)) < 0.5
    # and the loss backpropagates into every parameter
    loss.backward()
    assert all(p.grad is not None and np.abs(host(p.grad)).max() > 0 for p in model.parameters())


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "CIFG", "GRU"])
def test_the_first_layer_projects_the_embedding_table_with_the_same_numbers(
    device: str, cell: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU, with fewer characters than ids, the embedding and the first input projection are
    one embedding_linear node; loss and every gradient equal those of the two separate ops."""
    x, y = ids(3, 7), ids(3, 7, seed=1)
    runs = {}
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(models.CharLM, "_projects_table", lambda *_: False)
        model = lm(cell).astype(np.float64)
        loss, _ = model.loss(x, y)
        names = {n.name for n in tg_graph.reachable_nodes(loss)}
        loss.backward()
        runs[fuse] = (loss.item(), names, {k: host(p.grad) for k, p in model.named_parameters()})
    fused_on_this_device = device == "cpu"
    assert ("embedding_linear" in runs[True][1]) == fused_on_this_device
    assert ("embedding" in runs[True][1]) != fused_on_this_device
    assert "embedding_linear" not in runs[False][1]
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-13)
    for name, g in runs[False][2].items():
        np.testing.assert_allclose(runs[True][2][name], g, rtol=1e-11, atol=1e-13, err_msg=name)


def test_one_id_at_a_time_keeps_the_separate_embedding() -> None:
    """Sampling feeds one id per step: projecting the whole table for it would be more work."""
    model = lm("LSTM")
    loss, _ = model.loss(ids(1, 1), ids(1, 1, seed=1))
    assert {"embedding", "linear"} <= {n.name for n in tg_graph.reachable_nodes(loss)}


def test_forward_carries_its_state_like_one_longer_call(device: str) -> None:
    model = lm("GRU").astype(np.float64)
    x = ids(2, 8)
    whole, _ = model(x)
    first, state = model(x[:, :3])
    second, _ = model(x[:, 3:], state)
    np.testing.assert_allclose(host(first.data), host(whole.data)[:, :3], rtol=1e-13)
    np.testing.assert_allclose(host(second.data), host(whole.data)[:, 3:], rtol=1e-12, atol=1e-13)


def test_loss_rejects_mismatched_inputs_and_states() -> None:
    model = lm()
    with pytest.raises(ValueError, match="batch, time"):
        model.loss(ids(2, 5), ids(2, 4))
    with pytest.raises(ValueError, match="batch, time"):
        model.loss(ids(1, 5)[0], ids(1, 5)[0])
    with pytest.raises(ValueError, match="recurrent layers"):
        model.loss(ids(2, 5), ids(2, 5), state=(None, None))


# --- sampling ----------------------------------------------------------------------------------


def take(model: models.CharLM, prime: list[int], length: int, **kw: Any) -> list[int]:
    return list(model.sample(prime, length, **kw))


def test_sample_yields_ids_in_the_vocabulary_deterministically_for_a_seed() -> None:
    model = lm().eval()
    a = take(model, [1, 2, 3], 40, rng=np.random.default_rng(5))
    b = take(model, [1, 2, 3], 40, rng=np.random.default_rng(5))
    c = take(model, [1, 2, 3], 40, rng=np.random.default_rng(6))
    assert len(a) == 40 and all(isinstance(i, int) and 0 <= i < VOCAB for i in a)
    assert a == b
    assert a != c
    assert len(set(a)) > 2  # an untrained model at temperature 1 wanders over the vocabulary


def test_sample_with_top_k_one_is_greedy(device: str) -> None:
    model = lm().eval()
    prime = [4, 0, 7]
    got = take(model, prime, 12, top_k=1, rng=np.random.default_rng(0))
    assert got == take(model, prime, 12, top_k=1, rng=np.random.default_rng(99))  # the rng plays no part
    # each id is the argmax of the model's logits after the prime and the ids before it
    seq = list(prime)
    for nxt in got:
        logits, _ = model(np.array([seq]))
        assert nxt == int(np.argmax(host(logits.data)[0, -1]))
        seq.append(nxt)


def test_sample_top_k_restricts_to_the_k_most_likely(device: str) -> None:
    model = lm().eval()
    prime = [2, 5]
    logits, _ = model(np.array([prime]))
    top2 = set(np.argsort(host(logits.data)[0, -1])[-2:].tolist())
    firsts = {take(model, prime, 1, top_k=2, rng=np.random.default_rng(s))[0] for s in range(40)}
    assert firsts == top2


def test_sample_at_a_low_temperature_is_greedy_and_at_a_high_one_is_not() -> None:
    model = lm().eval()
    greedy = take(model, [1], 15, top_k=1)
    assert take(model, [1], 15, temperature=1e-4, rng=np.random.default_rng(0)) == greedy
    assert take(model, [1], 15, temperature=50.0, rng=np.random.default_rng(0)) != greedy


def test_sample_builds_no_graph() -> None:
    model = lm().eval()
    before = next(tg_graph._counter)  # node serial numbers: every recorded node takes one
    out = take(model, [1, 2], 25, rng=np.random.default_rng(0))
    assert len(out) == 25
    assert next(tg_graph._counter) == before + 1
    assert tg.is_grad_enabled()
    assert all(p.grad is None for p in model.parameters())
    # while a training forward does record nodes
    model(np.array([[1, 2]]))
    assert next(tg_graph._counter) > before + 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_sample_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        take(lm(), [1], 3, **kwargs)
    with pytest.raises(ValueError, match="prime"):
        take(lm(), [], 3)


# --- RNNBlock ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "CIFG", "GRU"])
def test_rnn_block_adds_a_projection_of_the_rnn_to_its_input(device: str, cell: str) -> None:
    tg.manual_seed(2)
    block = models.RNNBlock(4, 6, cell=cell, num_layers=2).astype(np.float64)
    assert block.output_size == 4
    assert [n for n, _ in block.named_parameters()][-2:] == ["proj.weight", "proj.bias"]
    x = np.random.default_rng(0).uniform(-1, 1, (3, 5, 4))
    y, state = block(tg.tensor(x))
    rnn_out, rnn_state = block.rnn(tg.tensor(x))
    w, b = host(block.proj.weight.data), host(block.proj.bias.data)
    assert w.shape == (4, 6)
    expected = x + host(rnn_out.data) @ w.T + b
    assert y.shape == (3, 5, 4)
    np.testing.assert_allclose(host(y.data), expected, rtol=1e-13, atol=1e-15)
    assert np.abs(host(y.data) - x).max() > 1e-3  # the residual branch is not negligible
    for a, r in zip(state_parts(state), state_parts(rnn_state)):
        np.testing.assert_array_equal(host(a.data), host(r.data))


def test_rnn_block_rejects_an_unknown_cell() -> None:
    with pytest.raises(ValueError, match="RNNBlock cell"):
        models.RNNBlock(4, 6, cell="Elman")


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_rnn_block_gradcheck(device: str, cell: str, fused: bool) -> None:
    tg.manual_seed(4)
    block = models.RNNBlock(3, 2, cell=cell, num_layers=2, fused=fused)
    names = [n for n, _ in block.named_parameters()]
    rs = np.random.default_rng(5)
    x = rs.uniform(-1, 1, (2, 4, 3))
    has_c = cell == "LSTM"
    state = [rs.uniform(-1, 1, (2, 2, 2)) for _ in range(2 if has_c else 1)]
    params = [rs.uniform(-0.7, 0.7, p.shape) for p in block.parameters()]

    def fn(x: tg.Tensor, *rest: tg.Tensor) -> tuple[tg.Tensor, ...]:
        n = len(state)
        bind(block, dict(zip(names, rest[n:])))
        y, final = block(x, tuple(rest[:n]) if has_c else rest[0])
        return (y, *final) if has_c else (y, final)

    result = tg.gradcheck(fn, [x, *state, *params])
    assert result.ok, str(result)
    # every input influences the output: its numerical gradient is far from zero
    assert all(m is not None and m > 1e-3 for m in result.numeric_max), result.numeric_max


# --- it learns ----------------------------------------------------------------------------------

SENTENCES = [
    "the quick brown fox jumps over the lazy dog. ",
    "a stitch in time saves nine, they said. ",
    "never odd or even; was it a car or a cat i saw? ",
    "pack my box with five dozen liquor jugs! ",
    "how vexingly quick daft zebras jump. ",
]


def test_two_layer_lstm_overfits_a_small_text() -> None:
    """2,000 characters, five sentences repeating in order: to be learned to under 0.1 nats/char.

    Measured on two x86 machines (OpenBLAS): under 0.1 by step 40; 300 steps are allowed, so the
    rounding of another BLAS library (float32 here) cannot decide the outcome.
    """
    text = ("".join(SENTENCES) * 20)[:2000]
    chars = sorted(set(text))
    data = np.array([chars.index(c) for c in text])
    tg.manual_seed(0)
    model = models.CharLM.from_layers(
        len(chars),
        spec({"type": "LSTM", "hidden_size": 64, "num_layers": 2}, dim=16),
    )
    opt = tg.optim.Adam(model.parameters(), lr=2e-2)
    rng = np.random.default_rng(0)
    batch, steps = 16, 50

    def whole_text_loss() -> float:
        model.eval()
        with tg.no_grad():
            loss, _ = model.loss(data[None, :-1], data[None, 1:])
        model.train()
        return loss.item()

    start = whole_text_loss()
    assert start > 2.5  # an untrained model: about log(32)
    losses = []
    for step in range(1, 301):
        starts = rng.integers(0, len(data) - steps, size=batch)
        x = np.stack([data[s : s + steps] for s in starts])
        y = np.stack([data[s + 1 : s + steps + 1] for s in starts])
        loss, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 and step >= 30:
            losses.append(whole_text_loss())
            if losses[-1] < 0.1:
                break
    assert losses[-1] < 0.1, f"still {losses[-1]:.3f} nats/char after {step} steps (from {start:.3f})"
