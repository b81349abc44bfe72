"""The run directory of a training run: its files, setting it up, its one writer, its checkpoints and metrics.

A run directory holds ``config.toml`` (the full config), ``metrics.jsonl`` (one JSON object per
evaluation), ``loss.svg``/``loss.png`` (drawn by whoever the trainer tells of each evaluation),
``last.npz`` (written at every evaluation and when the run stops) and ``best.npz`` (the lowest
validation loss).  Every whole file is replaced atomically; ``metrics.jsonl`` is appended to, and a
line torn by a crash is skipped when it is read.

One trainer writes a run directory at a time: :meth:`RunDir.prepare` takes an exclusive
``fcntl.flock`` on its ``.lock`` file (and writes its pid there for whoever is refused), held until
:meth:`RunDir.release` or the process ends -- the kernel drops the lock of a process that dies, so a
``kill -9`` never leaves a stale one.  Readers (sampling, evaluation) take no lock: they read
complete checkpoints only.  A write that fails (a full disk) is one :class:`RunError` that leaves
the checkpoints already there as they were.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any

from charlm import config as cfg
from charlm.distributed import launched
from tinygraph import checkpoint as ckpt_io
from tinygraph.atomic import write_atomic
from tinygraph.errors import TinygraphError

try:
    import fcntl
except ImportError:  # not POSIX: runs go unlocked
    fcntl = None  # type: ignore[assignment]

RUN_FILES = ("last.npz", "best.npz", "config.toml", "metrics.jsonl", "loss.svg", "loss.png")
LOCK_FILE = ".lock"


class RunError(TinygraphError):
    """A run directory that cannot be used as asked (exists, missing, not writable)."""


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


def _try_lock(fd: int) -> bool:
    """An exclusive flock on ``fd`` if no one else holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    """The pid the holder of a lock file wrote in it, as the message shows it."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode("ascii").strip())
        return f"pid {pid}"
    return "pid unknown"


class RunDir:
    """The files of one run, under ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.last = self.path / "last.npz"
        self.best = self.path / "best.npz"
        self.metrics_file = self.path / "metrics.jsonl"
        self.config_file = self.path / "config.toml"
        self.lock_file = self.path / LOCK_FILE
        self._lock_fd: int | None = None  # the locked lock file, while this is the run's writer
        self._closer: weakref.finalize | None = None  # closes it, in release() or when this is collected

    def last_checkpoint(self) -> Path:
        """The checkpoint ``--resume`` continues from; :class:`RunError` when there is none, or when
        another trainer is writing the run."""
        if not self.path.is_dir():
            raise RunError(f"nothing to resume: {self.path} is not a run directory")
        if not self.last.exists():
            raise RunError(f"nothing to resume in {self.path}: it has no last.npz")
        self.check_not_in_use()
        return self.last

    # --- the one writer -----------------------------------------------------------------------------------
    def _in_use(self, holder: str) -> RunError:
        return RunError(
            f"{self.path} is in use: another trainer ({holder}) is writing it; wait for it to end or stop it, "
            f"then resume with: tinygraph train --resume --out {self.path}"
        )

    def check_not_in_use(self) -> None:
        """:class:`RunError` naming the holder's pid when a trainer holds the run's lock; takes nothing."""
        if fcntl is None or self._lock_fd is not None:
            return
        job = launched()
        if job is not None and job[0] != 0:
            return  # a data-parallel job writes from its rank 0 alone, which may hold the lock already
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except OSError:
            return  # no lock file: never trained, or not readable (the writer will find out)
        try:
            if not _try_lock(fd):
                raise self._in_use(_holder(fd))
        finally:
            os.close(fd)  # drops the probe's lock, if it got one

    def lock(self) -> None:
        """Become the run's one writer: an exclusive lock on its lock file (created if missing), with this
        process's pid written in it; :class:`RunError` naming the holder when another trainer has it."""
        if fcntl is None or self._lock_fd is not None:
            return
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RunError(f"cannot write to the output directory {self.path} ({exc.strerror or exc})") from exc
        if not _try_lock(fd):
            holder = _holder(fd)
            os.close(fd)
            raise self._in_use(holder)
        with contextlib.suppress(OSError):  # the pid is a courtesy to whoever is refused; the lock is the flock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd, self._closer = fd, weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        """Stop being the run's writer (a no-op when not); the lock file stays, empty, for the next one."""
        if self._lock_fd is None or self._closer is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._lock_fd, 0)
        self._closer()  # closing the descriptor drops the lock
        self._lock_fd = self._closer = None

    def prepare(self, config: cfg.Config, *, resumed_at: int | None, force: bool) -> None:
        """Make the directory ready for a run that starts afresh, or resumes at step ``resumed_at``.

        A directory that already holds a run is refused unless the run resumes or ``force`` starts over.
        """
        out = self.path
        if out.exists() and not out.is_dir():
            raise RunError(f"output {out} exists and is not a directory")
        if out.is_dir() and resumed_at is None:
            present = [f for f in RUN_FILES if (out / f).exists()]
            if present and not force:
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
        self.lock()  # before anything of the run is touched
        # leftovers of a write cut short by kill -9 (the checkpoint itself is untouched)
        for leftover in out.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        if resumed_at is None:
            for f in RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (out / f).unlink()
        try:
            if resumed_at is not None:
                # records written after the checkpoint we resume from belong to a future that did not happen
                kept = [r for r in self.metrics() if r.get("step", 0) <= resumed_at]
                write_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))
            write_atomic(self.config_file, cfg.to_toml(config))
        except OSError as exc:
            raise RunError(f"cannot write to the output directory {out} ({exc.strerror or exc})") from exc

    def save(self, arrays: dict[str, Any], meta: dict[str, Any], best: bool) -> None:
        """Write ``last.npz``, and ``best.npz`` too when this is the best so far.

        A write that fails (a full disk, an I/O error) is a :class:`RunError` saying what is kept: the
        file being written is left as it was (the write is atomic) and no partial file remains.
        """
        step = meta.get("step")
        try:
            ckpt_io.save(self.last, arrays, meta)
        except ckpt_io.CheckpointError as exc:
            raise RunError(f"{exc}; the run stopped at step {step} and its checkpoints are as they were") from exc
        if best:
            try:
                ckpt_io.save(self.best, arrays, meta)
            except ckpt_io.CheckpointError as exc:
                raise RunError(
                    f"{exc}; the run stopped at step {step}, saved in {self.last.name}; {self.best.name} is as it was"
                ) from exc

    def log(self, record: dict[str, Any]) -> None:
        """Append one evaluation's record to ``metrics.jsonl``; a failed write is cut off again, so the
        next record starts on a line of its own."""
        line = (json.dumps(record) + "\n").encode("utf-8")
        try:
            fd = os.open(self.metrics_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RunError(f"{self.metrics_file}: cannot append the metrics ({exc.strerror or exc})") from exc
        try:
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "the line was written only in part")
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise RunError(f"{self.metrics_file}: cannot append the metrics ({exc.strerror or exc})") from exc
        finally:
            os.close(fd)

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_file)
