"""A kept graph is read, never re-run: drawings and re-walks leave it as the first walk left it.

The walk records what each node received and handed back; viz only reads those records.  Before
that, drawing a fused LSTM, CIFG or GRU re-ran the step ops' backward outside the walk, which
wrote gradients over the activations they had saved: a second drawing and a second walk then
gave other numbers.  Also the two contracts of the walk the fused cells rely on: its order
(newest node first, so step 0 of a sequence is walked last) and who decides what an op may
overwrite (the walk, per call; the safe default for anyone else).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models
import tinygraph as tg
from models.recurrent import CELLS
from viz.bptt_graph import render_graph

# every check here runs with each CPU gate math of the fused cells (numba, and the NumPy reference)
pytestmark = pytest.mark.usefixtures("gate_math")


def stacked_loss(cell: str, fused: bool) -> tuple[tg.Tensor, list[tg.Tensor]]:
    """sum(out * r) of a 2-layer float64 stack over 5 steps, with a carried state and non-zero biases."""
    tg.manual_seed(3)
    rng = np.random.default_rng(3)
    layer = CELLS[cell](4, 5, num_layers=2, fused=fused).astype(np.float64)
    x = tg.tensor(rng.standard_normal((3, 5, 4)), requires_grad=True, name="x")
    h0 = tg.tensor(rng.standard_normal((2, 3, 5)), requires_grad=True, name="h0")
    state: Any = (
        (h0, tg.tensor(rng.standard_normal((2, 3, 5)), requires_grad=True, name="c0"))
        if CELLS[cell].has_cell_state
        else h0
    )
    out, _ = layer(x, state)
    r = tg.tensor(rng.standard_normal(out.shape))
    leaves = [x, *(state if isinstance(state, tuple) else (state,)), *layer.parameters()]
    return tg.sum(out * r), leaves


def grads_of(leaves: list[tg.Tensor]) -> list[np.ndarray]:
    return [np.array(p.grad, copy=True) for p in leaves]


def rewalk(loss: tg.Tensor, leaves: list[tg.Tensor]) -> list[np.ndarray]:
    for p in leaves:
        p.grad = None
    loss.backward(keep_graph=True)
    return grads_of(leaves)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_rewalking_a_kept_graph_gives_the_first_walks_gradients(cell: str, fused: bool) -> None:
    loss, leaves = stacked_loss(cell, fused)
    loss.backward(keep_graph=True)
    first = grads_of(leaves)
    for _ in range(2):
        for a, b in zip(first, rewalk(loss, leaves)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("level", ["op", "cell"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "primitive"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_drawing_twice_gives_the_same_file_and_leaves_the_graph_intact(
    cell: str, fused: bool, level: str, tmp_path: Path
) -> None:
    loss, leaves = stacked_loss(cell, fused)
    loss.backward(keep_graph=True)
    first = grads_of(leaves)
    a = render_graph(loss, tmp_path / "a.svg", level=level).read_bytes()
    b = render_graph(loss, tmp_path / "b.svg", level=level).read_bytes()
    assert a == b
    for g, again in zip(first, rewalk(loss, leaves)):
        np.testing.assert_array_equal(g, again)
    assert render_graph(loss, tmp_path / "c.svg", level=level).read_bytes() == a


def test_the_walk_records_what_each_node_received_and_handed_back() -> None:
    x = tg.tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = tg.tensor(np.array([0.5, 4.0, -1.0]), requires_grad=True)
    prod = x * y
    loss = tg.sum(prod * 3.0)
    loss.backward(keep_graph=True)
    mul = prod.creator
    np.testing.assert_array_equal(mul.out_grads[0], [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(mul.in_grads[0], 3.0 * y.data)
    np.testing.assert_array_equal(mul.in_grads[1], 3.0 * x.data)
    assert loss.creator.in_grads[0] is not None  # the sum sent dL/dprod back to the scaling


def test_a_released_walk_records_nothing() -> None:
    x = tg.tensor(np.ones(3), requires_grad=True)
    prod = x * 2.0
    tg.sum(prod).backward()
    assert prod.creator.in_grads is None and prod.creator.out_grads is None


class Recorder(tg.Op):
    """Identity that logs when its backward runs and what the walk allowed it."""

    name = "recorder"

    def __init__(self, log: list[tuple[str, bool]], tag: str):
        self.log, self.tag = log, tag

    def forward(self, x: Any) -> Any:
        return x.copy()

    def backward(self, gy: Any) -> Any:
        self.log.append((self.tag, self.may_overwrite_saved))
        return gy


def test_walk_order_is_newest_first_so_the_first_step_is_walked_last() -> None:
    log: list[tuple[str, bool]] = []
    x = tg.tensor(np.ones(2), requires_grad=True)
    h = x
    for t in range(4):
        h = Recorder(log, f"step {t}")(h) + x  # every step also feeds from x, as an unrolled layer does
    tg.sum(h).backward()
    assert [tag for tag, _ in log] == ["step 3", "step 2", "step 1", "step 0"]


@pytest.mark.parametrize("keep", [False, True])
def test_the_walk_tells_each_op_whether_it_may_overwrite_what_it_saved(keep: bool) -> None:
    log: list[tuple[str, bool]] = []
    op = Recorder(log, "op")
    assert op.may_overwrite_saved is False  # the default for anyone calling backward directly
    y = op(tg.tensor(np.ones(2), requires_grad=True))
    tg.sum(y).backward(keep_graph=keep)
    assert log == [("op", not keep)]


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_fused_step_called_outside_the_walk_keeps_its_saved_arrays(cell: str) -> None:
    """Calling a step's backward by hand (as a diagnostic might) must not touch the activations."""
    layer = CELLS[cell](3, 4, fused=True).astype(np.float64)
    x = tg.tensor(np.random.default_rng(0).standard_normal((2, 3, 3)), requires_grad=True)
    out, _ = layer(x)
    step = next(n for n in tg.Graph.of(tg.sum(out)).nodes if n.name.endswith("_step") and n.scope["t"] == 2)
    seq = step.op.seq
    saved = [np.array(a, copy=True) for a in (seq.xproj, getattr(seq, "hs", seq.xproj))]
    grads = [np.ones(shape) for shape, _ in step.out_meta]
    step.op.backward(*grads)
    for before, now in zip(saved, (seq.xproj, getattr(seq, "hs", seq.xproj))):
        np.testing.assert_array_equal(before, now)


def test_models_cells_registry_carries_each_cells_facts() -> None:
    assert sorted(CELLS) == ["cifg", "gru", "lstm", "rnn"]
    for name, cls in CELLS.items():
        assert cls.cell == name and cls is getattr(models, cls.__name__)
        assert cls.fused_step.name == f"{name}_step"
        assert cls(2, 3).weight_hh_l0.shape == (cls.gates * 3, 3)


def test_the_compiled_gate_math_is_the_default_where_numba_is_installed() -> None:
    from models import cells, numba_kernels

    assert cells.gate_maths()[0] == ("numba" if numba_kernels.available else "numpy")
    with pytest.raises(tg.TinygraphError, match="unknown gate math 'fast'"):
        cells.set_gate_math("fast")


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_sequence_runs_the_gate_math_chosen_when_it_was_made(cell: str, gate_math: str) -> None:
    from models import cells

    layer = CELLS[cell](3, 4)
    seq = layer.fused_step.sequence(
        np.zeros((2, 1, layer.gates * 4), np.float32), np.zeros((1, 4), np.float32), None, 4
    )
    from models import numba_kernels

    chosen = cells.NUMPY_GATE_MATH if gate_math == "numpy" else numba_kernels
    assert seq.gate_forward is getattr(chosen, f"{cell}_pointwise_forward")
    assert seq.gate_backward is getattr(chosen, f"{cell}_pointwise_backward")


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_each_cells_blocks_are_the_parts_its_primitive_cell_tags(cell: str) -> None:
    cls = CELLS[cell]
    assert len(cls.blocks) == cls.gates
    out, _ = cls(2, 3, fused=False)(tg.tensor(np.ones((1, 2, 2), np.float32), requires_grad=True))
    parts = {n.scope.get("part") for n in tg.Graph.of(tg.sum(out)).nodes}
    assert set(cls.blocks) <= parts, parts
