"""``tinygraph bench --nproc N``: data-parallel training against one process, on this machine.

For each config (and cell), three setups train the same global batch of B streams x T characters
with the trainer's own step (forward, BPTT, the flat-gradient all-reduce, clip 5.0, Adam):

* ``1x1``: one process, one BLAS thread;
* ``1xN``: one process, N BLAS threads (the usual way to use N cores);
* ``Nx1``: N ranks (``mpiexec -n N``) of B/N streams, one BLAS thread each.

Each setup runs in a fresh process (BLAS threads are fixed when NumPy loads), ``warmup`` untimed
steps and then ``repeats`` timed ones, back to back as in training; the median step gives chars/s.
The report gives the speed-up of N ranks over the best one-process setting, the scaling efficiency
(chars/s of N ranks / N x chars/s of 1x1), the bytes all-reduced per step, and what one all-reduce
of them takes alone (after the timed steps, the ranks in step: the communication cost without the
wait for the slower rank).

The worker is this module run as ``python -m bench.scaling --worker ...``; it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import probe
from bench.cases import CLIP_NORM, CONFIGS
from bench.cost import parameter_count
from bench.errors import BenchError
from charlm import distributed
from charlm.distributed import BLAS_VARS, Comm

ROOT = Path(__file__).resolve().parent.parent
WORKER_TIMEOUT_S = 1800


@dataclass
class ScalingReport:
    rows: list[dict[str, Any]]
    env: dict[str, Any]


def setups(nproc: int) -> list[tuple[int, int]]:
    """(ranks, BLAS threads per rank) of the three setups."""
    return [(1, 1), (1, nproc), (nproc, 1)]


def run_scaling(
    configs: list[str],
    cells: list[str],
    nproc: int,
    *,
    repeats: int,
    warmup: int,
    corpus: str | None,
    oversubscribe: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ScalingReport:
    """Time every (config, cell) in the three setups of :func:`setups`."""
    from charlm.distributed import DistributedError
    from charlm.launch import check_request, find_mpiexec

    if nproc < 2:
        raise BenchError(f"--nproc must be >= 2 to compare ranks with one process, got {nproc}")
    try:
        check_request(nproc, oversubscribe)
        mpiexec = find_mpiexec()
    except DistributedError as exc:
        raise BenchError(str(exc)) from exc
    env: dict[str, Any] = {
        "nproc": nproc,
        "cores": os.cpu_count(),
        "repeats": repeats,
        "warmup": warmup,
        "load_before": probe.load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    rows = []
    for name in configs:
        for cell in cells:
            results = {}
            for ranks, threads in setups(nproc):
                if progress is not None:
                    progress(f"{name} {cell} {ranks}x{threads}")
                results[(ranks, threads)] = _time_setup(mpiexec, name, cell, ranks, threads, repeats, warmup, corpus)
            rows.append(_row(name, cell, nproc, results))
    env["load_after"] = probe.load_average()
    env["corpus"] = rows[0]["corpus"] if rows else None
    return ScalingReport(rows, env)


def _time_setup(
    mpiexec: str, config: str, cell: str, ranks: int, threads: int, repeats: int, warmup: int, corpus: str | None
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.scaling", "--worker", "--config", config, "--cell", cell]
    cmd += ["--repeats", str(repeats), "--warmup", str(warmup)]
    if corpus is not None:
        cmd += ["--corpus", corpus]
    if ranks > 1:
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    env = dict(os.environ, **dict.fromkeys(BLAS_VARS, str(threads)))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        done = subprocess.run(
            cmd, env=env, cwd=os.getcwd(), capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{config} {cell} on {ranks} x {threads}: no result after {WORKER_TIMEOUT_S} s") from exc
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise BenchError(f"{config} {cell} on {ranks} rank(s) x {threads} thread(s) failed: {why}")
    return json.loads(lines[-1])


def _row(config: str, cell: str, nproc: int, results: dict[tuple[int, int], dict[str, Any]]) -> dict[str, Any]:
    one, wide, ranks = results[(1, 1)], results[(1, nproc)], results[(nproc, 1)]
    best_single = max(one["chars_per_s"], wide["chars_per_s"])
    return {
        "config": config,
        "cell": cell,
        "corpus": one["corpus"],
        "params": one["params"],
        "chars_per_step": one["chars_per_step"],
        "allreduce_bytes": ranks["allreduce_bytes"],
        "allreduce_ms": 1e3 * ranks["allreduce_s"],
        "allreduce_gb_per_s": ranks["allreduce_bytes"] / ranks["allreduce_s"] / 1e9 if ranks["allreduce_s"] else None,
        "reduce_wait_ms": 1e3 * ranks["reduce_s"],
        "ms_1x1": 1e3 * one["step_s"],
        f"ms_1x{nproc}": 1e3 * wide["step_s"],
        f"ms_{nproc}x1": 1e3 * ranks["step_s"],
        "chars_per_s_1x1": one["chars_per_s"],
        f"chars_per_s_1x{nproc}": wide["chars_per_s"],
        f"chars_per_s_{nproc}x1": ranks["chars_per_s"],
        "threads_seen": {"1x1": one["threads"], f"1x{nproc}": wide["threads"], f"{nproc}x1": ranks["threads"]},
        "speedup_over_best_single": ranks["chars_per_s"] / best_single,
        "efficiency": ranks["chars_per_s"] / (nproc * one["chars_per_s"]),
        "first_loss": {"1x1": one["first_loss"], f"{nproc}x1": ranks["first_loss"]},
    }


def format_scaling(report: ScalingReport) -> str:
    env, n = report.env, report.env["nproc"]
    header = (
        f"{'config':<6} {'cell':<5} {'params':>9} {'MB/step':>8} {'1x1 char/s':>11} {f'1x{n} char/s':>11} "
        f"{f'{n}x1 char/s':>11} {f'{n}x1/best':>9} {'effic.':>7} {'allred. ms':>10} {'GB/s':>6} {'wait ms':>8}"
    )
    lines = [
        f"tinygraph bench --nproc {n}: data-parallel training step (forward, BPTT, all-reduce, clip "
        f"{CLIP_NORM}, Adam), float32, the global batch of each config; ranks x BLAS threads",
        f"corpus: {env['corpus']} | {env['cores']} cores | warm-up {env['warmup']}, then medians of "
        f"{env['repeats']} steps | load average {env['load_before']} before, {env['load_after']} after | "
        f"{env['date']}",
        "",
        header,
        "-" * len(header),
    ]
    for r in report.rows:
        gbs = r["allreduce_gb_per_s"]
        lines.append(
            f"{r['config']:<6} {r['cell']:<5} {r['params']:>9,} {r['allreduce_bytes'] / 1e6:>8.2f} "
            f"{r['chars_per_s_1x1']:>11.0f} {r[f'chars_per_s_1x{n}']:>11.0f} {r[f'chars_per_s_{n}x1']:>11.0f} "
            f"{r['speedup_over_best_single']:>9.2f} {100 * r['efficiency']:>6.0f}% {r['allreduce_ms']:>10.2f} "
            f"{'-' if gbs is None else format(gbs, '.2f'):>6} {r['reduce_wait_ms']:>8.1f}"
        )
    lines += [
        "",
        f"{n}x1/best = chars/s of {n} ranks x 1 thread over the better of 1x1 and 1x{n}; effic. = {n}x1 chars/s / "
        f"({n} x 1x1 chars/s);",
        "MB/step = bytes all-reduced per step (the flat gradient buffer); allred. ms = one all-reduce of it with "
        "the ranks in step;",
        "wait ms = median time a step spent in the all-reduce, waiting for the slower rank included.",
    ]
    return "\n".join(lines)


def scaling_json(report: ScalingReport) -> str:
    return json.dumps({"env": report.env, "rows": report.rows}, indent=2)


# --- the worker: one setup, in its own process (a rank under mpiexec) ------------------------------------------


def _worker(
    comm: Comm | None, config: str, cell: str, repeats: int, warmup: int, corpus: str | None
) -> dict[str, Any] | None:
    import numpy as np

    from bench.corpus import BATCHES, load_corpus, make_batches, text_to_ids
    from bench.tinygraph_step import TinygraphStep
    from tinygraph import optim

    dp = distributed.DataParallel(comm) if comm is not None else None
    cfg = CONFIGS[config]
    text, where = load_corpus(corpus)
    batches = make_batches(text_to_ids(text), cfg.batch, cfg.seq, BATCHES)
    if dp is not None:
        if cfg.batch % dp.size:
            raise BenchError(f"config {config}'s batch of {cfg.batch} cannot be shared by {dp.size} ranks")
        share = cfg.batch // dp.size
        rows = slice(dp.rank * share, (dp.rank + 1) * share)
        batches = [(np.ascontiguousarray(x[rows]), np.ascontiguousarray(y[rows])) for x, y in batches]
    runner = TinygraphStep(cell, cfg, fused=True)
    if dp is not None:
        dp.start(runner.params, {"config": config, "cell": cell})
    times, waits, first_loss = [], [], None
    for i in range(warmup + repeats):
        x, y = batches[i % len(batches)]
        waited = dp.reduce_seconds if dp is not None else 0.0
        start = time.perf_counter()
        runner.opt.zero_grad()
        loss, _ = runner.model.loss(x, y)
        value = loss.item()
        loss.backward()
        del loss
        if dp is not None:
            value, _, _ = dp.reduce(value)
        optim.clip_grad_norm(runner.params, CLIP_NORM)
        runner.opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            waits.append((dp.reduce_seconds if dp is not None else 0.0) - waited)
        if first_loss is None:
            first_loss = value
    allreduce_s, nbytes = 0.0, 0
    if dp is not None and dp.flat is not None:
        nbytes = dp.flat.nbytes
        trials = []
        for _ in range(10):
            comm.world.Barrier()
            t0 = time.perf_counter()
            comm.allreduce_sum(dp.flat.buffer)
            trials.append(time.perf_counter() - t0)
        allreduce_s = statistics.median(trials)
        dp.finish()
    if dp is not None and not dp.is_root:
        return None
    step = statistics.median(times)
    return {
        "corpus": where,
        "params": parameter_count(cell, cfg),
        "chars_per_step": cfg.batch * cfg.seq,
        "step_s": step,
        "chars_per_s": cfg.batch * cfg.seq / step,
        "reduce_s": statistics.median(waits),
        "allreduce_s": allreduce_s,
        "allreduce_bytes": nbytes,
        "threads": probe.blas_threads(),
        "first_loss": first_loss,
    }


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling")
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--config", required=True, choices=sorted(CONFIGS))
    parser.add_argument("--cell", required=True)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--corpus")
    args = parser.parse_args(argv)
    comm = distributed.join()
    try:
        result = _worker(comm, args.config, args.cell, args.repeats, args.warmup, args.corpus)
    except BaseException as exc:
        if comm is None:
            raise
        distributed.fail(comm, "bench", exc)  # one line, and the other ranks are stopped
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
