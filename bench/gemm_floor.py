"""The GEMM floor of a training step: every matrix product the fused step runs, timed alone.

``python -m bench.gemm_floor --configs M,L --cells lstm`` times, with NumPy's BLAS on its current
threads and float32, each product one CharLM training step of the case makes -- the per-step
recurrent products forward (h_{t-1} W_hh^T) and backward (dA_t W_hh, in the form
``models.cells.Sequence.back_through_w_hh`` picks), the input projections of the layers after the
first and their two gradients, dW_hh over all T*B rows, the embedding table's gradient and the
output dense -- each in a hot loop, best of five, and adds them up.  No step can take less on this
BLAS: the sum is what stands between a row of ``tinygraph bench`` and a target time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from bench.cases import CONFIGS, VOCAB, Config
from models.recurrent import CELLS


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def gemm_floor(cell: str, cfg: Config, vocab: int = VOCAB) -> dict[str, float]:
    """Seconds per training step of each group of products (see the module), for one case."""
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    b, t, h, layers = cfg.batch, cfg.seq, cfg.hidden, cfg.layers
    g, n = CELLS[cell].gates * h, cfg.batch * cfg.seq
    h_prev, w, d_step = rand(b, h), rand(g, h), rand(b, g)
    # the cell's own sequence of one step: W_hh^T as its forward makes it, and dA_t W_hh in the form
    # its backward takes
    seq = CELLS[cell].fused_step.sequence(rand(1, b, g), rand(b, h), None, h)
    w_t = seq.recurrent_weight(w, 0)
    out = np.empty((b, g), np.float32)
    x, w_ih, d_all = rand(n, h), rand(g, h), rand(n, g)
    y = np.empty((n, g), np.float32)
    one_hot = np.zeros((n, vocab), np.float32)
    one_hot[np.arange(n), rng.integers(0, vocab, n)] = 1
    w_out, d_logits = rand(vocab, h), rand(n, vocab)

    def per_step(fn: Callable[[], object]) -> float:  # a per-step product, over all steps and layers
        return _best_seconds(fn, 200) * t * layers

    def per_layer(fn: Callable[[], object], how_many: int = layers) -> float:  # a T*B-row product
        return _best_seconds(fn, 5) * how_many

    def once(*fns: Callable[[], object]) -> float:
        return sum(_best_seconds(fn, 10) for fn in fns)

    return {
        "recurrent forward, h_{t-1} W_hh^T (T x layers)": per_step(lambda: np.matmul(h_prev, w_t, out=out)),
        "recurrent backward, dA_t W_hh (T x layers)": per_step(lambda: seq.back_through_w_hh(d_step, w)),
        "input projections after the first layer": per_layer(lambda: np.matmul(x, w_ih.T, out=y), layers - 1),
        "their input gradients": per_layer(lambda: d_all @ w_ih, layers - 1),
        "their weight gradients": per_layer(lambda: d_all.T @ x, layers - 1),
        "dW_hh over all T*B rows (layers)": per_layer(lambda: d_all.T @ x),
        "embedding table gradient (one-hot GEMM)": once(lambda: one_hot.T @ d_all),
        "output dense, forward and both gradients": once(
            lambda: x @ w_out.T, lambda: d_logits @ w_out, lambda: d_logits.T @ x
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gemm_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="M,L", help="comma-separated sizes (default M,L)")
    parser.add_argument("--cells", default="lstm", help="comma-separated cells (default lstm)")
    args = parser.parse_args(argv)
    for name in args.configs.split(","):
        for cell in args.cells.split(","):
            parts = gemm_floor(cell, CONFIGS[name])
            print(f"{name} {cell}: GEMM floor {sum(parts.values()) * 1e3:.1f} ms per training step")
            for what, seconds in parts.items():
                print(f"  {what:<50} {seconds * 1e3:7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
