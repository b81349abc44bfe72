"""The benchmark's output: one row per (case, form) from a race and the cost models, the table, the JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from bench.cases import VOCAB, Config
from bench.cost import kept_bytes, matmul_flops, parameter_count
from bench.options import Options
from bench.timing import Race
from models import cells


@dataclass
class Report:
    """The rows (one per config, cell and form) and the run's environment (machine, corpus, notes)."""

    rows: list[dict[str, Any]]
    env: dict[str, Any]

    @property
    def notes(self) -> list[str]:
        return self.env["notes"]


def case_rows(cfg: Config, cell: str, race: Race, options: Options, env: dict[str, Any]) -> list[dict]:
    """Rows for one (config, cell): the fused tinygraph step, and the primitive one when it raced."""
    fused = race.racers[0]
    primitive = race.racer("primitive")
    torch_racer = race.racer("torch")
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
            "device": options.device,
            # which gate math the fused steps ran: CUDA kernels on the GPU, else numba's or NumPy's
            "gate_math": "cuda" if options.device == "gpu" else cells.get_gate_math(),
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
            "tg_peak_bytes": race.peak_bytes[r.name],
            "kept_bytes": kept,
            "mem_ratio": race.peak_bytes[r.name] / kept,
            "torch_peak_bytes": race.torch_peak_bytes,
            "nodes_per_step": race.nodes[r.name],
            "nodes_per_s": race.nodes[r.name] / t,
            "primitive_over_fused": t / fused.seconds if r is primitive else None,
            "repeats": options.repeats,
            "warmup": options.warmup,
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


def rescale_to_peak(rows: list[dict], peak: float) -> None:
    """Restate every row's peak shares against ``peak`` (a better GEMM peak measured later)."""
    for row in rows:
        row["gemm_peak_gflops"] = peak
        row["tg_peak_share"] = row["tg_gflops"] / peak
        if row["torch_gflops"] is not None:
            row["torch_peak_share"] = row["torch_gflops"] / peak


def to_json(report: Report) -> str:
    return json.dumps(report.rows, indent=2)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: Report) -> str:
    rows, env = report.rows, report.env
    header = (
        f"{'config':<6} {'cell':<5} {'form':<9} {'gates':<5} {'tg ms':>8} {'torch ms':>9} {'tg char/s':>10} "
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
            f"{r['config']:<6} {r['cell']:<5} {r['form']:<9} {r['gate_math']:<5} "
            f"{r['tg_ms']:>8.1f} {_fmt(r['torch_ms'], '.1f'):>9} "
            f"{r['tg_chars_per_s']:>10.0f} {_fmt(r['torch_chars_per_s'], '.0f'):>12} {_fmt(r['ratio'], '.2f'):>6} "
            f"{r['tg_gflops']:>8.1f} {100 * r['tg_peak_share']:>5.0f}% {_fmt(r['torch_gflops'], '.1f'):>10} "
            f"{r['tg_peak_bytes'] / 2**20:>8.1f} {r['kept_bytes'] / 2**20:>8.1f} {r['mem_ratio']:>6.2f} "
            f"{r['nodes_per_s']:>9.0f} {_fmt(r['primitive_over_fused'], '.2f'):>10}"
        )
    lines += [
        "",
        "ratio = tinygraph chars/s / torch chars/s (> 1: tinygraph is faster); GF/s counts matmul FLOPs only; "
        "%peak = tinygraph GF/s / GEMM peak; gates = the fused cells' gate math (numba, numpy or cuda);",
        "step MB = tinygraph's peak allocation during one step; kept MB = activations BPTT must keep; "
        "mem x = step / kept (see docs/bench_cpu.md).",
    ]
    lines += [f"note: {n}" for n in env["notes"]]
    return "\n".join(lines)
