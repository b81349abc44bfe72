"""The BPTT drawing: clusters per step, box counts, gradient labels against the framework's, the CLI."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models
import tinygraph as tg
from cli.main import main
from viz import bptt_graph
from viz.bptt_graph import GraphRenderError, build_drawing, edge_gradients, fmt_norm, render_graph

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def _need_dot() -> None:
    if shutil.which("dot") is None:
        pytest.fail("Graphviz's `dot` is required by these tests: apt-get install graphviz (or brew install graphviz)")


# --- helpers -------------------------------------------------------------------------------------


def lm_loss(cell: str, steps: int, layers: int = 1, fused: bool = False, seed: int = 0) -> tg.Tensor:
    """Loss of a tiny character model after backward(keep_graph=True), as `tinygraph graph` builds it."""
    tg.manual_seed(seed)
    spec = [
        {"type": "Embedding", "dim": 3},
        {"type": cell.upper(), "hidden_size": 4, "num_layers": layers},
        {"type": "Dense", "size": "vocab"},
    ]
    model = models.CharLM.from_layers(5, spec, fused=fused)
    ids = np.random.default_rng(seed).integers(0, 5, size=(2, steps + 1))
    loss, _ = model.loss(ids[:, :-1], ids[:, 1:])
    loss.backward(keep_graph=True)
    return loss


class Svg:
    """What a test needs from graphviz's SVG: clusters (title -> bbox), nodes and edges with their texts."""

    def __init__(self, path: Path):
        self.root = ET.parse(path).getroot()  # raises on malformed XML
        self.clusters: dict[str, tuple[float, float, float, float]] = {}
        self.nodes: dict[str, list[str]] = {}
        self.node_xy: dict[str, tuple[float, float]] = {}
        self.edges: list[tuple[str, list[str], bool]] = []  # (title, texts, dashed)
        for g in self.root.iter(f"{SVG}g"):
            cls, title = g.get("class"), g.findtext(f"{SVG}title")
            texts = [t.text or "" for t in g.iter(f"{SVG}text")]
            if cls == "cluster":
                xs, ys = self._outline(g)
                self.clusters[title] = (min(xs), min(ys), max(xs), max(ys))
            elif cls == "node":
                self.nodes[title] = texts
                t = next(g.iter(f"{SVG}text"), None)
                if t is not None:
                    self.node_xy[title] = (float(t.get("x")), float(t.get("y")))
            elif cls == "edge":
                path = g.find(f"{SVG}path")
                self.edges.append((title, texts, path is not None and path.get("stroke-dasharray") is not None))

    @staticmethod
    def _outline(g: Any) -> tuple[list[float], list[float]]:
        """x and y of the points of a cluster's frame (a path when rounded, else a polygon)."""
        shape = g.find(f"{SVG}path")
        text = shape.get("d") if shape is not None else g.find(f"{SVG}polygon").get("points")
        numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", text)]
        return numbers[0::2], numbers[1::2]

    def step_clusters(self) -> list[str]:
        return sorted((c for c in self.clusters if c.startswith("cluster_t")), key=lambda c: int(c[9:]))

    def cluster_of(self, node: str) -> str | None:
        x, y = self.node_xy[node]
        for name, (x0, y0, x1, y1) in self.clusters.items():
            if x0 <= x <= x1 and y0 <= y <= y1:
                return name
        return None


def render(loss: tg.Tensor, tmp_path: Path, level: str = "op", name: str = "g.svg") -> Svg:
    return Svg(render_graph(loss, tmp_path / name, level=level))


def expected_op_boxes(loss: tg.Tensor) -> int:
    """Boxes at op level, derived from the graph: its nodes, one copy of each leaf per step that
    uses it (scalar constants aside), one stub per step for each node outside the loop joined to
    two or more steps, and the legend."""
    g = tg.Graph.of(loss)
    step = {id(n): n.scope.get("t") for n in g.nodes}
    copies = {(id(x), step[id(c)]) for x, c, _ in g.leaves if x.size > 1 or x.requires_grad or x.name}
    linked: dict[int, set[int]] = defaultdict(set)
    for p, c, _ in g.edges:
        if step[id(p)] is None and step[id(c)] is not None:
            linked[id(p)].add(step[id(c)])
        if step[id(c)] is None and step[id(p)] is not None:
            linked[id(c)].add(step[id(p)])
    stubs = sum(len(ts) for ts in linked.values() if len(ts) >= 2)
    return len(g.nodes) + len(copies) + stubs + 1


def norm(a: Any) -> float:
    return float(np.linalg.norm(tg.backend.to_numpy(a).astype(np.float64)))


def close(printed: str, value: float) -> bool:
    return float(printed) == pytest.approx(value, rel=6e-3, abs=1e-300)


# --- structure -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "cifg"])
def test_op_level_one_cluster_per_step_and_every_box_drawn(cell: str, tmp_path: Path) -> None:
    loss = lm_loss(cell, steps=3)
    svg = render(loss, tmp_path)
    assert svg.step_clusters() == ["cluster_t0", "cluster_t1", "cluster_t2"]
    assert len(svg.nodes) == expected_op_boxes(loss)
    # every op of step t is drawn inside the cluster of step t, every other op outside all steps
    nodes = tg.Graph.of(loss).nodes
    for i, node in enumerate(nodes):
        t = node.scope.get("t")
        where = svg.cluster_of(f"n{i}")
        assert where == (f"cluster_t{t}" if t is not None else None), (node, where)


def test_hand_counted_boxes_for_a_two_step_rnn(tmp_path: Path) -> None:
    tg.manual_seed(0)
    rnn = models.RNN(3, 4, fused=False)
    x = tg.tensor(np.random.default_rng(0).standard_normal((2, 2, 3)).astype(np.float32))
    out, _ = rnn(x)
    loss = (out * np.ones(4, dtype=np.float32)).sum()
    loss.backward(keep_graph=True)
    svg = render(loss, tmp_path)
    # ops: bias add, input projection, split; per step reshape, linear, add, tanh (x2); stack,
    # transpose, mul, sum = 15 (x needs no grad: its transpose is a constant, not a node).
    # Leaves: x transposed, bias_ih, bias_hh, weight_ih, the ones vector; h0 and weight_hh in
    # step 0; weight_hh in step 1 = 8.  Stubs: split and stack, in 2 steps each = 4.  Legend: 1.
    assert len(svg.nodes) == 15 + 8 + 4 + 1 == 28
    assert len(svg.step_clusters()) == 2


def test_shared_weights_drawn_once_per_step_and_no_box_joins_two_steps(tmp_path: Path) -> None:
    loss = lm_loss("lstm", steps=3)
    svg = render(loss, tmp_path)
    copies = [n for n, texts in svg.nodes.items() if texts and texts[0] == "weight_hh_l0"]
    assert sorted(svg.cluster_of(n) for n in copies) == ["cluster_t0", "cluster_t1", "cluster_t2"]
    # the layout rule: nothing outside the time loop has a visible edge into two different steps
    joined: dict[str, set[str]] = defaultdict(set)
    for title, _, _ in svg.edges:
        a, b = title.split("->")
        ca, cb = svg.cluster_of(a), svg.cluster_of(b)
        if ca is None and cb is not None:
            joined[a].add(cb)
        if cb is None and ca is not None:
            joined[b].add(ca)
    assert all(len(cs) == 1 for cs in joined.values()), joined
    # the split of the input projection and the stack of the outputs reach each step through a stub
    for prefix in ("from #", "to #"):
        stubs = [n for n, texts in svg.nodes.items() if texts and texts[0].startswith(prefix)]
        assert sorted(svg.cluster_of(n) for n in stubs) == ["cluster_t0", "cluster_t1", "cluster_t2"], prefix


def test_legend_with_colour_scale(tmp_path: Path) -> None:
    svg = render(lm_loss("gru", steps=2), tmp_path)
    assert "cluster_legend" in svg.clusters
    texts = svg.nodes["legend"]
    assert any("gradient norm" in t for t in texts)
    ticks = [float(t) for t in texts if re.fullmatch(r"\d\.\d\de[-+]\d\d", t)]
    assert len(ticks) == 5 and ticks == sorted(ticks) and ticks[0] < ticks[-1]
    legend = next(g for g in svg.root.iter(f"{SVG}g") if g.findtext(f"{SVG}title") == "legend")
    fills = {p.get("fill") for p in legend.iter(f"{SVG}polygon")} - {"none", "white", "transparent"}
    assert len(fills) >= 5  # one colour per tick


def test_svg_is_self_contained_and_uses_fonts_with_metrics(tmp_path: Path) -> None:
    path = render_graph(lm_loss("rnn", steps=2), tmp_path / "g.svg")
    svg = Svg(path)
    for el in svg.root.iter():
        for key, value in el.attrib.items():
            assert not key.endswith("href"), (el.tag, key, value)
        family = el.get("font-family")
        if family is not None:
            assert family.split(",")[0] in ("Helvetica", "Courier"), family


# --- gradients -----------------------------------------------------------------------------------


def test_node_labels_show_the_framework_gradients(device: str, tmp_path: Path) -> None:
    loss = lm_loss("lstm", steps=3)
    svg = render(loss, tmp_path)
    nodes = tg.Graph.of(loss).nodes
    for i, node in enumerate(nodes):
        printed = [m.group(1) for t in svg.nodes[f"n{i}"] for m in [re.search(r"grad (\S+)$", t)] if m]
        expected = [norm(g) for g in node.out_grads]
        assert len(printed) == len(expected), (node, svg.nodes[f"n{i}"])
        assert all(close(p, e) for p, e in zip(printed, expected)), (node, printed, expected)
    assert any(t.startswith(f"loss = {loss.item():.4g}") for t in svg.nodes[f"n{len(nodes) - 1}"])


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_edge_gradients_add_up_to_what_the_walk_computed(cell: str, fused: bool) -> None:
    loss = lm_loss(cell, steps=3, layers=2, fused=fused)
    g = tg.Graph.of(loss)
    index = {id(n): i for i, n in enumerate(g.nodes)}
    per_edge = edge_gradients(g.nodes)
    into: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for p, c, slot in g.edges:
        got = per_edge[(index[id(c)], slot)]
        if got is not None:
            into[(index[id(p)], c.inputs[slot].index)].append(got)
    for i, node in enumerate(g.nodes[:-1]):  # the last node is the loss: its gradient is the seed, 1
        for o, total in enumerate(node.out_grads):
            parts = into.get((i, o), [])
            summed = sum(parts[1:], parts[0]) if parts else np.zeros_like(total)
            np.testing.assert_allclose(summed, total, rtol=1e-5, atol=1e-7, err_msg=str(node))
    leaves: dict[int, list[Any]] = defaultdict(list)
    for x, c, slot in g.leaves:
        if x.requires_grad and per_edge[(index[id(c)], slot)] is not None:
            leaves[id(x)].append((x, per_edge[(index[id(c)], slot)]))
    assert leaves
    for pairs in leaves.values():
        x = pairs[0][0]
        np.testing.assert_allclose(sum(p for _, p in pairs), x.grad, rtol=1e-5, atol=1e-7, err_msg=x.name)


def test_cell_level_state_edges_carry_the_recurrent_share_of_dl_dh(tmp_path: Path) -> None:
    steps = 4
    loss = lm_loss("lstm", steps=steps, fused=True)
    svg = render(loss, tmp_path, level="cell")
    nodes = tg.Graph.of(loss).nodes
    step_nodes = {n.scope["t"]: n for n in nodes if "t" in n.scope}
    stack = next(n for n in nodes if n.name == "stack" and n.out_meta[0][0][0] == steps)
    box = {
        t: next(k for k, texts in svg.nodes.items() if texts and texts[0] == f"lstm_step(t={t})") for t in step_nodes
    }
    for t in range(steps - 1):
        # dL/dh_t = (what step t+1 sends back) + (what the loss sends through the stacked outputs)
        from_next_h = step_nodes[t].out_grads[0] - stack.out_grads[0][t]
        from_next_c = step_nodes[t].out_grads[1]
        labels = sorted(texts[0] for title, texts, dashed in svg.edges if dashed and title == f"{box[t + 1]}->{box[t]}")
        expected = sorted([norm(from_next_h), norm(from_next_c)])
        assert len(labels) == 2 and all(close(p, e) for p, e in zip(sorted(labels, key=float), expected)), (
            t,
            labels,
            expected,
        )
    # the forward edges between the steps are solid, the gradient edges dashed
    assert any(title == f"{box[0]}->{box[1]}" and not dashed for title, _, dashed in svg.edges)


def test_cell_level_renders_a_two_layer_lstm_over_50_steps(tmp_path: Path) -> None:
    svg = render(lm_loss("lstm", steps=50, layers=2, fused=True), tmp_path, level="cell")
    assert len(svg.step_clusters()) == 50
    per_step = defaultdict(int)
    for k, texts in svg.nodes.items():
        if texts and texts[0].startswith("lstm_step("):
            per_step[svg.cluster_of(k)] += 1
    assert per_step == {f"cluster_t{t}": 2 for t in range(50)}


def test_large_graphs_place_edge_labels_after_the_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loss = lm_loss("rnn", steps=2, fused=True)
    assert "xlabel=" not in bptt_graph.to_dot(loss, "cell")
    monkeypatch.setattr(bptt_graph, "MAX_LAID_OUT_LABELS", 0)
    dot = bptt_graph.to_dot(loss, "cell")
    assert "xlabel=" in dot and ", label=" not in dot.split("constraint=false")[1]
    svg = render(loss, tmp_path, level="cell")
    assert all(re.fullmatch(r"\d\.\d\de[-+]\d\d", texts[0]) for _, texts, dashed in svg.edges if dashed)
    # at cell level the parameters are named on the boxes that use them
    assert all("uses weight_hh_l0" in texts for k, texts in svg.nodes.items() if texts[0].startswith("rnn_step"))


def test_cell_level_groups_the_ops_of_a_primitive_step(tmp_path: Path) -> None:
    loss = lm_loss("gru", steps=3, fused=False)
    drawing = build_drawing(loss, "cell")
    cells = [b for b in drawing.boxes if b.kind == "cell"]
    assert sorted(b.t for b in cells) == [0, 1, 2]
    assert all(b.lines[0] == "gru step" for b in cells)


# --- errors, determinism, the command ------------------------------------------------------------


def test_refuses_a_released_graph_and_a_graph_without_backward(tmp_path: Path) -> None:
    loss = lm_loss("rnn", steps=2)
    loss.backward()  # walks again and releases the graph
    with pytest.raises(GraphRenderError, match="keep_graph=True"):
        render_graph(loss, tmp_path / "x.svg")
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(GraphRenderError, match="keep_graph=True"):
        render_graph((x * x).sum(), tmp_path / "x.svg")
    with pytest.raises(GraphRenderError, match="unknown level"):
        render_graph(lm_loss("rnn", steps=2), tmp_path / "x.svg", level="gate")
    assert not (tmp_path / "x.svg").exists()


def test_missing_dot_is_one_line_saying_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bptt_graph.shutil, "which", lambda name: None)
    rc = main(["graph", "--steps", "2", "--out", str(tmp_path / "g.svg")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "apt-get install graphviz" in err and "brew install graphviz" in err
    assert not (tmp_path / "g.svg").exists()


def test_command_output_is_identical_for_the_same_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [("a.svg", "0"), ("b.svg", "0"), ("c.svg", "1")]
    for name, seed in runs:
        assert main(["graph", "--cell", "gru", "--steps", "2", "--seed", seed, "--out", str(tmp_path / name)]) == 0
    a, b, c = ((tmp_path / name).read_bytes() for name, _ in runs)
    assert a == b and a != c
    assert "wrote" in capsys.readouterr().out
    svg = Svg(tmp_path / "a.svg")
    assert any(t.startswith("GRU, 1 layer, unrolled over 2 steps") for t in svg.root.itertext())


@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "0"],
        ["--steps", "51"],
        ["--layers", "0"],
        ["--seed", "-1"],
        ["--out", "graph.png"],
    ],
)
def test_command_refuses_bad_options(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a if a != "graph.png" else str(tmp_path / a) for a in argv]
    assert main(["graph", *argv]) == 2
    assert "error:" in capsys.readouterr().err


def test_fmt_norm_prints_three_significant_digits() -> None:
    assert fmt_norm(0.012345) == "1.23e-02"
    assert fmt_norm(None) == "none"
