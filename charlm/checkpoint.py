"""The checkpoint of a character-model run: what it holds, how a run writes it and how it is read back.

A checkpoint is a ``tinygraph.checkpoint`` file (arrays plus JSON metadata, written atomically)
holding everything the next step depends on, so ``--resume`` continues bit for bit on the CPU:
weights (``model/*``), optimizer moments (``optim/*``), the recurrent state carried into the next
window (``state/*``), and in the metadata the optimizer and schedule state, the vocabulary, the
config, the step, the data position with the random-window generator, the framework's random
stream (``tinygraph.random``: dropout masks) and the corpus record.  Sampling and evaluation need
only the weights, the vocabulary and the config: :func:`read_checkpoint` and :func:`restore_model`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import tinygraph as tg
from charlm import config as cfg
from charlm.corpus import Vocab
from models import CharLM
from tinygraph import backend
from tinygraph import checkpoint as ckpt_io
from tinygraph import random as tg_random
from tinygraph.checkpoint import CheckpointError
from tinygraph.errors import TinygraphError

CHECKPOINT_KIND = "tinygraph-charlm"


@dataclass
class RunCheckpoint:
    """A language-model checkpoint read back: its arrays, metadata, vocabulary and config."""

    path: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    vocab: Vocab
    config: cfg.Config

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays named ``prefix/...``, without the prefix."""
        p = prefix + "/"
        return {k[len(p) :]: v for k, v in self.arrays.items() if k.startswith(p)}


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory meaning its ``best.npz``."""
    path = Path(path)
    if path.is_dir():
        best = path / "best.npz"
        if not best.exists():
            hint = " (it has last.npz: pass that file)" if (path / "last.npz").exists() else ""
            raise CheckpointError(f"{path}: run directory has no best.npz{hint}")
        return best
    return path


def read_checkpoint(path: str | os.PathLike) -> RunCheckpoint:
    """Load and check a language-model checkpoint; :class:`CheckpointError` naming the file otherwise."""
    path = Path(path)
    arrays, meta = ckpt_io.load(path)
    if meta.get("kind") != CHECKPOINT_KIND or "vocab" not in meta or "config" not in meta:
        raise CheckpointError(f"{path}: a tinygraph checkpoint, but not of a character language model")
    try:
        vocab = Vocab.from_json(meta["vocab"])
        config = cfg.validate(meta["config"], str(path))
    except TinygraphError as exc:
        raise CheckpointError(f"{path}: damaged metadata ({exc})") from exc
    if not any(k.startswith("model/") for k in arrays):
        raise CheckpointError(f"{path}: checkpoint holds no model weights")
    return RunCheckpoint(path, arrays, meta, vocab, config)


# --- the model ----------------------------------------------------------------------------------------


def build_model(config: cfg.Config, vocab_size: int) -> CharLM:
    """The CharLM the config describes (``train.dropout`` filled into tables that set no rate)."""
    layers = cfg.layers_with_dropout(config["model"]["layers"], config["train"]["dropout"])
    return CharLM.from_layers(vocab_size, layers, fused=config["model"]["fused"])


def load_weights(model: CharLM, ckpt: RunCheckpoint) -> None:
    try:
        model.load_state_dict(ckpt.group("model"))
    except TinygraphError as exc:
        raise CheckpointError(f"{ckpt.path}: the weights do not fit the model ({exc})") from exc
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{ckpt.path}: the weights do not fit the model ({type(exc).__name__}: {exc})") from exc


def restore_model(ckpt: RunCheckpoint) -> CharLM:
    """The checkpoint's model with its weights, in eval mode, on the current default device."""
    try:
        model = build_model(ckpt.config, len(ckpt.vocab))
    except TinygraphError as exc:
        raise CheckpointError(f"{ckpt.path}: its model cannot be built ({exc})") from exc
    load_weights(model, ckpt)
    model.eval()
    return model


# --- a run's state ------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where a run stands besides its weights and optimizer: the step, the best validation loss so far,
    the training time, and the training losses summed since the last evaluation."""

    step: int = 0
    best_val: float | None = None
    elapsed: float = 0.0
    loss_sum: float = 0.0
    loss_count: int = 0


def _flatten_state(state: Any, arrays: list[Any]) -> Any:
    """A JSON description of a nested recurrent state; its arrays appended to ``arrays``."""
    if state is None:
        return None
    if isinstance(state, tg.Tensor):
        arrays.append(state.data)
        return {"tensor": len(arrays) - 1}
    if isinstance(state, (tuple, list)):
        return {"tuple" if isinstance(state, tuple) else "list": [_flatten_state(s, arrays) for s in state]}
    if hasattr(state, "shape") and hasattr(state, "dtype"):
        arrays.append(state)
        return {"array": len(arrays) - 1}
    raise TypeError(f"cannot save a recurrent state of type {type(state).__name__}")


def _unflatten_state(spec: Any, arrays: dict[str, np.ndarray]) -> Any:
    if spec is None:
        return None
    if "tensor" in spec:
        return tg.Tensor(backend.to_device(arrays[str(spec["tensor"])]))
    if "array" in spec:
        return backend.to_device(arrays[str(spec["array"])])
    if "tuple" in spec:
        return tuple(_unflatten_state(s, arrays) for s in spec["tuple"])
    return [_unflatten_state(s, arrays) for s in spec["list"]]


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def pack(
    *,
    model: CharLM,
    optimizer: Any,
    schedule: Any,
    batcher: Any,
    carried_state: Any,
    vocab: Vocab,
    config: cfg.Config,
    corpus: dict[str, Any],
    progress: Progress,
    val_loss: float | None,
    finetuned_from: Path | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, metadata) of a training checkpoint: everything the next step depends on."""
    arrays: dict[str, Any] = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_arrays, opt_meta = optimizer.state_dict()
    arrays.update({f"optim/{k}": v for k, v in opt_arrays.items()})
    state_arrays: list[Any] = []
    state_spec = _flatten_state(carried_state, state_arrays)
    arrays.update({f"state/{i}": a for i, a in enumerate(state_arrays)})
    meta = {
        "kind": CHECKPOINT_KIND,
        "vocab": vocab.to_json(),
        "config": config,
        "layers_spec": getattr(model, "layers_spec", None),
        "step": progress.step,
        "optimizer": opt_meta,
        "schedule": schedule.state_dict(),
        "data": batcher.state_dict(),
        # the random-window generator is part of "data"; samples use a generator made from (seed, step)
        "rng": {"tinygraph": tg_random.get_state()},
        "carried_state": state_spec,
        "corpus": corpus,
        "val_loss": _finite_or_none(val_loss),
        "best_val_loss": progress.best_val,
        "loss_sum": progress.loss_sum,
        "loss_count": progress.loss_count,
        "elapsed_s": progress.elapsed,
        "finetuned_from": str(finetuned_from.resolve()) if finetuned_from is not None else None,
        "saved_at": time.time(),
    }
    return arrays, meta


def unpack(
    ck: RunCheckpoint, *, optimizer: Any, schedule: Any, batcher: Any, learning_rate: float
) -> tuple[Progress, Any]:
    """Put a run back where ``ck`` left it: the optimizer, schedule, data position and random stream
    take their saved state; returns the progress and the recurrent state to carry on with.

    ``learning_rate``, the run's [train] setting, wins over the saved rate when a resume changed it.
    """
    m = ck.meta
    try:
        optimizer.load_state_dict(ck.group("optim"), m["optimizer"])
        if m["config"]["train"].get("learning_rate") != learning_rate:
            optimizer.lr = learning_rate
        schedule.on_resume(m.get("schedule"))
        batcher.load_state_dict(m["data"])
        tg_random.set_state(m["rng"]["tinygraph"])
        carried = _unflatten_state(m.get("carried_state"), ck.group("state"))
        progress = Progress(
            step=int(m["step"]),
            best_val=m.get("best_val_loss"),
            elapsed=float(m.get("elapsed_s", 0.0)),
            loss_sum=float(m.get("loss_sum", 0.0)),
            loss_count=int(m.get("loss_count", 0)),
        )
    except TinygraphError as exc:
        raise CheckpointError(f"{ck.path}: cannot resume from it ({exc})") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ck.path}: cannot resume from it (missing or bad {exc})") from exc
    return progress, carried
