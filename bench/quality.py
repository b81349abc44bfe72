"""The quality benchmark: validation loss against wall-clock, tinygraph's config and torch's nn.LSTM of its size.

Both train on the same corpus, split and batches (``charlm.corpus``) for the same wall-clock
budget, one after the other, with the same CPU threads (NumPy's BLAS and ``torch.set_num_threads``),
and are scored on the same validation windows.  tinygraph trains with the config's whole recipe
(its regularisers and schedule, the schedule told the budget); torch with the plain one (Adam at
the config's rate, the clip, ``dropout`` between layers, no schedule).  Writes to ``out``:
``quality.jsonl`` (one line per evaluation: side, seconds, minutes, step, val_loss),
``quality.svg`` (validation loss against minutes, both curves) and ``quality.txt`` (the table).
torch is imported only when installed; without it the torch side is skipped, with a note.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.probe import blas_threads, torch_version
from charlm import config as cfg
from charlm.corpus import training_data
from models.charlm import RECURRENT
from tinygraph.atomic import atomic_write

Record = dict[str, Any]
SIDES = ("tinygraph", "torch")


@dataclass
class QualityReport:
    """What the run found: the evaluations of each side, the files written, and notes."""

    records: list[Record] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def model_size(config: cfg.Config) -> dict[str, Any]:
    """The torch model of the same size: Embedding dim, cell, hidden size, layers, dropout between them."""
    layers = config["model"]["layers"]
    recurrent = [layer for layer in layers if layer["type"] in RECURRENT]
    if len(layers) != 3 or len(recurrent) != 1:
        raise BenchError("bench --quality compares Embedding -> one recurrent table -> Dense configs only")
    rec = recurrent[0]
    if RECURRENT[rec["type"]].torch_name is None:
        raise BenchError(f"bench --quality: torch has no {rec['type']} (use LSTM, GRU or RNN)")
    dropout = rec.get("dropout", config["train"]["dropout"]) if rec.get("num_layers", 1) > 1 else 0.0
    return {
        "emb": layers[0]["dim"],
        "cell": RECURRENT[rec["type"]].cell,
        "hidden": rec["hidden_size"],
        "layers": rec.get("num_layers", 1),
        "dropout": float(dropout),
    }


def _data(config: cfg.Config, corpus: Path) -> Any:
    """The corpus cut as the trainer cuts it for ``config``: the same split, batches and windows."""
    keys = ("val_fraction", "batch_size", "seq_len", "batching", "seed")
    return training_data(corpus, **{k: config["train"][k] for k in keys}, note=lambda _: None)


def run_tinygraph(
    config: cfg.Config, corpus: Path, out: Path, seconds: float, on_eval: Callable[[Record], None]
) -> None:
    """Train the config for ``seconds`` (its time budget) in ``out``; report each evaluation."""
    from charlm.trainer import Trainer

    config = copy.deepcopy(config)
    tc = config["train"]
    tc.update(time_budget=float(seconds), steps=10**9, sample_length=0)  # the clock ends it, not the steps
    trainer = Trainer(
        config,
        corpus,
        out,
        force=True,
        stdout=io.StringIO(),
        on_eval=lambda _run, r: on_eval(
            {"step": r["step"], "seconds": time.perf_counter() - start, "val_loss": r["val_loss"]}
        ),
    )
    start = time.perf_counter()
    trainer.run()


def run_quality(
    config: cfg.Config,
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    minutes: float,
    *,
    sides: tuple[str, ...] = SIDES,
    progress: Callable[[str], None] = lambda _: None,
) -> QualityReport:
    """Train each side for ``minutes`` of wall-clock, one after the other; write the log, table and plot."""
    corpus, out = Path(corpus), Path(out)
    if not corpus.is_file():
        raise BenchError(f"--corpus {corpus}: no such file")
    if not minutes > 0:
        raise BenchError(f"--minutes must be > 0, got {minutes}")
    if config["train"]["device"] != "cpu":
        raise BenchError('bench --quality runs on the CPU (train.device = "cpu")')
    size = model_size(config)
    out.mkdir(parents=True, exist_ok=True)
    report = QualityReport()
    seconds = minutes * 60.0
    threads = blas_threads()
    log = out / "quality.jsonl"
    log.write_text("")

    def record(side: str) -> Callable[[Record], None]:
        def add(r: Record) -> None:
            r = {"side": side, **r, "minutes": r["seconds"] / 60.0, "threads": threads}
            report.records.append(r)
            with log.open("a") as f:
                f.write(json.dumps(r) + "\n")
            progress(f"{side}: step {r['step']}, {r['minutes']:.2f} min, val {r['val_loss']:.4f}")

        return add

    if "tinygraph" in sides:
        progress(f"tinygraph: {minutes:g} min, {threads} BLAS threads")
        run_tinygraph(config, corpus, out / "tinygraph", seconds, record("tinygraph"))
    if "torch" in sides:
        if torch_version() is None:
            report.notes.append("torch is not installed: the torch side was skipped")
        else:
            from bench import torch_quality

            progress(f"torch: {minutes:g} min, {threads} threads")
            torch_quality.train_for(_data(config, corpus), size, config["train"], seconds, threads, record("torch"))
    table = format_table(report, minutes)
    with atomic_write(out / "quality.txt") as f:
        f.write(table.encode())
    report.files = [log, out / "quality.txt", plot(report.records, out / "quality.svg", minutes)]
    return report


def summary(records: list[Record], side: str) -> dict[str, Any] | None:
    """Steps, final and best validation loss of one side; None if it did not run."""
    rows = [r for r in records if r["side"] == side]
    if not rows:
        return None
    vals = [r["val_loss"] for r in rows if math.isfinite(r["val_loss"])]
    return {"steps": rows[-1]["step"], "minutes": rows[-1]["minutes"], "final": rows[-1]["val_loss"], "best": min(vals)}


def _sides(records: list[Record]) -> list[str]:
    """The sides of ``records`` in the order they first appear (a log may merge several runs)."""
    return list(dict.fromkeys(r["side"] for r in records))


def format_table(report: QualityReport, minutes: float) -> str:
    """The plain-text table: one row per side."""
    lines = [
        f"validation loss (nats/char) after {minutes:g} min of wall-clock each",
        f"{'side':<24} {'steps':>8} {'minutes':>8} {'final':>8} {'best':>8}",
    ]
    for side in _sides(report.records):
        s = summary(report.records, side)
        if s is not None:
            lines.append(f"{side:<24} {s['steps']:>8} {s['minutes']:>8.2f} {s['final']:>8.4f} {s['best']:>8.4f}")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines) + "\n"


def plot(records: list[Record], path: Path, minutes: float) -> Path:
    """Validation loss against minutes, one curve per side, as SVG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for side in _sides(records):
        rows = [r for r in records if r["side"] == side and math.isfinite(r["val_loss"])]
        if rows:
            ax.plot([r["minutes"] for r in rows], [r["val_loss"] for r in rows], "o-", markersize=3, label=side)
    ax.set_xlabel("wall-clock (minutes)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(f"validation loss against wall-clock, {minutes:g} min each")
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="svg")
    return path
