"""The race of one case: the contestants' steps interleaved after a pause, timed, their medians; profiling.

After the race each tinygraph contestant's graph size and peak step memory are read too (and
torch's on the GPU), outside the timed steps.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

# Idle time before every step.  After a call, OpenBLAS's worker threads spin for about 0.1 s
# (measured: 0.11 s of CPU) waiting for more work, and torch's OpenMP threads for about 0.01 s.
# Back to back, one library's spinning threads take a core from the other's next step: measured
# here, torch's small LSTM step went from 17 ms alone to 28 ms right after a NumPy step.  The pause
# lets each step start on a machine the other library has gone quiet on, as it would in real use.
PAUSE_S = 0.2


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


@dataclass
class Race:
    """One case's contestants (the fused tinygraph step first) and what was measured of them."""

    racers: list[Contestant]
    nodes: dict[str, int] = field(default_factory=dict)  # graph nodes per step, tinygraph contestants
    peak_bytes: dict[str, int] = field(default_factory=dict)  # peak step allocation, tinygraph contestants
    torch_peak_bytes: int | None = None  # on the GPU only

    def racer(self, name: str) -> Contestant | None:
        return next((r for r in self.racers if r.name == name), None)


def run_race(racers: list[Contestant], warmup: int, repeats: int, device: str, profiler: Any) -> Race:
    """Warm up, then ``repeats`` timed rounds; ``profiler`` (or None) watches the first racer's timed steps."""
    fused = racers[0]
    torch_racer = next((r for r in racers if r.name == "torch"), None)
    x0, y0 = fused.batches[0]
    nodes = {r.name: r.runner.count_nodes(x0, y0) for r in racers if r.name != "torch"}
    for i in range(warmup):
        for r in racers:
            r.step(i, timed=False)
    for k in range(repeats):
        # alternate who goes first, so neither always inherits the other's cache and clock state
        for r in racers if k % 2 == 0 else reversed(racers):
            r.step(warmup + k, timed=True, profiler=profiler if r is fused else None)

    peak = {r.name: r.runner.peak_step_bytes(x0, y0) for r in racers if r.name != "torch"}
    torch_peak = None
    if torch_racer is not None and device == "gpu":
        runner = torch_racer.runner
        before = runner.gpu_memory_start()
        runner.step(*torch_racer.batches[0])
        torch_peak = runner.gpu_memory_peak() - before
    return Race(racers, nodes, peak, torch_peak)


def write_profile(profiler: cProfile.Profile, path: str) -> None:
    """The top 40 functions by own time, then by cumulative time."""
    with open(path, "w") as f:
        stats = pstats.Stats(profiler, stream=f)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(40)
