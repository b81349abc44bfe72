"""``tinygraph gradflow``: plot |dL/dh_t| against t for several recurrent cells, from real backward passes.

Each cell type gets a freshly initialised one-layer network (fused steps, float64 so that a
vanishing gradient is not cut off by float32's range), the same random input and the same loss
on its last output only; ``viz.gradflow`` reads dL/dh_t off the kept graph and draws one line per
cell on a log scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.options import OptionError
from models.recurrent import CELLS

INPUT, BATCH = 16, 4


def _cells(text: str) -> list[str]:
    names = [c.strip().lower() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in CELLS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"cells are a comma-separated list of {', '.join(CELLS)}; got {text!r}")
    return list(dict.fromkeys(names))  # drop repeats, keep the order given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cell", type=_cells, default=["rnn", "lstm", "gru"], metavar="LIST", help="e.g. rnn,lstm,gru (the default)"
    )
    parser.add_argument("--steps", type=int, default=100, metavar="T", help="time steps (default 100)")
    parser.add_argument("--hidden-size", type=int, default=32, metavar="H", help="hidden units (default 32)")
    parser.add_argument("--out", type=Path, default=Path("gradflow.svg"), metavar="FILE.svg", help="plot file")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="weights, input and probe (default 0)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import tinygraph as tg
    from viz.gradflow import geometric_rate, gradient_norms, plot_gradient_flow

    if not 2 <= args.steps <= 5000:
        raise OptionError(f"--steps must be between 2 and 5000, got {args.steps}")
    if not 1 <= args.hidden_size <= 4096:
        raise OptionError(f"--hidden-size must be between 1 and 4096, got {args.hidden_size}")
    if args.seed < 0:
        raise OptionError(f"--seed must be >= 0, got {args.seed}")
    if args.out.suffix.lower() not in (".svg", ".png"):
        raise OptionError(f"--out must name an .svg or .png file, got {args.out}")
    tg.set_device(args.device)
    rng = np.random.default_rng(args.seed)
    x = tg.tensor(rng.standard_normal((BATCH, args.steps, INPUT)))  # float64
    probe = rng.standard_normal(args.hidden_size)  # the loss: sum(h_{T-1} . probe)
    flows = {}
    for cell in args.cell:
        tg.manual_seed(args.seed)
        layer = CELLS[cell](INPUT, args.hidden_size, fused=True).astype(np.float64)
        norms = gradient_norms(layer, x, probe)
        flows[CELLS[cell].__name__] = norms
        rate = geometric_rate(norms)
        print(
            f"{CELLS[cell].__name__:>5}: |dL/dh_{args.steps - 1}| = {norms[-1]:.3e}, |dL/dh_0| = {norms[0]:.3e}, "
            f"x{rate:.3f} per step back"
        )
    title = (
        f"Gradient flow back in time: loss on the last output (t = {args.steps - 1}), "
        f"hidden size {args.hidden_size}, batch {BATCH}, seed {args.seed}"
    )
    path = plot_gradient_flow(flows, args.out, title)
    print(f"wrote {path}")
    return 0
