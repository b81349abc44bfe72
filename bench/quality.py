"""The quality benchmark: validation loss against wall-clock, tinygraph's config and torch's nn.LSTM recipe.

Both train on the same corpus and split (``charlm.corpus``), with the same CPU threads (NumPy's BLAS
and ``torch.set_num_threads``), one after the other, for one or more wall-clock budgets, and are
scored on the validation split as the trainer scores it.  tinygraph trains its config once per
budget, with the config's whole recipe (its schedule told the budget, so ``cosine_budget`` ends
with it); torch trains its recipe (by default the config's size, Adam at its rate, its clip,
``dropout`` between layers, no schedule) once, for the longest budget, scored also the moment each
shorter budget runs out: without a schedule a shorter run is the first minutes of the longest.
A torch curve recorded earlier can be read instead of trained again (``torch_log``).  Writes to
``out``: ``quality.jsonl`` (one line per evaluation: side, budget, seconds, minutes, step,
val_loss, threads), ``quality.txt`` (the table: both sides at each budget) and ``quality.svg``
(validation loss against minutes, one curve per run).  torch is imported only when installed;
without it the torch side is skipped, with a note.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
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
    """What the run found: the budgets, the evaluations of each side, the files written, and notes."""

    budgets: list[float] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_minutes(text: str) -> list[float]:
    """``"5,10,30"`` -> ``[5.0, 10.0, 30.0]``: the budgets, sorted, each a positive number of minutes."""
    try:
        budgets = sorted({float(part) for part in text.split(",")})
    except ValueError:
        raise BenchError(f"--minutes takes numbers separated by commas (5,10,30), got {text!r}") from None
    if not all(0 < m < math.inf for m in budgets):
        raise BenchError(f"--minutes must each be > 0, got {text!r}")
    return budgets


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
    minutes: Sequence[float],
    *,
    torch_config: cfg.Config | None = None,
    torch_log: str | os.PathLike | None = None,
    sides: tuple[str, ...] = SIDES,
    progress: Callable[[str], None] = lambda _: None,
) -> QualityReport:
    """Train each side for the ``minutes`` budgets, one run after the other; write the log, table and plot.

    ``torch_config`` is torch's recipe (default: ``config``'s size and rate); ``torch_log`` a
    ``quality.jsonl`` whose torch run (at least as long as the longest budget) is read instead of
    training torch (whatever ``sides`` says).
    """
    corpus, out = Path(corpus), Path(out)
    budgets = sorted(set(minutes))
    if not corpus.is_file():
        raise BenchError(f"--corpus {corpus}: no such file")
    if not budgets or not all(m > 0 for m in budgets):
        raise BenchError(f"--minutes must each be > 0, got {list(minutes)}")
    torch_config = config if torch_config is None else torch_config
    for c in (config, torch_config):
        if c["train"]["device"] != "cpu":
            raise BenchError('bench --quality runs on the CPU (train.device = "cpu")')
    model_size(config)
    torch_size = model_size(torch_config)
    earlier = read_torch_log(Path(torch_log), budgets[-1]) if torch_log is not None else None
    out.mkdir(parents=True, exist_ok=True)
    report = QualityReport(budgets=budgets)
    threads = blas_threads()
    log = out / "quality.jsonl"
    log.write_text("")

    def add(r: Record) -> None:
        report.records.append(r)
        with log.open("a") as f:
            f.write(json.dumps(r) + "\n")
        run = f"{r['side']} ({r['budget']:g} min)"
        progress(f"{run}: step {r['step']}, {r['minutes']:.2f} min, val {r['val_loss']:.4f}")

    def record(side: str, budget: float) -> Callable[[Record], None]:
        return lambda r: add({"side": side, "budget": budget, **r, "minutes": r["seconds"] / 60.0, "threads": threads})

    if "tinygraph" in sides:
        for m in budgets:
            progress(f"tinygraph: {m:g} min, {threads} BLAS threads")
            run_tinygraph(config, corpus, out / f"tinygraph-{m:g}min", m * 60.0, record("tinygraph", m))
    if earlier is not None:
        for r in earlier:
            add(r)
        if {r["threads"] for r in earlier} != {threads}:
            report.notes.append(f"torch's curve from {torch_log} ran with other threads than this run's {threads}")
    elif "torch" in sides:
        if torch_version() is None:
            report.notes.append("torch is not installed: the torch side was skipped")
        else:
            from bench import torch_quality

            scored = ", ".join(f"{m:g}" for m in budgets)
            progress(f"torch: {budgets[-1]:g} min (scored at {scored}), {threads} threads")
            torch_quality.train_for(
                _data(torch_config, corpus),
                torch_size,
                torch_config["train"],
                budgets[-1] * 60.0,
                threads,
                record("torch", budgets[-1]),
                marks=budgets[:-1],
            )
    with atomic_write(out / "quality.txt") as f:
        f.write(format_table(report).encode())
    report.files = [log, out / "quality.txt", plot(report.records, out / "quality.svg")]
    return report


def read_torch_log(path: Path, longest: float) -> list[Record]:
    """The torch run of an earlier ``quality.jsonl`` that lasted at least ``longest`` minutes."""
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"--torch-log {path}: not a quality.jsonl ({e})") from None
    keys = {"side", "budget", "step", "seconds", "minutes", "val_loss", "threads"}
    runs = [r for r in rows if isinstance(r, dict) and r.keys() >= keys and r["side"] == "torch"]
    budgets = sorted({r["budget"] for r in runs if r["budget"] >= longest})
    if not budgets:
        raise BenchError(f"--torch-log {path}: no torch run of {longest:g} minutes or more in it")
    return [r for r in runs if r["budget"] == budgets[0]]


def at_budget(records: list[Record], side: str, minutes: float) -> dict[str, Any] | None:
    """One side at ``minutes`` of wall-clock: steps, validation loss then, and the best loss until then.

    From the side's run of that budget if there is one; otherwise from a longer run (the shortest):
    its evaluation made when ``minutes`` ran out, or its last one before then.  None if neither ran.
    """
    runs = sorted({r["budget"] for r in records if r["side"] == side and r["budget"] >= minutes})
    if not runs:
        return None
    rows = [r for r in records if r["side"] == side and r["budget"] == runs[0]]
    if runs[0] != minutes:
        marked = [i for i, r in enumerate(rows) if r.get("mark") == minutes]
        before = [i for i, r in enumerate(rows) if r["minutes"] <= minutes]
        last = (marked or before or [-1])[-1]
        if last < 0:
            return None
        rows = rows[: last + 1]
    vals = [r["val_loss"] for r in rows if math.isfinite(r["val_loss"])]
    return {
        "steps": rows[-1]["step"],
        "minutes": rows[-1]["minutes"],
        "val": rows[-1]["val_loss"],
        "best": min(vals) if vals else math.nan,
    }


def format_table(report: QualityReport) -> str:
    """The plain-text table: both sides at each budget, and tinygraph's lead over torch's best until then."""
    lines = [
        "validation loss (nats/char) at each budget of wall-clock; torch: its loss then, and its best until then",
        f"{'budget':>7} {'tinygraph steps':>16} {'val':>8} {'torch steps':>12} {'val':>8} {'best':>8} {'lead':>8}",
    ]
    for m in report.budgets:
        tg_at, torch_at = at_budget(report.records, "tinygraph", m), at_budget(report.records, "torch", m)
        tg_cells = [f"{tg_at['steps']:>16}", f"{tg_at['val']:>8.4f}"] if tg_at else [f"{'-':>16}", f"{'-':>8}"]
        torch_cells = (
            [f"{torch_at['steps']:>12}", f"{torch_at['val']:>8.4f}", f"{torch_at['best']:>8.4f}"]
            if torch_at
            else [f"{'-':>12}", f"{'-':>8}", f"{'-':>8}"]
        )
        lead = f"{torch_at['best'] - tg_at['val']:>+8.4f}" if tg_at and torch_at else f"{'-':>8}"
        lines.append(" ".join([f"{m:>5g} m", *tg_cells, *torch_cells, lead]))
    lines.append("lead: torch's best until the budget minus tinygraph's loss at it (> 0: tinygraph lower)")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines) + "\n"


def plot(records: list[Record], path: Path) -> Path:
    """Validation loss against minutes, one curve per run (side and budget), as SVG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    runs = list(dict.fromkeys((r["side"], r["budget"]) for r in records))
    for side, budget in runs:
        rows = [r for r in records if (r["side"], r["budget"]) == (side, budget) and math.isfinite(r["val_loss"])]
        if rows:
            label = f"{side}, {budget:g} min" + (" (no schedule: scored at each budget)" if side == "torch" else "")
            ax.plot([r["minutes"] for r in rows], [r["val_loss"] for r in rows], "o-", markersize=2, label=label)
    ax.set_xlabel("wall-clock (minutes)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("validation loss against wall-clock")
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="svg")
    return path
