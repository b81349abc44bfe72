"""Feed-forward layers: Embedding, Dense (applied at every time step), Dropout."""

from __future__ import annotations

import math
from typing import Any

import tinygraph as tg
from models.module import Module
from tinygraph import init
from tinygraph.random import get_rng


class Embedding(Module):
    """Integer ids (...) -> vectors (..., dim); N(0, 1) initialised as in torch.nn.Embedding."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.vocab, self.dim = vocab, dim
        weight = get_rng().standard_normal((vocab, dim)).astype(tg.DEFAULT_DTYPE)
        self.weight = self.add_parameter("weight", weight)

    def forward(self, ids: Any) -> tg.Tensor:
        return tg.embedding(ids, self.weight)


class Lookup:
    """Ids whose embedding rows are not picked yet: the recurrent layer that reads them projects
    the table instead (``tg.embedding_linear``), which is less work when the vocabulary is smaller
    than the number of ids.  Shaped like the embedding's output (..., dim)."""

    def __init__(self, ids: Any, weight: tg.Tensor):
        self.ids, self.weight = ids, weight
        self.shape = (*ids.shape, weight.shape[1])
        self.dtype = weight.dtype

    def project(self, w: tg.Tensor, b: tg.Tensor | None) -> tg.Tensor:
        """linear(embedding(ids), w, b) as one op."""
        return tg.embedding_linear(self.ids, self.weight, w, b)


class Dense(Module):
    """y = x W^T + b on the last axis of any (..., in) input: (B, T, in) -> (B, T, out) in one GEMM."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)  # torch.nn.Linear's default range
        self.weight = self.add_parameter("weight", init.uniform((out_features, in_features), -bound, bound))
        self.bias = self.add_parameter("bias", init.uniform((out_features,), -bound, bound)) if bias else None

    def forward(self, x: tg.Tensor) -> tg.Tensor:
        return tg.linear(x, self.weight, self.bias)


class Dropout(Module):
    """Inverted dropout while training, the identity in evaluation mode."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), not {p}")
        self.p = p

    def forward(self, x: tg.Tensor) -> tg.Tensor:
        return tg.dropout(x, self.p, training=self.training)
