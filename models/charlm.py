"""The character language model: Embedding -> recurrent stack -> Dense to the vocabulary.

Built from a plain description of its layers (a list of dicts, the ``[model] layers`` of a TOML
config), checked by :func:`check_layers` with errors that name the layer and key.  Internally the
model runs time-major (T, B, ...): the recurrent layers unroll along axis 0 and the loss needs no
transpose of the logits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np

import tinygraph as tg
from models.layers import Dense, Dropout, Embedding, Lookup
from models.module import Module
from models.recurrent import CELLS, Recurrent, detach_state
from tinygraph import backend
from tinygraph.errors import TinygraphError

# the recurrent layer types of a layer table, by class name ("LSTM", "GRU", ...)
RECURRENT: dict[str, type[Recurrent]] = {c.__name__: c for c in CELLS.values()}

# the keys each layer type takes: (required, optional)
LAYER_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Embedding": (("dim",), ()),
    "Dense": (("size",), ()),
    "Dropout": ((), ("p",)),
    "RNNBlock": (("hidden_size",), ("cell", "num_layers", "dropout")),
    **{kind: (("hidden_size",), ("num_layers", "dropout")) for kind in RECURRENT},
}


class LayerSpecError(TinygraphError, ValueError):
    """A layer description the model cannot be built from; the message names the layer and key."""


class RNNBlock(Module):
    """A recurrent layer and a dense projection back to the input width, added to the input.

    y = x + Dense(RNN(x)): the residual path lets blocks stack deep with the gradient flowing
    straight through the additions.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        cell: str = "LSTM",
        num_layers: int = 1,
        dropout: float = 0.0,
        fused: bool = True,
    ):
        super().__init__()
        if cell not in RECURRENT:
            raise ValueError(f"RNNBlock cell must be one of {', '.join(RECURRENT)}, not {cell!r}")
        self.rnn: Recurrent = self.add_module(
            "rnn", RECURRENT[cell](input_size, hidden_size, num_layers, dropout, fused)
        )  # type: ignore[assignment]
        self.proj = self.add_module("proj", Dense(hidden_size, input_size))
        self.output_size = input_size

    def unroll(self, x: tg.Tensor, state: Any = None) -> tuple[tg.Tensor, Any]:
        out, state = self.rnn.unroll(x, state)
        with tg.scope(part="residual"):
            return x + self.proj(out), state

    def forward(self, x: tg.Tensor, state: Any = None) -> tuple[tg.Tensor, Any]:
        out, state = self.unroll(tg.transpose(x, (1, 0, 2)), state)
        return tg.transpose(out, (1, 0, 2)), state


def _check_layer(i: int, layer: Any, where: str) -> None:
    at = f"model.layers[{i}]"
    if not isinstance(layer, dict) or not isinstance(layer.get("type"), str):
        raise LayerSpecError(f'{at}{where} must be a table with a type, e.g. {{type = "LSTM", hidden_size = 128}}')
    kind = layer["type"]
    if kind not in LAYER_KEYS:
        raise LayerSpecError(f"{at}{where}: unknown layer type {kind!r} (known: {', '.join(LAYER_KEYS)})")
    required, optional = LAYER_KEYS[kind]
    for key in layer:
        if key != "type" and key not in required + optional:
            raise LayerSpecError(
                f"{at}.{key}{where}: {kind} takes no such key (it takes {', '.join(required + optional)})"
            )
    for key in required:
        if key not in layer:
            raise LayerSpecError(f"{at}{where}: {kind} needs {key}")
    for key in ("dim", "hidden_size", "num_layers"):
        v = layer.get(key, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise LayerSpecError(f"{at}.{key}{where} must be a positive integer, got {v!r}")
    for key in ("dropout", "p"):
        v = layer.get(key, 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
            raise LayerSpecError(f"{at}.{key}{where} must be a number in [0, 1), got {v!r}")
    if kind == "RNNBlock" and layer.get("cell", "LSTM") not in RECURRENT:
        raise LayerSpecError(f"{at}.cell{where} must be one of {', '.join(RECURRENT)}, got {layer.get('cell')!r}")
    size = layer.get("size")
    if kind == "Dense" and size != "vocab" and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise LayerSpecError(f'{at}.size{where} must be a positive integer or "vocab", got {size!r}')


def check_layers(spec: Any, vocab_size: int | None = None, where: str = "") -> list[dict[str, Any]]:
    """A copy of the layer tables, every table, key and value checked; :class:`LayerSpecError` otherwise.

    The one check of a layer description: a config checks its tables with it when it is read
    (``vocab_size`` None: the vocabulary is not known yet), the model again when it is built.
    ``where`` (e.g. ``" in run.toml"``) follows the key in the messages.
    """
    if not isinstance(spec, list) or not spec:
        raise LayerSpecError(
            f"model.layers{where} must be a non-empty list of layer tables (Embedding first, Dense last)"
        )
    for i, layer in enumerate(spec):
        _check_layer(i, layer, where)
    if spec[0]["type"] != "Embedding":
        raise LayerSpecError(
            f"model.layers[0]{where} must be an Embedding (the model reads character ids), not {spec[0]['type']}"
        )
    last = spec[-1]
    if last["type"] != "Dense" or (vocab_size is not None and last["size"] not in ("vocab", vocab_size)):
        raise LayerSpecError(
            f'the last of model.layers{where} must be {{type = "Dense", size = "vocab"}} (it emits vocabulary logits)'
        )
    for i, layer in enumerate(spec[1:], 1):
        if layer["type"] == "Embedding":
            raise LayerSpecError(f"model.layers[{i}]{where}: an Embedding can only come first")
    return copy.deepcopy(spec)


def build_layers(vocab_size: int, spec: list[dict[str, Any]], fused: bool = True) -> list[Module]:
    """The modules a layer description asks for, their sizes chained and checked."""
    layers = check_layers(spec, vocab_size)
    modules: list[Module] = []
    width = 0
    for layer in layers:
        kind = layer["type"]
        if kind == "Embedding":
            module: Module = Embedding(vocab_size, layer["dim"])
            width = layer["dim"]
        elif kind == "Dense":
            size = vocab_size if layer["size"] == "vocab" else layer["size"]
            module = Dense(width, size)
            width = size
        elif kind == "Dropout":
            module = Dropout(float(layer.get("p", 0.0)))
        elif kind == "RNNBlock":
            module = RNNBlock(
                width,
                layer["hidden_size"],
                layer.get("cell", "LSTM"),
                layer.get("num_layers", 1),
                float(layer.get("dropout", 0.0)),
                fused,
            )
        else:
            module = RECURRENT[kind](
                width, layer["hidden_size"], layer.get("num_layers", 1), float(layer.get("dropout", 0.0)), fused
            )
            width = layer["hidden_size"]
        modules.append(module)
    return modules


class CharLM(Module):
    """ids (B, T) -> logits (B, T, vocab); ``loss`` for training, ``sample`` for generation."""

    def __init__(self, vocab_size: int, layers: list[Module], layers_spec: list[dict[str, Any]] | None = None):
        super().__init__()
        self.vocab_size = vocab_size
        self.layers = [self.add_module(str(i), m) for i, m in enumerate(layers)]
        self.layers_spec = copy.deepcopy(layers_spec)
        self.output_dropout = 0.0  # dropout on the input of the output Dense (set by regularise)
        self.locked = False

    def regularise(self, *, weight_drop: float = 0.0, locked: bool = False, output_dropout: float = 0.0) -> CharLM:
        """Turn on the training-time regularisers small character LMs need (AWD-LSTM's recipe).

        ``weight_drop``: DropConnect on every recurrent layer's W_hh, one mask per window.
        ``locked``: dropout over sequences (between recurrent layers, and ``output_dropout``) draws
        one mask per sequence, shared by all its time steps.  ``output_dropout``: dropout on the
        input of the last layer (the Dense to the vocabulary).  None of them acts in eval mode.
        """
        for what, p in (("weight_drop", weight_drop), ("output_dropout", output_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{what} probability must be in [0, 1), not {p}")
        for m in self.modules():
            if isinstance(m, Recurrent):
                m.weight_drop, m.locked = weight_drop, locked
        self.output_dropout, self.locked = output_dropout, locked
        return self

    @classmethod
    def from_layers(cls, vocab_size: int, spec: list[dict[str, Any]], fused: bool = True) -> CharLM:
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise LayerSpecError(f"the vocabulary size must be a positive integer, got {vocab_size!r}")
        return cls(vocab_size, build_layers(vocab_size, spec, fused), spec)

    def recurrent_layers(self) -> list[Module]:
        return [m for m in self.layers if isinstance(m, (Recurrent, RNNBlock))]

    def forward_time_major(self, ids: Any, state: Any = None) -> tuple[tg.Tensor, tuple[Any, ...]]:
        """ids (T, B) -> logits (T, B, vocab) and the final state, one entry per recurrent layer."""
        n_rec = len(self.recurrent_layers())
        states = list(state) if state is not None else [None] * n_rec
        if len(states) != n_rec:
            raise ValueError(f"the state has {len(states)} entries, the model has {n_rec} recurrent layers")
        finals = []
        x: Any = ids
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Embedding) and self._projects_table(i, ids):
                x = Lookup(x, layer.weight)  # the next layer picks the rows of its projected table
                continue
            if layer is self.layers[-1] and self.output_dropout and self.training:
                with tg.scope(part="output dropout"):
                    x = tg.dropout(x, self.output_dropout, shared_axes=(0,) if self.locked else ())
            if isinstance(layer, (Recurrent, RNNBlock)):
                x, s = layer.unroll(x, states[len(finals)])
                finals.append(s)
            else:
                with tg.scope(part=type(layer).__name__.lower()):
                    x = layer(x)
        return x, tuple(finals)

    def _projects_table(self, i: int, ids: Any) -> bool:
        """Whether the embedding ``layers[i]`` should hand the next layer a Lookup: that layer is a
        recurrent stack (its first op a linear of the rows), the vocabulary is smaller than the
        number of ids, and the model is on the CPU (the GPU keeps the separate embedding for now)."""
        nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
        weight = self.layers[i].weight
        return (
            isinstance(nxt, Recurrent)
            and backend.get_array_module(weight.data) is np
            and weight.shape[0] < np.size(ids)
        )

    def forward(self, ids: Any, state: Any = None) -> tuple[tg.Tensor, tuple[Any, ...]]:
        """Batch-first ids (B, T) -> logits (B, T, vocab), final state."""
        ids = _ids(ids)
        logits, state = self.forward_time_major(ids.T, state)
        return tg.transpose(logits, (1, 0, 2)), state

    def loss(self, x: Any, y: Any, state: Any = None) -> tuple[tg.Tensor, tuple[Any, ...]]:
        """Mean cross-entropy (nats/char) of next characters y given x, both (B, T) ids.

        The returned state is detached: the next window continues from it (truncated BPTT).
        """
        x, y = _ids(x), _ids(y)
        if x.shape != y.shape or x.ndim != 2:
            raise ValueError(f"inputs and targets must both be (batch, time) ids, got {x.shape} and {y.shape}")
        logits, state = self.forward_time_major(x.T, state)
        with tg.scope(part="loss"):
            loss = tg.softmax_cross_entropy(logits, y.T)
        return loss, detach_state(state)

    def sample(
        self,
        prime_ids: Any,
        length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> Iterator[int]:
        """The ``length`` ids that follow ``prime_ids`` (one step at a time, building no graph)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k}")
        prime = [int(i) for i in prime_ids]
        if not prime:
            raise ValueError("sampling needs at least one prime id")
        rng = rng if rng is not None else np.random.default_rng()
        was_training = self.training
        self.eval()  # no dropout while generating
        try:
            yield from self._sample(prime, length, temperature, top_k, rng)
        finally:
            self.train(was_training)

    def _sample(
        self, prime: list[int], length: int, temperature: float, top_k: int | None, rng: np.random.Generator
    ) -> Iterator[int]:
        with tg.no_grad():
            state = None
            x = np.asarray([prime], dtype=np.int64).T  # (T, 1)
            for _ in range(length):
                logits, state = self.forward_time_major(backend.to_device(x), state)
                z = backend.to_numpy(logits.data[-1, 0]).astype(np.float64) / temperature
                if top_k is not None and top_k < z.size:
                    z[z < np.partition(z, -top_k)[-top_k]] = -np.inf
                p = np.exp(z - z.max())
                nxt = int(rng.choice(z.size, p=p / p.sum()))
                yield nxt
                x = np.asarray([[nxt]], dtype=np.int64)


def _ids(ids: Any) -> Any:
    """Integer id arrays on the default device (lists and host arrays moved there)."""
    if isinstance(ids, tg.Tensor):
        ids = ids.data
    xp = backend.default_xp()
    return xp.asarray(backend.to_device(ids) if xp is not np else ids)
