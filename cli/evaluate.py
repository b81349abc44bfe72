"""``tinygraph eval``: score a checkpoint in nats/char, bits/char and perplexity.

On ``--corpus PATH`` the whole file is scored; without it, the validation split of the text the
run was trained on.  Characters outside the vocabulary are counted, reported and left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file or run directory")
    parser.add_argument("--corpus", type=Path, help="score this whole file (default: the run's validation split)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (loss, bpc, perplexity, ...)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")


def run(args: argparse.Namespace) -> int:
    import tinygraph as tg
    from charlm.checkpoint import read_checkpoint, resolve_checkpoint, restore_model
    from charlm.corpus import describe_chars, load_corpus
    from charlm.evaluate import score_text, validation_text

    tg.set_device(args.device)
    ck = read_checkpoint(resolve_checkpoint(args.checkpoint))
    if args.corpus is not None:
        text, what = load_corpus(args.corpus), str(args.corpus)
    else:
        text, what = validation_text(ck)
    model = restore_model(ck)
    score = score_text(model, ck.vocab, text)
    if score.unknown_chars:
        print(
            f"note: {score.unknown_chars} character(s) outside the vocabulary left out of the score: "
            f"{describe_chars(score.unknown)}",
            file=sys.stderr,
        )
    if args.json:
        doc = {**score.as_dict(), "checkpoint": str(ck.path), "corpus": what, "step": ck.step}
        print(json.dumps(doc))
    else:
        print(
            f"{ck.path} (step {ck.step}) on {what}: {score.loss:.4f} nats/char, {score.bpc:.4f} bits/char, "
            f"perplexity {score.perplexity:.3f} over {score.chars:,} characters"
        )
    return 0
