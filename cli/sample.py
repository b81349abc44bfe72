"""``tinygraph sample``: generate text from a checkpoint (a file, or a run directory's best.npz)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.options import at_least, positive_finite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file or run directory")
    parser.add_argument("--prime", help="text to start from, printed before the sample (default: a line break)")
    parser.add_argument("--length", type=int, default=500, metavar="N", help="characters to generate (default 500)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T", help="> 0; lower is more conservative")
    parser.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely characters only")
    parser.add_argument("--seed", type=int, metavar="S", help="random seed (default: a fresh one each time)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")


def run(args: argparse.Namespace) -> int:
    import tinygraph as tg
    from charlm.checkpoint import read_checkpoint, resolve_checkpoint, restore_model
    from charlm.sample import default_prime, generate

    at_least("--length", args.length, 0)
    positive_finite("--temperature", args.temperature)
    if args.top_k is not None:
        at_least("--top-k", args.top_k, 1)
    if args.seed is not None:
        at_least("--seed", args.seed, 0)
    tg.set_device(args.device)
    ck = read_checkpoint(resolve_checkpoint(args.checkpoint))
    vocab = ck.vocab
    # an implicit start is the beginning of a line, not printed
    prime, shown = (args.prime, args.prime) if args.prime else (default_prime(vocab), "")
    vocab.encode(prime, what="the prime text")  # refuse unknown characters before building anything
    model = restore_model(ck)
    text = generate(model, vocab, prime, args.length, temperature=args.temperature, top_k=args.top_k, rng=args.seed)
    sys.stdout.write(shown + text + ("" if text.endswith("\n") else "\n"))
    return 0
