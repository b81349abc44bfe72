"""The training loop of the character language model, its run directory and its checkpoints.

A run directory holds ``config.toml`` (the full config), ``metrics.jsonl`` (one JSON object per
evaluation), ``loss.svg``/``loss.png`` (train and validation loss against the step), ``last.npz``
(written at every evaluation and when the run stops) and ``best.npz`` (the lowest validation loss).

A checkpoint (``tinygraph.checkpoint``: arrays plus JSON metadata, written atomically) holds
everything the next step depends on, so ``--resume`` continues bit for bit on the CPU: weights
(``model/*``), optimizer moments (``optim/*``), the recurrent state carried into the next window
(``state/*``), and in the metadata the optimizer and schedule state, the vocabulary, the config,
the step, the data position with the random-window generator, and the framework's random stream
(``tinygraph.random``: dropout masks).  The samples shown while training draw from a generator made
from (seed, step), so they too are the same whether a run went straight or was resumed.

Stopping: ``--steps`` is the total, ``time_budget`` seconds stop the run after an evaluation,
SIGINT (Ctrl-C) and SIGTERM save ``last.npz`` and stop, a NaN/inf loss or gradient stops the run
without saving (the last good checkpoint stays as it was).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import tinygraph as tg
from models import config as cfg
from models.data import DataError, StreamBatcher, Vocab, describe_chars, load_corpus, make_batcher, split_text
from models.evaluate import sample_ids
from tinygraph import backend
from tinygraph import checkpoint as ckpt_io
from tinygraph import random as tg_random
from tinygraph.atomic import atomic_write
from tinygraph.checkpoint import CheckpointError
from tinygraph.errors import TinygraphError

CHECKPOINT_KIND = "tinygraph-charlm"
RUN_FILES = ("last.npz", "best.npz", "config.toml", "metrics.jsonl", "loss.svg", "loss.png")
EXIT_INTERRUPTED = 130


class RunError(TinygraphError):
    """A run directory that cannot be used as asked (exists, missing, not writable)."""


class DivergedError(TinygraphError):
    """The loss or the gradient became NaN or infinite."""


# --- checkpoints --------------------------------------------------------------------------------------


@dataclass
class RunCheckpoint:
    """A language-model checkpoint read back: its arrays, metadata, vocabulary and config."""

    path: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    vocab: Vocab
    config: dict[str, dict[str, Any]]

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


def build_model(config: dict[str, dict[str, Any]], vocab_size: int) -> Any:
    """The CharLM the config describes (``train.dropout`` filled into tables that set no rate)."""
    from models import CharLM  # the model zoo; imported here so data/config work without it

    layers = cfg.layers_with_dropout(config["model"]["layers"], config["train"]["dropout"])
    return CharLM.from_layers(vocab_size, layers, fused=config["model"]["fused"])


def load_weights(model: Any, ckpt: RunCheckpoint) -> None:
    try:
        model.load_state_dict(ckpt.group("model"))
    except TinygraphError as exc:
        raise CheckpointError(f"{ckpt.path}: the weights do not fit the model ({exc})") from exc
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{ckpt.path}: the weights do not fit the model ({type(exc).__name__}: {exc})") from exc


def restore_model(ckpt: RunCheckpoint) -> Any:
    """The checkpoint's model with its weights, in eval mode, on the current default device."""
    try:
        model = build_model(ckpt.config, len(ckpt.vocab))
    except TinygraphError as exc:
        raise CheckpointError(f"{ckpt.path}: its model cannot be built ({exc})") from exc
    load_weights(model, ckpt)
    model.eval()
    return model


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


# --- small file helpers ---------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename, so a crash leaves the old or the new file."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line torn by a crash is skipped."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict):
            records.append(r)
    return records


def text_sha256(text: str) -> str:
    """The fingerprint of a corpus kept in checkpoints: is this still the text a run was trained on?"""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


# --- the trainer ------------------------------------------------------------------------------------------


class _Stop:
    """Why the loop should stop early: set by signal handlers, read between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None


class Trainer:
    """One training run: set up (everything checked before anything is written), then :meth:`run`.

    ``resume``: the run's own ``last.npz`` (continue exactly).  ``source``: a checkpoint to fine-tune
    (its vocabulary and weights; a fresh optimizer and step 0).  ``unknown_char``: the vocabulary
    character that stands in for characters of the corpus the vocabulary lacks (fine-tuning).
    """

    def __init__(
        self,
        config: dict[str, dict[str, Any]],
        corpus: str | os.PathLike,
        out: str | os.PathLike,
        *,
        resume: RunCheckpoint | None = None,
        source: RunCheckpoint | None = None,
        force: bool = False,
        unknown_char: str | None = None,
        stdout: Any = None,
    ):
        self.bar: Any = None  # the progress bar while the loop runs
        self.config = copy.deepcopy(config)
        self.tc = tc = self.config["train"]
        self.out = Path(out)
        self.corpus_path = Path(corpus)
        self.force = force
        self.stdout = stdout
        self.source = source
        if resume is not None and unknown_char is None:
            unknown_char = resume.meta.get("corpus", {}).get("unknown_char")
        self.unknown_char = unknown_char

        # --- data -----------------------------------------------------------------------
        text = load_corpus(self.corpus_path)
        sha = text_sha256(text)
        if resume is not None:
            old = resume.meta.get("corpus", {})
            if old.get("sha256") not in (None, sha):
                raise DataError(
                    f"corpus {self.corpus_path} is not the text this run was trained on "
                    f"({old.get('path')}, {old.get('chars')} characters): fine-tune instead"
                )
        known = resume or source
        self.vocab = known.vocab if known is not None else Vocab.from_text(text)
        self.unknown_count = 0
        if known is not None:
            missing = self.vocab.unknown(text)
            self.unknown_count = sum(missing.values())
            if missing and unknown_char is None:
                raise DataError(
                    f"corpus {self.corpus_path} has {self.unknown_count} character(s) outside the checkpoint's "
                    f"vocabulary: {describe_chars(missing)}; pass --unknown-char C to map them to C"
                )
            if missing:
                self._say(
                    f"note: {self.unknown_count} character(s) outside the vocabulary mapped to {unknown_char!r}: "
                    f"{describe_chars(missing)}"
                )
        ids = self.vocab.encode(text, unknown=unknown_char if known is not None else None, what=str(self.corpus_path))
        train_text, _ = split_text(text, tc["val_fraction"])
        cut = len(train_text)
        self.train_ids, self.val_ids = ids[:cut], ids[cut:]
        seq_len, batch = tc["seq_len"], tc["batch_size"]
        if len(self.train_ids) < seq_len + 1:
            raise DataError(
                f"corpus {self.corpus_path} is too short: its training part has {len(self.train_ids)} characters, "
                f"one window needs train.seq_len + 1 = {seq_len + 1} (use a longer text or a smaller train.seq_len)"
            )
        self.corpus_meta = {
            "path": str(self.corpus_path.resolve()),
            "sha256": sha,
            "chars": len(text),
            "unknown_char": unknown_char if self.unknown_count else None,
        }
        self.batcher = make_batcher(tc["batching"], self.train_ids, batch, seq_len, tc["seed"])
        if self.batcher.batch_size < batch:
            self._say(
                f"note: the training text holds only {self.batcher.batch_size} windows of {seq_len}: "
                f"using {self.batcher.batch_size} streams instead of train.batch_size = {batch}"
            )
        self.val_batcher = StreamBatcher(self.val_ids, batch, min(seq_len, len(self.val_ids) - 1))

        # --- model, optimizer, schedule -------------------------------------------------------
        tg.set_device(tc["device"])
        tg.manual_seed(tc["seed"])  # the initial weights, then dropout masks, come from this stream
        self.model = build_model(self.config, len(self.vocab))
        base = resume or source
        if base is not None:
            load_weights(self.model, base)
        self.params = list(self.model.parameters())
        self.optimizer = tg.optim.make(tc["optimizer"], self.params, tc["learning_rate"], tc["weight_decay"])
        self.schedule: Any = None
        if tc["schedule"] == "plateau":
            self.schedule = tg.schedules.ReduceLROnPlateau(
                self.optimizer, factor=tc["lr_factor"], patience=tc["patience"], min_lr=tc["min_lr"]
            )
        elif tc["schedule"] == "cosine":
            self.schedule = tg.schedules.CosineWithWarmup(
                self.optimizer, tc["learning_rate"], min(tc["warmup_steps"], tc["steps"]), tc["steps"], tc["min_lr"]
            )
        self.step = 0
        self.best_val: float | None = None
        self.state: Any = None
        self.elapsed = 0.0
        self.loss_sum, self.loss_count = 0.0, 0
        self.resuming = resume is not None
        if resume is not None:
            self._restore(resume)

    # --- output ---------------------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        out = self.stdout or sys.stdout
        if self.bar is not None:
            self.bar.write(message, file=out)
        else:
            print(message, file=out, flush=True)

    # --- checkpoint state -------------------------------------------------------------------------------
    def _restore(self, ck: RunCheckpoint) -> None:
        m = ck.meta
        try:
            opt_arrays = ck.group("optim")
            self.optimizer.load_state_dict(opt_arrays, m["optimizer"])
            # a [train] setting changed with --set on resume wins over the saved one
            if m["config"]["train"].get("learning_rate") != self.tc["learning_rate"]:
                self.optimizer.lr = self.tc["learning_rate"]
            # the cosine schedule is a function of the step alone (and of train.steps, which a resume may
            # change); the plateau schedule has a memory to restore
            if (
                isinstance(self.schedule, tg.schedules.ReduceLROnPlateau)
                and (m.get("schedule") or {}).get("kind") == self.schedule.kind
            ):
                self.schedule.load_state_dict(m["schedule"])
            self.batcher.load_state_dict(m["data"])
            tg_random.set_state(m["rng"]["tinygraph"])
            self.state = _unflatten_state(m.get("carried_state"), ck.group("state"))
            self.step = int(m["step"])
            self.best_val = m.get("best_val_loss")
            self.elapsed = float(m.get("elapsed_s", 0.0))
            self.loss_sum, self.loss_count = float(m.get("loss_sum", 0.0)), int(m.get("loss_count", 0))
        except TinygraphError as exc:
            raise CheckpointError(f"{ck.path}: cannot resume from it ({exc})") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{ck.path}: cannot resume from it (missing or bad {exc})") from exc

    def _checkpoint(self, val_loss: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
        arrays: dict[str, Any] = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        opt_arrays, opt_meta = self.optimizer.state_dict()
        arrays.update({f"optim/{k}": v for k, v in opt_arrays.items()})
        state_arrays: list[Any] = []
        state_spec = _flatten_state(self.state, state_arrays)
        arrays.update({f"state/{i}": a for i, a in enumerate(state_arrays)})
        meta = {
            "kind": CHECKPOINT_KIND,
            "vocab": self.vocab.to_json(),
            "config": self.config,
            "layers_spec": getattr(self.model, "layers_spec", None),
            "step": self.step,
            "optimizer": opt_meta,
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "data": self.batcher.state_dict(),
            # the random-window generator is part of "data"; samples use a generator made from (seed, step)
            "rng": {"tinygraph": tg_random.get_state()},
            "carried_state": state_spec,
            "corpus": self.corpus_meta,
            "val_loss": _finite_or_none(val_loss),
            "best_val_loss": self.best_val,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "elapsed_s": self.elapsed,
            "finetuned_from": str(self.source.path.resolve()) if self.source is not None else None,
            "saved_at": time.time(),
        }
        return arrays, meta

    def _save(self, val_loss: float | None, best: bool) -> None:
        arrays, meta = self._checkpoint(val_loss)
        ckpt_io.save(self.out / "last.npz", arrays, meta)
        if best:
            ckpt_io.save(self.out / "best.npz", arrays, meta)

    # --- run directory -----------------------------------------------------------------------------------
    def _prepare_run_dir(self, resuming: bool) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise RunError(f"output {out} exists and is not a directory")
        if out.is_dir() and not resuming:
            present = [f for f in RUN_FILES if (out / f).exists()]
            if present and not self.force:
                raise RunError(
                    f"{out} already holds a run ({', '.join(present)}): pass --resume to continue it, "
                    "--force to start over, or --out for a new directory"
                )
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test.", delete=True)
            probe.close()
        except OSError as exc:
            raise RunError(f"cannot write to the output directory {out} ({exc.strerror or exc})") from exc
        # leftovers of a write cut short by kill -9 (the checkpoint itself is untouched)
        for leftover in out.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        if not resuming:
            for f in RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (out / f).unlink()
        else:
            # records written after the checkpoint we resume from belong to a future that did not happen
            kept = [r for r in read_metrics(out / "metrics.jsonl") if r.get("step", 0) <= self.step]
            write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        write_text_atomic(out / "config.toml", cfg.to_toml(self.config))

    # --- evaluation and samples ---------------------------------------------------------------------------
    def evaluate(self) -> float:
        """Mean validation loss (nats/char) over the first ``eval_batches`` windows, state carried."""
        total, count = 0.0, 0
        self.model.eval()
        try:
            with tg.no_grad():
                state = None
                for x, y, reset in self.val_batcher.windows_from_start(self.tc["eval_batches"]):
                    if reset:
                        state = None
                    loss, state = self.model.loss(backend.to_device(x), backend.to_device(y), state)
                    total += loss.item() * x.size
                    count += x.size
        finally:
            self.model.train()
        return total / max(count, 1)

    def sample_text(self) -> str:
        prime = "\n" if "\n" in self.vocab else self.vocab.chars[0]
        self.model.eval()
        try:
            ids = sample_ids(
                self.model,
                self.vocab.encode(prime),
                self.tc["sample_length"],
                temperature=self.tc["temperature"],
                # derived from (seed, step), not a running stream: the sample at a step is the same
                # whether the run went straight there or was resumed on the way
                rng=np.random.default_rng([self.tc["seed"], 2, self.step]),
            )
        finally:
            self.model.train()
        return self.vocab.decode(ids)

    # --- the loop ------------------------------------------------------------------------------------------
    def _train_step(self) -> float:
        batch = self.batcher.next()
        if batch.reset:
            self.state = None
        x, y = backend.to_device(batch.x), backend.to_device(batch.y)  # ids live where the weights do
        loss, self.state = self.model.loss(x, y, self.state)
        value = loss.item()
        if not math.isfinite(value):
            raise DivergedError(self._diverged_message(f"the training loss is {value}"))
        self.optimizer.zero_grad()
        loss.backward()
        del loss
        if self.tc["clip"] > 0:
            norm = tg.optim.clip_grad_norm(self.params, self.tc["clip"])
            if not math.isfinite(norm):
                raise DivergedError(self._diverged_message(f"the gradient norm is {norm}"))
        if isinstance(self.schedule, tg.schedules.CosineWithWarmup):
            self.schedule.step(self.step)
        self.optimizer.step()
        self.step += 1
        return value

    def _diverged_message(self, what: str) -> str:
        kept = self.out / "last.npz"
        where = f"; {kept} is kept as it was" if kept.exists() else ""
        return (
            f"step {self.step + 1}: {what}; training stopped{where} "
            "(try a lower train.learning_rate or a train.clip > 0)"
        )

    def _evaluation(self, chars_per_s: float, step_scheduled: bool, eta: str) -> dict[str, Any]:
        """Validate, step the plateau schedule, save, log, plot; returns the metrics record."""
        val = self.evaluate()
        if not math.isfinite(val):
            raise DivergedError(self._diverged_message(f"the validation loss is {val}"))
        if step_scheduled and isinstance(self.schedule, tg.schedules.ReduceLROnPlateau):
            self.schedule.step(val)
        train_loss = self.loss_sum / self.loss_count if self.loss_count else None
        self.loss_sum, self.loss_count = 0.0, 0
        best = self.best_val is None or val < self.best_val
        if best:
            self.best_val = val
        self._save(val, best)
        record = {
            "step": self.step,
            "epoch": getattr(self.batcher, "epoch", None),
            "train_loss": train_loss,
            "val_loss": val,
            "val_bpc": val / math.log(2),
            "lr": self.optimizer.lr,
            "chars_per_s": round(chars_per_s, 1),
            "elapsed_s": round(self.elapsed, 2),
            "best": best,
            "time": time.time(),
        }
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        from viz.loss_plot import plot_losses

        plot_losses(read_metrics(self.out / "metrics.jsonl"), self.out / "loss", title=str(self.out))
        tl = f"{train_loss:.4f}" if train_loss is not None else "-"
        self._say(
            f"step {self.step}/{self.tc['steps']}: train {tl}, val {val:.4f} nats/char ({val / math.log(2):.3f} bpc)"
            f"{' *best*' if best else ''}, lr {self.optimizer.lr:.3g}, {chars_per_s:,.0f} chars/s{eta}"
        )
        return record

    def _show(self, loss: float, val: float | None, rate: float) -> None:
        """The bar reads: train/val loss: percent |bar| step/total [elapsed<ETA, steps/s, chars/s, lr]."""
        shown = f"loss {loss:.3f}" + (f" val {val:.3f}" if val is not None else "")
        self.bar.set_description_str(shown, refresh=False)
        self.bar.set_postfix_str(f"{rate:,.0f} chars/s, lr {self.optimizer.lr:.2g}", refresh=False)

    def _eta(self, start: float, first_step: int) -> str:
        done, left = self.step - first_step, self.tc["steps"] - self.step
        if done <= 0 or left <= 0:
            return ""
        seconds = int((time.perf_counter() - start) / done * left)
        return f", ETA {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    @contextlib.contextmanager
    def _signals(self, stop: _Stop) -> Iterator[None]:
        """SIGINT/SIGTERM ask the loop to save and stop; a second Ctrl-C interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if stop.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            stop.signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def run(self) -> int:
        """Train to ``train.steps``; returns the exit status (0, or 130 after a signal)."""
        tc = self.tc
        resuming = self.resuming
        self._prepare_run_dir(resuming)
        if self.step >= tc["steps"]:
            self._say(f"{self.out}: already at step {self.step} of train.steps = {tc['steps']}; nothing to do")
            return 0
        from tqdm import tqdm

        chars_per_step = self.batcher.batch_size * self.batcher.seq_len
        n_params = sum(int(p.size) for p in self.params)
        self._say(
            f"{'resuming' if resuming else 'training'} {self.out} at step {self.step} of {tc['steps']}: "
            f"{n_params:,} parameters, vocabulary {len(self.vocab)}, {len(self.train_ids):,} training and "
            f"{len(self.val_ids):,} validation characters, device {tc['device']}"
        )
        interactive = sys.stderr.isatty()
        stop = _Stop()
        start, first_step = time.perf_counter(), self.step
        rate = 0.0
        last_val: float | None = None
        self.bar = tqdm(
            total=tc["steps"],
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            disable=not interactive,  # a log gets the evaluation lines (with an ETA), not a flood of bars
        )
        self.model.train()
        try:
            with self._signals(stop):
                while self.step < tc["steps"]:
                    t0 = time.perf_counter()
                    loss = self._train_step()
                    dt = time.perf_counter() - t0
                    self.elapsed += dt
                    self.loss_sum += loss
                    self.loss_count += 1
                    rate = chars_per_step / dt if rate == 0 else 0.9 * rate + 0.1 * chars_per_step / dt
                    self._show(loss, last_val, rate)
                    self.bar.update(1)
                    over_budget = 0 < tc["time_budget"] <= time.perf_counter() - start
                    at_interval = self.step % tc["eval_interval"] == 0
                    final = self.step >= tc["steps"] or over_budget
                    if at_interval or final:
                        record = self._evaluation(rate, at_interval, self._eta(start, first_step))
                        last_val = record["val_loss"]
                        self._show(loss, last_val, rate)
                        self.bar.refresh()
                    sample_due = (
                        self.step % tc["sample_interval"] == 0 if tc["sample_interval"] else at_interval or final
                    )
                    if sample_due and tc["sample_length"] > 0:
                        self._say(f"--- sample at step {self.step} ---\n{self.sample_text()}\n---")
                    if over_budget and self.step < tc["steps"]:
                        self._say(
                            f"time budget of {tc['time_budget']:g} s reached at step {self.step}; saved "
                            f"{self.out / 'last.npz'}; continue with: tinygraph train --resume --out {self.out}"
                        )
                        break
                    if stop.signal is not None:
                        self._save(None, best=False)
                        name = signal.Signals(stop.signal).name
                        self._say(
                            f"{name}: saved {self.out / 'last.npz'} at step {self.step}; "
                            f"continue with: tinygraph train --resume --out {self.out}"
                        )
                        return EXIT_INTERRUPTED
        finally:
            self.bar.close()
            self.bar = None
        if self.step >= tc["steps"]:
            best = f"{self.best_val:.4f}" if self.best_val is not None else "-"
            self._say(f"done: step {self.step}, best validation loss {best} nats/char; checkpoints in {self.out}")
        return 0
