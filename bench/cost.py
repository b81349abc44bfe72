"""The models of a training step's work and memory: matmul FLOPs, the bytes BPTT keeps, the parameter count.

Each reads the cell's facts from ``models.recurrent.CELLS``: ``gates`` (the projections' width in
units of H) and ``kept_per_step`` ((B, H) blocks backward must find per layer and time step).
"""

from __future__ import annotations

from bench.cases import VOCAB, Config, layer_description
from charlm import memory
from models.recurrent import CELLS


def matmul_flops(cell: str, cfg: Config, vocab: int = VOCAB) -> int:
    """Matmul FLOPs of one training step (2 per multiply-add); element-wise work is not counted.

    With N = B*T rows and G = gates*H columns, each layer l (input width I_l: emb, then H) does
    the input projection X (N, I_l) @ W_ih^T (I_l, G) and, over the T steps, the recurrent
    h_{t-1} (B, H) @ W_hh^T (H, G): 2*N*G*(I_l + H) forward.  The output dense is 2*N*H*V.
    Backward does two GEMMs of the same size per forward GEMM (input and weight gradient;
    the embedding's weight wants the first layer's input gradient too), so the step is 3x forward.
    """
    n = cfg.batch * cfg.seq
    g = CELLS[cell].gates * cfg.hidden
    forward = 0
    width = cfg.emb
    for _ in range(cfg.layers):
        forward += 2 * n * g * (width + cfg.hidden)
        width = cfg.hidden
    forward += 2 * n * cfg.hidden * vocab
    return 3 * forward


def kept_bytes(cell: str, cfg: Config, vocab: int = VOCAB, itemsize: int = 4) -> int:
    """Bytes of the activations BPTT must keep from forward to backward, as the trainer's memory check
    counts them (:func:`charlm.memory.kept_bytes`): for the case's layers N*E + layers * N * k*H + N*V,
    N = B*T, k the cell's ``kept_per_step``.  Parameter gradients and Adam state are not included.
    """
    return memory.kept_bytes(layer_description(cell, cfg), vocab, cfg.batch, cfg.seq, itemsize)


def parameter_count(cell: str, cfg: Config, vocab: int = VOCAB) -> int:
    """Weights and biases as PyTorch lays them out (two bias vectors per recurrent layer)."""
    g = CELLS[cell].gates * cfg.hidden
    total = vocab * cfg.emb + cfg.hidden * vocab + vocab
    width = cfg.emb
    for _ in range(cfg.layers):
        total += g * (width + cfg.hidden) + 2 * g
        width = cfg.hidden
    return total
