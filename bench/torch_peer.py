"""The PyTorch peer of the benchmark: the same character LM training step in torch.

Embedding -> nn.LSTM/GRU/RNN (batch_first) -> Linear -> cross-entropy, Adam, clip_grad_norm_.
This module imports torch: the benchmark imports it only when torch is installed
(``bench.probe.torch_version``), so the rest of the project, and the benchmark without torch,
never needs it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from models.recurrent import CELLS


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def configure(threads: int, device: str) -> None:
    """Give torch the same CPU threads as NumPy's BLAS; keep CUDA maths in true float32."""
    torch.set_num_threads(threads)
    if device == "gpu":
        # TF32 would compare a 10-bit-mantissa GEMM against CuPy's float32 one
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


class TorchStep:
    """One model, optimizer and device: ``step(x, y)`` is a whole training step."""

    def __init__(self, cell: str, *, vocab: int, emb: int, hidden: int, layers: int, device: str, seed: int = 0):
        torch.manual_seed(seed)
        self.device = torch.device("cuda" if device == "gpu" else "cpu")
        rnn_class = getattr(nn, CELLS[cell].torch_name)
        self.embedding = nn.Embedding(vocab, emb)
        self.rnn = rnn_class(emb, hidden, num_layers=layers, batch_first=True)
        self.dense = nn.Linear(hidden, vocab)
        self.modules = nn.ModuleList([self.embedding, self.rnn, self.dense]).to(self.device, torch.float32)
        self.params = list(self.modules.parameters())
        self.opt = torch.optim.Adam(self.params, lr=2e-3)
        self.vocab = vocab

    def to_device(self, ids: np.ndarray) -> Any:
        """Host int ids -> a torch long tensor on this step's device (done once per batch, untimed)."""
        return torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self.device)

    def step(self, x: Any, y: Any) -> Any:
        """Forward, BPTT, global-norm clip 5.0, Adam update; returns the loss tensor."""
        self.opt.zero_grad(set_to_none=True)
        out, _ = self.rnn(self.embedding(x))
        logits = self.dense(out)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 5.0)
        self.opt.step()
        return loss

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def gpu_memory_start(self) -> int:
        """Reset the peak counter; the bytes already held (weights, Adam state, batch)."""
        self.opt.zero_grad(set_to_none=True)  # last step's gradients must not count as already held
        self.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())

    def gpu_memory_peak(self) -> int:
        self.synchronize()
        return int(torch.cuda.max_memory_allocated())
