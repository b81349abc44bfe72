"""What a training run does at each evaluation besides saving: the chain of ``on_eval`` callbacks.

:func:`run_with_eval_callbacks` runs a :class:`charlm.trainer.Trainer` with this chain, in order:

1. the callbacks it is given (``cli.train`` passes the loss plot);
2. the BPTT probe (:mod:`charlm.probe`): |dL/dh_t| over a fixed validation window, and the gates,
   appended to ``probe.npz``; a run that starts afresh also probes its starting weights (step 0);
3. the sample of the evaluation, appended to ``samples.jsonl`` (the trainer prints the same text:
   it makes one per step);
4. the report page, ``report.html`` (``tinygraph report``), redrawn in a background process so that
   training does not wait for it; when the run ends the page is drawn once more, here, for the
   final state.

Nothing in the chain may break or stall a run: a step that fails says so, once, on stderr, and the
run goes on; the step is tried again at the next evaluation (a full disk may have room by then).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from charlm.probe import RunProbe
from charlm.run import RunDir, read_metrics
from tinygraph.atomic import write_atomic

SAMPLES_FILE = "samples.jsonl"
STOP_WAIT_S = 10.0  # how long a drawing cut short may take to clean up before it is killed

Callback = Callable[[RunDir, dict[str, Any]], None]


def warn(message: str) -> None:
    """One line on stderr that leaves the progress bar intact."""
    from tqdm import tqdm

    tqdm.write(f"note: {message}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SampleLog:
    """``samples.jsonl``: one ``{"step", "text"}`` line per evaluation, rewritten atomically.

    A resumed run keeps the samples up to the step it resumes from (``keep_until``); a fresh run
    starts an empty log.
    """

    def __init__(self, run_path: Path, keep_until: int | None):
        self.path = run_path / SAMPLES_FILE
        self.records: list[dict[str, Any]] | None = None
        self.keep_until = keep_until

    def add(self, step: int, text: str) -> None:
        if self.records is None:  # read at the first evaluation: the run directory is set up by then
            until = self.keep_until
            old = read_metrics(self.path) if until is not None else []
            self.records = [r for r in old if isinstance(r.get("step"), int) and r["step"] <= until]
        self.records.append({"step": step, "text": text})
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


class ReportRefresher:
    """Redraws ``report.html`` in a background process, one at a time.

    A request while a drawing runs is remembered and served as soon as it ends, so the page lags
    at most one drawing behind; the process runs at low priority with one BLAS thread, beside the
    training, and stops if the training process dies (``tinygraph report --background``).  A
    failure is said once.
    """

    def __init__(self, run_path: Path, on_failure: Callable[[str], None]):
        self.run_path = run_path
        self.on_failure = on_failure
        self._lock = threading.Lock()
        self._requested = 0  # requests so far; a drawing started after request n shows its state
        self._drawing = 0  # the request the running drawing serves
        self._drawn = 0  # the request the last finished drawing served
        self._closed = self._interrupted = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._requested += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="report", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            with self._lock:
                if self._drawn == self._requested or self._closed:
                    self._thread = None
                    return
                self._drawing = self._requested
                err = tempfile.TemporaryFile()
                try:
                    self._proc = proc = _spawn_report(self.run_path, err)
                except OSError as exc:
                    self._thread = None
                    failure = f"cannot start {sys.executable}: {exc}"
                    proc = None
            if proc is None:
                err.close()
                self.on_failure(failure)
                return
            rc = proc.wait()
            with self._lock:
                self._proc = None
                if rc == 0:
                    self._drawn = self._drawing
                interrupted = self._interrupted
            if rc != 0 and not interrupted:
                err.seek(0)
                lines = err.read().decode("utf-8", "replace").strip().splitlines()
                self.on_failure(lines[-1] if lines else f"exit status {rc}")
            err.close()

    def close(self) -> bool:
        """Stop; True when the page shows the last request.

        A drawing of the last request is let finish; an older one is cut short (the page is replaced
        atomically, never torn): SIGINT lets it remove its temporary file on the way out, and a
        process that does not end soon (one started with SIGINT ignored) is killed.
        """
        with self._lock:
            self._closed = True
            proc, thread = self._proc, self._thread
            current = proc is not None and self._drawing == self._requested
            self._interrupted = proc is not None and not current
        if self._interrupted:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)
        if thread is not None:
            thread.join(None if current else STOP_WAIT_S)
            if thread.is_alive() and proc is not None:
                with contextlib.suppress(OSError):
                    proc.kill()
                thread.join()
        with self._lock:
            return self._drawn == self._requested


def _spawn_report(run_path: Path, stderr: Any) -> subprocess.Popen[bytes]:
    root = str(Path(__file__).resolve().parent.parent)  # the checkout: ``cli`` importable from anywhere
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    # no pipe of ours goes to it: a training killed with -9 leaves nobody waiting on its output
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "report", str(run_path), "--background", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=env,
    )


class EvalCallbacks:
    """The ``on_eval`` of a trainer: the given callbacks, the probe, the sample log, the report."""

    def __init__(self, trainer: Any, callbacks: tuple[Callback, ...] = ()):
        self.trainer = trainer
        self.failed: set[str] = set()  # the steps that have failed (and said so)
        self.calls = 0
        run_path = trainer.run_dir.path
        resumed_at = trainer.step if trainer.resuming else None
        self.steps: list[tuple[str, Callback]] = [
            (getattr(c, "__name__", "callback").replace("_", " "), c) for c in callbacks
        ]
        self.probe: RunProbe | None = None
        try:  # on rank 0 of a data-parallel job only: the others are never told of an evaluation
            if getattr(trainer, "is_root", True):
                self.probe = RunProbe(trainer.model, trainer.data.val_ids, trainer.tc["seq_len"], run_path, resumed_at)
        except Exception as exc:  # the probe is an extra: the run goes on without it
            self._say_once("BPTT probe", _one_line(exc))
        self.samples = SampleLog(run_path, resumed_at)
        self.report = ReportRefresher(run_path, lambda why: self._say_once("report page", why))
        self.steps += [("BPTT probe", self._probe), ("sample log", self._sample), ("report page", self._report)]

    def __call__(self, run_dir: RunDir, record: dict[str, Any]) -> None:
        self.calls += 1
        for name, step in self.steps:
            try:
                step(run_dir, record)
            except Exception as exc:  # never let a drawing stop the training
                self._say_once(name, _one_line(exc))

    def _say_once(self, name: str, why: str) -> None:
        if name in self.failed:
            return
        self.failed.add(name)
        warn(f"{name} failed; training goes on ({why})")

    def _probe(self, run_dir: RunDir, record: dict[str, Any]) -> None:
        if self.probe is None:
            return
        self.probe.record(int(record["step"]), float(record.get("elapsed_s") or 0.0))

    def _sample(self, run_dir: RunDir, record: dict[str, Any]) -> None:
        if self.trainer.tc["sample_length"] > 0:
            self.samples.add(int(record["step"]), self.trainer.sample_text())

    def _report(self, run_dir: RunDir, record: dict[str, Any]) -> None:
        self.report.request()

    def close(self) -> None:
        """End of the run: the final page, from the background drawing when it shows the last
        evaluation, else drawn here."""
        if not self.report.close() and self.calls:
            try:
                from cli.report import write_report

                write_report(self.trainer.run_dir.path)
            except Exception as exc:
                self._say_once("report page", _one_line(exc))


def run_with_eval_callbacks(trainer: Any, *callbacks: Callback) -> int:
    """Run ``trainer`` with :class:`EvalCallbacks` (``callbacks`` first) as its ``on_eval``; returns its status."""
    chain = EvalCallbacks(trainer, callbacks)
    trainer.on_eval = chain
    try:
        return trainer.run()
    finally:
        chain.close()
