"""Sampling text from a character model: a prime, a temperature, top-k, a seed or a generator."""

from __future__ import annotations

from typing import Any

import numpy as np

from charlm.corpus import Vocab


def default_prime(vocab: Vocab) -> str:
    """What a sample starts from when no prime is given: the beginning of a line, if the vocabulary
    has a line break (its first character otherwise)."""
    return "\n" if "\n" in vocab else vocab.chars[0]


def generate(
    model: Any,
    vocab: Vocab,
    prime: str,
    length: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    rng: np.random.Generator | int | None = None,
) -> str:
    """The ``length`` characters the model writes after ``prime`` (which must be in the vocabulary; not repeated).

    ``rng``: a generator, or a seed for a new one (None: a fresh seed each time).  Sampling builds no
    graph and runs without dropout.
    """
    prime_ids = vocab.encode(prime, what="the prime text")
    ids = model.sample(prime_ids, length, temperature=temperature, top_k=top_k, rng=np.random.default_rng(rng))
    return vocab.decode(ids)
