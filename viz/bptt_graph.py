"""Draw the graph behind a loss, unrolled in time, with the gradient that reached every node.

``render_graph(loss, path)`` turns the kept graph of ``loss.backward(keep_graph=True)`` into SVG
with Graphviz's ``dot``: one cluster per time step (the ``t`` of each node's scope), left to right
in time; each box names its op, its output shapes and the norm of dL/d(output) from
``node.out_grads``; solid edges carry values forward, dashed coloured edges carry gradients back,
each labelled with the norm of the gradient that went along it.

Two rules keep ``dot``'s layout fast for long unrolls, because an edge from one node into every
cluster (a shared weight, the input projection of all steps) is what makes it slow:

* a leaf (a parameter, an input) is drawn as one small copy in each time step that uses it;
* a node outside the time loop joined to several steps (the input projection, the split of it,
  the stack of the outputs) is a *hub*: it gets a small stub inside each of those steps, and its
  edges end at the stubs.

Everything drawn is read from what the walk recorded (``node.out_grads``, the summed dL/d of each
output, and ``node.in_grads``, what the node's backward sent along each input): drawing executes
no op, so drawing a graph twice gives the same file and leaves the graph as the walk left it.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinygraph.atomic import write_atomic
from tinygraph.errors import TinygraphError
from tinygraph.graph import Graph, Node
from tinygraph.tensor import Tensor

LEVELS = ("op", "cell")
MAX_LAID_OUT_LABELS = 1200  # gradient edges whose labels dot places during the layout (see drawing_to_dot)

# matplotlib's perceptually ordered "plasma", cut before its pale yellow end so that every colour
# stays visible as a thin dashed line on white: small gradients dark blue, large ones orange
_RAMP = ("#0d0887", "#5302a3", "#8b0aa5", "#b83289", "#db5c68", "#f48849", "#febd2a")
_NO_GRAD = "#bdbdbd"
_FONT = "Helvetica"  # graphviz has metrics for it: labels fit their boxes in every viewer


class GraphvizMissingError(TinygraphError):
    """Graphviz's ``dot`` program is not installed."""


class GraphRenderError(TinygraphError):
    """The graph cannot be drawn: no graph behind the tensor, backward not run, or ``dot`` failed."""


# --- numbers and colours -------------------------------------------------------------------------


def fmt_norm(v: float | None) -> str:
    """How a gradient norm is printed on the drawing: 3 significant digits, or 'none'."""
    return "none" if v is None else f"{v:.2e}"


def _norm(arrays: list[Any]) -> float | None:
    """Euclidean norm of several arrays taken together (float64); None when there are none."""
    if not arrays:
        return None
    total = 0.0
    for a in arrays:
        a64 = a.astype("float64", copy=False)
        total += float((a64 * a64).sum())
    return math.sqrt(total)


def _sum(arrays: list[Any]) -> Any:
    total = arrays[0]
    for a in arrays[1:]:
        total = total + a
    return total


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _text_colour(fill: str) -> str:
    if not fill.startswith("#"):
        return "black"
    r, g, b = _rgb(fill)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


@dataclass
class ColourScale:
    """log10 of a gradient norm -> a colour of the ramp; no gradient (or zero) -> grey."""

    lo: float
    hi: float

    @classmethod
    def spanning(cls, values: list[float]) -> ColourScale:
        logs = [math.log10(v) for v in values if v > 0 and math.isfinite(v)]
        if not logs:
            return cls(-1.0, 1.0)
        lo, hi = min(logs), max(logs)
        if hi - lo < 1e-9:  # a single value: put it in the middle of one decade
            lo, hi = lo - 0.5, hi + 0.5
        return cls(lo, hi)

    def colour(self, v: float | None) -> str:
        if v is None or not v > 0 or not math.isfinite(v):
            return _NO_GRAD
        x = min(max((math.log10(v) - self.lo) / (self.hi - self.lo), 0.0), 1.0)
        pos = x * (len(_RAMP) - 1)
        i = min(int(pos), len(_RAMP) - 2)
        a, b, w = _rgb(_RAMP[i]), _rgb(_RAMP[i + 1]), pos - i
        return "#" + "".join(f"{round(p + (q - p) * w):02x}" for p, q in zip(a, b))

    def ticks(self, n: int = 5) -> list[float]:
        return [10 ** (self.lo + (self.hi - self.lo) * k / (n - 1)) for k in range(n)]


# --- what is drawn -------------------------------------------------------------------------------


@dataclass
class Box:
    """One drawn node: an op (or the ops of one step at cell level), a leaf copy, or a hub's stub."""

    id: str
    kind: str  # "op", "cell", "loss", "param", "input", "stub"
    lines: list[str]
    t: int | None  # the time step (cluster) it is drawn in; None: outside the time loop
    norm: float | None  # the gradient norm that colours it; None: no gradient reached it


@dataclass
class Edge:
    src: str
    dst: str
    grad: bool  # False: a value going forward; True: a gradient going back (src is the consumer)
    norm: float | None = None
    visible: bool = True  # invisible edges only order the layout


@dataclass
class Drawing:
    """The boxes and edges for one graph, before any DOT is written."""

    level: str
    boxes: list[Box] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        return sorted({b.t for b in self.boxes if b.t is not None})


def _kept_graph(loss: Tensor) -> Graph:
    if not isinstance(loss, Tensor) or loss.creator is None:
        raise GraphRenderError("there is no graph behind this tensor: draw a loss computed from tensors with grads")
    graph = Graph.of(loss)
    if any(n.op is None for n in graph.nodes):
        raise GraphRenderError(
            "the graph behind this loss was released by backward(): call loss.backward(keep_graph=True) before drawing"
        )
    if loss.creator.out_grads is None or loss.creator.in_grads is None:
        raise GraphRenderError("no gradients to draw: call loss.backward(keep_graph=True) before drawing")
    return graph


def edge_gradients(nodes: list[Node]) -> dict[tuple[int, int], Any]:
    """dL/d(input) each walked node's backward sent along each input slot, as the walk recorded it:
    {(node index, slot): array, or None where nothing went}."""
    return {
        (i, slot): g
        for i, node in enumerate(nodes)
        if node.in_grads is not None
        for slot, g in enumerate(node.in_grads)
    }


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _leaf_title(x: Tensor) -> str:
    if x.name:
        return x.name
    return "leaf" if x.requires_grad else "input"


def group_keys(nodes: list[Node], level: str) -> list[tuple[str, int]]:
    """The box of each node: its own, or at cell level one per run of nodes of one cell's step."""
    keys = []
    run, previous = -1, None
    for i, node in enumerate(nodes):
        s = node.scope
        if level == "cell" and "t" in s:
            tag = (s.get("cell"), s.get("layer"), s["t"])
            if tag != previous:
                run = i  # a new run: the same tags met again later (another module) make another box
            previous = tag
            keys.append(("g", run))
        else:
            previous = None
            keys.append(("n", i))
    return keys


class _Builder:
    """Turns the kept graph behind a loss into boxes and edges (see :func:`build_drawing`)."""

    def __init__(self, loss: Tensor, level: str):
        self.loss, self.level = loss, level
        self.graph = _kept_graph(loss)
        self.nodes = self.graph.nodes
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.per_edge = edge_gradients(self.nodes)
        self.keys = group_keys(self.nodes, level)
        self.members: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, k in enumerate(self.keys):
            self.members[k].append(i)
        # DOT ids come from the graph order (never from ids or counters): the same model draws the same
        self.box_id = {k: f"{'n' if k[0] == 'n' else 'c'}{k[1]}" for k in self.members}
        self.step_of = {k: self.nodes[m[0]].scope.get("t") for k, m in self.members.items()}
        self.root = self.index[id(loss.creator)]
        # consumers in another box of each tensor (producer index, output index): [(consumer, slot)]
        self.consumers: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for producer, consumer, slot in self.graph.edges:
            p, c = self.index[id(producer)], self.index[id(consumer)]
            if self.keys[p] != self.keys[c]:
                self.consumers[(p, consumer.inputs[slot].index)].append((c, slot))
        # boxes outside the time loop: the steps they send values into, and take values from
        self.feeds: dict[Any, set[int]] = defaultdict(set)
        self.gathers: dict[Any, set[int]] = defaultdict(set)
        for (p, _), cs in self.consumers.items():
            kp = self.keys[p]
            for c, _ in cs:
                kc = self.keys[c]
                if self.step_of[kp] is None and self.step_of[kc] is not None:
                    self.feeds[kp].add(self.step_of[kc])
                if self.step_of[kc] is None and self.step_of[kp] is not None:
                    self.gathers[kc].add(self.step_of[kp])
        self.hubs = {k for k in self.members if len(self.feeds[k] | self.gathers[k]) >= 2}
        self.stubs: dict[tuple[Any, int], Box] = {}
        self.drawing = Drawing(level)

    def build(self) -> Drawing:
        named = self._named_leaves() if self.level == "cell" else {}
        for k, m in self.members.items():
            box = self._op_box(k, m)
            if named.get(k):  # at cell level a box names the parameters it uses instead of drawing them
                box.lines.insert(1 if len(m) == 1 else 2, "uses " + ", ".join(named[k]))
            if k in self.hubs:
                ts = sorted(self.feeds[k] | self.gathers[k])
                box.lines[0] = f"#{self.box_id[k][1:]} {box.lines[0]}"
                box.lines.insert(1, f"a stub in each step t={ts[0]}..{ts[-1]}")
            self.drawing.boxes.append(box)
        self._edges()
        if self.level == "op":
            self._leaf_copies()
        self._order_steps()
        self._place_hubs()
        return self.drawing

    def _named_leaves(self) -> dict[Any, list[str]]:
        named: dict[Any, list[str]] = defaultdict(list)
        for x, consumer, _ in self.graph.leaves:
            names = named[self.keys[self.index[id(consumer)]]]
            if x.name and x.name not in names:
                names.append(x.name)
        return named

    def _op_box(self, k: tuple[str, int], m: list[int]) -> Box:
        nodes = self.nodes
        if len(m) == 1:
            node = nodes[m[0]]
            lines = [node.label]
            part = node.scope.get("part")
            if part and self.level == "op":
                lines.append(f"[{part}]")
            outs = [(m[0], o) for o in range(len(node.out_meta))]
        else:  # the ops of one step drawn as one box: show the tensors that leave it
            first = nodes[m[0]].scope
            lines = [f"{first.get('cell') or 'cell'} step", f"layer {first.get('layer', 0)}, {len(m)} ops"]
            inside = set(m)
            leaving = {po for po in self.consumers if po[0] in inside}
            if self.root in inside:
                leaving.add((self.root, self.loss.index))
            outs = sorted(leaving)
        shown = []
        for p, o in outs:
            g = nodes[p].out_grads[o] if nodes[p].out_grads is not None else None
            if g is not None:
                shown.append(g)
            what = f"{nodes[p].name} " if len(m) > 1 else ""
            lines.append(f"{what}{_shape(nodes[p].out_meta[o][0])} grad {fmt_norm(None if g is None else _norm([g]))}")
        kind = "loss" if self.root in m else ("cell" if len(m) > 1 else "op")
        if kind == "loss":
            lines[0] = f"loss = {self.loss.item():.4g}: {lines[0]}"
        return Box(self.box_id[k], kind, lines, self.step_of[k], _norm(shown))

    def _stub(self, hub: Any, t: int, feeds: bool) -> Box:
        if (hub, t) not in self.stubs:
            name = f"{'from' if feeds else 'to'} #{self.box_id[hub][1:]} {self.nodes[self.members[hub][-1]].name}"
            self.stubs[(hub, t)] = Box(f"s{self.box_id[hub][1:]}_t{t}", "stub", [name], t, None)
        return self.stubs[(hub, t)]

    def _edges(self) -> None:
        """One edge per (tensor, source box, destination box); a hub's edges end at its stubs."""
        flows: dict[tuple[str, str, tuple[int, int]], list[Any]] = {}
        through: dict[str, list[Any]] = defaultdict(list)
        for (p, out), cs in sorted(self.consumers.items()):
            kp = self.keys[p]
            for c, slot in cs:
                kc = self.keys[c]
                src, dst, stub = self.box_id[kp], self.box_id[kc], None
                if kp in self.hubs and self.step_of[kc] is not None:
                    stub = self._stub(kp, self.step_of[kc], feeds=True)
                    src = stub.id
                elif kc in self.hubs and self.step_of[kp] is not None:
                    stub = self._stub(kc, self.step_of[kp], feeds=False)
                    dst = stub.id
                gs = flows.setdefault((src, dst, (p, out)), [])
                g = self.per_edge.get((c, slot))
                if g is not None:
                    gs.append(g)
                    if stub is not None:
                        through[stub.id].append(g)
        for (src, dst, _), gs in flows.items():
            self.drawing.edges.append(Edge(src, dst, False))
            if gs:
                self.drawing.edges.append(Edge(dst, src, True, _norm([_sum(gs)])))
        for box in sorted(self.stubs.values(), key=lambda b: (b.t, b.id)):
            box.norm = _norm([_sum(through[box.id])]) if through[box.id] else None
            box.lines.append(f"grad {fmt_norm(box.norm)}")
            self.drawing.boxes.append(box)

    def _leaf_copies(self) -> None:
        """One small box per leaf and time step that uses it; scalar constants are left out."""
        leaf_no: dict[int, int] = {}
        copies: dict[tuple[int, int | None], Box] = {}
        grads: dict[str, list[Any]] = defaultdict(list)
        for x, consumer, slot in self.graph.leaves:
            if x.size <= 1 and not x.requires_grad and not x.name:
                continue
            c = self.index[id(consumer)]
            k = self.keys[c]
            t = self.step_of[k]
            n = leaf_no.setdefault(id(x), len(leaf_no))
            if (n, t) not in copies:
                bid = f"l{n}" + ("" if t is None else f"_t{t}")
                kind = "param" if x.requires_grad else "input"
                copies[(n, t)] = Box(bid, kind, [_leaf_title(x), _shape(x.shape)], t, None)
            box = copies[(n, t)]
            self.drawing.edges.append(Edge(box.id, self.box_id[k], False))
            g = self.per_edge.get((c, slot))
            if g is not None:
                grads[box.id].append(g)
                self.drawing.edges.append(Edge(self.box_id[k], box.id, True, _norm([g])))
        for box in copies.values():
            if box.kind == "param":
                box.norm = _norm([_sum(grads[box.id])]) if grads[box.id] else None
                box.lines.append(f"grad {fmt_norm(box.norm)}")
            self.drawing.boxes.append(box)

    def _order_steps(self) -> None:
        """Invisible edges from the last boxes of each step to the first boxes of the next.

        Without them ``dot`` lets the rank ranges of neighbouring steps overlap and stacks the
        clusters in a staircase; with them the steps stand in one row, left to right.
        """
        drawing = self.drawing
        step = {b.id: b.t for b in drawing.boxes}
        has_in: set[str] = set()
        has_out: set[str] = set()
        for e in drawing.edges:
            if not e.grad and step[e.src] is not None and step[e.src] == step[e.dst]:
                has_out.add(e.src)
                has_in.add(e.dst)
        steps = drawing.steps
        for a, b in itertools.pairwise(steps):
            last = [x.id for x in drawing.boxes if x.t == a and x.id not in has_out]
            first = [x.id for x in drawing.boxes if x.t == b and x.id not in has_in]
            drawing.edges.extend(Edge(u, v, False, visible=False) for u in last for v in first)

    def _place_hubs(self) -> None:
        """Invisible edges put a hub before the first step it feeds, or after the last it gathers from.

        A hub between two layers (the stack of layer 0's outputs, which layer 1's projection reads)
        gets none: it would have to stand both after the last step and before the first.
        """
        after: dict[Any, set[Any]] = defaultdict(set)
        for (p, _), cs in self.consumers.items():
            for c, _ in cs:
                after[self.keys[p]].add(self.keys[c])

        def reaches(a: Any, targets: set[Any]) -> bool:
            seen, todo = {a}, [a]
            while todo:
                for b in after[todo.pop()]:
                    if b in targets:
                        return True
                    if b not in seen:
                        seen.add(b)
                        todo.append(b)
            return False

        feeders = {k for k in self.hubs if self.feeds[k]}
        gatherers = {k for k in self.hubs if self.gathers[k]}
        for k in sorted(self.hubs):
            if k in feeders and not any(reaches(g, {k}) for g in gatherers):
                stub = self.stubs[(k, min(self.feeds[k]))]
                self.drawing.edges.append(Edge(self.box_id[k], stub.id, False, visible=False))
            if k in gatherers and not reaches(k, feeders):
                stub = self.stubs[(k, max(self.gathers[k]))]
                self.drawing.edges.append(Edge(stub.id, self.box_id[k], False, visible=False))


def build_drawing(loss: Tensor, level: str = "op") -> Drawing:
    """Decide the boxes and edges for the kept graph behind ``loss`` (see :func:`render_graph`)."""
    if level not in LEVELS:
        raise GraphRenderError(f"unknown level {level!r}: use 'op' (every primitive op) or 'cell' (one box per step)")
    return _Builder(loss, level).build()


# --- DOT -----------------------------------------------------------------------------------------


def _q(text: str) -> str:
    """A DOT double-quoted string; newlines become DOT's centred line breaks."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_STYLE = {
    "op": 'shape=box, style="rounded,filled"',
    "cell": 'shape=box, style="rounded,filled", penwidth=2',
    "loss": 'shape=box, style="rounded,filled", peripheries=2, penwidth=2',
    "param": "shape=ellipse, style=filled, fontsize=8, height=0.3",
    "input": 'shape=ellipse, style=filled, fontsize=8, height=0.3, color="#777777"',
    "stub": 'shape=note, style="filled,dashed", fontsize=8, height=0.3',
}


def _legend(scale: ColourScale, level: str) -> str:
    cells = "".join(
        f'<TD BGCOLOR="{scale.colour(v)}" WIDTH="48"><FONT COLOR="{_text_colour(scale.colour(v))}" POINT-SIZE="8">'
        f"{fmt_norm(v)}</FONT></TD>"
        for v in scale.ticks(5)
    )
    leaf = (
        "ellipse: a leaf (parameter, or input without grad), one copy per step that uses it"
        if level == "op"
        else "uses: the parameters a box reads"
    )
    notes = [
        "box: op name, output shape, grad = |dL/d output| (its colour)",
        "solid black arrow: a value going forward",
        "dashed coloured arrow: the gradient going back along it, labelled with its norm",
        leaf,
        "note: stands in a step for box #id outside the time loop",
        "double border: the loss; grey: no gradient reached it",
    ]
    rows = [
        '<TR><TD COLSPAN="5"><B>gradient norm |dL/d·|, log scale</B></TD></TR>',
        f"<TR>{cells}</TR>",
        *(f'<TR><TD COLSPAN="5" ALIGN="LEFT">{n}</TD></TR>' for n in notes),
    ]
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="1" CELLPADDING="2">' + "".join(rows) + "</TABLE>>"


def drawing_to_dot(drawing: Drawing, title: str = "") -> str:
    """DOT text for a drawing, the same for the same drawing (no timestamps, no random ids)."""
    values = [b.norm for b in drawing.boxes] + [e.norm for e in drawing.edges if e.grad]
    scale = ColourScale.spanning([v for v in values if v is not None])
    head = f'rankdir=LR, fontname="{_FONT}", fontsize=12, nodesep=0.12, ranksep=0.25'
    if title:
        head += f", labelloc=t, label={_q(title)}"
    out = [
        "digraph bptt {",
        f"  graph [{head}];",
        f'  node [fontname="{_FONT}", fontsize=9, margin="0.06,0.03", height=0.35];',
        f'  edge [fontname="{_FONT}", fontsize=7, arrowsize=0.6];',
        '  subgraph cluster_legend { label="legend"; style="rounded"; color="#999999"; fontsize=10;',
        f"    legend [shape=plain, label={_legend(scale, drawing.level)}];",
        "  }",
    ]

    def box_line(b: Box) -> str:
        fill = "white" if b.kind == "input" else scale.colour(b.norm)
        return (
            f"    {b.id} [label={_q(chr(10).join(b.lines))}, {_STYLE[b.kind]}, "
            f'fillcolor="{fill}", fontcolor="{_text_colour(fill)}"];'
        )

    out.extend(box_line(b) for b in drawing.boxes if b.t is None)
    for t in drawing.steps:
        out.append(f'  subgraph cluster_t{t} {{ label="t = {t}"; style="rounded"; color="#888888"; fontsize=11;')
        out.extend(box_line(b) for b in drawing.boxes if b.t == t)
        out.append("  }")
    for e in drawing.edges:
        if not e.grad:
            out.append(f"  {e.src} -> {e.dst};" if e.visible else f"  {e.src} -> {e.dst} [style=invis];")
    # An edge label is laid out as a node of its own (dot doubles the ranks to make room), which
    # costs superlinear time: measured on an op-level 2-layer LSTM at T=50 (about 2,000 gradient
    # edges), 30 s with labels, 0.7 s with xlabels.  Past a size, labels go on after the layout.
    grads = [e for e in drawing.edges if e.grad]
    key = "label" if len(grads) <= MAX_LAID_OUT_LABELS else "xlabel"
    for e in grads:  # drawn from the consumer back to the producer, and kept out of the ranking
        c = scale.colour(e.norm)
        out.append(
            f'  {e.src} -> {e.dst} [style=dashed, color="{c}", fontcolor="{c}", constraint=false, '
            f"{key}={_q(fmt_norm(e.norm))}];"
        )
    out.append("}")
    return "\n".join(out) + "\n"


def to_dot(loss: Tensor, level: str = "op", title: str = "") -> str:
    """DOT text of the kept graph behind ``loss`` (see :func:`render_graph`)."""
    return drawing_to_dot(build_drawing(loss, level), title)


# --- dot and files -------------------------------------------------------------------------------


def dot_to_svg(dot: str) -> bytes:
    """Lay out and draw DOT text with Graphviz's ``dot``."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissingError(
            "Graphviz's `dot` program was not found: install Graphviz "
            "(Debian/Ubuntu: sudo apt-get install graphviz; macOS: brew install graphviz)"
        )
    done = subprocess.run([exe, "-Tsvg"], input=dot.encode("utf-8"), capture_output=True, check=False)
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GraphRenderError(f"dot failed: {why[0] if why else f'exit status {done.returncode}'}")
    return done.stdout


def render_graph(loss: Tensor, path: str | os.PathLike, level: str = "op", title: str = "") -> Path:
    """Draw the graph behind ``loss`` as an SVG file at ``path``; returns the path.

    Run ``loss.backward(keep_graph=True)`` first: the drawing shows the gradients that walk left
    in ``node.out_grads``.  ``level="op"`` draws every op, with a copy of each leaf in each step
    that uses it; ``level="cell"`` draws all the ops of one step of one cell as a single box
    naming the parameters it uses, which stays readable for long unrolls (build the layers with
    fused cells and each step already is one op).
    """
    return write_atomic(path, dot_to_svg(to_dot(loss, level, title)))
