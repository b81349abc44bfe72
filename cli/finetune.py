"""``tinygraph finetune``: continue training a checkpoint on a new text, in a new run directory.

The checkpoint's vocabulary and layers are kept (characters of the new text outside the vocabulary
are refused, or mapped with ``--unknown-char C`` to C, a character the vocabulary has).  Its
weights are the starting point; the optimizer starts fresh (its moments describe the old text's
gradients) and the step count starts from 0, so ``--steps`` counts fine-tuning steps.  The [train]
settings are the checkpoint's unless ``--config`` (its [train] section) or ``--set`` change them.
Resume an interrupted fine-tuning with ``tinygraph finetune --resume --out DIR`` (or ``train --resume``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from charlm import config as cfg
from charlm.checkpoint import read_checkpoint, resolve_checkpoint
from charlm.corpus import DataError
from charlm.distributed import Comm
from charlm.trainer import Trainer
from cli import parallel
from cli.options import OptionError, one_character
from cli.train import add_common_arguments, resumed, run_trainer, shortcuts

DEFAULT_OUT = Path("runs") / "finetune"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", type=Path, metavar="CHECKPOINT", help="checkpoint file or run dir")
    parser.add_argument("--corpus", type=Path, help="UTF-8 text file to fine-tune on")
    parser.add_argument(
        "--unknown-char",
        metavar="C",
        help="map characters the vocabulary lacks to C (a character of the vocabulary) instead of refusing",
    )
    add_common_arguments(parser, DEFAULT_OUT)


def build(args: argparse.Namespace, comm: Comm | None) -> Trainer:
    one_character("--unknown-char", args.unknown_char)
    if args.resume:
        return resumed(args, comm, unknown_char=args.unknown_char)
    if args.source is None or args.corpus is None:
        raise OptionError("finetune needs --from CHECKPOINT and --corpus PATH")
    source = read_checkpoint(resolve_checkpoint(args.source))
    if args.unknown_char is not None and args.unknown_char not in source.vocab:
        raise DataError(f"--unknown-char {args.unknown_char!r} is not in the checkpoint's vocabulary")
    config = cfg.resolve(args.config, args.overrides, shortcuts(args), checkpoint=source.config)
    return Trainer(
        config, args.corpus, args.out, source=source, force=args.force, unknown_char=args.unknown_char, comm=comm
    )


def run(args: argparse.Namespace) -> int:
    return parallel.run_command(args, "finetune", build, run_trainer)
