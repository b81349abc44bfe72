"""Run configuration: the ``[model]`` and ``[train]`` schema and defaults, TOML files, overrides, resolution.

A config is a plain two-level dict ``{"model": {...}, "train": {...}}`` checked against the schema
below: an unknown section or key, or a value of the wrong type or out of range, is a
:class:`ConfigError` naming the key (``train.seq_len``) and, where there is one, the file.
``--set section.key=value`` overrides are parsed as TOML values (``train.lr_factor=0.5``,
``model.layers=[{type="Embedding", dim=16}, ...]``); a value that is not valid TOML is taken as a
bare string, so ``train.optimizer=adamw`` works without quotes.  The ``[model]`` layer tables are
checked by the model zoo's own check (:func:`models.charlm.check_layers`), the one there is.

:func:`resolve` is the one place a run's config is made: from the defaults (or the checkpoint a
run resumes or fine-tunes), a TOML file, the ``--set`` overrides and the shortcut options; it also
refuses a model and batch that cannot fit in memory (:func:`check_memory`), stating the estimate.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm import memory
from models.charlm import RECURRENT, LayerSpecError, check_layers
from tinygraph.errors import TinygraphError

Config = dict[str, dict[str, Any]]


class ConfigError(TinygraphError):
    """A configuration file or override that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Key:
    """One config key: its type, default, and the check its value must pass (with the reason)."""

    type: type | tuple[type, ...]
    default: Any
    check: Any = None  # callable(value) -> bool
    want: str = ""
    help: str = ""


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _one_of(*choices: str) -> Any:
    return lambda v: v in choices


# The default model: the one `make train` trains (configs/default.toml repeats it for reading).
DEFAULT_LAYERS: list[dict[str, Any]] = [
    {"type": "Embedding", "dim": 64},
    {"type": "LSTM", "hidden_size": 256, "num_layers": 2, "dropout": 0.0},
    {"type": "Dense", "size": "vocab"},
]

SCHEMA: dict[str, dict[str, Key]] = {
    "model": {
        "layers": Key(list, DEFAULT_LAYERS, help="layer tables, first Embedding, last Dense to the vocabulary"),
        "fused": Key(bool, True, help="fused cell ops (fast) or cells composed of primitive ops"),
    },
    "train": {
        "steps": Key(int, 2000, _positive, "an integer > 0", "total optimizer steps (a resumed run stops there too)"),
        "seq_len": Key(int, 100, _positive, "an integer > 0", "T: characters per window (the BPTT truncation)"),
        "batch_size": Key(int, 32, _positive, "an integer > 0", "B: windows per batch (streams)"),
        "learning_rate": Key(float, 3e-3, _positive, "a number > 0"),
        "optimizer": Key(
            str, "adam", _one_of("sgd", "adagrad", "rmsprop", "adam", "adamw"), "sgd|adagrad|rmsprop|adam|adamw"
        ),
        "weight_decay": Key(float, 0.0, _non_negative, "a number >= 0"),
        "clip": Key(float, 5.0, _non_negative, "a number >= 0", "global gradient-norm clip; 0 = none"),
        "dropout": Key(
            float,
            0.0,
            lambda v: 0 <= v < 1,
            "a number in [0, 1)",
            "rate for layer tables that set none (recurrent `dropout`, Dropout `p`)",
        ),
        "locked_dropout": Key(
            bool, False, help="dropout over sequences draws one mask per sequence, shared by its time steps"
        ),
        "output_dropout": Key(
            float, 0.0, lambda v: 0 <= v < 1, "a number in [0, 1)", "dropout on the input of the output Dense"
        ),
        "weight_drop": Key(
            float, 0.0, lambda v: 0 <= v < 1, "a number in [0, 1)", "DropConnect on recurrent W_hh, one mask a batch"
        ),
        "schedule": Key(
            str,
            "cosine_budget",
            _one_of("plateau", "cosine", "cosine_budget", "none"),
            "plateau|cosine|cosine_budget|none",
            "cosine_budget: cosine to min_lr at the run's end, time_budget or steps, whichever comes first",
        ),
        "patience": Key(int, 3, _non_negative, "an integer >= 0", "plateau: evaluations without improvement"),
        "lr_factor": Key(float, 0.5, lambda v: 0 < v < 1, "a number in (0, 1)", "plateau: multiplier on a plateau"),
        "min_lr": Key(float, 1e-4, _non_negative, "a number >= 0", "floor of the learning rate"),
        "warmup_steps": Key(int, 100, _non_negative, "an integer >= 0", "cosine, cosine_budget: linear warm-up steps"),
        "eval_interval": Key(int, 100, _positive, "an integer > 0", "steps between evaluations and checkpoints"),
        "eval_batches": Key(int, 20, _non_negative, "an integer >= 0", "validation windows per evaluation; 0 = all"),
        "sample_interval": Key(int, 0, _non_negative, "an integer >= 0", "steps between samples; 0 = each evaluation"),
        "sample_length": Key(int, 200, _non_negative, "an integer >= 0"),
        "temperature": Key(float, 0.8, _positive, "a number > 0", "temperature of the samples shown while training"),
        "seed": Key(int, 1234, _non_negative, "an integer >= 0"),
        "val_fraction": Key(float, 0.1, lambda v: 0 < v < 1, "a number in (0, 1)", "the tail of the corpus held out"),
        "batching": Key(str, "stream", _one_of("stream", "random"), "stream|random"),
        "time_budget": Key(
            float, 600.0, _non_negative, "a number >= 0", "seconds, then evaluate, save and stop; 0 = none"
        ),
        "device": Key(str, "cpu", _one_of("cpu", "gpu"), "cpu|gpu"),
    },
}


def defaults() -> Config:
    return {section: {k: copy.deepcopy(key.default) for k, key in keys.items()} for section, keys in SCHEMA.items()}


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}
    return names.get(t, getattr(t, "__name__", str(t)))  # type: ignore[arg-type]


def check_value(section: str, key: str, value: Any, where: str = "") -> Any:
    """The value, checked (and an int widened to float where a number is wanted); ConfigError otherwise."""
    where = f" in {where}" if where else ""
    keys = SCHEMA.get(section)
    if keys is None:
        raise ConfigError(f"unknown section [{section}]{where}: the sections are {', '.join(SCHEMA)}")
    spec = keys.get(key)
    if spec is None:
        raise ConfigError(f"unknown key {section}.{key}{where}: [{section}] has {', '.join(keys)}")
    name = f"{section}.{key}"
    # bool is an int in Python: refuse it where a number is wanted, and numbers where a bool is
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and spec.type is not bool) or not isinstance(value, spec.type):
        raise ConfigError(f"{name}{where} must be {_type_name(spec.type)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}{where} must be finite, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ConfigError(f"{name}{where} must be a 64-bit integer (TOML's), got {value!r}")
    if spec.check is not None and not spec.check(value):
        raise ConfigError(f"{name}{where} must be {spec.want}, got {value!r}")
    if key == "layers":
        try:
            value = check_layers(value, where=where)
        except LayerSpecError as exc:
            raise ConfigError(str(exc)) from None
    return value


def merge(base: Config, doc: dict[str, Any], where: str = "") -> Config:
    """``base`` updated with the sections of a parsed TOML document, every key checked."""
    out = copy.deepcopy(base)
    for section, table in doc.items():
        if section not in SCHEMA:
            raise ConfigError(f"unknown section [{section}]{' in ' + where if where else ''}: use [model] and [train]")
        if not isinstance(table, dict):
            raise ConfigError(f"{section} must be a table [{section}]{' in ' + where if where else ''}")
        for key, value in table.items():
            out[section][key] = check_value(section, key, value, where)
    return out


def load_file(path: str | os.PathLike, base: Config | None = None) -> Config:
    """Defaults (or ``base``) updated with the TOML file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config {path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: cannot be read ({exc})") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: invalid TOML ({exc})") from exc
    return merge(defaults() if base is None else base, doc, str(path))


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, value); the value parsed as TOML, else a bare string."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {text!r}: write section.key=value, e.g. train.steps=500")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if raw.startswith(("[", "{", '"', "'")):
            raise ConfigError(f"--set {text!r}: the value is not valid TOML") from None
        value = raw
    return section, key, value


def apply_overrides(config: Config, overrides: Sequence[str]) -> Config:
    out = copy.deepcopy(config)
    for text in overrides:
        section, key, value = parse_override(text)
        out[section][key] = check_value(section, key, value, "--set")
    return out


def validate(config: Any, where: str = "") -> Config:
    """A config read back from a checkpoint: every key present and valid (missing keys take defaults)."""
    if not isinstance(config, dict):
        raise ConfigError(f"config{' in ' + where if where else ''} is not a table")
    return merge(defaults(), config, where)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # a JSON string with \u escapes is a valid TOML basic string
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {v!r} as TOML")


def to_toml(config: Config) -> str:
    """The config as a TOML file that :func:`load_file` reads back to the same dict."""
    lines = []
    for section in SCHEMA:
        table = config.get(section, {})
        lines.append(f"[{section}]")
        for key, value in table.items():
            if key == "layers":
                lines.append("layers = [")
                lines.extend(f"    {_toml_value(layer)}," for layer in value)
                lines.append("]")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def layers_with_dropout(layers: list[dict[str, Any]], dropout: float) -> list[dict[str, Any]]:
    """The layer tables with ``train.dropout`` filled in where a table sets no rate of its own."""
    out = copy.deepcopy(layers)
    if dropout <= 0:
        return out
    for layer in out:
        kind = str(layer.get("type", ""))
        if kind in RECURRENT and "dropout" not in layer:
            layer["dropout"] = dropout
        elif kind == "Dropout" and "p" not in layer:
            layer["p"] = dropout
    return out


def check_consistent(config: Config) -> None:
    """The rules between keys, each value being valid on its own."""
    tc = config["train"]
    if tc["min_lr"] > tc["learning_rate"]:
        raise ConfigError(
            f"train.min_lr ({tc['min_lr']!r}) must not exceed train.learning_rate ({tc['learning_rate']!r}): "
            "it is the floor the schedule lowers the rate to (--set train.min_lr=0 for a lower rate)"
        )


def check_memory(
    config: Config, vocab_size: int | None = None, device: str | None = None, *, training: bool = True
) -> memory.Estimate:
    """The memory the model and one training step of ``config`` take; :class:`ConfigError`, stating the
    estimate and what is available, when that cannot fit on ``device`` (default ``train.device``).

    The estimate (:func:`charlm.memory.training_estimate`) counts weights, gradients, optimizer state
    and the activations BPTT keeps (``training`` False: the weights alone, for sampling and scoring);
    a run may plan on ``memory.USABLE_SHARE`` of the memory available.  ``vocab_size`` None stands for
    the smallest vocabulary: a lower bound, checked before the corpus is read.  Nothing is allocated.
    """
    tc = config["train"]
    device = device or tc["device"]
    layers = layers_with_dropout(config["model"]["layers"], tc["dropout"])
    need = memory.training_estimate(layers, vocab_size or 1, tc["batch_size"], tc["seq_len"], tc["optimizer"])
    room = memory.usable_bytes(device)
    if room is None or (need.total if training else need.weights) <= room[0]:
        return need
    amount = "about" if vocab_size else "at least"  # the smallest vocabulary gives a lower bound
    what = (
        f"model.layers with train.batch_size = {tc['batch_size']} and train.seq_len = {tc['seq_len']} need "
        f"{amount} {need.describe()}"
        if training
        else f"the weights of model.layers need {amount} {memory.format_bytes(need.weights)} "
        f"({need.parameters:,} parameters)"
    )
    where = "GPU memory free" if device == "gpu" else "memory available"
    raise ConfigError(
        f"{what}, more than the {memory.format_bytes(room[1])} of {where}: "
        "make the layers, the batch or the sequence smaller"
    )


def resolve(
    file: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    shortcuts: Mapping[str, Any] | None = None,
    *,
    checkpoint: Config | None = None,
    resume: bool = False,
) -> Config:
    """The config a run uses: the one place it is made.

    In this order: the defaults, or ``checkpoint`` (the config of the checkpoint a run resumes or
    fine-tunes); then the TOML ``file`` (the keys it sets); then the ``--set`` ``overrides``; then the
    ``shortcuts``, [train] keys given as options of their own (``{"steps": 500}`` is ``--steps 500``;
    None means not given).  A run continued from a checkpoint keeps its layers (``model.fused`` may
    change: both forms of a cell have the same weights).  A resumed run (``resume``) takes no file,
    and its time budget starts at 0: a budget holds for one invocation and is given again to stop
    this one.  The result is checked as a whole: the rules between keys (:func:`check_consistent`),
    and the memory the model and a training step would take (:func:`check_memory`), before anything
    is allocated.
    """
    if resume and checkpoint is None:
        raise ValueError("resolve(resume=True) needs the config of the checkpoint it resumes")
    if resume and file is not None:
        raise ConfigError(
            "--resume continues with the run's own config: drop --config (change [train] keys with --set)"
        )
    config = defaults() if checkpoint is None else copy.deepcopy(checkpoint)
    if resume:
        config["train"]["time_budget"] = 0.0
    if file is not None:
        config = load_file(file, base=config)
    config = apply_overrides(config, overrides)
    for key, value in (shortcuts or {}).items():
        if value is not None:
            config["train"][key] = check_value("train", key, value, f"--{key.replace('_', '-')}")
    if checkpoint is not None and config["model"]["layers"] != checkpoint["model"]["layers"]:
        why = "--resume" if resume else "finetune"
        raise ConfigError(f"{why} keeps the checkpoint's model.layers: leave them out of --config and --set")
    check_consistent(config)
    if config["train"]["device"] == "cpu":  # a GPU is asked only once it is chosen: build_model checks there
        check_memory(config)
    return config
