"""Loss curves: training and validation loss (nats/char) against the step, as SVG and PNG files.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, so no global state and no display
needed) and written atomically: each file goes to a temporary name in its directory and is then
renamed, so a viewer or a ``kill -9`` never meets half a picture.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tinygraph.atomic import atomic_write


def _series(records: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and isinstance(r.get("step"), int):
            steps.append(r["step"])
            values.append(float(v))
    return steps, values


def plot_losses(
    records: Iterable[dict[str, Any]],
    path: str | os.PathLike,
    title: str = "",
    formats: tuple[str, ...] = ("svg", "png"),
) -> list[Path]:
    """Draw ``train_loss`` and ``val_loss`` of ``records`` (dicts with a ``step``) against the step.

    ``path`` without a suffix names the files: ``runs/x/loss`` gives ``loss.svg`` and ``loss.png``.
    Returns the paths written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = list(records)
    base = Path(path)
    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, label, style in (("train_loss", "train", "-"), ("val_loss", "validation", "o-")):
        steps, values = _series(records, key)
        if steps:
            ax.plot(steps, values, style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    written = []
    for fmt in formats:
        out = base.with_name(f"{base.name}.{fmt}")
        with atomic_write(out) as f:
            fig.savefig(f, format=fmt, dpi=100)
        written.append(out)
    return written
