"""Scoring a text with a trained character model (nats/char, bits/char, perplexity) and sampling from it.

:func:`score_text` reads the whole text once: it is cut into a few contiguous rows read window by
window with the recurrent state carried, so every prediction but the first of a row has its
context, and no graph is built.  Characters the vocabulary lacks are counted and left out of the
score: as targets they are masked; as inputs (the model must read *something*) they are replaced
by a space, or by the vocabulary's first character when it has no space.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import tinygraph as tg
from models.data import DataError, Vocab, eval_windows
from tinygraph import backend


@dataclass
class Score:
    loss: float  # mean nats per scored character
    chars: int  # characters scored (targets in the vocabulary)
    unknown_chars: int  # characters outside the vocabulary, left out
    unknown: Counter[str] = field(default_factory=Counter)

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf

    def as_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "bpc": self.bpc,
            "perplexity": self.perplexity,
            "chars": self.chars,
            "unknown_chars": self.unknown_chars,
        }


def stand_in_id(vocab: Vocab) -> int:
    return vocab.index.get(" ", 0)


def score_text(model: Any, vocab: Vocab, text: str, streams: int = 32, seq_len: int = 128) -> Score:
    """Score every character of ``text`` after the first, given the ones before it."""
    ids, known = vocab.encode_masked(text, stand_in=stand_in_id(vocab))
    unknown = vocab.unknown(text)
    # the first character is only ever read, never predicted: it is not scored, known or not
    scorable = int(known[1:].sum())
    if scorable == 0:
        raise DataError(
            "nothing to score: the text needs at least two characters and one, after the first, in the vocabulary"
        )
    total = 0.0
    model.eval()
    with tg.no_grad():
        state = None
        for x, y, mask in eval_windows(ids, known, streams, seq_len):
            logits, state = model(backend.to_device(x), state)
            z = logits.data
            xp = backend.get_array_module(z)
            # log-softmax by hand: the per-character losses are needed, masked, not their mean
            z = z - z.max(axis=-1, keepdims=True)
            logp = z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))
            yy = xp.asarray(y)[..., None]
            nll = -xp.take_along_axis(logp, yy, axis=-1)[..., 0]
            total += float((nll.astype(xp.float64) * xp.asarray(mask)).sum())
    return Score(total / scorable, scorable, sum(unknown.values()), unknown)


def generate(
    model: Any,
    vocab: Vocab,
    prime: str,
    length: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> str:
    """``length`` characters following ``prime`` (which must be in the vocabulary; not repeated)."""
    prime_ids = vocab.encode(prime, what="the prime text")
    model.eval()
    rng = np.random.default_rng(seed)
    return vocab.decode(sample_ids(model, prime_ids, length, temperature=temperature, top_k=top_k, rng=rng))


def sample_ids(model: Any, prime_ids: Any, length: int, **kw: Any) -> list[int]:
    """The ``length`` ids the model samples after ``prime_ids`` (the prime itself left out)."""
    ids = list(model.sample(prime_ids, length, **kw))
    if len(ids) == len(prime_ids) + length:  # a sampler that returns the prime too
        ids = ids[len(prime_ids) :]
    return ids
