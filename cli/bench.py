"""``tinygraph bench``: the character-LM training step timed against PyTorch in the same run.

One row per (config, cell): the whole step (forward, BPTT, global-norm clip 5.0, Adam update)
on real text mapped to a 65-symbol vocabulary, float32.  tinygraph and torch steps alternate
after a warm-up, each after a short pause (see PAUSE_S), and the medians are reported, because on
a shared machine only a ratio taken in the same minutes means anything.  Alongside: matmul
GFLOP/s against this machine's float32 GEMM peak (measured in the same run), the step's peak
memory against the arrays BPTT must keep, and on config M the primitive-op form of each cell
(its graph overhead, in nodes/s).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import os
import pstats
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import tinygraph as tg
from cli import bench_torch
from tinygraph import backend, optim
from tinygraph.errors import TinygraphError
from tinygraph.ops import workspace

VOCAB = 65
CLIP_NORM = 5.0
LEARNING_RATE = 2e-3
BATCHES = 4  # distinct batches cycled through, so no step sees a cache-warm repeat of the last one
# Idle time before every step.  After a call, OpenBLAS's worker threads spin for about 0.1 s
# (measured: 0.11 s of CPU) waiting for more work, and torch's OpenMP threads for about 0.01 s.
# Back to back, one library's spinning threads take a core from the other's next step: measured
# here, torch's small LSTM step went from 17 ms alone to 28 ms right after a NumPy step.  The pause
# lets each step start on a machine the other library has gone quiet on, as it would in real use.
PAUSE_S = 0.2
MAX_CORPUS_CHARS = 2_000_000  # enough text for any config; spares mapping a huge file

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = Path("data") / "shakespeare.txt"


class BenchError(TinygraphError):
    """A benchmark request that cannot be run as given (unknown config, unreadable corpus, ...)."""


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

CELL_LAYER_TYPES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN", "cifg": "CIFG"}
DEFAULT_CELLS = "lstm,gru,rnn"

# GEMM width of a cell in units of H: the gates the input and recurrent projections produce
GATES = {"lstm": 4, "cifg": 3, "gru": 3, "rnn": 1}
# what backward must find per layer, time step and batch row, in units of H:
#   LSTM: the 4 gate activations (i, f, g, o) + c_t + h_t;  CIFG: 3 gates (i, g, o) + c_t + h_t;
#   GRU: the 3 gates (r, z, n) + (h W_hn^T + b_hn), which dr needs, + h_t;  RNN: h_t (tanh' = 1 - h^2)
KEPT_PER_STEP = {"lstm": 6, "cifg": 5, "gru": 5, "rnn": 1}


# --- the models of work and memory ------------------------------------------------------------


def matmul_flops(cell: str, cfg: Config, vocab: int = VOCAB) -> int:
    """Matmul FLOPs of one training step (2 per multiply-add); element-wise work is not counted.

    With N = B*T rows and G = gates*H columns, each layer l (input width I_l: emb, then H) does
    the input projection X (N, I_l) @ W_ih^T (I_l, G) and, over the T steps, the recurrent
    h_{t-1} (B, H) @ W_hh^T (H, G): 2*N*G*(I_l + H) forward.  The output dense is 2*N*H*V.
    Backward does two GEMMs of the same size per forward GEMM (input and weight gradient;
    the embedding's weight wants the first layer's input gradient too), so the step is 3x forward.
    """
    n = cfg.batch * cfg.seq
    g = GATES[cell] * cfg.hidden
    forward = 0
    width = cfg.emb
    for _ in range(cfg.layers):
        forward += 2 * n * g * (width + cfg.hidden)
        width = cfg.hidden
    forward += 2 * n * cfg.hidden * vocab
    return 3 * forward


def kept_bytes(cell: str, cfg: Config, vocab: int = VOCAB, itemsize: int = 4) -> int:
    """Bytes of the activations BPTT must keep from forward to backward.

    N*E (embedding output, the first layer's input) + layers * N * k*H (k from KEPT_PER_STEP:
    gates and states of every step; a layer's input is the previous layer's kept h) + N*V
    (the softmax of the logits), N = B*T.  Parameter gradients and Adam state are not included.
    """
    n = cfg.batch * cfg.seq
    return itemsize * (n * cfg.emb + cfg.layers * n * KEPT_PER_STEP[cell] * cfg.hidden + n * vocab)


def parameter_count(cell: str, cfg: Config, vocab: int = VOCAB) -> int:
    """Weights and biases as PyTorch lays them out (two bias vectors per recurrent layer)."""
    g = GATES[cell] * cfg.hidden
    total = vocab * cfg.emb + cfg.hidden * vocab + vocab
    width = cfg.emb
    for _ in range(cfg.layers):
        total += g * (width + cfg.hidden) + 2 * g
        width = cfg.hidden
    return total


# --- the machine --------------------------------------------------------------------------------


def blas_threads() -> int:
    """Threads NumPy's BLAS uses: threadpoolctl when installed, else the usual env vars, else the CPUs."""
    try:
        from threadpoolctl import threadpool_info

        counts = [int(info["num_threads"]) for info in threadpool_info() if info.get("user_api") == "blas"]
        if counts:
            return max(counts)
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may run on, not the whole box
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gemm_peak_gflops(xp: Any, n: int, repeats: int, sync: Callable[[], None]) -> float:
    """Best float32 GFLOP/s of an n x n matmul on ``xp`` (the yardstick for the achieved rates)."""
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    c = xp.empty((n, n), dtype=xp.float32)
    xp.matmul(a, b, out=c)  # first call pays for thread start-up and page faults
    best = math.inf
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        xp.matmul(a, b, out=c)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# --- text ---------------------------------------------------------------------------------------


def generated_text(n_chars: int, seed: int = 0) -> str:
    """A deterministic play-like text (speakers, verse lines, punctuation) for when no corpus is prepared.

    Its character statistics are close enough to English for a benchmark: the step's cost does not
    depend on the text, only a realistic loss at the start is wanted.
    """
    rng = np.random.default_rng(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "th", "w", "y", "st", "br", "ch"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "y"]
    codas = ["", "", "n", "r", "s", "t", "d", "ll", "ng", "th", "st", "ck"]

    def word() -> str:
        return "".join(
            onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] + codas[rng.integers(len(codas))]
            for _ in range(1 + rng.integers(3) // 2 + rng.integers(2) * rng.integers(2))
        )

    speakers = [word().upper() for _ in range(12)]
    pieces: list[str] = []
    size = 0
    while size < n_chars:
        speech = [speakers[rng.integers(len(speakers))] + ":\n"]
        for _ in range(1 + rng.integers(5)):
            words = [word() for _ in range(4 + rng.integers(7))]
            words[0] = words[0].capitalize()
            for i in range(1, len(words)):
                if rng.random() < 0.08:
                    words[i - 1] += ",;'"[rng.integers(3)] if rng.random() < 0.9 else "-"
            speech.append(" ".join(words) + ".,!?;:"[rng.integers(6)] + "\n")
        speech.append("\n")
        piece = "".join(speech)
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)[:n_chars]


def load_corpus(path: str | None) -> tuple[str, str]:
    """(text, where it came from): ``path``; else data/shakespeare.txt when prepared; else generated."""
    if path is None:
        for candidate in (DEFAULT_CORPUS, ROOT / DEFAULT_CORPUS):
            if candidate.is_file():
                path = str(candidate)
                break
        else:
            return generated_text(400_000), "generated text (prepare data/shakespeare.txt or pass --corpus)"
    from models.data import DataError  # the trainer's checks: missing, empty, binary
    from models.data import load_corpus as read_text

    try:
        text = read_text(path)[:MAX_CORPUS_CHARS]
    except DataError as exc:
        raise BenchError(str(exc)) from exc
    return text, str(path)


def text_to_ids(text: str, vocab: int = VOCAB) -> np.ndarray:
    """Character ids < ``vocab``: the vocab-1 most frequent characters get their own id, the rest share the last."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    uniq, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    if len(uniq) <= vocab:
        return inverse.astype(np.int64)
    order = np.lexsort((uniq, -counts))  # most frequent first, ties by code point
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return np.minimum(rank, vocab - 1)[inverse]


def make_batches(ids: np.ndarray, batch: int, seq: int, count: int, seed: int = 0) -> list[tuple[Any, Any]]:
    """``count`` (x, y) pairs of (batch, seq) int64 windows at random offsets; y is x shifted by one."""
    if len(ids) < seq + 2:  # a short corpus is repeated: the benchmark times the step, not the text
        ids = np.tile(ids, (seq + 2) // len(ids) + 1)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - seq - 1, size=(count, batch))
    windows = ids[starts[..., None] + np.arange(seq + 1)]
    return [(np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])) for w in windows]


# --- the two contestants -----------------------------------------------------------------------


def layer_description(cell: str, cfg: Config) -> list[dict[str, Any]]:
    return [
        {"type": "Embedding", "dim": cfg.emb},
        {"type": CELL_LAYER_TYPES[cell], "hidden_size": cfg.hidden, "num_layers": cfg.layers},
        {"type": "Dense", "size": "vocab"},
    ]


class TinygraphStep:
    """A CharLM and its Adam on the current default device; ``step(x, y)`` is a whole training step."""

    def __init__(self, cell: str, cfg: Config, fused: bool, seed: int = 0):
        try:
            import models
        except ImportError as exc:
            raise BenchError(f"the benchmark needs the models package ({exc})") from exc
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


@dataclass
class Contestant:
    """One runner in the interleaved loop, with its batches already on its device."""

    name: str  # "tinygraph", "torch", "primitive"
    runner: Any
    batches: list[tuple[Any, Any]]
    times: list[float]
    first_loss: float | None = None
    pause: float = PAUSE_S

    def step(self, i: int, timed: bool, profiler: cProfile.Profile | None = None) -> None:
        x, y = self.batches[i % len(self.batches)]
        self.runner.synchronize()
        time.sleep(self.pause)
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        loss = self.runner.step(x, y)
        self.runner.synchronize()
        if profiler is not None:
            profiler.disable()
        elapsed = time.perf_counter() - start
        if timed:
            self.times.append(elapsed)
        if self.first_loss is None:  # read after the clock stopped: .item() may synchronise
            self.first_loss = float(loss.item())

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def time_case(cfg: Config, cell: str, args: argparse.Namespace, ids: np.ndarray, env: dict[str, Any]) -> list[dict]:
    """Rows for one (config, cell): the fused tinygraph step, and the primitive one when asked."""
    host_batches = make_batches(ids, cfg.batch, cfg.seq, BATCHES)

    def contestant(name: str, runner: Any) -> Contestant:
        batches = [(runner.to_device(x), runner.to_device(y)) for x, y in host_batches]
        return Contestant(name, runner, batches, [], pause=args.pause)

    fused = contestant("tinygraph", TinygraphStep(cell, cfg, fused=True))
    racers = [fused]
    torch_racer = None
    if env["torch_usable"] and cell in bench_torch.TORCH_CELLS:
        torch_racer = contestant(
            "torch",
            bench_torch.TorchStep(
                cell, vocab=VOCAB, emb=cfg.emb, hidden=cfg.hidden, layers=cfg.layers, device=args.device
            ),
        )
        racers.append(torch_racer)
    primitive = None
    if args.primitive and cfg.name in PRIMITIVE_CONFIGS:
        primitive = contestant("primitive", TinygraphStep(cell, cfg, fused=False))
        racers.append(primitive)

    x0, y0 = fused.batches[0]
    nodes = {r.name: r.runner.count_nodes(x0, y0) for r in racers if r.name != "torch"}
    for i in range(args.warmup):
        for r in racers:
            r.step(i, timed=False)
    profiler = env.get("profiler")
    for k in range(args.repeats):
        # alternate who goes first, so neither always inherits the other's cache and clock state
        for r in racers if k % 2 == 0 else reversed(racers):
            r.step(args.warmup + k, timed=True, profiler=profiler if r is fused else None)

    peak = {r.name: r.runner.peak_step_bytes(x0, y0) for r in racers if r.name != "torch"}
    torch_peak = None
    if torch_racer is not None and args.device == "gpu":
        runner = torch_racer.runner
        before = runner.gpu_memory_start()
        runner.step(*torch_racer.batches[0])
        torch_peak = runner.gpu_memory_peak() - before

    flops = matmul_flops(cell, cfg)
    kept = kept_bytes(cell, cfg)
    chars = cfg.batch * cfg.seq
    rows = []
    for r in [fused] + ([primitive] if primitive is not None else []):
        t = r.seconds
        row: dict[str, Any] = {
            "config": cfg.name,
            "cell": cell,
            "form": "fused" if r is fused else "primitive",
            "device": args.device,
            **{k: v for k, v in asdict(cfg).items() if k != "name"},
            "vocab": VOCAB,
            "params": parameter_count(cell, cfg),
            "chars_per_step": chars,
            "matmul_flops_per_step": flops,
            "tg_ms": 1e3 * t,
            "tg_chars_per_s": chars / t,
            "tg_gflops": flops / t / 1e9,
            "tg_peak_share": flops / t / 1e9 / env["gemm_peak_gflops"],
            "tg_first_loss": r.first_loss,
            "torch_ms": None,
            "torch_chars_per_s": None,
            "torch_gflops": None,
            "torch_peak_share": None,
            "torch_first_loss": None,
            "ratio": None,
            "tg_peak_bytes": peak[r.name],
            "kept_bytes": kept,
            "mem_ratio": peak[r.name] / kept,
            "torch_peak_bytes": torch_peak,
            "nodes_per_step": nodes[r.name],
            "nodes_per_s": nodes[r.name] / t,
            "primitive_over_fused": t / fused.seconds if r is primitive else None,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "gemm_peak_gflops": env["gemm_peak_gflops"],
            "threads": env["threads"],
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        }
        if torch_racer is not None and r is fused:  # the ratio compares torch's layer with the fused cells
            tt = torch_racer.seconds
            row.update(
                torch_ms=1e3 * tt,
                torch_chars_per_s=chars / tt,
                torch_gflops=flops / tt / 1e9,
                torch_peak_share=flops / tt / 1e9 / env["gemm_peak_gflops"],
                torch_first_loss=torch_racer.first_loss,
                ratio=tt / t,  # = tinygraph chars/s over torch chars/s
            )
        rows.append(row)
    return rows


# --- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated sizes: S (1x128, batch 32, seq 50), M (2x256, emb 64, batch 32, seq 100), "
        "L (2x512, emb 128, batch 64, seq 100), XL (2x1024, emb 256, batch 128, seq 100); "
        "default S,M,L (and XL with --device gpu)",
    )
    parser.add_argument(
        "--cells", default=DEFAULT_CELLS, help="comma-separated: lstm,gru,rnn,cifg; default %(default)s"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of a table")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per contestant (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default %(default)s)")
    parser.add_argument("--corpus", default=None, help="UTF-8 text to train on (default: data/shakespeare.txt if "
                        "prepared, else a generated text)")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="NumPy+CPU torch, or CuPy+CUDA torch")
    parser.add_argument(
        "--no-primitive",
        dest="primitive",
        action="store_false",
        help="skip the primitive-op cells (fused=False) that are otherwise timed on config M",
    )
    parser.add_argument("--profile", metavar="FILE", help="cProfile the timed tinygraph steps; write the top to FILE")
    parser.add_argument("--gemm-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pause", type=float, default=PAUSE_S, help=argparse.SUPPRESS)  # tests: 0


def _parse_list(value: str, known: dict[str, Any], what: str, upper: bool) -> list[str]:
    names = [v.strip().upper() if upper else v.strip().lower() for v in value.split(",") if v.strip()]
    if not names:
        raise BenchError(f"--{what} is empty")
    shown = [k for k in known if k != "T"]
    for name in names:
        if name not in known:
            raise BenchError(f"unknown {what[:-1]} {name!r}: choose from {','.join(shown)}")
    return list(dict.fromkeys(names))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict], env: dict[str, Any]) -> str:
    header = (
        f"{'config':<6} {'cell':<5} {'form':<9} {'tg ms':>8} {'torch ms':>9} {'tg char/s':>10} "
        f"{'torch char/s':>12} {'ratio':>6} {'tg GF/s':>8} {'%peak':>6} {'torch GF/s':>10} "
        f"{'step MB':>8} {'kept MB':>8} {'mem x':>6} {'nodes/s':>9} {'prim/fused':>10}"
    )
    lines = [
        "tinygraph bench: CharLM training step (forward, BPTT, clip 5.0, Adam), float32, "
        f"vocabulary {VOCAB}, device {env['device']}",
        f"corpus: {env['corpus']} | BLAS threads {env['threads']}{env['blas_core']} | "
        f"torch {env['torch'] or 'not installed'} | "
        f"float32 GEMM peak {env['gemm_peak_gflops']:.1f} GFLOP/s ({env['gemm_what']})",
        f"warm-up {env['warmup']}, then medians of {env['repeats']} interleaved steps, each after a "
        f"{env['pause']:g} s pause | "
        f"load average {env['load_before']} before, {env['load_after']} after | {env['date']}",
        "",
        header,
        "-" * len(header),
    ]
    for r in rows:
        lines.append(
            f"{r['config']:<6} {r['cell']:<5} {r['form']:<9} {r['tg_ms']:>8.1f} {_fmt(r['torch_ms'], '.1f'):>9} "
            f"{r['tg_chars_per_s']:>10.0f} {_fmt(r['torch_chars_per_s'], '.0f'):>12} {_fmt(r['ratio'], '.2f'):>6} "
            f"{r['tg_gflops']:>8.1f} {100 * r['tg_peak_share']:>5.0f}% {_fmt(r['torch_gflops'], '.1f'):>10} "
            f"{r['tg_peak_bytes'] / 2**20:>8.1f} {r['kept_bytes'] / 2**20:>8.1f} {r['mem_ratio']:>6.2f} "
            f"{r['nodes_per_s']:>9.0f} {_fmt(r['primitive_over_fused'], '.2f'):>10}"
        )
    lines += [
        "",
        "ratio = tinygraph chars/s / torch chars/s (> 1: tinygraph is faster); GF/s counts matmul FLOPs only; "
        "%peak = tinygraph GF/s / GEMM peak;",
        "step MB = tinygraph's peak allocation during one step; kept MB = activations BPTT must keep; "
        "mem x = step / kept (see docs/bench_cpu.md).",
    ]
    lines += [f"note: {n}" for n in env["notes"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg_names = _parse_list(args.configs or DEFAULT_CONFIGS[args.device], CONFIGS, "configs", upper=True)
    cells = _parse_list(args.cells, CELL_LAYER_TYPES, "cells", upper=False)
    if args.repeats < 1:
        raise BenchError("--repeats must be at least 1")
    if args.warmup < 0:
        raise BenchError("--warmup cannot be negative")
    text, corpus = load_corpus(args.corpus)
    ids = text_to_ids(text)
    notes: list[str] = []

    previous_device = tg.get_device()
    tg.set_device(args.device)  # DeviceError (a TinygraphError) when the GPU is asked for but missing
    try:
        return _run(args, cfg_names, cells, ids, f"{corpus} ({len(ids):,} chars)", notes)
    finally:
        tg.set_device(previous_device)


def _run(args: argparse.Namespace, cfg_names: list[str], cells: list[str], ids: np.ndarray, *meta: Any) -> int:
    corpus, notes = meta
    xp = backend.default_xp()
    gpu = args.device == "gpu"
    sync = (lambda: xp.cuda.Device().synchronize()) if gpu else (lambda: None)
    threads = blas_threads()
    version = bench_torch.torch_version()
    torch_usable = version is not None
    if not torch_usable:
        notes.append("torch is not installed: tinygraph's own figures only, no ratio (make bench installs it)")
    elif gpu and not bench_torch.cuda_available():
        torch_usable = False
        notes.append(f"torch {version} has no CUDA here: tinygraph's own figures only, no ratio")
    if torch_usable:
        bench_torch.configure(threads, args.device)
    if "cifg" in cells and torch_usable:
        notes.append("torch has no CIFG-LSTM: cifg rows carry no ratio")
    if args.profile:
        notes.append(f"tinygraph's times are inflated by cProfile (profile written to {args.profile})")

    gemm_n = args.gemm_size or (8192 if gpu else 2048)
    load_before = load_average()
    peak = gemm_peak_gflops(xp, gemm_n, 5, sync)
    env: dict[str, Any] = {
        "device": args.device,
        "corpus": corpus,
        "threads": threads,
        # OpenBLAS picks its kernels by CPU model and may pick narrow ones on a new CPU: say when overridden
        "blas_core": f" (OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']})"
        if "OPENBLAS_CORETYPE" in os.environ
        else "",
        "torch": version,
        "torch_usable": torch_usable,
        "gemm_peak_gflops": peak,
        "gemm_what": f"{'cupy' if gpu else 'np'}.matmul {gemm_n}x{gemm_n}, best of 5",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "pause": args.pause,
        "notes": notes,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "profiler": cProfile.Profile() if args.profile else None,
    }
    rows: list[dict] = []
    for name in cfg_names:
        for cell in cells:
            print(f"bench: {name} {cell} ...", file=sys.stderr, flush=True)
            rows.extend(time_case(CONFIGS[name], cell, args, ids, env))
            gc.collect()
            if gpu:
                xp.get_default_memory_pool().free_all_blocks()
    # the peak is measured again at the end and the best kept: others' load must not flatter the shares
    final_peak = gemm_peak_gflops(xp, gemm_n, 5, sync)
    if final_peak > peak:
        for row in rows:
            row["gemm_peak_gflops"] = final_peak
            row["tg_peak_share"] = row["tg_gflops"] / final_peak
            if row["torch_gflops"] is not None:
                row["torch_peak_share"] = row["torch_gflops"] / final_peak
        env["gemm_peak_gflops"] = final_peak
    env["load_before"], env["load_after"] = load_before, load_average()
    for row in rows:
        row["load_before"], row["load_after"] = env["load_before"], env["load_after"]
        row["torch_version"], row["numpy_version"], row["date"] = version, np.__version__, env["date"]

    if env["profiler"] is not None:
        with open(args.profile, "w") as f:
            stats = pstats.Stats(env["profiler"], stream=f)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(40)

    if args.json:
        print(json.dumps(rows, indent=2))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        print(format_table(rows, env))
    return 0
