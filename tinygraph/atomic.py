"""Atomic file replacement: write beside the destination, flush, fsync, then rename over it.

``os.replace`` is atomic on POSIX and Windows, so a crash or a ``kill -9`` at any moment leaves
either the old file or the new one, never half of one.  Checkpoints, run metadata and drawings all
go through :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` changes only if the block completes.

    The temporary file gets the permissions a plain ``open()`` would have given (mkstemp makes it
    private); on any exception, Ctrl-C included, it is removed and the destination is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            if hasattr(os, "fchmod"):
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(f.fileno(), 0o666 & ~umask)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` (bytes, or text written as UTF-8) in one rename.

    The directory is made if missing.  The one way the project writes a whole file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = isinstance(data, str)
    with atomic_write(path, "w" if text else "wb", encoding="utf-8" if text else None) as f:
        f.write(data)
    return path
