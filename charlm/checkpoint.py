"""The checkpoint of a character-model run: what it holds, how a run writes it and how it is read back.

A checkpoint is a ``tinygraph.checkpoint`` file (arrays plus JSON metadata, written atomically)
holding everything the next step depends on, so ``--resume`` continues bit for bit on the CPU:
weights (``model/*``), optimizer moments (``optim/*``), the recurrent state carried into the next
window (``state/*``), and in the metadata the optimizer and schedule state, the vocabulary, the
config, the step, the data position with the random-window generator, the framework's random
stream (``tinygraph.random``: dropout masks) and the corpus record.  Sampling and evaluation need
only the weights, the vocabulary and the config: :func:`read_checkpoint` and :func:`restore_model`.

Reading trusts nothing it has not checked (:func:`check_layout`, before any array's data is read):
the metadata's fields, every array's dtype and shape against the shapes the layers and the
vocabulary give, and the memory the arrays need; a model is built only once it fits in memory.
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
from charlm import memory
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
    """Load and check a language-model checkpoint; :class:`CheckpointError` naming the file otherwise.

    Its layout is checked (:func:`check_layout`) before any array's data is read.
    """
    path = Path(path)
    checked: list[tuple[Vocab, cfg.Config]] = []
    arrays, meta = ckpt_io.load(path, lambda meta, headers: checked.append(check_layout(meta, headers)))
    vocab, config = checked[0]
    return RunCheckpoint(path, arrays, meta, vocab, config)


# --- what a checkpoint may hold -----------------------------------------------------------------------


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _optional(test: Any) -> Any:
    return lambda v: v is None or test(v)


def _corpus_record(v: Any) -> bool:
    if not isinstance(v, dict):
        return False
    char = v.get("unknown_char")
    return (
        all(isinstance(v.get(k), str) for k in ("path", "sha256") if k in v)
        and _optional(_count)(v.get("chars"))
        and (char is None or (isinstance(char, str) and len(char) == 1))
    )


# the metadata a run writes (pack), each with the test its value passes; "step" is required
META_FIELDS: dict[str, Any] = {
    "step": _count,
    "val_loss": _optional(_number),
    "best_val_loss": _optional(_number),
    "loss_sum": _number,
    "loss_count": _count,
    "elapsed_s": _number,
    "saved_at": _number,
    "corpus": _optional(_corpus_record),
    "finetuned_from": _optional(lambda v: isinstance(v, str)),
    "optimizer": lambda v: isinstance(v, dict),
    "schedule": _optional(lambda v: isinstance(v, dict)),
    "data": lambda v: isinstance(v, dict),
    "rng": lambda v: isinstance(v, dict),
    "layers_spec": _optional(lambda v: isinstance(v, list)),
}
# the names optimizer buffers are saved under (``optim/<buffer>.<parameter index>``)
OPTIMIZER_BUFFERS = frozenset(b for cls in tg.optim.OPTIMIZERS.values() for b in cls.buffer_names)


def _foreign(why: str) -> CheckpointError:
    return CheckpointError(f"not a tinygraph checkpoint: {why}")


def _state_layout(config: cfg.Config) -> tuple[Any, list[tuple[int, int]]]:
    """The JSON description of the recurrent state a run of ``config`` carries (as :func:`pack` writes
    it) and the (num_layers, hidden_size) of each of its arrays, whose middle axis is the batch."""
    specs, shapes = [], []
    for num_layers, hidden, has_cell in memory.recurrent_states(config["model"]["layers"]):
        parts = []
        for _ in range(2 if has_cell else 1):
            parts.append({"tensor": len(shapes)})
            shapes.append((num_layers, hidden))
        specs.append({"tuple": parts} if has_cell else parts[0])
    return {"tuple": specs}, shapes


def _expect_float(name: str, header: ckpt_io.ArrayHeader) -> None:
    if header.dtype.kind != "f":
        raise _foreign(f"array {name!r} has dtype {header.dtype}, not floating point")


def _check_weights(headers: dict[str, ckpt_io.ArrayHeader], shapes: dict[str, tuple[int, ...]]) -> None:
    for name, want in shapes.items():
        if name not in headers:
            raise _foreign(f"it lacks the weights {name!r} its layers have")
        if headers[name].shape != want:
            raise _foreign(f"array {name!r} declares shape {headers[name].shape}; its layers make it {want}")
        _expect_float(name, headers[name])


def _check_optimizer(headers: dict[str, ckpt_io.ArrayHeader], shapes: list[tuple[int, ...]]) -> None:
    for name, header in headers.items():
        buffer, _, index = name[len("optim/") :].rpartition(".")
        if buffer not in OPTIMIZER_BUFFERS or not index.isdigit() or int(index) >= len(shapes):
            raise _foreign(f"unexpected array {name!r} (no optimizer buffer of its model)")
        if header.shape != shapes[int(index)]:
            raise _foreign(f"array {name!r} declares shape {header.shape}; its parameter has {shapes[int(index)]}")
        _expect_float(name, header)


def _check_state(headers: dict[str, ckpt_io.ArrayHeader], meta: dict, config: cfg.Config) -> None:
    spec, shapes = _state_layout(config)
    carried = meta.get("carried_state")
    if carried is None:
        shapes = []
    elif carried != spec:
        raise _foreign("its carried_state does not describe the state of its recurrent layers")
    want = {f"state/{i}": shape for i, shape in enumerate(shapes)}
    batch = set()
    for name, header in headers.items():
        if name not in want:
            raise _foreign(f"unexpected array {name!r}")
        (layers, hidden), got = want[name], header.shape
        if len(got) != 3 or (got[0], got[2]) != (layers, hidden) or got[1] < 1:
            raise _foreign(f"array {name!r} declares shape {got}; its layer carries ({layers}, batch, {hidden})")
        _expect_float(name, header)
        batch.add(got[1])
    if len(batch) > 1 or len(headers) != len(want):
        raise _foreign("its recurrent state arrays do not fit together")


def check_layout(meta: dict, headers: dict[str, ckpt_io.ArrayHeader]) -> tuple[Vocab, cfg.Config]:
    """(vocabulary, config) of a checkpoint's metadata, once the metadata's fields and every array's
    declared dtype and shape (the weights' derived from the layers and the vocabulary, the optimizer's
    from the weights, the state's from the recurrent layers) are what a run writes, and the arrays fit
    in memory; :class:`CheckpointError` with the reason otherwise.  Nothing but headers is read.
    """
    if meta.get("kind") != CHECKPOINT_KIND or "vocab" not in meta or "config" not in meta:
        raise CheckpointError("a tinygraph checkpoint, but not of a character language model")
    try:
        vocab = Vocab.from_json(meta["vocab"])
        config = cfg.validate(meta["config"])
    except TinygraphError as exc:
        raise _foreign(f"damaged metadata ({exc})") from exc
    if "step" not in meta:
        raise _foreign("its metadata has no step")
    for key, test in META_FIELDS.items():
        if key in meta and not test(meta[key]):
            raise _foreign(f"damaged metadata: {key} = {str(meta[key])[:80]!r}")
    weights = {f"model/{k}": v for k, v in memory.parameter_shapes(config["model"]["layers"], len(vocab)).items()}
    groups: dict[str, dict[str, ckpt_io.ArrayHeader]] = {"model": {}, "optim": {}, "state": {}}
    for name, header in headers.items():
        prefix = name.partition("/")[0]
        if prefix not in groups or (prefix == "model" and name not in weights):
            raise _foreign(f"unexpected array {name!r}")
        groups[prefix][name] = header
    _check_weights(groups["model"], weights)
    _check_optimizer(groups["optim"], list(weights.values()))
    _check_state(groups["state"], meta, config)
    need = sum(h.nbytes for h in headers.values())
    room = memory.usable_bytes("cpu")  # arrays are read into host memory first
    if room is not None and need > room[0]:
        raise CheckpointError(
            f"its arrays need {memory.format_bytes(need)} of memory, more than the "
            f"{memory.format_bytes(room[1])} available can hold"
        )
    return vocab, config


# --- the model ----------------------------------------------------------------------------------------


def build_model(config: cfg.Config, vocab_size: int, *, training: bool = True) -> CharLM:
    """The CharLM the config describes (``train.dropout`` filled into tables that set no rate, and the
    regularisers ``train.weight_drop``, ``locked_dropout`` and ``output_dropout`` turned on).

    Refused before anything is allocated when it cannot fit in memory (:func:`charlm.config.check_memory`):
    the model and a training step, or with ``training`` False the weights alone, on the current device.
    """
    need = cfg.check_memory(config, vocab_size, tg.get_device(), training=training)
    layers = cfg.layers_with_dropout(config["model"]["layers"], config["train"]["dropout"])
    try:
        model = CharLM.from_layers(vocab_size, layers, fused=config["model"]["fused"])
        tc = config["train"]
        return model.regularise(
            weight_drop=tc["weight_drop"], locked=tc["locked_dropout"], output_dropout=tc["output_dropout"]
        )
    except MemoryError:
        raise cfg.ConfigError(
            f"the model ({need.parameters:,} parameters, {memory.format_bytes(need.weights)}) cannot be "
            "allocated: out of memory"
        ) from None


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
        model = build_model(ckpt.config, len(ckpt.vocab), training=False)
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
