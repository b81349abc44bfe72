"""The training loop of the character language model: steps, evaluations, samples, stopping.

:class:`Trainer` sets a run up (corpus, model, optimizer, schedule; everything checked before
anything is written) and runs it to ``train.steps``, evaluating, saving and sampling on the way.
Its parts live beside it: the data in :mod:`charlm.corpus`, the checkpoint in
:mod:`charlm.checkpoint`, the run directory in :mod:`charlm.run`, the validation loss in
:mod:`charlm.evaluate`, samples in :mod:`charlm.sample`.  Whoever wants to know of each evaluation
(the CLI draws the loss plot) passes ``on_eval``.

Stopping: ``--steps`` is the total, ``time_budget`` seconds stop the run after an evaluation,
SIGINT (Ctrl-C) and SIGTERM save ``last.npz`` and stop, a NaN/inf loss or gradient stops the run
without saving (the last good checkpoint stays as it was).  The samples shown while training draw
from a generator made from (seed, step), so they are the same whether a run went straight or was
resumed.

Data-parallel: given a :class:`charlm.distributed.Comm`, the trainer is one rank of a job
(:mod:`charlm.distributed` says how the ranks share a step).  Every decision that changes what
the ranks do next (stop on a signal or the time budget, a diverged loss, the validation loss the
schedule hears) is taken from values all ranks share, so they never disagree on a step; rank 0
alone writes, prints and samples.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import tinygraph as tg
from charlm import config as cfg
from charlm.checkpoint import Progress, RunCheckpoint, build_model, load_weights, pack, unpack
from charlm.corpus import training_data
from charlm.distributed import PROGRESS_ENV, Comm, DataParallel
from charlm.evaluate import nll_sum
from charlm.run import RunDir
from charlm.sample import default_prime, generate
from tinygraph import backend
from tinygraph.errors import TinygraphError

EXIT_INTERRUPTED = 130


class DivergedError(TinygraphError):
    """The loss or the gradient became NaN or infinite."""

    # in a data-parallel job the loss and the gradient are all-reduced: every rank finds it alike
    every_rank = True


def make_schedule(optimizer: tg.optim.Optimizer, train: dict[str, Any]) -> tg.schedules.Schedule:
    """The learning-rate schedule ``train.schedule`` names, with its [train] settings."""
    if train["schedule"] == "plateau":
        return tg.schedules.ReduceLROnPlateau(
            optimizer, factor=train["lr_factor"], patience=train["patience"], min_lr=train["min_lr"]
        )
    if train["schedule"] == "cosine":
        warmup = min(train["warmup_steps"], train["steps"])
        return tg.schedules.CosineWithWarmup(optimizer, train["learning_rate"], warmup, train["steps"], train["min_lr"])
    if train["schedule"] == "cosine_budget":
        return tg.schedules.CosineToEnd(
            optimizer, train["learning_rate"], train["warmup_steps"], train["steps"], train["min_lr"]
        )
    return tg.schedules.FixedLR(optimizer)


class _Stop:
    """Why the loop should stop early: set by signal handlers, read between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        # data-parallel: what the last step's all-reduce said every rank must do
        self.agreed_signal = False
        self.agreed_budget = False

    def requested(self, data_parallel: bool) -> bool:
        """Whether to save and stop now: a signal here, or (data-parallel) on any rank, as agreed."""
        return self.agreed_signal if data_parallel else self.signal is not None


class Trainer:
    """One training run: set up (everything checked before anything is written), then :meth:`run`.

    ``resume``: the run's own ``last.npz`` (continue exactly).  ``source``: a checkpoint to fine-tune
    (its vocabulary and weights; a fresh optimizer and step 0).  ``unknown_char``: the vocabulary
    character that stands in for characters of the corpus the vocabulary lacks (fine-tuning).
    ``on_eval(run_dir, record)`` is called after each evaluation, once its record is logged.
    ``comm``: this process is one rank of a data-parallel job (then the constructor does not
    communicate: :meth:`run` starts the job).
    """

    def __init__(
        self,
        config: cfg.Config,
        corpus: str | os.PathLike,
        out: str | os.PathLike,
        *,
        resume: RunCheckpoint | None = None,
        source: RunCheckpoint | None = None,
        force: bool = False,
        unknown_char: str | None = None,
        stdout: Any = None,
        on_eval: Callable[[RunDir, dict[str, Any]], None] | None = None,
        comm: Comm | None = None,
    ):
        self.bar: Any = None  # the progress bar while the loop runs
        self.dp = DataParallel(comm) if comm is not None else None
        self.is_root = self.dp is None or self.dp.is_root  # the process that writes and prints
        self.config = copy.deepcopy(config)
        self.tc = tc = self.config["train"]
        self.run_dir = RunDir(out)
        self.out = self.run_dir.path
        self.force = force
        self.stdout = stdout
        self.source = source
        self.on_eval = on_eval
        if resume is not None and unknown_char is None:
            unknown_char = resume.meta.get("corpus", {}).get("unknown_char")
        base = resume or source

        self.data = training_data(
            corpus,
            val_fraction=tc["val_fraction"],
            batch_size=tc["batch_size"],
            seq_len=tc["seq_len"],
            batching=tc["batching"],
            seed=tc["seed"],
            vocab=base.vocab if base is not None else None,
            unknown_char=unknown_char,
            recorded=resume.meta.get("corpus", {}) if resume is not None else None,
            note=self._say,
        )
        self.vocab = self.data.vocab
        if self.dp is not None:
            self.dp.check_device(tc["device"])
            self.data.batcher = self.dp.shard(self.data.batcher)

        tg.set_device(tc["device"])
        tg.manual_seed(tc["seed"])  # the initial weights, then dropout masks, come from this stream
        self.model = build_model(self.config, len(self.vocab))
        if base is not None:
            load_weights(self.model, base)
        self.params = list(self.model.parameters())
        self.optimizer = tg.optim.make(tc["optimizer"], self.params, tc["learning_rate"], tc["weight_decay"])
        self.schedule = make_schedule(self.optimizer, tc)
        self.progress = Progress()
        self.state: Any = None  # the recurrent state carried into the next window
        self.resuming = resume is not None
        self._sample: tuple[int, str] | None = None  # (step, text): one sample per step, see sample_text
        if resume is not None:
            self.progress, self.state = unpack(
                resume,
                optimizer=self.optimizer,
                schedule=self.schedule,
                batcher=self.data.batcher,
                learning_rate=tc["learning_rate"],
            )
        if self.dp is not None:
            if self.state is not None:
                self.state = self.dp.local_rows(self.state, self.data.batcher.batch_size)
            self.dp.seed_streams(tc["seed"], self.step, resume.meta.get("data_parallel") if resume else None)

    @property
    def step(self) -> int:
        return self.progress.step

    def _say(self, message: str) -> None:
        if not self.is_root:
            return
        out = self.stdout or sys.stdout
        if self.bar is not None:
            self.bar.write(message, file=out)
        else:
            print(message, file=out, flush=True)

    def _save(self, val_loss: float | None, best: bool) -> None:
        state, ranks = self.state, None
        if self.dp is not None:  # collective: every rank saves, rank 0 writes
            state, ranks = self.dp.checkpoint_parts(self.state)
            if not self.is_root:
                return
        arrays, meta = pack(
            model=self.model,
            optimizer=self.optimizer,
            schedule=self.schedule,
            batcher=self.data.batcher,
            carried_state=state,
            vocab=self.vocab,
            config=self.config,
            corpus=self.data.record,
            progress=self.progress,
            val_loss=val_loss,
            finetuned_from=self.source.path if self.source is not None else None,
        )
        if ranks is not None:
            meta["data_parallel"] = ranks
        self.run_dir.save(arrays, meta, best)

    # --- evaluation and samples ---------------------------------------------------------------------------
    def evaluate(self) -> float:
        """Mean validation loss (nats/char) over the first ``eval_batches`` windows, state carried."""
        windows = self.data.val_batcher.windows_from_start(self.tc["eval_batches"])
        total, count = nll_sum(self.model, ((b.x, b.y, None) for b in windows))
        return total / max(count, 1)

    def sample_text(self) -> str:
        """The sample at this step, made once: an ``on_eval`` callback and the printout share it."""
        if self._sample is None or self._sample[0] != self.step:
            text = generate(
                self.model,
                self.vocab,
                default_prime(self.vocab),
                self.tc["sample_length"],
                temperature=self.tc["temperature"],
                # derived from (seed, step), not a running stream: the sample at a step is the same
                # whether the run went straight there or was resumed on the way
                rng=np.random.default_rng([self.tc["seed"], 2, self.step]),
            )
            self._sample = (self.step, text)
        return self._sample[1]

    # --- the loop ------------------------------------------------------------------------------------------
    def _train_step(self, stop: _Stop, start: float) -> float:
        batch = self.data.batcher.next()
        if batch.reset:
            self.state = None
        x, y = backend.to_device(batch.x), backend.to_device(batch.y)  # ids live where the weights do
        loss, self.state = self.model.loss(x, y, self.state)
        value = loss.item()
        self.optimizer.zero_grad()
        if math.isfinite(value):
            loss.backward()
        del loss
        if self.dp is not None:
            # the global mean loss and gradient, and stop requests every rank agrees on
            value, stop.agreed_signal, stop.agreed_budget = self.dp.reduce(
                value, signal=stop.signal is not None, over_budget=self._over_budget(start)
            )
        if not math.isfinite(value):
            raise DivergedError(self._diverged_message(f"the training loss is {value}"))
        if self.tc["clip"] > 0:
            norm = tg.optim.clip_grad_norm(self.params, self.tc["clip"])
            if not math.isfinite(norm):
                raise DivergedError(self._diverged_message(f"the gradient norm is {norm}"))
        self.schedule.on_step(self.step, self._progress(start))
        self.optimizer.step()
        self.progress.step += 1
        return value

    def _progress(self, start: float) -> float:
        """The fraction of this run done: of train.steps, or of the time budget if that is further along.

        Data-parallel ranks read only the steps: their clocks differ, their learning rates must not.
        """
        done = self.step / self.tc["steps"]
        budget = self.tc["time_budget"]
        if budget > 0 and self.dp is None:
            done = max(done, (time.perf_counter() - start) / budget)
        return min(1.0, done)

    def _over_budget(self, start: float) -> bool:
        return 0 < self.tc["time_budget"] <= time.perf_counter() - start

    def _diverged_message(self, what: str) -> str:
        kept = self.run_dir.last
        where = f"; {kept} is kept as it was" if kept.exists() else ""
        return (
            f"step {self.step + 1}: {what}; training stopped{where} "
            "(try a lower train.learning_rate or a train.clip > 0)"
        )

    def _evaluation(self, chars_per_s: float, scheduled: bool, eta: str) -> dict[str, Any]:
        """Validate, tell the schedule (at the evaluation interval), save, log; returns the metrics record."""
        p = self.progress
        val = self.evaluate() if self.is_root else math.nan
        if self.dp is not None:
            val = self.dp.share_value(val)  # every rank's schedule hears the same validation loss
        if not math.isfinite(val):
            raise DivergedError(self._diverged_message(f"the validation loss is {val}"))
        if scheduled:
            self.schedule.on_eval(val)
        train_loss = p.loss_sum / p.loss_count if p.loss_count else None
        p.loss_sum, p.loss_count = 0.0, 0
        best = p.best_val is None or val < p.best_val
        if best:
            p.best_val = val
        self._save(val, best)
        record = {
            "step": self.step,
            "epoch": getattr(self.data.batcher, "epoch", None),
            "train_loss": train_loss,
            "val_loss": val,
            "val_bpc": val / math.log(2),
            "lr": self.optimizer.lr,
            "chars_per_s": round(chars_per_s, 1),
            "elapsed_s": round(p.elapsed, 2),
            "best": best,
            "time": time.time(),
        }
        if not self.is_root:
            return record
        self.run_dir.log(record)
        if self.on_eval is not None:
            self.on_eval(self.run_dir, record)
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
        try:
            return self._run()
        finally:
            self.run_dir.release()  # the run directory's one-writer lock, taken by prepare (charlm.run)

    def _prepare(self) -> None:
        """Make the run directory ready (rank 0 alone; every rank of a job learns whether it could)."""
        problem = None
        try:
            if self.is_root:
                self.run_dir.prepare(self.config, resumed_at=self.step if self.resuming else None, force=self.force)
        except TinygraphError as exc:
            if self.dp is None:
                raise
            problem = exc
        if self.dp is not None:
            self.dp.agree(problem)

    def _run(self) -> int:
        tc, data = self.tc, self.data
        self._prepare()
        if self.step >= tc["steps"]:
            self._say(f"{self.out}: already at step {self.step} of train.steps = {tc['steps']}; nothing to do")
            return 0
        if self.dp is None:
            return self._loop()
        facts = {
            "corpus": data.record["sha256"],
            "step": self.step,
            "data": data.batcher.state_dict(),
            "config": self.config,
            "parameters": [list(p.shape) for p in self.params],
        }
        self.dp.start(self.params, facts)
        try:
            return self._loop()
        finally:
            self.dp.finish()

    def _loop(self) -> int:
        tc, p, data = self.tc, self.progress, self.data
        resuming = self.resuming
        from tqdm import tqdm

        chars_per_step = data.batcher.batch_size * data.batcher.seq_len
        n_params = sum(int(p.size) for p in self.params)
        self._say(
            f"{'resuming' if resuming else 'training'} {self.out} at step {self.step} of {tc['steps']}: "
            f"{n_params:,} parameters, vocabulary {len(self.vocab)}, {len(data.train_ids):,} training and "
            f"{len(data.val_ids):,} validation characters, device {tc['device']}"
            + (
                f", {self.dp.size} data-parallel ranks of {data.batcher.local_batch_size} streams"
                if self.dp is not None
                else ""
            )
        )
        # a launcher that relays the output of ranks (tinygraph train --nproc) says when it goes to a terminal
        interactive = self.is_root and (sys.stderr.isatty() or os.environ.get(PROGRESS_ENV) == "1")
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
                    loss = self._train_step(stop, start)
                    dt = time.perf_counter() - t0
                    p.elapsed += dt
                    p.loss_sum += loss
                    p.loss_count += 1
                    rate = chars_per_step / dt if rate == 0 else 0.9 * rate + 0.1 * chars_per_step / dt
                    self._show(loss, last_val, rate)
                    self.bar.update(1)
                    over_budget = stop.agreed_budget if self.dp is not None else self._over_budget(start)
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
                    if sample_due and tc["sample_length"] > 0 and self.is_root:
                        self._say(f"--- sample at step {self.step} ---\n{self.sample_text()}\n---")
                    if over_budget and self.step < tc["steps"]:
                        self._say(
                            f"time budget of {tc['time_budget']:g} s reached at step {self.step}; saved "
                            f"{self.run_dir.last}; continue with: tinygraph train --resume --out {self.out}"
                        )
                        break
                    if stop.requested(self.dp is not None):
                        self._save(None, best=False)
                        own = stop.signal is not None  # else (data-parallel) another rank was signalled
                        name = signal.Signals(stop.signal).name if own else "a signal to another rank"
                        self._say(
                            f"{name}: saved {self.run_dir.last} at step {self.step}; "
                            f"continue with: tinygraph train --resume --out {self.out}"
                        )
                        return EXIT_INTERRUPTED
        finally:
            self.bar.close()
            self.bar = None
        if self.step >= tc["steps"]:
            best = f"{p.best_val:.4f}" if p.best_val is not None else "-"
            self._say(f"done: step {self.step}, best validation loss {best} nats/char; checkpoints in {self.out}")
        return 0
