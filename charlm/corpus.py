"""The corpus of a character language model: loading it, its vocabulary, the split, and batches.

* :func:`load_corpus` reads any UTF-8 text file and refuses, in one line naming the file, what is
  not one (missing, a directory, empty, binary or not UTF-8).
* :class:`Vocab` maps characters to ids: the sorted characters of the corpus, stored with the model
  as a JSON list.  A fine-tuning run keeps its checkpoint's vocabulary; characters it lacks are
  refused, or mapped to one symbol of the vocabulary that the user names.
* :func:`split_text` cuts a contiguous train/validation split (the validation part is the tail).
* :class:`StreamBatcher` serves truncated-BPTT batches: B contiguous streams read in windows of T,
  so the state at the end of a window is the right initial state of the next one; its position
  is a small dict, saved in checkpoints for an exact resume.  :class:`RandomBatcher` draws B
  independent windows at random offsets from its own generator (whose state is saved likewise).
* :func:`training_data` does all of it for a run, and makes the corpus record its checkpoints keep
  (path, sha256 fingerprint, size): a resumed run and ``tinygraph eval`` check the text is unchanged.

Ids are host NumPy int arrays: the model's embedding lookup moves them to the device.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinygraph.errors import TinygraphError


class DataError(TinygraphError):
    """A corpus or a piece of text the model cannot use; the message names the file or the characters."""


def _show_char(c: str) -> str:
    """A character as a user can read it in a one-line message ('\\n' rather than a line break)."""
    return ascii(c) if not c.isprintable() else repr(c)


def describe_chars(counts: Counter[str] | dict[str, int], limit: int = 10) -> str:
    """'x' (3), '\\t' (1), ... : the most frequent characters first, at most ``limit`` of them."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{_show_char(c)} ({n})" for c, n in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return shown + more


# --- reading a corpus -------------------------------------------------------------------------------


def load_corpus(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped); :class:`DataError` otherwise."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"corpus {path}: no such file") from exc
    except IsADirectoryError as exc:
        raise DataError(f"corpus {path}: is a directory, not a text file") from exc
    except OSError as exc:
        raise DataError(f"corpus {path}: cannot be read ({exc.strerror or exc})") from exc
    if not raw:
        raise DataError(f"corpus {path}: the file is empty")
    # NUL never occurs in text but is common in binaries that happen to decode (UTF-16, images)
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(f"corpus {path}: looks binary (a NUL byte at offset {nul}); a corpus must be UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"corpus {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "convert it, e.g. with iconv -t utf-8"
        ) from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        raise DataError(f"corpus {path}: the file holds no text (only a byte-order mark)")
    return text


def text_sha256(text: str) -> str:
    """The fingerprint of a corpus kept in checkpoints: is this still the text a run was trained on?"""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def same_text(record: dict[str, Any], text: str) -> bool:
    """Whether ``text`` is the corpus a checkpoint's record describes (a record without a fingerprint is trusted)."""
    return record.get("sha256") in (None, text_sha256(text))


# --- vocabulary ---------------------------------------------------------------------------------------


class Vocab:
    """Characters <-> ids.  ``chars`` are the symbols in id order (sorted when built from a text)."""

    def __init__(self, chars: list[str]):
        if not chars:
            raise DataError("a vocabulary needs at least one character")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise DataError(f"a vocabulary holds single characters, not {bad[0]!r}")
        if len(set(chars)) != len(chars):
            dup = next(c for c, n in Counter(chars).items() if n > 1)
            raise DataError(f"vocabulary lists the character {_show_char(dup)} twice")
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        # code points sorted, with their ids: encoding is then one searchsorted over the whole text
        points = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        order = np.argsort(points)
        self._points, self._ids = points[order], order.astype(np.int32)

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, c: object) -> bool:
        return c in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(tuple(self.chars))

    def __repr__(self) -> str:
        return f"Vocab({len(self)} chars)"

    def unknown(self, text: str) -> Counter[str]:
        """How often each character of ``text`` that the vocabulary lacks occurs."""
        extra = set(text).difference(self.index)  # set() of a text is fast; count only when needed
        return Counter(c for c in text if c in extra) if extra else Counter()

    def encode(self, text: str, unknown: str | None = None, what: str = "text") -> np.ndarray:
        """Ids (int32) of ``text``.

        A character outside the vocabulary is an error naming it (``what`` says where it came from),
        unless ``unknown`` names a vocabulary character to stand in for every such character.
        """
        if unknown is not None and unknown not in self.index:
            raise DataError(f"the stand-in for unknown characters {_show_char(unknown)} is not in the vocabulary")
        missing = self.unknown(text)
        if missing and unknown is None:
            raise DataError(
                f"{what} has {sum(missing.values())} character(s) outside the model's vocabulary: "
                f"{describe_chars(missing)}"
            )
        ids, known = self._lookup(text)
        if missing:
            ids[~known] = self.index[unknown]  # type: ignore[index]
        return ids

    def encode_masked(self, text: str, stand_in: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(ids, known): unknown characters become ``stand_in`` and are marked False in ``known``."""
        ids, known = self._lookup(text)
        ids[~known] = stand_in
        return ids, known

    def _lookup(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        pos = np.searchsorted(self._points, points).clip(0, len(self._points) - 1)
        known = self._points[pos] == points
        return self._ids[pos], known

    def decode(self, ids: Any) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)

    def to_json(self) -> list[str]:
        return list(self.chars)

    @classmethod
    def from_json(cls, data: Any) -> Vocab:
        if not isinstance(data, list):
            raise DataError(f"a stored vocabulary is a list of characters, not {type(data).__name__}")
        return cls(data)


# --- split ---------------------------------------------------------------------------------------------


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """(train, validation): contiguous, the validation part being the last ``val_fraction`` of the text.

    Contiguous rather than shuffled windows, so no validation text leaks into training through
    overlapping windows.  ``val_fraction`` 0 gives an empty validation part.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(text) * val_fraction)
    if val_fraction > 0 and n_val < 2:
        n_val = min(2, len(text))  # one input and one target at least, so the score is defined
    cut = len(text) - n_val
    return text[:cut], text[cut:]


# --- batches ------------------------------------------------------------------------------------------


class Batch:
    """One training batch: inputs x (B, T), targets y (B, T) = x shifted by one, and whether the
    recurrent state must start from zero (a new epoch or independent windows)."""

    __slots__ = ("x", "y", "reset")

    def __init__(self, x: np.ndarray, y: np.ndarray, reset: bool):
        self.x, self.y, self.reset = x, y, reset

    def __iter__(self) -> Iterator[Any]:
        return iter((self.x, self.y, self.reset))


def _pairs(ids: np.ndarray, batch_size: int, seq_len: int) -> int:
    """The number of (input, target) pairs in ``ids``, checked to hold one window of ``seq_len``."""
    if seq_len < 1 or batch_size < 1:
        raise DataError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    n = len(ids) - 1
    if n < seq_len:
        raise DataError(f"text of {len(ids)} characters is shorter than one window ({seq_len} + 1)")
    return n


def _check_kind(saved: dict[str, Any], kind: str) -> None:
    if saved.get("kind") != kind:
        raise DataError(f"saved data position is for {saved.get('kind')!r} batching, this run uses {kind!r}")


class StreamBatcher:
    """Truncated-BPTT batches: B contiguous streams of the text, read T characters at a time.

    Stream b is ``ids[b*L : (b+1)*L + 1]`` with L = (N - 1) // B, so row b of consecutive batches
    continues where it stopped and the carried state is the right context.  After the last whole
    window the epoch wraps and the state is reset (the streams jump back to their starts).  When the
    text holds fewer than B windows, fewer streams are used (``self.batch_size`` says how many).
    """

    kind = "stream"

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        n = _pairs(ids, batch_size, seq_len)
        self.seq_len = seq_len
        self.batch_size = min(batch_size, n // seq_len)
        self.stream_len = n // self.batch_size
        self.windows = self.stream_len // seq_len  # per epoch
        b, length = self.batch_size, self.stream_len
        used = np.asarray(ids[: b * length + 1])
        # inputs and targets as (B, L): row b is stream b; the target is the next character
        self._x = used[:-1].reshape(b, length)
        self._y = used[1:].reshape(b, length)
        self.position = 0  # next window within the epoch
        self.epoch = 0

    def next(self) -> Batch:
        if self.position >= self.windows:
            self.position = 0
            self.epoch += 1
        batch = self._window(self.position)
        self.position += 1
        return batch

    def windows_from_start(self, count: int) -> Iterator[Batch]:
        """The first ``count`` windows of an epoch (all of them if ``count`` <= 0), position untouched."""
        count = self.windows if count <= 0 else min(count, self.windows)
        for k in range(count):
            yield self._window(k)

    def _window(self, k: int) -> Batch:
        """Window ``k`` of the epoch; the state starts from zero at the first."""
        sl = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return Batch(np.ascontiguousarray(self._x[:, sl]), np.ascontiguousarray(self._y[:, sl]), reset=k == 0)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        _check_kind(d, self.kind)
        self.position, self.epoch = int(d["position"]), int(d["epoch"])


class RandomBatcher:
    """B independent windows of T at uniformly random offsets; the state restarts every batch."""

    kind = "random"

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int):
        n = _pairs(ids, batch_size, seq_len)
        self.ids = np.asarray(ids)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.last_start = n - seq_len  # inclusive
        self.rng = np.random.default_rng(seed)
        self.drawn = 0

    def next(self) -> Batch:
        starts = self.rng.integers(0, self.last_start + 1, size=self.batch_size)
        idx = starts[:, None] + np.arange(self.seq_len)[None, :]
        self.drawn += 1
        return Batch(self.ids[idx], self.ids[idx + 1], reset=True)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rng": self.rng.bit_generator.state, "drawn": self.drawn}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        _check_kind(d, self.kind)
        self.rng.bit_generator.state = d["rng"]
        self.drawn = int(d["drawn"])


def make_batcher(kind: str, ids: np.ndarray, batch_size: int, seq_len: int, seed: int) -> StreamBatcher | RandomBatcher:
    """The batcher named by ``train.batching``: 'stream' (truncated BPTT) or 'random'."""
    if kind == "stream":
        return StreamBatcher(ids, batch_size, seq_len)
    if kind == "random":
        return RandomBatcher(ids, batch_size, seq_len, seed)
    raise DataError(f"unknown batching {kind!r}: use 'stream' or 'random'")


def eval_windows(ids: np.ndarray, known: np.ndarray, streams: int, seq_len: int) -> Iterator[tuple[Any, ...]]:
    """Every (input, target) pair of ``ids`` exactly once, as (x, y, mask) windows of B streams.

    Used to score a whole text: the text is cut into ``streams`` contiguous rows (the last padded),
    read T at a time with the state carried, so each prediction but the first of a row has context.
    ``mask`` is False on padding and on targets the vocabulary lacked (``known`` False).
    """
    n = len(ids) - 1
    if n < 1:
        return
    streams = max(1, min(streams, n))
    row = -(-n // streams)  # ceil
    width = -(-row // seq_len) * seq_len
    x = np.zeros((streams, width), dtype=np.int32)
    y = np.zeros((streams, width), dtype=np.int32)
    m = np.zeros((streams, width), dtype=bool)
    for b in range(streams):
        lo, hi = b * row, min((b + 1) * row, n)
        if lo >= hi:
            break
        k = hi - lo
        x[b, :k], y[b, :k] = ids[lo:hi], ids[lo + 1 : hi + 1]
        m[b, :k] = known[lo + 1 : hi + 1]
    for t0 in range(0, width, seq_len):
        sl = slice(t0, t0 + seq_len)
        yield x[:, sl], y[:, sl], m[:, sl]


# --- a run's data ---------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """A corpus ready for a run: the vocabulary, both parts of the split as ids, and their batchers."""

    vocab: Vocab
    train_ids: np.ndarray
    val_ids: np.ndarray
    batcher: StreamBatcher | RandomBatcher
    val_batcher: StreamBatcher
    record: dict[str, Any]  # kept in checkpoints: path, sha256, chars, unknown_char


def training_data(
    path: str | os.PathLike,
    *,
    val_fraction: float,
    batch_size: int,
    seq_len: int,
    batching: str,
    seed: int,
    vocab: Vocab | None = None,
    unknown_char: str | None = None,
    recorded: dict[str, Any] | None = None,
    note: Callable[[str], None] = print,
) -> TrainingData:
    """Read the corpus at ``path`` and cut it into training and validation ids with their batchers.

    ``vocab``: a checkpoint's vocabulary to keep (fine-tuning, resuming); characters of the text it
    lacks are refused, or read as ``unknown_char``.  Without it the vocabulary is the text's own.
    ``recorded``: the corpus record of the run being resumed; the text must be the one it describes.
    ``note`` tells the user what was adapted (characters mapped, fewer streams than asked for).
    """
    path = Path(path)
    text = load_corpus(path)
    if recorded is not None and not same_text(recorded, text):
        raise DataError(
            f"corpus {path} is not the text this run was trained on "
            f"({recorded.get('path')}, {recorded.get('chars')} characters): fine-tune instead"
        )
    unknown_count = 0
    if vocab is None:
        vocab, unknown_char = Vocab.from_text(text), None
    else:
        missing = vocab.unknown(text)
        unknown_count = sum(missing.values())
        if missing and unknown_char is None:
            raise DataError(
                f"corpus {path} has {unknown_count} character(s) outside the checkpoint's "
                f"vocabulary: {describe_chars(missing)}; pass --unknown-char C to map them to C"
            )
        if missing:
            note(
                f"note: {unknown_count} character(s) outside the vocabulary mapped to {unknown_char!r}: "
                f"{describe_chars(missing)}"
            )
    ids = vocab.encode(text, unknown=unknown_char, what=str(path))
    train_text, _ = split_text(text, val_fraction)
    cut = len(train_text)
    train_ids, val_ids = ids[:cut], ids[cut:]
    if len(train_ids) < seq_len + 1:
        raise DataError(
            f"corpus {path} is too short: its training part has {len(train_ids)} characters, "
            f"one window needs train.seq_len + 1 = {seq_len + 1} (use a longer text or a smaller train.seq_len)"
        )
    batcher = make_batcher(batching, train_ids, batch_size, seq_len, seed)
    if batcher.batch_size < batch_size:
        note(
            f"note: the training text holds only {batcher.batch_size} windows of {seq_len}: "
            f"using {batcher.batch_size} streams instead of train.batch_size = {batch_size}"
        )
    record = {
        "path": str(path.resolve()),
        "sha256": text_sha256(text),
        "chars": len(text),
        "unknown_char": unknown_char if unknown_count else None,
    }
    val_batcher = StreamBatcher(val_ids, batch_size, min(seq_len, len(val_ids) - 1))
    return TrainingData(vocab, train_ids, val_ids, batcher, val_batcher, record)
