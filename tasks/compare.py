"""Comparing recurrent cells on the memory tasks: every cell at every length, a table and a plot.

``compare("adding", ["rnn", "lstm"], [10, 50])`` trains each cell at each length on the same
budget (``tasks.memory.train``'s options); ``table`` prints the steps each needed to solve the task
and the error it ended with; ``plot_by_length`` draws the error against the length, one line per
cell -- the classic picture of how far back each cell can learn to remember.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.memory import Result, make_task, train
from tinygraph.atomic import write_atomic


def compare(
    task: str,
    cells: list[str],
    lengths: list[int],
    on_result: Callable[[Result], None] | None = None,
    task_options: dict[str, Any] | None = None,
    **train_options: Any,
) -> list[Result]:
    """Train every cell at every length of ``task`` on the same budget (``train_options``, seed included).

    ``on_result`` is called with each result as it comes (a progress line, say).
    """
    results = []
    for length in lengths:
        for cell in cells:
            result = train(make_task(task, length, **(task_options or {})), cell, **train_options)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def table(results: list[Result]) -> str:
    """One row per task and length, one column per cell: "steps to solve / final error" ("-" unsolved)."""
    cells = list(dict.fromkeys(r.cell for r in results))
    rows = list(dict.fromkeys((r.task, r.length) for r in results))
    found = {(r.task, r.length, r.cell): r for r in results}
    width = 15
    lines = [f"{'task':8}{'T':>5}  " + "".join(f"{c.upper():>{width}}" for c in cells)]
    for task, length in rows:
        line = f"{task:8}{length:>5}  "
        for cell in cells:
            r = found.get((task, length, cell))
            text = "" if r is None else f"{r.solved_at if r.solved else '-'} / {r.final_error:.4f}"
            line += f"{text:>{width}}"
        lines.append(line)
    return "\n".join(lines)


def plot_by_length(results: list[Result], path: str | os.PathLike, title: str = "") -> Path:
    """The final held-out error against the sequence length, one line per cell, one panel per task.

    Adding: MSE on a log scale; copy: the accuracy on the recalled symbols.  A filled marker is a
    run that solved the task within its budget, an open one a run that did not.  Dashed: what a
    net without memory scores; dotted: the "solved" threshold.  SVG or PNG by the suffix.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    names = list(dict.fromkeys(r.task for r in results))
    fig = Figure(figsize=(5.2 * max(len(names), 1), 4.0))
    FigureCanvasAgg(fig)
    for k, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), k + 1)
        mine = [r for r in results if r.task == name]
        accuracy = name == "copy"
        for i, cell in enumerate(dict.fromkeys(r.cell for r in mine)):
            runs = sorted((r for r in mine if r.cell == cell), key=lambda r: r.length)
            xs = [r.length for r in runs]
            ys = [1.0 - r.final_error if accuracy else r.final_error for r in runs]
            colour = f"C{i}"
            ax.plot(xs, ys, "-", color=colour, label=cell.upper(), linewidth=1.5)
            for r, y in zip(runs, ys):
                ax.plot([r.length], [y], "o", color=colour, markerfacecolor=colour if r.solved else "white")
        first = mine[0]
        base = 1.0 - first.baseline if accuracy else first.baseline
        line = 1.0 - first.threshold if accuracy else first.threshold
        ax.axhline(base, color="grey", linestyle="--", linewidth=1, label="no memory")
        ax.axhline(line, color="grey", linestyle=":", linewidth=1, label="solved")
        ax.set_xscale("log")
        lengths = sorted({r.length for r in mine})
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.minorticks_off()
        if accuracy:
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("accuracy on the recalled symbols")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("MSE")
        ax.set_xlabel("sequence length T")
        budget = max(r.steps for r in mine)
        ax.set_title(f"{name}: after at most {budget} training steps", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fmt = path.suffix[1:].lower() or "svg"
    # a fixed salt for the SVG's ids and no date: the same results draw the same file
    with matplotlib.rc_context({"svg.hashsalt": "tinygraph-memory-tasks"}):
        fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt in ("svg", "pdf") else {})
    return write_atomic(path, buf.getvalue())
