"""Checkpoint I/O: named arrays plus JSON metadata in one ``.npz``, written atomically, never pickled.

The file is an ordinary ``.npz`` (``np.load`` opens it): one ``<name>.npy`` member per array, plus
the member ``__tinygraph__.npy``, a uint8 array holding the JSON text
``{"format": "tinygraph-checkpoint", "version": 1, "meta": {...}}`` -- the marker that tells our
files from foreign ones.  Array names may contain dots and slashes ("model/weight_hh_l0", "optim/m.3").

Writing goes to a temporary file in the destination's directory, which is flushed and fsynced and
then renamed over the destination (``os.replace`` is atomic on POSIX and Windows), so a crash or a
``kill -9`` at any moment leaves either the old file or the new one, never a mixture.

Reading trusts nothing it has not checked: the zip entries, then each array's ``.npy`` header
(dtype, shape) against the bytes its entry holds, then the caller's own rules on the metadata and
shapes, and only then the data; an object array would need pickle and is refused unread.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
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
# the largest metadata entry read: vocabulary, config and run state are a few kB
MAX_META_BYTES = 64 << 20
_NUMERIC_KINDS = "biufc"
_MAX_DIMS = 32


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


def _foreign(why: str) -> CheckpointError:
    return CheckpointError(f"not a tinygraph checkpoint: {why}")


@dataclass(frozen=True)
class ArrayHeader:
    """What an array entry declares in its ``.npy`` header, read before any of its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


# check(metadata, {name: header}) raises CheckpointError(why) for a layout its caller cannot use;
# ``load`` puts the file's name in front of the reason
LayoutCheck = Callable[[dict, dict[str, ArrayHeader]], None]


def load(path: str | os.PathLike, check: LayoutCheck | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by :func:`save`: (arrays as host NumPy arrays, metadata).

    Nothing is allocated on the word of the file alone: the entries, the metadata and every array's
    declared dtype and shape are checked first (an array's header must declare exactly the bytes its
    entry holds, and entries are stored, so together they hold no more than the file), then
    ``check(meta, headers)`` -- the caller's own rules, e.g. shapes derived from the metadata -- and
    only then is array data read.
    Raises :class:`CheckpointError` for a missing, empty, truncated, corrupt or foreign file; a
    structure tinygraph does not write is "not a tinygraph checkpoint: <why>".  Never unpickles.
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
                    raise CheckpointError(f"checkpoint is truncated ({size} bytes)")
                raise CheckpointError("not a tinygraph checkpoint (not an .npz archive)")
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                return _read_zip(zf, size, check)
    except CheckpointError as exc:  # raised below without the file's name, and by ``check``
        raise _fail(path, str(exc)) from None
    except zipfile.BadZipFile as exc:
        raise _fail(path, f"checkpoint is truncated or corrupt ({_oneline(exc)})") from exc
    except (OSError, EOFError, ValueError, zipfile.LargeZipFile) as exc:
        raise _fail(path, f"checkpoint is truncated or corrupt ({type(exc).__name__}: {_oneline(exc)})") from exc


def _entries(zf: zipfile.ZipFile, archive_size: int) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by array name, each one of the kind :func:`save` writes: stored (not
    compressed), so no entry can claim more bytes than the file has."""
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        member = info.filename
        if info.is_dir() or not member.endswith(".npy") or member == ".npy":
            raise _foreign(f"unexpected entry {member!r} (a checkpoint holds only .npy arrays)")
        name = member[: -len(".npy")]
        if name in entries:
            raise _foreign(f"the entry {member!r} is listed twice")
        if info.flag_bits & 0x1:
            raise _foreign(f"the entry {member!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _foreign(f"the entry {member!r} is compressed (tinygraph stores its arrays as they are)")
        if info.file_size != info.compress_size or info.file_size > archive_size:
            raise _foreign(f"the entry {member!r} claims {info.file_size:,} bytes in a file of {archive_size:,}")
        entries[name] = info
    if META_KEY not in entries:
        raise _foreign("an .npz without tinygraph's metadata entry")
    return entries


def _read_header(zf: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> ArrayHeader:
    """The dtype, shape and order an entry declares, checked against the bytes it holds; no data is read."""
    with zf.open(info) as stream:
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, SyntaxError, RecursionError, MemoryError) as exc:
            raise _foreign(f"array {name!r} has an unreadable header ({_oneline(exc)[:200]})") from None
        header_bytes = stream.tell()
    if dtype.hasobject:
        raise _foreign(f"array {name!r} has dtype object (loading it would run pickle)")
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise _foreign(f"array {name!r} has dtype {dtype} (a checkpoint holds plain numbers)")
    if len(shape) > _MAX_DIMS or any(d < 0 for d in shape):
        raise _foreign(f"array {name!r} declares the impossible shape {shape}")
    header = ArrayHeader(tuple(shape), dtype, fortran_order)
    held = info.file_size - header_bytes
    if header.nbytes != held:
        raise _foreign(
            f"array {name!r} declares shape {header.shape} of {dtype} ({header.nbytes:,} bytes) "
            f"but its entry holds {held:,} bytes"
        )
    return header


def _read_zip(zf: zipfile.ZipFile, archive_size: int, check: LayoutCheck | None) -> tuple[dict[str, np.ndarray], dict]:
    entries = _entries(zf, archive_size)
    meta_info = entries.pop(META_KEY)
    meta_header = _read_header(zf, META_KEY, meta_info)
    if meta_header.dtype != np.uint8 or len(meta_header.shape) != 1:
        raise CheckpointError("checkpoint metadata entry is not JSON text")
    if meta_header.nbytes > MAX_META_BYTES:
        raise _foreign(f"its metadata entry holds {meta_header.nbytes:,} bytes (at most {MAX_META_BYTES:,})")
    meta = _decode_meta(_read_member(zf, meta_info))
    headers = {name: _read_header(zf, name, info) for name, info in entries.items()}
    if check is not None:
        check(meta, headers)
    arrays = {name: _read_member(zf, info) for name, info in entries.items()}
    return arrays, meta


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """An entry's array; its header was checked against the entry's size, so reading allocates what the
    file holds and no more."""
    with zf.open(info) as stream:
        arr = np.lib.format.read_array(stream, allow_pickle=False)
        # read to the end so zipfile checks the member's CRC: flipped bytes are caught, not loaded
        if stream.read():
            raise ValueError(f"entry {info.filename!r} has bytes after its array")
    return arr


def _decode_meta(raw: np.ndarray) -> dict:
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata is not valid JSON ({_oneline(exc)})") from exc
    except RecursionError:
        raise _foreign("its metadata is nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("meta"), dict):
        raise CheckpointError("not a tinygraph checkpoint (metadata lacks the format marker)")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint has an invalid format version {version!r}")
    if version > VERSION:
        raise CheckpointError(f"checkpoint format version {version} is newer than this tinygraph reads ({VERSION})")
    return doc["meta"]
