"""The character language model: Embedding -> recurrent stack -> Dense to the vocabulary.

Built from a plain description of its layers (a list of dicts, the ``[model] layers`` of a TOML
config), checked with errors that name the layer and key.  Internally the model runs time-major
(T, B, ...): the recurrent layers unroll along axis 0 and the loss needs no transpose of the logits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np

import tinygraph as tg
from models.config import ConfigError
from models.layers import Dense, Dropout, Embedding
from models.module import Module
from models.recurrent import CIFG, GRU, LSTM, RNN, Recurrent, detach_state
from tinygraph import backend

RECURRENT = {"RNN": RNN, "LSTM": LSTM, "CIFG": CIFG, "GRU": GRU}

# the keys each layer type takes: (required, optional)
LAYER_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Embedding": (("dim",), ()),
    "Dense": (("size",), ()),
    "Dropout": ((), ("p",)),
    "RNNBlock": (("hidden_size",), ("cell", "num_layers", "dropout")),
    **{kind: (("hidden_size",), ("num_layers", "dropout")) for kind in RECURRENT},
}


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


def _check_layer(i: int, layer: Any) -> dict[str, Any]:
    where = f"model.layers[{i}]"
    if not isinstance(layer, dict) or not isinstance(layer.get("type"), str):
        raise ConfigError(f'{where} must be a table with a type, e.g. {{type = "LSTM", hidden_size = 128}}')
    kind = layer["type"]
    if kind not in LAYER_KEYS:
        raise ConfigError(f"{where}: unknown layer type {kind!r} (known: {', '.join(LAYER_KEYS)})")
    required, optional = LAYER_KEYS[kind]
    for key in layer:
        if key != "type" and key not in required + optional:
            raise ConfigError(f"{where}.{key}: {kind} takes no such key (it takes {', '.join(required + optional)})")
    for key in required:
        if key not in layer:
            raise ConfigError(f"{where}: {kind} needs {key}")
    for key in ("dim", "hidden_size", "num_layers"):
        v = layer.get(key, 1)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{where}.{key} must be a positive integer, got {v!r}")
    for key in ("dropout", "p"):
        v = layer.get(key, 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
            raise ConfigError(f"{where}.{key} must be a number in [0, 1), got {v!r}")
    if kind == "RNNBlock" and layer.get("cell", "LSTM") not in RECURRENT:
        raise ConfigError(f"{where}.cell must be one of {', '.join(RECURRENT)}, got {layer.get('cell')!r}")
    size = layer.get("size")
    if kind == "Dense" and size != "vocab" and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ConfigError(f'{where}.size must be a positive integer or "vocab", got {size!r}')
    return layer


def build_layers(vocab_size: int, spec: list[dict[str, Any]], fused: bool = True) -> list[Module]:
    """The modules a layer description asks for, their sizes chained and checked."""
    if not isinstance(spec, list) or not spec:
        raise ConfigError("model.layers must be a non-empty list of layer tables (Embedding first, Dense last)")
    layers = [_check_layer(i, layer) for i, layer in enumerate(spec)]
    if layers[0]["type"] != "Embedding":
        raise ConfigError(
            f"model.layers[0] must be an Embedding (the model reads character ids), not {layers[0]['type']}"
        )
    last = layers[-1]
    if last["type"] != "Dense" or last["size"] not in ("vocab", vocab_size):
        raise ConfigError(
            'the last of model.layers must be {type = "Dense", size = "vocab"} (it emits vocabulary logits)'
        )
    modules: list[Module] = []
    width = 0
    for i, layer in enumerate(layers):
        kind = layer["type"]
        if kind == "Embedding":
            if i:
                raise ConfigError(f"model.layers[{i}]: an Embedding can only come first")
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

    @classmethod
    def from_layers(cls, vocab_size: int, spec: list[dict[str, Any]], fused: bool = True) -> CharLM:
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ConfigError(f"the vocabulary size must be a positive integer, got {vocab_size!r}")
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
        for layer in self.layers:
            if isinstance(layer, (Recurrent, RNNBlock)):
                x, s = layer.unroll(x, states[len(finals)])
                finals.append(s)
            else:
                with tg.scope(part=type(layer).__name__.lower()):
                    x = layer(x)
        return x, tuple(finals)

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
