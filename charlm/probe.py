"""The BPTT probe: how far back in time the gradient of a loss reaches, measured while a model learns.

At each evaluation the training run (through its ``on_eval`` callback, ``cli/callbacks.py``) calls
:meth:`RunProbe.record`: one real forward and backward pass of the model, in eval mode, over a
fixed window of the validation text -- B rows of T characters, T twice the training window so that
the half beyond it shows whether the gradient would reach further than truncated BPTT lets it, each
row from a zero state -- with the loss on the last step only: the mean cross-entropy of the
character that follows the window.  The walk keeps the graph (``keep_graph=True``) and the probe
reads what it recorded:

* |dL/dh_t| for every step t and recurrent layer: the norm, over the batch, of ``out_grads[0]`` of
  the node that made h_t (the fused step op, or the last op tagged ``part="hidden"`` of a cell
  written in primitive ops), as ``viz.gradflow`` finds it;
* for gated cells, the gate activations the forward left behind -- the fused step's saved
  activations, or the outputs of the primitive cell's gate ops: their mean and the share that is
  saturated, below 0.1 or above 0.9 (the thresholds of Karpathy et al., 2015).

Nothing calls an op's backward; the graph is released afterwards, the parameters' gradients are put
back as they were and no random number is drawn (eval mode: no dropout), so a run trains bit for
bit the same with or without the probe.

The results live in the run directory as ``probe.npz`` (``tinygraph.checkpoint`` format: arrays
plus a JSON header), rewritten atomically as a whole at each evaluation: a resumed run keeps the
records up to the step it resumes from, reads the same window back, and appends.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import tinygraph as tg
from models.recurrent import CELLS
from tinygraph import backend
from tinygraph import checkpoint as ckpt_io
from tinygraph.errors import TinygraphError
from tinygraph.graph import Node, reachable_nodes, step_outputs

PROBE_FILE = "probe.npz"
PROBE_KIND = "tinygraph-bptt-probe"
PROBE_ROWS = 8  # B: rows of the window, spread over the validation split
MAX_PROBE_STEPS = 512
SATURATION = 0.1  # a gate below this, or above 1 - this, counts as saturated

# Where each sigmoid gate's activations sit in a fused step's (B, gates * H) block, by the ``part``
# tag the primitive cell gives the same gate; from each cell's ``blocks``.  The candidate (a tanh)
# is no gate; CIFG's forget gate is 1 - its input gate.
GATE_BLOCKS: dict[str, dict[str, int]] = {
    name: {part: i for i, part in enumerate(cls.blocks) if part.endswith(" gate")}
    for name, cls in CELLS.items()
    if any(part.endswith(" gate") for part in cls.blocks)
}


class ProbeError(TinygraphError):
    """The probe cannot run (a validation text too short, no recurrent layer) or its file is unreadable."""


@dataclass
class ProbeWindow:
    """The fixed validation window: ``x`` (B, T) ids read, ``y`` (B,) the character after each row."""

    x: np.ndarray
    y: np.ndarray
    starts: np.ndarray  # (B,) offset of each row in the validation ids


def probe_window(val_ids: np.ndarray, seq_len: int, rows: int = PROBE_ROWS, steps: int | None = None) -> ProbeWindow:
    """B rows of T = 2 * ``seq_len`` characters (or ``steps``; fewer where the text is short), evenly
    spread over ``val_ids``."""
    n = len(val_ids)
    steps = min(steps or min(2 * seq_len, MAX_PROBE_STEPS), n - 1)
    if steps < 1:
        raise ProbeError(f"the validation text has {n} character(s): the probe needs at least 2")
    starts = np.unique(np.linspace(0, n - steps - 1, max(rows, 1)).astype(np.int64))
    idx = starts[:, None] + np.arange(steps)[None, :]
    ids = np.asarray(val_ids)
    return ProbeWindow(ids[idx].astype(np.int64), ids[starts + steps].astype(np.int64), starts)


@dataclass
class ProbeResult:
    """What one probe pass read off the walk; L recurrent layers, G gate names."""

    loss: float
    layers: list[str]
    norms: np.ndarray  # (L, T) |dL/dh_t| for t = 0..T-1 (the loss is at t = T-1)
    gates: list[str]
    gate_mean: np.ndarray  # (L, G); nan where a layer has no such gate
    gate_low: np.ndarray  # (L, G) share of activations below SATURATION
    gate_high: np.ndarray  # (L, G) share above 1 - SATURATION
    seconds: float


@dataclass
class _Track:
    """One recurrent layer unrolled in time: the node that made h_t, and its gate activations."""

    cell: str
    layer: int
    candidates: dict[int, list[Node]] = field(default_factory=dict)
    gates: dict[str, list[Any]] = field(default_factory=dict)

    def hidden(self) -> dict[int, Node]:
        return step_outputs(self.candidates)


def _tracks(nodes: list[Node]) -> list[_Track]:
    """The unrolled layers of the graph, in the order they ran.

    Layers run one after another, each over t = 0..T-1, so a new layer starts where the (cell,
    layer) tags change or t goes back: two recurrent modules in one model stay apart even though
    both tag their first layer 0.
    """
    tracks: list[_Track] = []
    previous: tuple[Any, Any, int] | None = None
    for node in nodes:
        s = node.scope
        if "t" not in s or "cell" not in s:
            continue
        key = (s["cell"], s.get("layer", 0), s["t"])
        if previous is None or key[:2] != previous[:2] or key[2] < previous[2]:
            tracks.append(_Track(key[0], key[1]))
        previous = key
        track = tracks[-1]
        track.candidates.setdefault(key[2], []).append(node)
        _collect_gates(track, node)
    return tracks


def _collect_gates(track: _Track, node: Node) -> None:
    """Note the gate activations a node holds: a fused step's saved block (read once per layer, at
    t = 0: it holds every step's), or the output of a primitive cell's gate op."""
    blocks = GATE_BLOCKS.get(track.cell)
    if blocks is None:
        return
    op = node.op
    seq = getattr(op, "seq", None)
    if seq is not None:
        acts = getattr(seq, "acts", None)
        if acts is None or getattr(op, "t", None) != 0:
            return
        width = acts.shape[-1] // CELLS[track.cell].gates
        for name, block in blocks.items():
            track.gates.setdefault(name, []).append(acts[..., block * width : (block + 1) * width])
        return
    part = node.scope.get("part")
    if part in blocks and node.name == "sigmoid":
        out = node.outputs[0]()
        if out is not None:
            track.gates.setdefault(part, []).append(out.data)


def _gate_stats(arrays: list[Any]) -> tuple[float, float, float]:
    """(mean, share below SATURATION, share above 1 - SATURATION) of the activations."""
    total = low = high = 0.0
    count = 0
    for a in arrays:
        xp = backend.get_array_module(a)
        total += float(xp.sum(a, dtype=xp.float64))
        low += float(xp.count_nonzero(a < SATURATION))
        high += float(xp.count_nonzero(a > 1.0 - SATURATION))
        count += int(a.size)
    return total / count, low / count, high / count


def layer_label(cell: str, layer: int, module: int, modules: int) -> str:
    """'LSTM layer 1', or 'LSTM #2 layer 0' when the model has several recurrent modules."""
    name = CELLS[cell].__name__ if cell in CELLS else cell
    return f"{name}{f' #{module + 1}' if modules > 1 else ''} layer {layer}"


def _labels(tracks: list[_Track]) -> list[str]:
    module, modules = [], 0
    for i, tr in enumerate(tracks):
        if i == 0 or tr.layer <= tracks[i - 1].layer:  # a stack restarts its layer count
            modules += 1
        module.append(modules - 1)
    return [layer_label(tr.cell, tr.layer, m, modules) for tr, m in zip(tracks, module)]


def run_probe(model: Any, window: ProbeWindow) -> ProbeResult:
    """One forward and backward pass over ``window`` with the loss on its last step; see the module doc."""
    start = time.perf_counter()
    params = model.parameters()
    saved = [p.grad for p in params]
    was_training = model.training
    model.eval()  # no dropout: the run's random stream is not touched
    try:
        for p in params:
            p.grad = None
        steps = window.x.shape[1]
        logits, _ = model.forward_time_major(backend.to_device(np.ascontiguousarray(window.x.T)))
        with tg.scope(part="loss"):
            loss = tg.softmax_cross_entropy(logits[steps - 1], backend.to_device(window.y))
        loss.backward(keep_graph=True)
        tracks = _tracks(reachable_nodes(loss))
        if not tracks:
            raise ProbeError("the model has no recurrent layer: there is no gradient through time to probe")
        norms = np.zeros((len(tracks), steps))
        for i, track in enumerate(tracks):
            for t, node in track.hidden().items():
                g = node.out_grads[0] if node.out_grads is not None else None
                if g is not None and 0 <= t < steps:
                    norms[i, t] = math.sqrt(float((backend.to_numpy(g).astype(np.float64) ** 2).sum()))
        gates = list(dict.fromkeys(name for tr in tracks for name in GATE_BLOCKS.get(tr.cell, {})))
        stats = np.full((3, len(tracks), len(gates)), np.nan)
        for i, track in enumerate(tracks):
            for j, name in enumerate(gates):
                if track.gates.get(name):
                    stats[:, i, j] = _gate_stats(track.gates[name])
        value = loss.item()
    finally:
        model.train(was_training)
        for p, g in zip(params, saved):
            p.grad = g
    # the kept graph (and every array its ops saved) goes with the last references to it, here
    return ProbeResult(value, _labels(tracks), norms, gates, *stats, time.perf_counter() - start)


# --- the history in the run directory -----------------------------------------------------------------


@dataclass
class ProbeHistory:
    """Every probe of a run, E evaluations: what ``probe.npz`` holds."""

    window: ProbeWindow
    layers: list[str]
    gates: list[str]
    steps: np.ndarray  # (E,) training step of each probe (0: before training)
    loss: np.ndarray  # (E,) the probe's loss (nats)
    seconds: np.ndarray  # (E,) what each probe cost
    elapsed: np.ndarray  # (E,) the run's training seconds at that step
    norms: np.ndarray  # (E, L, T)
    gate_mean: np.ndarray  # (E, L, G)
    gate_low: np.ndarray
    gate_high: np.ndarray

    ARRAYS = ("steps", "loss", "seconds", "elapsed", "norms", "gate_mean", "gate_low", "gate_high")

    @classmethod
    def empty(cls, window: ProbeWindow, result: ProbeResult) -> ProbeHistory:
        """No record yet, for the layers and gates ``result`` found."""
        n_layers, n_gates = len(result.layers), len(result.gates)

        def none(*shape: int) -> np.ndarray:
            return np.zeros((0, *shape))

        return cls(
            window,
            list(result.layers),
            list(result.gates),
            steps=np.zeros(0, np.int64),
            loss=none(),
            seconds=none(),
            elapsed=none(),
            norms=none(n_layers, window.x.shape[1]),
            gate_mean=none(n_layers, n_gates),
            gate_low=none(n_layers, n_gates),
            gate_high=none(n_layers, n_gates),
        )

    def __len__(self) -> int:
        return int(self.steps.size)

    def until(self, step: int) -> ProbeHistory:
        """The records at steps up to ``step`` (a resumed run forgets a future that did not happen)."""
        keep = self.steps <= step
        return replace(self, **{k: getattr(self, k)[keep] for k in self.ARRAYS})

    def append(self, step: int, result: ProbeResult, elapsed: float) -> ProbeHistory:
        if result.layers != self.layers or result.gates != self.gates:
            raise ProbeError(f"the probe found layers {result.layers}, the run's probe file has {self.layers}")
        new = {
            "steps": step,
            "loss": result.loss,
            "seconds": result.seconds,
            "elapsed": elapsed,
            "norms": result.norms,
            "gate_mean": result.gate_mean,
            "gate_low": result.gate_low,
            "gate_high": result.gate_high,
        }
        return replace(self, **{k: np.concatenate([getattr(self, k), np.asarray([v])]) for k, v in new.items()})

    def save(self, run_path: str | os.PathLike) -> Path:
        path = Path(run_path) / PROBE_FILE
        arrays = {k: getattr(self, k) for k in self.ARRAYS}
        arrays.update(window_x=self.window.x, window_y=self.window.y, window_starts=self.window.starts)
        meta = {
            "kind": PROBE_KIND,
            "layers": self.layers,
            "gates": self.gates,
            "saturation": SATURATION,
            "loss": "cross-entropy of the character after the window: the last step only",
        }
        ckpt_io.save(path, arrays, meta)
        return path


def load_probe(run_path: str | os.PathLike) -> ProbeHistory | None:
    """The probe history of a run directory; None when it has none, :class:`ProbeError` when unreadable."""
    path = Path(run_path) / PROBE_FILE
    if not path.exists():
        return None
    try:
        arrays, meta = ckpt_io.load(path)
    except ckpt_io.CheckpointError as exc:
        raise ProbeError(str(exc)) from exc
    if meta.get("kind") != PROBE_KIND:
        raise ProbeError(f"{path}: not a probe file")
    try:
        window = ProbeWindow(arrays["window_x"], arrays["window_y"], arrays["window_starts"])
        history = ProbeHistory(
            window, list(meta["layers"]), list(meta["gates"]), **{k: arrays[k] for k in ProbeHistory.ARRAYS}
        )
    except (KeyError, TypeError) as exc:
        raise ProbeError(f"{path}: damaged ({type(exc).__name__}: {exc})") from exc
    e = len(history)
    if any(getattr(history, k).shape[0] != e for k in ProbeHistory.ARRAYS):
        raise ProbeError(f"{path}: damaged (its arrays disagree on the number of evaluations)")
    return history


class RunProbe:
    """The probe of one training run: its fixed window, and its history in the run directory.

    ``resumed_at``: the step a resumed run starts from (its history is kept up to there and its
    window reused), None for a run that starts afresh -- which probes its starting weights at once,
    kept as step 0 and written with the first evaluation (the directory is not set up before).
    """

    def __init__(
        self, model: Any, val_ids: np.ndarray, seq_len: int, run_path: str | os.PathLike, resumed_at: int | None
    ):
        self.model = model
        self.run_path = Path(run_path)
        self.history: ProbeHistory | None = None
        self.pending: list[tuple[int, ProbeResult, float]] = []  # (step, result, training seconds) to write
        if resumed_at is not None:
            try:
                old = load_probe(run_path)
            except ProbeError:
                old = None  # unreadable: the resumed run starts a new history (with a new window)
            if old is not None:
                self.history = old.until(resumed_at)
        self.window = self.history.window if self.history is not None else probe_window(val_ids, seq_len)
        if resumed_at is None:
            self.pending.append((0, run_probe(model, self.window), 0.0))

    def record(self, step: int, elapsed: float) -> ProbeResult:
        """Probe the model as it is now, at training step ``step`` after ``elapsed`` seconds of training,
        and rewrite ``probe.npz``."""
        result = run_probe(self.model, self.window)
        records = [*self.pending, (step, result, elapsed)]
        history = self.history or ProbeHistory.empty(self.window, records[0][1])
        for at, r, spent in records:
            history = history.append(at, r, spent)
        history.save(self.run_path)
        self.history, self.pending = history, []
        return result
