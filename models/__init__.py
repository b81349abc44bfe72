"""models: the model zoo: layers, recurrent layers unrolled into an explicit time graph, the character language model.

import models
lstm = models.LSTM(input_size=16, hidden_size=32, num_layers=2)
out, (h, c) = lstm(x)          # x (B, T, 16) -> out (B, T, 32); h, c (2, B, 32)
"""

from models.charlm import CharLM, LayerSpecError, RNNBlock, build_layers, check_layers
from models.layers import Dense, Dropout, Embedding
from models.module import Module, StateDictError
from models.recurrent import CIFG, GRU, LSTM, RNN, Recurrent, detach_state

__all__ = [
    "CIFG",
    "GRU",
    "LSTM",
    "RNN",
    "CharLM",
    "Dense",
    "Dropout",
    "Embedding",
    "LayerSpecError",
    "Module",
    "RNNBlock",
    "Recurrent",
    "StateDictError",
    "build_layers",
    "check_layers",
    "detach_state",
]
