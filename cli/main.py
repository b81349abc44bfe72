"""``tinygraph COMMAND ...``: dispatch to one command module, imported only when used.

Each command module in ``cli/`` defines ``add_arguments(parser)`` and ``run(args) -> int``.
A :class:`TinygraphError` (a user mistake) becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cli.options import CommandParser, OneLineParser
from tinygraph.errors import TinygraphError

COMMANDS = {
    "train": ("cli.train", "train a character language model on a text file"),
    "finetune": ("cli.finetune", "continue training a checkpoint on a new text"),
    "sample": ("cli.sample", "generate text from a checkpoint"),
    "eval": ("cli.evaluate", "score a checkpoint: nats/char, bits/char, perplexity"),
    "graph": ("cli.graph", "render the unrolled BPTT graph of a small model as SVG"),
    "gradflow": ("cli.gradflow", "plot the gradient norm dL/dh_t against time"),
    "memory-task": ("cli.memory_task", "train a recurrent cell on the adding problem or the copy task"),
    "report": ("cli.report", "write a run's page, report.html: training curves, samples, gradient flow, graph"),
    "bench": ("cli.bench", "time the training step against PyTorch"),
}

EXIT_USER_ERROR = 2


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    # every parsing mistake is one line, exit 2
    parser = OneLineParser(prog="tinygraph", description="tinygraph: recurrent nets as explicit graphs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except TinygraphError as exc:
        print(f"tinygraph {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
