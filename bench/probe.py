"""Probes of the machine the benchmark runs on: BLAS threads, float32 GEMM peak, load, torch's presence."""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from charlm.distributed import cores


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
    return cores()


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
    """The 1-minute load average, or None where the system has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def torch_version() -> str | None:
    """torch's version when it can be imported, else None (without importing it for nothing)."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch
    except Exception:  # a broken install counts as missing: the benchmark still runs
        return None
    return str(torch.__version__)
