"""The benchmark's text: a corpus (or a generated stand-in), mapped to 65 symbols and cut into batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.cases import VOCAB
from bench.errors import BenchError

MAX_CORPUS_CHARS = 2_000_000  # enough text for any config; spares mapping a huge file
BATCHES = 4  # distinct batches cycled through, so no step sees a cache-warm repeat of the last one

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = Path("data") / "shakespeare.txt"


def generated_text(n_chars: int, seed: int = 0) -> str:
    """A deterministic play-like text (speakers, verse lines, punctuation) for when no corpus is prepared.

    Its character statistics are close enough to English for a benchmark: the step's cost does not
    depend on the text, only a realistic loss at the start is wanted.
    """
    rng = np.random.default_rng(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "th", "w", "y", "st", "br", "ch"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai", "y"]
    codas = ["", "", "n", "r", "s", "t", "d", "ll", "ng", "th", "st", "ck"]

    def word() -> str:
        return "".join(
            onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] + codas[rng.integers(len(codas))]
            for _ in range(1 + rng.integers(3) // 2 + rng.integers(2) * rng.integers(2))
        )

    speakers = [word().upper() for _ in range(12)]
    pieces: list[str] = []
    size = 0
    while size < n_chars:
        speech = [speakers[rng.integers(len(speakers))] + ":\n"]
        for _ in range(1 + rng.integers(5)):
            words = [word() for _ in range(4 + rng.integers(7))]
            words[0] = words[0].capitalize()
            for i in range(1, len(words)):
                if rng.random() < 0.08:
                    words[i - 1] += ",;'"[rng.integers(3)] if rng.random() < 0.9 else "-"
            speech.append(" ".join(words) + ".,!?;:"[rng.integers(6)] + "\n")
        speech.append("\n")
        piece = "".join(speech)
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)[:n_chars]


def load_corpus(path: str | None) -> tuple[str, str]:
    """(text, where it came from): ``path``; else data/shakespeare.txt when prepared; else generated."""
    if path is None:
        for candidate in (DEFAULT_CORPUS, ROOT / DEFAULT_CORPUS):
            if candidate.is_file():
                path = str(candidate)
                break
        else:
            return generated_text(400_000), "generated text (prepare data/shakespeare.txt or pass --corpus)"
    from charlm.corpus import DataError  # the trainer's checks: missing, empty, binary
    from charlm.corpus import load_corpus as read_text

    try:
        text = read_text(path)[:MAX_CORPUS_CHARS]
    except DataError as exc:
        raise BenchError(str(exc)) from exc
    return text, str(path)


def text_to_ids(text: str, vocab: int = VOCAB) -> np.ndarray:
    """Character ids < ``vocab``: the vocab-1 most frequent characters get their own id, the rest share the last."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    uniq, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    if len(uniq) <= vocab:
        return inverse.astype(np.int64)
    order = np.lexsort((uniq, -counts))  # most frequent first, ties by code point
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return np.minimum(rank, vocab - 1)[inverse]


def make_batches(ids: np.ndarray, batch: int, seq: int, count: int, seed: int = 0) -> list[tuple[Any, Any]]:
    """``count`` (x, y) pairs of (batch, seq) int64 windows at random offsets; y is x shifted by one."""
    if len(ids) < seq + 2:  # a short corpus is repeated: the benchmark times the step, not the text
        ids = np.tile(ids, (seq + 2) // len(ids) + 1)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - seq - 1, size=(count, batch))
    windows = ids[starts[..., None] + np.arange(seq + 1)]
    return [(np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])) for w in windows]
