"""``tinygraph graph``: draw the unrolled BPTT graph of a small character model as SVG.

A tiny character language model (embedding, the chosen recurrent cell, a dense layer to the
vocabulary, cross-entropy) runs one real forward and backward pass on random ids with the graph
kept; ``viz.render_graph`` then draws that graph with the gradient that reached every node.
``--level op`` builds the cells from primitive ops (every gate visible), ``--level cell`` from
fused step ops (one box per cell per step, for long unrolls).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cli.options import OptionError, at_least, between, writable_file
from models.recurrent import CELLS

# sizes small enough for every number on the drawing to stay legible
VOCAB, EMBED, HIDDEN, BATCH = 5, 3, 4, 2
# beyond these the drawing is too large to read and dot takes many seconds
MAX_STEPS = {"op": 50, "cell": 200}
MAX_LAYERS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cell", choices=tuple(CELLS), default="lstm", help="recurrent cell (default lstm)")
    parser.add_argument("--steps", type=int, default=4, metavar="T", help="time steps to unroll (default 4)")
    parser.add_argument("--layers", type=int, default=1, metavar="L", help="stacked recurrent layers (default 1)")
    parser.add_argument(
        "--level",
        choices=("op", "cell"),
        default="op",
        help="op: every primitive op of the cell; cell: one box per cell per step (default op)",
    )
    parser.add_argument("--out", type=Path, metavar="FILE.svg", help="where to write (default bptt_CELL.svg)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="weights and input ids (default 0)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")


def check_args(args: argparse.Namespace) -> Path:
    """Refuse out-of-range values with one line; returns the output path."""
    if not 1 <= args.steps <= MAX_STEPS[args.level]:
        hint = " (use --level cell for long unrolls)" if args.level == "op" else ""
        raise OptionError(
            f"--steps must be between 1 and {MAX_STEPS[args.level]} at --level {args.level}{hint}, got {args.steps}"
        )
    between("--layers", args.layers, 1, MAX_LAYERS)
    at_least("--seed", args.seed, 0)
    out = args.out if args.out is not None else Path(f"bptt_{args.cell}.svg")
    if out.suffix.lower() != ".svg":
        raise OptionError(f"--out must name an .svg file, got {out}")
    writable_file("--out", out)
    return out


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import models
    import tinygraph as tg
    from tinygraph.atomic import write_atomic
    from viz.bptt_graph import build_drawing, dot_to_svg, drawing_to_dot

    out = check_args(args)
    tg.set_device(args.device)
    tg.manual_seed(args.seed)
    spec = [
        {"type": "Embedding", "dim": EMBED},
        {"type": CELLS[args.cell].__name__, "hidden_size": HIDDEN, "num_layers": args.layers},
        {"type": "Dense", "size": "vocab"},
    ]
    model = models.CharLM.from_layers(VOCAB, spec, fused=args.level == "cell")
    ids = np.random.default_rng(args.seed).integers(0, VOCAB, size=(BATCH, args.steps + 1))
    start = time.perf_counter()
    loss, _ = model.loss(ids[:, :-1], ids[:, 1:])
    loss.backward(keep_graph=True)
    layers = f"{args.layers} layer{'s' if args.layers > 1 else ''}"
    title = (
        f"{CELLS[args.cell].__name__}, {layers}, unrolled over {args.steps} steps ({args.level} level): "
        f"one forward and backward pass of a character model (batch {BATCH}, vocabulary {VOCAB}, "
        f"hidden size {HIDDEN}, seed {args.seed})"
    )
    drawing = build_drawing(loss, args.level)
    svg = dot_to_svg(drawing_to_dot(drawing, title))
    write_atomic(out, svg)
    print(
        f"wrote {out}: {len(drawing.boxes)} boxes in {len(drawing.steps)} steps, loss {loss.item():.4f}, "
        f"{time.perf_counter() - start:.2f} s"
    )
    return 0
