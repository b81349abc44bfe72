"""The tinygraph contestant: a case's CharLM and its Adam, one whole training step, its graph and peak memory."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import numpy as np

import models
import tinygraph as tg
from bench.cases import CLIP_NORM, LEARNING_RATE, VOCAB, Config, layer_description
from tinygraph import backend, optim
from tinygraph.ops import workspace


class TinygraphStep:
    """A CharLM and its Adam on the current default device; ``step(x, y)`` is a whole training step."""

    def __init__(self, cell: str, cfg: Config, fused: bool, seed: int = 0):
        tg.manual_seed(seed)
        self.model = models.CharLM.from_layers(VOCAB, layer_description(cell, cfg), fused=fused)
        self.params = list(self.model.parameters())
        self.opt = optim.Adam(self.params, LEARNING_RATE)
        self.clip = optim.clip_grad_norm
        self.gpu = tg.get_device() == "gpu"

    def to_device(self, ids: np.ndarray) -> Any:
        return backend.to_device(ids)

    def step(self, x: Any, y: Any) -> tg.Tensor:
        self.opt.zero_grad()
        loss, _ = self.model.loss(x, y)
        loss.backward()
        self.clip(self.params, CLIP_NORM)
        self.opt.step()
        return loss

    def count_nodes(self, x: Any, y: Any) -> int:
        """Graph nodes one step records (a forward whose graph is then dropped unwalked)."""
        loss, _ = self.model.loss(x, y)
        return len(tg.Graph.of(loss).nodes)

    def synchronize(self) -> None:
        if self.gpu:
            backend.default_xp().cuda.Device().synchronize()

    def peak_step_bytes(self, x: Any, y: Any) -> int:
        """Bytes the step allocates at its peak beyond what was live before it.

        CPU: tracemalloc, which sees NumPy's data buffers.  GPU: the CuPy pool is emptied of free
        blocks first, so what it holds after the step is the step's high-water mark (an upper
        bound: a freed block too small for a later request stays held).
        """
        self.opt.zero_grad()
        workspace.clear()  # the step's large arrays must be allocated inside the measurement, not reused
        gc.collect()
        if self.gpu:
            pool = backend.default_xp().get_default_memory_pool()
            self.synchronize()
            pool.free_all_blocks()
            before = pool.used_bytes()
            self.step(x, y)
            self.synchronize()
            return int(pool.total_bytes() - before)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            self.step(x, y)
            return tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
