"""``tinygraph sample``: generate text from a checkpoint (a file, or a run directory's best.npz)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.data import DataError


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
    from models.evaluate import generate
    from models.trainer import read_checkpoint, resolve_checkpoint, restore_model

    if args.length < 0:
        raise DataError(f"--length must be >= 0, got {args.length}")
    if not args.temperature > 0 or args.temperature == float("inf"):
        raise DataError(f"--temperature must be a finite number > 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise DataError(f"--top-k must be >= 1, got {args.top_k}")
    if args.seed is not None and args.seed < 0:
        raise DataError(f"--seed must be >= 0, got {args.seed}")
    tg.set_device(args.device)
    ck = read_checkpoint(resolve_checkpoint(args.checkpoint))
    vocab = ck.vocab
    if args.prime:
        prime, shown = args.prime, args.prime
    else:  # an implicit start: the beginning of a line, not printed
        prime, shown = ("\n" if "\n" in vocab else vocab.chars[0]), ""
    vocab.encode(prime, what="the prime text")  # refuse unknown characters before building anything
    model = restore_model(ck)
    text = generate(model, vocab, prime, args.length, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    sys.stdout.write(shown + text + ("" if text.endswith("\n") else "\n"))
    return 0
