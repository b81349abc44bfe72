"""What a character model and its training step take in memory, and how much memory the machine has.

Everything here is arithmetic on the layer tables: nothing is allocated, so a config whose sizes
cannot fit is refused before the first array exists.

- :func:`parameter_shapes`: the names and shapes ``CharLM.from_layers(...).state_dict()`` has;
- :func:`kept_bytes`: the activations BPTT keeps from forward to backward (the benchmark's memory
  model too: ``bench.cost`` reads it);
- :func:`training_estimate`: weights, gradients, optimizer state and kept activations of one step;
- :func:`available_bytes`: what the device can still give (``MemAvailable``, a cgroup's limit, or
  the GPU's free memory).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.charlm import RECURRENT
from tinygraph import optim

Shape = tuple[int, ...]

# float32: the dtype the model and its optimizer state live in
ITEMSIZE = 4
# the share of the available memory a run may plan to use: the interpreter, the corpus and the
# temporaries of a step (the benchmark measures a step's peak at 1.2-2x the activations kept) need the rest
USABLE_SHARE = 0.9


def _recurrent_shapes(prefix: str, cell: str, width: int, hidden: int, num_layers: int) -> Iterator[tuple[str, Shape]]:
    rows = RECURRENT[cell].gates * hidden
    for k in range(num_layers):
        cols = width if k == 0 else hidden
        yield f"{prefix}weight_ih_l{k}", (rows, cols)
        yield f"{prefix}weight_hh_l{k}", (rows, hidden)
        yield f"{prefix}bias_ih_l{k}", (rows,)
        yield f"{prefix}bias_hh_l{k}", (rows,)


def parameter_shapes(layers: list[dict[str, Any]], vocab_size: int) -> dict[str, Shape]:
    """The parameters' names and shapes, in the model's parameter order, for checked layer tables."""
    shapes: dict[str, Shape] = {}
    width = 0
    for i, layer in enumerate(layers):
        kind = layer["type"]
        if kind == "Embedding":
            width = layer["dim"]
            shapes[f"{i}.weight"] = (vocab_size, width)
        elif kind == "Dense":
            size = vocab_size if layer["size"] == "vocab" else layer["size"]
            shapes[f"{i}.weight"] = (size, width)
            shapes[f"{i}.bias"] = (size,)
            width = size
        elif kind == "RNNBlock":
            hidden = layer["hidden_size"]
            cell = layer.get("cell", "LSTM")
            shapes.update(_recurrent_shapes(f"{i}.rnn.", cell, width, hidden, layer.get("num_layers", 1)))
            shapes[f"{i}.proj.weight"] = (width, hidden)
            shapes[f"{i}.proj.bias"] = (width,)
        elif kind in RECURRENT:
            hidden = layer["hidden_size"]
            shapes.update(_recurrent_shapes(f"{i}.", kind, width, hidden, layer.get("num_layers", 1)))
            width = hidden
    return shapes


def recurrent_states(layers: list[dict[str, Any]]) -> list[tuple[int, int, bool]]:
    """(num_layers, hidden_size, has a cell state) of each recurrent layer: the state a run carries."""
    out = []
    for layer in layers:
        kind = layer["type"]
        cell = layer.get("cell", "LSTM") if kind == "RNNBlock" else kind
        if cell in RECURRENT:
            out.append((layer.get("num_layers", 1), layer["hidden_size"], RECURRENT[cell].has_cell_state))
    return out


def kept_bytes(layers: list[dict[str, Any]], vocab_size: int, batch: int, seq: int, itemsize: int = ITEMSIZE) -> int:
    """Bytes of the activations BPTT must keep from forward to backward, over N = B*T positions.

    Per layer: an Embedding keeps its output (N*E, the first layer's input); a recurrent stack of L
    layers keeps L * N * k*H (k, the cell's ``kept_per_step``: gates and states of every step; a
    layer's input is the previous layer's kept h), plus a dropout mask between its layers; an
    RNNBlock its stack and its output (N * width); a Dropout its mask; a Dense its output (the last
    one the softmax of the logits, N*V).  Parameter gradients and optimizer state are not included.
    """
    n = batch * seq
    kept = 0
    width = 0
    for layer in layers:
        kind = layer["type"]
        if kind == "Embedding":
            width = layer["dim"]
            kept += n * width
        elif kind == "Dense":
            width = vocab_size if layer["size"] == "vocab" else layer["size"]
            kept += n * width
        elif kind == "Dropout":
            kept += n * width if layer.get("p", 0.0) > 0 else 0
        else:
            cell = layer.get("cell", "LSTM") if kind == "RNNBlock" else kind
            hidden, stack = layer["hidden_size"], layer.get("num_layers", 1)
            kept += stack * n * RECURRENT[cell].kept_per_step * hidden
            if layer.get("dropout", 0.0) > 0:
                kept += (stack - 1) * n * hidden
            if kind == "RNNBlock":
                kept += n * width
            else:
                width = hidden
    return itemsize * kept


@dataclass(frozen=True)
class Estimate:
    """The memory of a model and one training step, in bytes."""

    parameters: int  # how many
    weights: int
    gradients: int
    optimizer: int
    activations: int  # what BPTT keeps
    batch: int
    seq: int
    optimizer_name: str

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        return (
            f"{format_bytes(self.total)} ({self.parameters:,} parameters: {format_bytes(self.weights)} of "
            f"weights, as much again of gradients, {format_bytes(self.optimizer)} of {self.optimizer_name} state; "
            f"{format_bytes(self.activations)} of activations kept for BPTT over {self.batch} x {self.seq} characters)"
        )


def training_estimate(
    layers: list[dict[str, Any]], vocab_size: int, batch: int, seq: int, optimizer_name: str
) -> Estimate:
    """Weights, gradients, optimizer buffers (as many per parameter as the optimizer may keep) and the
    activations one step keeps; layer tables with their dropout rates filled in."""
    count = sum(math.prod(s) for s in parameter_shapes(layers, vocab_size).values())
    buffers = len(optim.OPTIMIZERS[optimizer_name].buffer_names)
    weights = count * ITEMSIZE
    return Estimate(
        parameters=count,
        weights=weights,
        gradients=weights,
        optimizer=buffers * weights,
        activations=kept_bytes(layers, vocab_size, batch, seq),
        batch=batch,
        seq=seq,
        optimizer_name=optimizer_name,
    )


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,.0f} bytes" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# --- what the machine has ----------------------------------------------------------------------------


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_dirs(proc_cgroup: Path, root: Path) -> Iterator[tuple[Path, str, str]]:
    """(directory, limit file, usage file) of this process's memory cgroup and each of its ancestors."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # cgroup v2
            bases, files = (root, root / "unified"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            bases, files = (root / "memory",), ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        for base in bases:
            d = base / rel.lstrip("/")
            while True:
                yield d, *files
                if d == base:
                    break
                d = d.parent


def cgroup_available(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What the memory cgroups this process is in still allow (the tightest); None without a limit."""
    room = []
    for d, limit_file, usage_file in _cgroup_dirs(proc_cgroup, root):
        limit = _read_int(d / limit_file)
        if limit is not None and limit < 1 << 60:  # "max" (v2) or a huge number (v1): no limit
            room.append(max(limit - (_read_int(d / usage_file) or 0), 0))
    return min(room) if room else None


def host_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Memory the host can still give this process: MemAvailable (sysconf's free pages where there is
    no /proc), lowered to what its memory cgroup still allows; None when unknown."""
    found = [v for v in (_meminfo_available(meminfo) or _sysconf_available(), cgroup_available()) if v is not None]
    return min(found) if found else None


def gpu_available_bytes() -> int | None:
    """The current GPU's free memory; None without CuPy or a GPU (the device check says so later)."""
    try:
        import cupy

        free, _ = cupy.cuda.runtime.memGetInfo()
    except Exception:  # no CuPy, no driver, no device: not this module's error to report
        return None
    return int(free)


def available_bytes(device: str = "cpu") -> int | None:
    """Memory available on ``device`` ("cpu" or "gpu"); None when it cannot be told."""
    return gpu_available_bytes() if device == "gpu" else host_available_bytes()


def usable_bytes(device: str = "cpu") -> tuple[int, int] | None:
    """(what a run may plan to use, what is available) on ``device``; None when unknown."""
    available = available_bytes(device)
    if available is None:
        return None
    return int(available * USABLE_SHARE), available
