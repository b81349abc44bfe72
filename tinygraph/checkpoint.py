"""Checkpoint I/O: named arrays plus JSON metadata in one ``.npz``, written atomically, never pickled.

The file is an ordinary ``.npz`` (``np.load`` opens it): one ``<name>.npy`` member per array, plus
the member ``__tinygraph__.npy``, a uint8 array holding the JSON text
``{"format": "tinygraph-checkpoint", "version": 1, "meta": {...}}`` -- the marker that tells our
files from foreign ones.  Array names may contain dots and slashes ("model/weight_hh_l0", "optim/m.3").

Writing goes to a temporary file in the destination's directory, which is flushed and fsynced and
then renamed over the destination (``os.replace`` is atomic on POSIX and Windows), so a crash or a
``kill -9`` at any moment leaves either the old file or the new one, never a mixture.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tinygraph import backend
from tinygraph.atomic import atomic_write
from tinygraph.errors import TinygraphError

FORMAT = "tinygraph-checkpoint"
VERSION = 1
META_KEY = "__tinygraph__"
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(TinygraphError):
    """A checkpoint that cannot be written or read; the message names the file and the problem."""


def _oneline(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _json_default(obj: Any) -> Any:
    # NumPy scalars and small arrays sneak into metadata (a loss, a step count): store them as Python values
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _encode_meta(path: Path, meta: dict) -> np.ndarray:
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: checkpoint metadata must be a dict, got {type(meta).__name__}")
    try:
        text = json.dumps({"format": FORMAT, "version": VERSION, "meta": meta}, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not JSON-serialisable ({_oneline(exc)})") from exc
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _host_arrays(path: Path, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or not name or name == META_KEY or "\0" in name:
            raise CheckpointError(f"{path}: invalid array name {name!r} (need a non-empty string, not {META_KEY!r})")
        host = backend.to_numpy(a)
        if host.dtype.hasobject:
            raise CheckpointError(f"{path}: array {name!r} has dtype object, which cannot be saved without pickle")
        out[name] = host
    return out


def _write_zip(f: Any, arrays: dict[str, np.ndarray], meta_bytes: np.ndarray) -> None:
    # stored, not deflated: checkpoints of float weights barely compress, and saving stays fast
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in [*arrays.items(), (META_KEY, meta_bytes)]:
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable; not possible on every OS/file system, so best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(path: str | os.PathLike, arrays: dict[str, Any], meta: dict) -> None:
    """Write ``arrays`` (host or device arrays) and JSON-able ``meta`` to ``path`` atomically.

    The name is used as given (no ``.npz`` is appended).  An existing file is replaced only once the
    new one is completely on disk.
    """
    path = Path(path)
    host = _host_arrays(path, arrays)
    meta_bytes = _encode_meta(path, meta)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        with atomic_write(path) as f:
            _write_zip(f, host, meta_bytes)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint ({_oneline(exc)})") from exc
    _fsync_dir(directory)


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}")


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by :func:`save`: (arrays as host NumPy arrays, metadata).

    Raises :class:`CheckpointError` for a missing, empty, truncated, corrupt or foreign file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise _fail(path, "no such checkpoint file") from exc
    except OSError as exc:
        raise _fail(path, f"cannot read checkpoint ({_oneline(exc)})") from exc
    if path.is_dir():
        raise _fail(path, "is a directory, not a checkpoint file")
    if size == 0:
        raise _fail(path, "checkpoint file is empty (0 bytes)")
    try:
        f = open(path, "rb")  # closed by the with below: errors opening and reading differ
    except OSError as exc:
        raise _fail(path, f"cannot read checkpoint ({_oneline(exc)})") from exc
    try:
        with f:
            head = f.read(4)
            if head != _ZIP_MAGIC:
                if _ZIP_MAGIC.startswith(head):  # cut off within the first bytes
                    raise _fail(path, f"checkpoint is truncated ({size} bytes)")
                raise _fail(path, "not a tinygraph checkpoint (not an .npz archive)")
            f.seek(0)
            return _read_zip(path, f)
    except CheckpointError:
        raise
    except zipfile.BadZipFile as exc:
        raise _fail(path, f"checkpoint is truncated or corrupt ({_oneline(exc)})") from exc
    except (OSError, EOFError, ValueError, zipfile.LargeZipFile) as exc:
        raise _fail(path, f"checkpoint is truncated or corrupt ({type(exc).__name__}: {_oneline(exc)})") from exc


def _read_zip(path: Path, f: Any) -> tuple[dict[str, np.ndarray], dict]:
    with zipfile.ZipFile(f) as zf:
        members = zf.namelist()
        meta_member = META_KEY + ".npy"
        if meta_member not in members:
            raise _fail(path, "not a tinygraph checkpoint (an .npz without tinygraph's metadata entry)")
        meta = _decode_meta(path, _read_member(zf, meta_member))
        arrays = {}
        for member in members:
            if member == meta_member:
                continue
            if not member.endswith(".npy"):
                raise _fail(path, f"checkpoint has an unexpected entry {member!r}")
            arrays[member[: -len(".npy")]] = _read_member(zf, member)
    return arrays, meta


def _read_member(zf: zipfile.ZipFile, member: str) -> np.ndarray:
    with zf.open(member) as stream:
        arr = np.lib.format.read_array(stream, allow_pickle=False)
        # read to the end so zipfile checks the member's CRC: flipped bytes are caught, not loaded
        if stream.read():
            raise ValueError(f"entry {member!r} has bytes after its array")
    return arr


def _decode_meta(path: Path, raw: np.ndarray) -> dict:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _fail(path, "checkpoint metadata entry is not JSON text")
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"checkpoint metadata is not valid JSON ({_oneline(exc)})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("meta"), dict):
        raise _fail(path, "not a tinygraph checkpoint (metadata lacks the format marker)")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise _fail(path, f"checkpoint has an invalid format version {version!r}")
    if version > VERSION:
        raise _fail(path, f"checkpoint format version {version} is newer than this tinygraph reads ({VERSION})")
    return doc["meta"]
