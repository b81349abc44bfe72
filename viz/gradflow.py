"""Gradient flow over time: |dL/dh_t| against t for a loss at the last step, from real backward passes.

``hidden_gradients`` runs a recurrent layer forward, puts a loss on its last output only
(``sum(outputs[:, -1] * probe)``), walks the graph back with ``keep_graph=True`` and reads dL/dh_t
off the nodes of each step: ``node.out_grads`` of the node that made h_t.  The norms of those
gradients, one per step, show how much of the loss's gradient survives the trip back to step t:
a tanh RNN's fades geometrically, gated cells keep it longer.  ``plot_gradient_flow`` draws one
line per cell type on a log scale with matplotlib; ``plot_gradient_flow_panels`` puts several such
pictures side by side on one axis (a model before and after training).

Nothing here knows a model: the layer is any callable ``layer(x) -> (outputs, state)`` whose step
nodes carry ``scope(t=...)`` (and ``layer=...`` when it stacks several), as tinygraph's layers do.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tinygraph import backend
from tinygraph.atomic import write_atomic
from tinygraph.errors import TinygraphError
from tinygraph.graph import Graph, Node, step_outputs
from tinygraph.tensor import Tensor


class GradientFlowError(TinygraphError):
    """The layer's graph does not show its time steps (no nodes tagged with ``t``)."""


def _hidden_nodes(nodes: list[Node]) -> dict[int, Node]:
    """For each step t of the top layer, the node whose first output is h_t.

    A fused cell is one node per step (outputs h[, c]); a cell written in primitive ops tags the
    ops that compute h with ``part="hidden"``, the last of them making h_t.
    """
    stepped = [n for n in nodes if "t" in n.scope]
    if not stepped:
        raise GradientFlowError("no node of the graph is tagged with a time step t: is this a recurrent layer?")
    top = max(n.scope.get("layer", 0) for n in stepped)
    by_step: dict[int, list[Node]] = {}
    for n in stepped:
        if n.scope.get("layer", 0) == top:
            by_step.setdefault(n.scope["t"], []).append(n)
    return step_outputs(by_step)


def hidden_gradients(layer: Callable[[Tensor], Any], x: Tensor, probe: Any) -> list[np.ndarray]:
    """dL/dh_t for t = 0..T-1 (host arrays (B, H)) with L = sum(outputs[:, -1] * probe).

    ``x`` (B, T, I) batch-first; ``probe`` broadcasts against the last output (B, H), e.g. a fixed
    random vector (H,).  The gradients are read from the framework's own reverse walk.
    """
    outputs = layer(x)
    outputs = outputs[0] if isinstance(outputs, tuple) else outputs
    if not isinstance(probe, Tensor):
        probe = Tensor(backend.get_array_module(outputs.data).asarray(probe, dtype=outputs.dtype))
    loss = (outputs[:, -1] * probe).sum()
    loss.backward(keep_graph=True)
    steps = _hidden_nodes(Graph.of(loss).nodes)
    if sorted(steps) != list(range(x.shape[1])):
        raise GradientFlowError(f"the graph tags steps {sorted(steps)}, the input has {x.shape[1]} time steps")
    grads = []
    for t in range(x.shape[1]):
        g = steps[t].out_grads[0] if steps[t].out_grads is not None else None
        shape = steps[t].out_meta[0][0]
        grads.append(np.zeros(shape) if g is None else backend.to_numpy(g).astype(np.float64))
    return grads


def gradient_norms(layer: Callable[[Tensor], Any], x: Tensor, probe: Any) -> np.ndarray:
    """|dL/dh_t| (Frobenius norm over the batch) for t = 0..T-1, float64."""
    return np.array([float(np.linalg.norm(g)) for g in hidden_gradients(layer, x, probe)])


def _draw_flows(ax: Any, flows: Mapping[str, np.ndarray], mark: int | None = None) -> None:
    """One line per entry of ``flows`` on a log axis; ``mark``: a dashed line where the training window starts.

    Norms of exactly zero (a gradient that underflowed) cannot sit on a log axis and are left out.
    """
    for label, values in flows.items():
        norms = np.asarray(values, dtype=np.float64)
        shown = np.where(norms > 0, norms, np.nan)
        ax.plot(np.arange(norms.size), shown, label=label, linewidth=1.6)
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.grid(True, which="major", alpha=0.3)
    if mark is not None:
        ax.axvline(mark, color="#888888", linestyle="--", linewidth=1, label="training window starts")
    if flows:
        ax.legend()
        steps = max(np.asarray(v).size for v in flows.values())
        ax.set_xlim(0, max(steps - 1, 1))


def _save(fig: Any, path: str | os.PathLike, dpi: int) -> Path:
    import matplotlib

    path = Path(path)
    fmt = path.suffix[1:].lower() or "svg"
    fig.tight_layout()
    buf = io.BytesIO()
    # a fixed salt makes the SVG's clip-path ids, and no date makes its metadata, the same every run
    with matplotlib.rc_context({"svg.hashsalt": "tinygraph-gradflow"}):
        meta = {"Date": None} if fmt in ("svg", "pdf") else {}
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    return write_atomic(path, buf.getvalue())


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_gradient_flow(
    flows: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "", dpi: int = 100
) -> Path:
    """One line per entry of ``flows`` (label -> norms over t), log scale, as SVG (or PNG by suffix)."""
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    _draw_flows(ax, flows)
    ax.set_ylabel("|dL/dh_t|")
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path, dpi)


def plot_gradient_flow_panels(
    panels: Mapping[str, Mapping[str, np.ndarray]],
    path: str | os.PathLike,
    title: str = "",
    mark: int | None = None,
    dpi: int = 100,
) -> Path:
    """Panels side by side sharing the log axis (e.g. untrained | trained), each drawn as :func:`plot_gradient_flow`."""
    fig = _figure(5.2 * max(len(panels), 1), 4.4)
    axes = fig.subplots(1, max(len(panels), 1), sharey=True, squeeze=False)[0]
    for ax, (name, flows) in zip(axes, panels.items()):
        _draw_flows(ax, flows, mark)
        ax.set_title(name, fontsize=10)
    axes[0].set_ylabel("|dL/dh_t|")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


def geometric_rate(norms: np.ndarray) -> float:
    """The average factor per step by which the norm shrinks going back in time (nan when undefined)."""
    norms = np.asarray(norms, dtype=np.float64)
    if norms.size < 2 or not (norms[0] > 0 and norms[-1] > 0):
        return math.nan
    return float((norms[0] / norms[-1]) ** (1.0 / (norms.size - 1)))
