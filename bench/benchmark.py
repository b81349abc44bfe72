"""The whole benchmark run: probe the machine, race every case, measure the GEMM peak again, gather the report.

The caller has set the tinygraph device to ``options.device`` (the CLI does it once).
"""

from __future__ import annotations

import cProfile
import gc
import os
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from bench import probe
from bench.cases import CONFIGS, PRIMITIVE_CONFIGS, VOCAB, Config, has_torch_peer
from bench.corpus import BATCHES, load_corpus, make_batches, text_to_ids
from bench.options import Options
from bench.report import Report, case_rows, rescale_to_peak
from bench.timing import Contestant, run_race, write_profile
from bench.tinygraph_step import TinygraphStep
from tinygraph import backend


def run_benchmark(options: Options, progress: Callable[[str], None] | None = None) -> Report:
    """Time every (config, cell) of ``options``; ``progress`` hears "S lstm" as each case starts."""
    text, corpus = load_corpus(options.corpus)
    ids = text_to_ids(text)
    corpus = f"{corpus} ({len(ids):,} chars)"
    notes: list[str] = []

    xp = backend.default_xp()
    gpu = options.device == "gpu"
    sync = (lambda: xp.cuda.Device().synchronize()) if gpu else (lambda: None)
    threads = probe.blas_threads()
    version = probe.torch_version()
    peer = _torch_peer(version, options.device, threads, notes)
    if "cifg" in options.cell_names and peer is not None:
        notes.append("torch has no CIFG-LSTM: cifg rows carry no ratio")
    if options.profile:
        notes.append(f"tinygraph's times are inflated by cProfile (profile written to {options.profile})")

    gemm_n = options.gemm_size or (8192 if gpu else 2048)
    load_before = probe.load_average()
    peak = probe.gemm_peak_gflops(xp, gemm_n, 5, sync)
    env: dict[str, Any] = {
        "device": options.device,
        "corpus": corpus,
        "threads": threads,
        # OpenBLAS picks its kernels by CPU model and may pick narrow ones on a new CPU: say when overridden
        "blas_core": f" (OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']})"
        if "OPENBLAS_CORETYPE" in os.environ
        else "",
        "torch": version,
        "gemm_peak_gflops": peak,
        "gemm_what": f"{'cupy' if gpu else 'np'}.matmul {gemm_n}x{gemm_n}, best of 5",
        "warmup": options.warmup,
        "repeats": options.repeats,
        "pause": options.pause,
        "notes": notes,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    profiler = cProfile.Profile() if options.profile else None
    rows: list[dict] = []
    for name in options.config_names:
        for cell in options.cell_names:
            if progress is not None:
                progress(f"{name} {cell}")
            cfg = CONFIGS[name]
            racers = _contestants(cfg, cell, options, ids, peer)
            race = run_race(racers, options.warmup, options.repeats, options.device, profiler)
            rows.extend(case_rows(cfg, cell, race, options, env))
            gc.collect()
            if gpu:
                xp.get_default_memory_pool().free_all_blocks()
    # the peak is measured again at the end and the best kept: others' load must not flatter the shares
    final_peak = probe.gemm_peak_gflops(xp, gemm_n, 5, sync)
    if final_peak > peak:
        rescale_to_peak(rows, final_peak)
        env["gemm_peak_gflops"] = final_peak
    env["load_before"], env["load_after"] = load_before, probe.load_average()
    for row in rows:
        row["load_before"], row["load_after"] = env["load_before"], env["load_after"]
        row["torch_version"], row["numpy_version"], row["date"] = version, np.__version__, env["date"]

    if profiler is not None:
        write_profile(profiler, options.profile)
    return Report(rows, env)


def _torch_peer(version: str | None, device: str, threads: int, notes: list[str]) -> ModuleType | None:
    """bench.torch_peer, configured, when torch can race on ``device``; else None and a note why not."""
    if version is None:
        notes.append("torch is not installed: tinygraph's own figures only, no ratio (make bench installs it)")
        return None
    from bench import torch_peer

    if device == "gpu" and not torch_peer.cuda_available():
        notes.append(f"torch {version} has no CUDA here: tinygraph's own figures only, no ratio")
        return None
    torch_peer.configure(threads, device)
    return torch_peer


def _contestants(
    cfg: Config, cell: str, options: Options, ids: np.ndarray, peer: ModuleType | None
) -> list[Contestant]:
    """The fused tinygraph step first, then torch's (when it has the cell), then the primitive one when asked."""
    host_batches = make_batches(ids, cfg.batch, cfg.seq, BATCHES)

    def contestant(name: str, runner: Any) -> Contestant:
        batches = [(runner.to_device(x), runner.to_device(y)) for x, y in host_batches]
        return Contestant(name, runner, batches, [], pause=options.pause)

    racers = [contestant("tinygraph", TinygraphStep(cell, cfg, fused=True))]
    if peer is not None and has_torch_peer(cell):
        runner = peer.TorchStep(
            cell, vocab=VOCAB, emb=cfg.emb, hidden=cfg.hidden, layers=cfg.layers, device=options.device
        )
        racers.append(contestant("torch", runner))
    if options.primitive and cfg.name in PRIMITIVE_CONFIGS:
        racers.append(contestant("primitive", TinygraphStep(cell, cfg, fused=False)))
    return racers
