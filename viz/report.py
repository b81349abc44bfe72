"""The run report: one HTML page about a training run, self-contained, that works from disk with no network.

:func:`render_report` turns a :class:`Report` (what ``cli/report.py`` gathers from a run directory)
into the page: the training curves, the samples of every evaluation behind a slider, the gradient
flow over training (steps back from the loss against training step, one panel per layer, and the
curve of the evaluation under the cursor), the gates, and the unrolled BPTT graph of the run's model
with pan, zoom and the details of a node on hover or click.

The pictures are the ones the project already makes -- matplotlib SVG for the charts, Graphviz SVG
for the graph (:mod:`viz.bptt_graph`) -- inlined, each with its element ids prefixed so that several
SVGs share one document.  What moves is a little script, ``report.js`` beside this module, inlined
with ``report.css``: no chart library, no CDN.  The page's data travel as one JSON block.

Everything here reads records: metrics, samples, the probe's arrays, and for the graph the kept
graph of a loss (:func:`graph_view`, which reads ``out_grads`` and ``in_grads`` as the drawing
does and runs no op).
"""

from __future__ import annotations

import html
import io
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinygraph.backend import to_numpy
from tinygraph.graph import Graph
from tinygraph.tensor import Tensor
from viz.bptt_graph import build_drawing, dot_to_svg, drawing_to_dot, fmt_norm, group_keys
from viz.gradflow import geometric_rate

ASSETS = Path(__file__).resolve().parent
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
LN2 = math.log(2.0)


@dataclass
class GraphView:
    """One drawing of the unrolled graph: its SVG and, per box id, what a click on it shows."""

    key: str  # "cell" or "op": also the prefix of its SVG ids
    label: str  # the tab's name
    title: str
    svg: str
    details: dict[str, dict[str, Any]]


@dataclass
class Report:
    """What the page shows; ``probe`` is a :class:`charlm.probe.ProbeHistory` (or anything with its fields)."""

    run: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    probe: Any = None
    seq_len: int | None = None  # the training window, marked on the gradient-flow pictures
    graphs: list[GraphView] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why
    first_eval: int | None = None  # the step of the first evaluation, for a run that has none yet


# --- SVG surgery --------------------------------------------------------------------------------------


def _inline_svg(svg: str | bytes, prefix: str, css_class: str) -> str:
    """An SVG file made fit to sit inside HTML: no XML prolog, ids prefixed, sized by CSS."""
    text = svg.decode("utf-8") if isinstance(svg, bytes) else svg
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # the writer's RDF record: links, dates
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    return re.sub(r'<svg\b[^>]*?\swidth="[^"]*"\s+height="[^"]*"', f'<svg class="{css_class}"', text, count=1)


def _figure_svg(fig: Any) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "tinygraph-report"}):
        fig.savefig(buf, format="svg", dpi=100, metadata={"Date": None})
    return buf.getvalue()


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


# --- charts ---------------------------------------------------------------------------------------------


def _xy(records: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """The (x, y) pairs of ``records`` where both are finite numbers."""
    pairs = [(r.get(x), r.get(y)) for r in records]
    ok = [(a, b) for a, b in pairs if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b))]
    return [float(a) for a, _ in ok], [float(b) for _, b in ok]


def _loss_panel(ax: Any, metrics: list[dict[str, Any]], x: str, xlabel: str) -> None:
    for key, label, style in (("train_loss", "train", "-"), ("val_loss", "validation", "o-")):
        xs, ys = _xy(metrics, x, key)
        if xs:
            ax.plot(xs, ys, style, label=label, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats/char)")
    ax.secondary_yaxis("right", functions=(lambda v: v / LN2, lambda v: v * LN2)).set_ylabel("bits/char")
    if ax.get_lines():
        ax.legend(fontsize=8)


def training_svg(metrics: list[dict[str, Any]]) -> str:
    """Loss against step and against wall-clock training time (nats, bits/char), learning rate, chars/s."""
    fig = _figure(10, 6.2)
    (a, b), (c, d) = fig.subplots(2, 2)
    _loss_panel(a, metrics, "step", "step")
    a.set_title("loss against step", fontsize=10)
    _loss_panel(b, metrics, "elapsed_s", "wall-clock training time (s, evaluations left out)")
    b.set_title("loss against time", fontsize=10)
    xs, ys = _xy(metrics, "step", "lr")
    c.plot(xs, ys, "o-", markersize=3, color=COLOURS[2])
    if ys and min(ys) > 0 and max(ys) / min(ys) > 10:
        c.set_yscale("log")
    else:
        c.set_ylim(bottom=0)
    c.set_title("learning rate", fontsize=10)
    c.set_xlabel("step")
    xs, ys = _xy(metrics, "step", "chars_per_s")
    d.plot(xs, ys, "o-", markersize=3, color=COLOURS[3])
    d.set_ylim(bottom=0)
    d.set_title("training speed (chars/s)", fontsize=10)
    d.set_xlabel("step")
    for ax in (a, b, c, d):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _inline_svg(_figure_svg(fig), "training", "chart")


def _log_norms(norms: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(norms)
    logs[~np.isfinite(logs)] = np.nan  # an underflowed (zero) gradient: left blank
    return logs


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around each evaluation's step, halfway to its neighbours."""
    s = steps.astype(np.float64)
    if s.size == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def heatmap_svg(probe: Any, seq_len: int | None) -> tuple[str, dict[str, Any]]:
    """log10 |dL/dh| by steps back from the loss (up) and training step (across), one panel per layer.

    Returns the SVG and where its panels are (SVG units, data limits) for the page's cursor.
    """
    norms = np.asarray(probe.norms, dtype=np.float64)  # (E, L, T)
    n_evals, n_layers, steps = norms.shape
    logs = _log_norms(norms)
    finite = logs[np.isfinite(logs)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    # an untrained model's gradient can be many decades below any trained one's: the colours span
    # the trained evaluations, and step 0 shows as "below" (the colour bar's triangle)
    trained = logs[np.asarray(probe.steps) > 0]
    trained = trained[np.isfinite(trained)]
    extend = "neither"
    if trained.size and trained.min() > lo and trained.max() > trained.min():
        lo, extend = float(trained.min()), "min"
    width, height = 10.0, 3.6
    fig = _figure(width, height)
    left, right, bottom, top, gap, bar = 0.07, 0.9, 0.14, 0.83, 0.05, 0.015
    panel_w = (right - left - gap * (n_layers - 1)) / max(n_layers, 1)
    x_edges = _edges(np.asarray(probe.steps))
    y_edges = np.arange(steps + 1) - 0.5
    panels = []
    mesh = None
    for i in range(n_layers):
        x0 = left + i * (panel_w + gap)
        ax = fig.add_axes((x0, bottom, panel_w, top - bottom))
        grid = logs[:, i, ::-1].T  # row k: k steps back from the loss (t = T - 1 - k)
        mesh = ax.pcolormesh(x_edges, y_edges, grid, cmap="viridis", vmin=lo, vmax=hi, shading="flat", rasterized=True)
        if seq_len is not None and seq_len < steps:
            ax.axhline(seq_len - 0.5, color="white", linestyle="--", linewidth=1)
            ax.text(x_edges[0], seq_len, " training window", color="white", fontsize=7, va="bottom")
        ax.set_title(probe.layers[i], fontsize=10)
        ax.set_xlabel("training step")
        if i == 0:
            ax.set_ylabel("steps back from the loss")
        panels.append(
            {
                "x0": x0 * width * 72,
                "x1": (x0 + panel_w) * width * 72,
                "y0": (1 - top) * height * 72,
                "y1": (1 - bottom) * height * 72,
                "xlim": [float(x_edges[0]), float(x_edges[-1])],
            }
        )
    if mesh is not None:
        cax = fig.add_axes((right + 0.015, bottom, bar, top - bottom))
        fig.colorbar(mesh, cax=cax, extend=extend).set_label("log10 |dL/dh_t|")
    fig.suptitle(
        f"gradient flow over training: {n_evals} evaluation(s), loss on the last of {steps} steps", fontsize=10, y=0.985
    )
    return _inline_svg(_figure_svg(fig), "heatmap", "chart heatmap-svg"), {"panels": panels}


def gates_svg(probe: Any) -> str | None:
    """Mean activation (solid) and saturated share (dotted) of each gate against training step, per layer."""
    means = np.asarray(probe.gate_mean)
    gated = [i for i in range(len(probe.layers)) if np.isfinite(means[:, i, :]).any()]  # (an RNN has none)
    if not gated:
        return None
    steps = np.asarray(probe.steps, dtype=np.float64)
    fig = _figure(10, 3.2)
    axes = fig.subplots(1, len(gated), squeeze=False)[0]
    legend: dict[str, Any] = {}
    for ax, i in zip(axes, gated):
        for j, name in enumerate(probe.gates):
            if not np.isfinite(means[:, i, j]).any():
                continue
            saturated = np.asarray(probe.gate_low)[:, i, j] + np.asarray(probe.gate_high)[:, i, j]
            c = COLOURS[j % len(COLOURS)]
            (legend[f"{name}: mean"],) = ax.plot(steps, means[:, i, j], "o-", color=c, markersize=3)
            (legend[f"{name}: saturated share"],) = ax.plot(steps, saturated, ":", color=c)
        ax.set_ylim(0, 1)
        ax.set_title(probe.layers[i], fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("activation / share")
    axes[-1].legend(list(legend.values()), list(legend), fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return _inline_svg(_figure_svg(fig), "gates", "chart")


# --- the graph --------------------------------------------------------------------------------------------


def _scope(scope: dict[str, Any], keys: tuple[str, ...] = ("cell", "layer", "t", "part")) -> dict[str, Any]:
    return {k: scope[k] for k in keys if k in scope}


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def box_details(loss: Tensor, drawing: Any) -> dict[str, dict[str, Any]]:
    """For each box of a drawing of the kept graph behind ``loss``: its op, scope, shapes and gradient norms.

    The box of node i is ``n{i}`` and the box of a run of one step's nodes at cell level ``c{first}``,
    as :mod:`viz.bptt_graph` names them; leaf copies and stubs are described by their own lines.
    """
    nodes = Graph.of(loss).nodes
    members: dict[str, list[Any]] = {}
    for node, key in zip(nodes, group_keys(nodes, drawing.level)):
        members.setdefault(f"{'n' if key[0] == 'n' else 'c'}{key[1]}", []).append(node)
    kinds = {"param": "parameter (a leaf)", "input": "input (a leaf without gradient)", "stub": "stub"}
    details = {}
    for box in drawing.boxes:
        d: dict[str, Any] = {"kind": kinds.get(box.kind, box.kind), "grad": fmt_norm(box.norm), "text": box.lines}
        group = members.get(box.id)
        if group:
            first = group[0]
            d["op"] = first.label
            d["scope"] = _scope(first.scope)
            if len(group) > 1:
                counts = Counter(n.name for n in group)
                d["op"] = f"{len(group)} ops: " + ", ".join(f"{k} x{v}" if v > 1 else k for k, v in counts.items())
                d["scope"] = _scope(first.scope, ("cell", "layer", "t"))
                d["parts"] = list(dict.fromkeys(n.scope["part"] for n in group if "part" in n.scope))
            last = group[-1]
            outs = []
            for o, (shape, dtype) in enumerate(last.out_meta):
                g = last.out_grads[o] if last.out_grads is not None else None
                norm = None if g is None else float(np.sqrt((to_numpy(g).astype(np.float64) ** 2).sum()))
                outs.append(f"{_shape(shape)} {dtype}, |dL/d out| {fmt_norm(norm)}")
            d["outputs"] = outs
            if len(group) == 1:
                d["inputs"] = [f"{_input_name(x)} {_shape(x.shape)}" for x in first.inputs]
        details[box.id] = d
    return details


def _input_name(x: Tensor) -> str:
    if x.name:
        return x.name
    if x.creator is not None:
        return x.creator.name
    return "leaf" if x.requires_grad else "input (no gradient)"


def graph_view(loss: Tensor, level: str, key: str, label: str, title: str) -> GraphView:
    """Draw the kept graph behind ``loss`` (after ``loss.backward(keep_graph=True)``) for the page."""
    drawing = build_drawing(loss, level)
    svg = dot_to_svg(drawing_to_dot(drawing, title)).decode("utf-8")
    # the DOT id of a box is the <title> of its SVG group: moved to a data attribute the script reads
    svg = re.sub(
        r'<g id="(node\d+)" class="node">\s*<title>([^<]*)</title>',
        lambda m: f'<g id="{m[1]}" class="node" data-box="{m[2]}">',
        svg,
    )
    svg = re.sub(  # the clusters of the time steps, where the page opens a long unroll
        r'<g id="(clust\d+)" class="cluster">\s*<title>cluster_t(\d+)</title>',
        lambda m: f'<g id="{m[1]}" class="cluster" data-step="{m[2]}">',
        svg,
    )
    svg = re.sub(r"<title>[^<]*</title>", "", svg)  # no browser tooltips: the details panel says more
    return GraphView(key, label, title, _inline_svg(svg, f"graph-{key}", "graph-svg"), box_details(loss, drawing))


# --- the page ---------------------------------------------------------------------------------------------


def _num(v: float, digits: int = 4) -> float | None:
    return float(f"{v:.{digits}g}") if v is not None and math.isfinite(v) else None


def _probe_data(probe: Any) -> dict[str, Any]:
    norms = np.asarray(probe.norms, dtype=np.float64)
    rates = [[_num(geometric_rate(norms[e, i]), 3) for i in range(norms.shape[1])] for e in range(norms.shape[0])]
    return {
        "steps": [int(s) for s in probe.steps],
        "loss": [_num(v) for v in probe.loss],
        "layers": list(probe.layers),
        "norms": [[[_num(v, 3) if v > 0 else None for v in row] for row in e] for e in norms],
        "rates": rates,
        "window": int(norms.shape[2]),
    }


def _json_for_script(data: Any) -> str:
    # inside <script>, "</" would end the element early
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _facts_html(facts: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
    return f'<table class="facts">{rows}</table>'


def _section(sid: str, title: str, body: str, intro: str = "") -> str:
    lead = f'<p class="intro">{intro}</p>' if intro else ""
    return f'<section id="{sid}"><h2>{_esc(title)}</h2>{lead}{body}</section>'


def _samples_html(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return '<p class="empty">No samples recorded (train.sample_length is 0, or the run predates them).</p>'
    return (
        '<div class="slider-row"><label for="sample-slider">evaluation</label>'
        f'<input type="range" id="sample-slider" min="0" max="{len(samples) - 1}" value="{len(samples) - 1}" step="1">'
        '<span id="sample-label"></span></div><pre id="sample-text"></pre>'
    )


def _gradflow_html(report: Report) -> tuple[str, dict[str, Any] | None]:
    probe = report.probe
    if probe is None or len(probe.steps) == 0:
        return '<p class="empty">No BPTT probe recorded for this run.</p>', None
    svg, geometry = heatmap_svg(probe, report.seq_len)
    n = len(probe.steps)
    body = (
        f'<div id="heatmap">{svg}</div>'
        '<div class="slider-row"><label for="flow-slider">evaluation</label>'
        f'<input type="range" id="flow-slider" min="0" max="{n - 1}" value="{n - 1}" step="1">'
        '<span id="flow-label"></span></div>'
        '<svg id="flow-curve" class="chart" viewBox="0 0 900 300" role="img" '
        'aria-label="gradient norm against steps back for the evaluation under the cursor"></svg>'
    )
    gates = gates_svg(probe)
    if gates is not None:
        body += (
            '<h3>Gates</h3><p class="intro">Mean activation of each gate over the probe\'s window (solid), and the '
            "share of activations that are saturated, below 0.1 or above 0.9 (dotted).</p>"
            f'<div id="gates">{gates}</div>'
        )
    return body, geometry


def _graphs_html(graphs: list[GraphView]) -> str:
    if not graphs:
        return '<p class="empty">No graph drawn.</p>'
    active = [" active" if i == 0 else "" for i in range(len(graphs))]
    tabs = "".join(
        f'<button type="button" class="graph-tab{a}" data-graph="{g.key}">{_esc(g.label)}</button>'
        for a, g in zip(active, graphs)
    )
    views = "".join(
        f'<div class="graph-view{a}" id="graph-{g.key}" data-graph="{g.key}">{g.svg}</div>'
        for a, g in zip(active, graphs)
    )
    zoom = [("in", "+"), ("out", "&minus;"), ("fit", "fit")]
    controls = "".join(f'<button type="button" data-zoom="{z}">{label}</button>' for z, label in zoom)
    hint = '<p class="empty">Hover over a box, or click it to keep its details here.</p>'
    return (
        f'<div class="graph-bar">{tabs}<span class="graph-controls">{controls}</span></div>'
        f'<div class="graph-area">{views}<aside id="node-details">{hint}</aside></div>'
    )


def render_report(report: Report) -> str:
    """The HTML page for ``report``: one string, everything inline."""
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    script = (ASSETS / "report.js").read_text(encoding="utf-8")
    notes = "".join(f'<p class="note">{_esc(n)}</p>' for n in report.notes)
    written = time.strftime("%Y-%m-%d %H:%M:%S")
    head = (
        f"<header><h1>tinygraph run report: {_esc(report.run)}</h1>"
        f'<p class="written">written {written}; rewritten at each evaluation while the run trains</p>'
        f"{_facts_html(report.facts)}{notes}</header>"
    )
    data: dict[str, Any] = {"samples": [], "probe": None, "heat": None, "graphs": {}, "seqLen": report.seq_len}
    if not report.metrics:
        when = f" (the first comes at step {report.first_eval})" if report.first_eval else ""
        body = _section(
            "waiting",
            "No evaluation yet",
            f"<p>This run has not been evaluated yet{_esc(when)}: the page fills in from its first evaluation.</p>",
        )
    else:
        flow, geometry = _gradflow_html(report)
        body = "".join(
            [
                _section("training", "Training", training_svg(report.metrics)),
                _section(
                    "samples",
                    "Samples",
                    _samples_html(report.samples),
                    "What the model wrote at each evaluation; move the slider (or use the arrow keys on it).",
                ),
                _section(
                    "gradflow",
                    "Gradient flow over training",
                    flow,
                    "At each evaluation one forward and backward pass over a fixed validation window, with the loss "
                    "on its last step only: the colour is log10 |dL/dh_t| for each step back from the loss. Hover "
                    "over the picture (or move the slider) for that evaluation's curve, click to keep it; dashed: "
                    "the first evaluation.",
                ),
                _section(
                    "graph",
                    "The unrolled BPTT graph",
                    _graphs_html(report.graphs),
                    "The run's model in one real forward and backward pass (graph kept): every box shows its op, "
                    "output shape and the norm of the gradient that reached it. Drag to pan, wheel to zoom; hover "
                    "or click a box for its details.",
                ),
            ]
        )
        data["samples"] = [
            {"step": s.get("step"), "text": s.get("text", ""), "val": _num(_val_at(report.metrics, s.get("step")))}
            for s in report.samples
        ]
        if geometry is not None:
            data["probe"] = _probe_data(report.probe)
            data["heat"] = geometry
        data["graphs"] = {g.key: g.details for g in report.graphs}
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(report.run)}: tinygraph run report</title><style>{css}</style></head>"
        f"<body>{head}<main>{body}</main>"
        f'<script type="application/json" id="report-data">{_json_for_script(data)}</script>'
        f"<script>{script}</script></body></html>\n"
    )


def _val_at(metrics: list[dict[str, Any]], step: Any) -> float | None:
    for r in metrics:
        if r.get("step") == step and isinstance(r.get("val_loss"), (int, float)):
            return float(r["val_loss"])
    return None
