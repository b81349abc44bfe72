"""``tinygraph memory-task``: train a recurrent cell on the adding problem or the copy task.

One cell at one length prints a line per evaluation, then the steps it took to solve the task (or
that it did not within ``--steps``) and the final held-out error.  Comma-separated lists of cells
and lengths train every pair on the same budget and print a table of steps to solve and final
errors; ``--plot FILE.svg`` draws the error against the length.  ``tasks.memory`` says what each
task is and when it counts as solved.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

# the --cell list of `tinygraph gradflow`: the same names, the same message
from cli.options import OptionError, at_least, between, cell_list, positive_finite, writable_file

MAX_LENGTH = 10_000


def _lengths(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"lengths are comma-separated integers, e.g. 10,20,50; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"no length in {text!r}")
    return list(dict.fromkeys(values))


def _forget_bias(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'none', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=("adding", "copy"), default="adding", help="the task (default adding)")
    parser.add_argument(
        "--cell", type=cell_list, default=["lstm"], metavar="LIST", help="rnn, lstm, gru, cifg or a list (default lstm)"
    )
    parser.add_argument(
        "--length", type=_lengths, default=[50], metavar="LIST", help="sequence length T, or a list (default 50)"
    )
    parser.add_argument("--steps", type=int, default=2000, metavar="N", help="training steps at most (default 2000)")
    parser.add_argument("--hidden-size", type=int, default=64, metavar="H", help="recurrent units (default 64)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B", help="sequences per step (default 32)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate (default 0.01)")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping (default 1.0)")
    parser.add_argument(
        "--eval-every", type=int, default=50, metavar="N", help="evaluate on held-out sequences every N steps"
    )
    parser.add_argument(
        "--forget-bias",
        type=_forget_bias,
        default=1.0,
        metavar="B",
        help="the LSTM's initial forget-gate bias (default 1.0; 'none' keeps PyTorch's initialisation)",
    )
    parser.add_argument("--symbols", type=int, default=8, metavar="K", help="copy: the alphabet (default 8)")
    parser.add_argument("--span", type=int, default=3, metavar="N", help="copy: symbols to recall (default 3)")
    parser.add_argument(
        "--keep-going", action="store_true", help="train all --steps even once solved (default: stop when solved)"
    )
    parser.add_argument("--plot", type=Path, metavar="FILE.svg", help="draw the final error against the length")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="weights and data (default 0)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")


def check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range values with one line."""
    between("--steps", args.steps, 1, 1_000_000)
    between("--hidden-size", args.hidden_size, 1, 4096)
    between("--batch-size", args.batch_size, 1, 4096)
    between("--eval-every", args.eval_every, 1, 1_000_000)
    between("--symbols", args.symbols, 2, 1000)
    between("--span", args.span, 1, 1000)
    at_least("--seed", args.seed, 0)
    positive_finite("--lr", args.lr)
    positive_finite("--clip", args.clip)
    if args.forget_bias is not None and not math.isfinite(args.forget_bias):
        raise OptionError(f"--forget-bias must be a finite number or 'none', got {args.forget_bias}")
    shortest = 2 * args.span + 1 if args.task == "copy" else 2
    why = f" (2 * --span + 1 for the copy task with --span {args.span})" if args.task == "copy" else ""
    for length in args.length:
        if not shortest <= length <= MAX_LENGTH:
            raise OptionError(f"--length must be between {shortest}{why} and {MAX_LENGTH}, got {length}")
    if args.plot is not None:
        if args.plot.suffix.lower() not in (".svg", ".png"):
            raise OptionError(f"--plot must name an .svg or .png file, got {args.plot}")
        writable_file("--plot", args.plot, makes_parents=False)


def run(args: argparse.Namespace) -> int:
    import tasks
    import tinygraph as tg

    check_args(args)
    tg.set_device(args.device)
    options = {"symbols": args.symbols, "span": args.span} if args.task == "copy" else {}
    single = len(args.cell) == 1 and len(args.length) == 1
    train = {
        "hidden": args.hidden_size,
        "batch": args.batch_size,
        "steps": args.steps,
        "lr": args.lr,
        "clip": args.clip,
        "eval_every": args.eval_every,
        "seed": args.seed,
        "stop_when_solved": not args.keep_going,
        "forget_bias": args.forget_bias,
    }
    first = tasks.make_task(args.task, args.length[0], **options)
    print(
        f"{args.task}: {first.metric} on held-out sequences; a net without memory scores {first.baseline:.4f}, "
        f"solved below {first.threshold}"
    )
    if single:
        metric = first.metric

        def progress(step: int, error: float) -> None:
            print(f"step {step:6d}  {metric} {error:.4f}", flush=True)

        result = tasks.train(first, args.cell[0], on_eval=progress, **train)
        steps_to_solve = result.solved_at if result.solved else f"not solved in {result.steps}"
        print(f"steps to solve: {steps_to_solve}")
        print(f"final {result.metric}: {result.final_error:.4f} ({result.seconds:.1f} s)")
        results = [result]
    else:
        results = tasks.compare(
            args.task,
            args.cell,
            args.length,
            on_result=lambda r: print(f"{r.summary()} ({r.seconds:.1f} s)", flush=True),
            task_options=options,
            **train,
        )
        print(tasks.table(results))
    if args.plot is not None:
        print(f"wrote {tasks.plot_by_length(results, args.plot)}")
    return 0
