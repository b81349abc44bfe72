"""What the benchmark times: the model sizes (S, M, L, XL), the cells, and the training step's settings.

A case is one (config, cell): a CharLM of Embedding -> recurrent stack -> Dense over a 65-symbol
vocabulary, trained with global-norm clipping and Adam.  The cells and their facts (layer type,
gates, what BPTT keeps, torch's counterpart) are read from ``models.recurrent.CELLS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.recurrent import CELLS

VOCAB = 65
CLIP_NORM = 5.0
LEARNING_RATE = 2e-3


@dataclass(frozen=True)
class Config:
    name: str
    layers: int
    emb: int
    hidden: int
    batch: int
    seq: int


CONFIGS = {
    "T": Config("T", 1, 8, 16, 2, 5),  # tiny, for the tests; not listed in --help
    "S": Config("S", 1, 128, 128, 32, 50),
    "M": Config("M", 2, 64, 256, 32, 100),
    "L": Config("L", 2, 128, 512, 64, 100),
    "XL": Config("XL", 2, 256, 1024, 128, 100),
}
DEFAULT_CONFIGS = {"cpu": "S,M,L", "gpu": "S,M,L,XL"}
PRIMITIVE_CONFIGS = ("M", "T")  # where a fused=False row is timed too (unless --no-primitive)
DEFAULT_CELLS = "lstm,gru,rnn"


def layer_description(cell: str, cfg: Config) -> list[dict[str, Any]]:
    """The case's CharLM as ``models.CharLM.from_layers`` reads it."""
    return [
        {"type": "Embedding", "dim": cfg.emb},
        {"type": CELLS[cell].__name__, "hidden_size": cfg.hidden, "num_layers": cfg.layers},
        {"type": "Dense", "size": "vocab"},
    ]


def has_torch_peer(cell: str) -> bool:
    """Whether torch has a layer for ``cell`` (CIFG has none, so its rows carry no ratio)."""
    return CELLS[cell].torch_name is not None
