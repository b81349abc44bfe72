"""The run directory of a training run: its files, setting it up, its checkpoints and its metrics log.

A run directory holds ``config.toml`` (the full config), ``metrics.jsonl`` (one JSON object per
evaluation), ``loss.svg``/``loss.png`` (drawn by whoever the trainer tells of each evaluation),
``last.npz`` (written at every evaluation and when the run stops) and ``best.npz`` (the lowest
validation loss).  Every whole file is replaced atomically; ``metrics.jsonl`` is appended to, and a
line torn by a crash is skipped when it is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from charlm import config as cfg
from tinygraph import checkpoint as ckpt_io
from tinygraph.atomic import write_atomic
from tinygraph.errors import TinygraphError

RUN_FILES = ("last.npz", "best.npz", "config.toml", "metrics.jsonl", "loss.svg", "loss.png")


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


class RunDir:
    """The files of one run, under ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.last = self.path / "last.npz"
        self.best = self.path / "best.npz"
        self.metrics_file = self.path / "metrics.jsonl"
        self.config_file = self.path / "config.toml"

    def last_checkpoint(self) -> Path:
        """The checkpoint ``--resume`` continues from; :class:`RunError` when there is none."""
        if not self.path.is_dir():
            raise RunError(f"nothing to resume: {self.path} is not a run directory")
        if not self.last.exists():
            raise RunError(f"nothing to resume in {self.path}: it has no last.npz")
        return self.last

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
        # leftovers of a write cut short by kill -9 (the checkpoint itself is untouched)
        for leftover in out.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        if resumed_at is None:
            for f in RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (out / f).unlink()
        else:
            # records written after the checkpoint we resume from belong to a future that did not happen
            kept = [r for r in self.metrics() if r.get("step", 0) <= resumed_at]
            write_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))
        write_atomic(self.config_file, cfg.to_toml(config))

    def save(self, arrays: dict[str, Any], meta: dict[str, Any], best: bool) -> None:
        """Write ``last.npz``, and ``best.npz`` too when this is the best so far."""
        ckpt_io.save(self.last, arrays, meta)
        if best:
            ckpt_io.save(self.best, arrays, meta)

    def log(self, record: dict[str, Any]) -> None:
        """Append one evaluation's record to ``metrics.jsonl``."""
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_file)
