"""``tinygraph gradflow``: plot |dL/dh_t| against t for several recurrent cells, from real backward passes.

Each cell type gets a freshly initialised one-layer network (fused steps, float64 so that a
vanishing gradient is not cut off by float32's range), the same random input and the same loss
on its last output only; ``viz.gradflow`` reads dL/dh_t off the kept graph and draws one line per
cell on a log scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.options import OptionError, cell_list, writable_file
from models.recurrent import CELLS

INPUT, BATCH = 16, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cell", type=cell_list, metavar="LIST", help="e.g. rnn,lstm,gru (the default)")
    parser.add_argument(
        "--steps", type=int, metavar="T", help="time steps (default 100; with --checkpoint twice the run's seq_len)"
    )
    parser.add_argument("--hidden-size", type=int, metavar="H", help="hidden units (default 32)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="RUN",
        help="a trained run (directory: its best.npz) or checkpoint: its model beside the untrained one of its config",
    )
    parser.add_argument("--out", type=Path, default=Path("gradflow.svg"), metavar="FILE.svg", help="plot file")
    parser.add_argument(
        "--seed", type=int, metavar="S", help="weights, input and probe (default 0; with --checkpoint the run's seed)"
    )
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    import tinygraph as tg
    from viz.gradflow import geometric_rate, gradient_norms, plot_gradient_flow

    if args.seed is not None and args.seed < 0:
        raise OptionError(f"--seed must be >= 0, got {args.seed}")
    if args.checkpoint is not None:
        return run_checkpoint(args)
    args.cell = args.cell or ["rnn", "lstm", "gru"]
    args.steps = 100 if args.steps is None else args.steps
    args.hidden_size = 32 if args.hidden_size is None else args.hidden_size
    args.seed = 0 if args.seed is None else args.seed
    if not 2 <= args.steps <= 5000:
        raise OptionError(f"--steps must be between 2 and 5000, got {args.steps}")
    if not 1 <= args.hidden_size <= 4096:
        raise OptionError(f"--hidden-size must be between 1 and 4096, got {args.hidden_size}")
    check_out(args.out)
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


def check_out(out: Path) -> None:
    if out.suffix.lower() not in (".svg", ".png"):
        raise OptionError(f"--out must name an .svg or .png file, got {out}")
    writable_file("--out", out)


def run_checkpoint(args: argparse.Namespace) -> int:
    """The gradient flow of a trained model beside the untrained one of the same config.

    Both are probed as training probes them (:mod:`charlm.probe`): the loss on the last step of a
    fixed window of the run's validation text -- the window of the run's own ``probe.npz`` when it
    has one -- and |dL/dh_t| for every layer.  The untrained model is the config's, initialised
    from ``--seed`` (default the run's ``train.seed``: the weights the run started from).
    """
    import tinygraph as tg
    from charlm.checkpoint import build_model, read_checkpoint, resolve_checkpoint, restore_model
    from charlm.evaluate import validation_text
    from charlm.probe import ProbeError, load_probe, probe_window, run_probe
    from viz.gradflow import geometric_rate, plot_gradient_flow_panels

    if args.cell is not None or args.hidden_size is not None:
        raise OptionError("--cell and --hidden-size describe fresh cells: with --checkpoint the run's model is drawn")
    if args.steps is not None and not 2 <= args.steps <= 5000:
        raise OptionError(f"--steps must be between 2 and 5000, got {args.steps}")
    check_out(args.out)
    tg.set_device(args.device)
    ck = read_checkpoint(resolve_checkpoint(args.checkpoint))
    tc = ck.config["train"]
    seed = tc["seed"] if args.seed is None else args.seed
    run_dir = args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent
    try:
        recorded = load_probe(run_dir)
    except ProbeError:
        recorded = None
    if recorded is not None and args.steps in (None, recorded.window.x.shape[1]):
        window = recorded.window
    else:
        text, _ = validation_text(ck)
        unknown = (ck.meta.get("corpus") or {}).get("unknown_char")
        window = probe_window(
            ck.vocab.encode(text, unknown=unknown, what="the validation text"), tc["seq_len"], steps=args.steps
        )
    trained = run_probe(restore_model(ck), window)
    tg.manual_seed(seed)
    untrained = run_probe(build_model(ck.config, len(ck.vocab)), window)
    steps = window.x.shape[1]
    start = "the run's starting point" if seed == tc["seed"] and not ck.meta.get("finetuned_from") else f"seed {seed}"
    panels = {
        f"untrained: fresh weights ({start})": dict(zip(untrained.layers, untrained.norms)),
        f"trained: {ck.path.name}, step {ck.step}": dict(zip(trained.layers, trained.norms)),
    }
    for name, result in (("untrained", untrained), ("trained", trained)):
        for layer, norms in zip(result.layers, result.norms):
            print(
                f"{name:>9} {layer}: |dL/dh_{steps - 1}| = {norms[-1]:.3e}, |dL/dh_0| = {norms[0]:.3e}, "
                f"x{geometric_rate(norms):.3f} per step back"
            )
    title = (
        f"Gradient flow back in time, {args.checkpoint}: loss on the character after {steps} steps of the validation "
        f"text ({window.x.shape[0]} rows); training truncates BPTT at {tc['seq_len']}"
    )
    mark = steps - tc["seq_len"] if tc["seq_len"] < steps else None
    path = plot_gradient_flow_panels(panels, args.out, title, mark=mark)
    print(f"wrote {path}")
    return 0
