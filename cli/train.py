"""``tinygraph train``: train a character language model on a text file (what ``make train`` runs).

Also what ``tinygraph finetune`` shares with it: the options that make a run's config (handed to
:func:`charlm.config.resolve`), resuming the run in ``--out``, the loss plot redrawn at each
evaluation, and running a :class:`charlm.trainer.Trainer`, alone or as one rank of a data-parallel
job (``--nproc N``, or started by ``mpiexec``/``srun``: :mod:`cli.parallel`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from charlm import config as cfg
from charlm.checkpoint import read_checkpoint
from charlm.distributed import Comm
from charlm.run import RunDir, RunError
from charlm.trainer import Trainer
from cli import parallel
from cli.callbacks import run_with_eval_callbacks

DEFAULT_CORPUS = Path("data") / "shakespeare.txt"
DEFAULT_OUT = Path("runs") / "default"


def add_common_arguments(parser: argparse.ArgumentParser, default_out: Path) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE.toml", help="TOML config: [model] and [train]")
    parser.add_argument("--out", type=Path, default=default_out, help=f"run directory (default: {default_out})")
    parser.add_argument("--steps", type=int, metavar="N", help="total steps (train.steps); a resumed run stops there")
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="evaluate, save and stop after this many seconds (this invocation only: not inherited by --resume)",
    )
    parser.add_argument("--device", choices=("cpu", "gpu"), help="train.device (default: cpu)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    parser.add_argument("--force", action="store_true", help="start over in an --out that already holds a run")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, parsed as TOML (repeatable): --set train.seq_len=100",
    )
    parallel.add_arguments(parser)  # --nproc, --oversubscribe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus",
        type=Path,
        help=f"UTF-8 text file (default: {DEFAULT_CORPUS}; on --resume, the run's own corpus)",
    )
    add_common_arguments(parser, DEFAULT_OUT)


def shortcuts(args: argparse.Namespace) -> dict[str, Any]:
    """``--steps``, ``--time-budget`` and ``--device``: [train] keys with options of their own."""
    return {"steps": args.steps, "time_budget": args.time_budget, "device": args.device}


def plot_losses(run: RunDir, record: dict[str, Any]) -> None:
    """Redraw ``loss.svg`` and ``loss.png`` of the run from its metrics (the trainer's ``on_eval``)."""
    from viz.loss_plot import plot_losses as draw

    draw(run.metrics(), run.path / "loss", title=str(run.path))


def run_trainer(trainer: Trainer) -> int:
    """Run a trainer; the writing process (rank 0 of a job) draws the loss plot at each evaluation."""
    if not trainer.is_root:
        return trainer.run()
    return run_with_eval_callbacks(trainer, plot_losses)  # + probe, samples, report.html


def resumed(args: argparse.Namespace, comm: Comm | None, **kwargs: Any) -> Trainer:
    """The trainer that continues the run in ``--out`` from its ``last.npz``, with its own config and corpus."""
    ck = read_checkpoint(RunDir(args.out).last_checkpoint())
    config = cfg.resolve(args.config, args.overrides, shortcuts(args), checkpoint=ck.config, resume=True)
    corpus = args.corpus or Path(ck.meta.get("corpus", {}).get("path", ""))
    return Trainer(config, corpus, args.out, resume=ck, force=args.force, comm=comm, **kwargs)


def build(args: argparse.Namespace, comm: Comm | None) -> Trainer:
    if args.resume:
        return resumed(args, comm)
    config = cfg.resolve(args.config, args.overrides, shortcuts(args))
    corpus = args.corpus or DEFAULT_CORPUS
    if args.corpus is None and not corpus.exists():
        raise RunError(f"default corpus {corpus} is missing: run `make train` (it fetches it) or pass --corpus PATH")
    return Trainer(config, corpus, args.out, force=args.force, comm=comm)


def run(args: argparse.Namespace) -> int:
    return parallel.run_command(args, "train", build, run_trainer)
