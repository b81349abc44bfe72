"""Evaluation of a character model: the validation loss, and a text's score in nats/char, bits/char, perplexity.

:func:`nll_sum` is the one way a loss is measured outside training: windows read one after the
other with the recurrent state carried, log-probabilities from the framework's ``log_softmax``,
no graph built.  The trainer's validation loss and :func:`score_text` both use it.

:func:`score_text` reads the whole text once: it is cut into a few contiguous rows read window by
window, so every prediction but the first of a row has its context.  Characters the vocabulary
lacks are counted and left out of the score: as targets they are masked; as inputs (the model must
read *something*) they are replaced by a space, or by the vocabulary's first character when it has
no space.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tinygraph as tg
from charlm.checkpoint import RunCheckpoint
from charlm.corpus import DataError, Vocab, eval_windows, load_corpus, same_text, split_text
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


def nll_sum(model: Any, windows: Iterable[tuple[Any, Any, Any]]) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, targets counted) over consecutive windows.

    Each window is (x, y, mask): input and target ids (B, T), and None (every target counts) or a
    boolean (B, T) array that leaves targets out.  The state starts at zero and is carried from each
    window into the next.  The model runs in eval mode (no dropout) and gets its mode back.
    """
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with tg.no_grad():
            state = None
            for x, y, mask in windows:
                logits, state = model(backend.to_device(x), state)
                logp = tg.log_softmax(logits).data
                xp = backend.get_array_module(logp)
                nll = -xp.take_along_axis(logp, xp.asarray(y)[..., None], axis=-1)[..., 0].astype(xp.float64)
                if mask is not None:
                    nll *= xp.asarray(mask)
                    count += int(mask.sum())
                else:
                    count += nll.size
                total += float(nll.sum())
    finally:
        model.train(was_training)
    return total, count


def stand_in_id(vocab: Vocab) -> int:
    return vocab.index.get(" ", 0)


def score_text(model: Any, vocab: Vocab, text: str, streams: int = 32, seq_len: int = 128) -> Score:
    """Score every character of ``text`` after the first, given the ones before it."""
    ids, known = vocab.encode_masked(text, stand_in=stand_in_id(vocab))
    unknown = vocab.unknown(text)
    # the first character is only ever read, never predicted: it is not scored, known or not
    if int(known[1:].sum()) == 0:
        raise DataError(
            "nothing to score: the text needs at least two characters and one, after the first, in the vocabulary"
        )
    total, scored = nll_sum(model, eval_windows(ids, known, streams, seq_len))
    return Score(total / scored, scored, sum(unknown.values()), unknown)


def validation_text(ck: RunCheckpoint) -> tuple[str, str]:
    """(text, what it is): the validation split of the corpus the checkpoint's run was trained on.

    Refused when the checkpoint does not record its corpus, or the file is gone or has changed.
    """
    recorded = ck.meta.get("corpus") or {}
    source = recorded.get("path")
    if not source:
        raise DataError(f"{ck.path} does not record its corpus: pass --corpus PATH")
    if not Path(source).exists():
        raise DataError(f"the run's corpus {source} is gone: pass --corpus PATH")
    full = load_corpus(source)
    # the split is only the run's validation text if the file is still the one it trained on
    if not same_text(recorded, full):
        raise DataError(f"the run's corpus {source} has changed since training: pass --corpus PATH")
    _, text = split_text(full, ck.config["train"]["val_fraction"])
    return text, f"the validation split of {source}"
