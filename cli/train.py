"""``tinygraph train``: train a character language model on a text file (what ``make train`` runs).

Also the shared option handling of ``tinygraph finetune``: both build one config from the defaults
(or a checkpoint's), a ``--config`` TOML file, ``--set section.key=value`` overrides and the
shortcut options, then hand it to :class:`models.trainer.Trainer`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

from models import config as cfg
from models.trainer import EXIT_INTERRUPTED, RunCheckpoint, RunError, read_checkpoint

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus",
        type=Path,
        help=f"UTF-8 text file (default: {DEFAULT_CORPUS}; on --resume, the run's own corpus)",
    )
    add_common_arguments(parser, DEFAULT_OUT)


def apply_shortcuts(config: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``--steps``, ``--time-budget`` and ``--device`` are [train] keys too, checked the same way."""
    for key, value in (("steps", args.steps), ("time_budget", args.time_budget), ("device", args.device)):
        if value is not None:
            config["train"][key] = cfg.check_value("train", key, value, f"--{key.replace('_', '-')}")
    return config


def resume_checkpoint(out: Path) -> RunCheckpoint:
    if not out.is_dir():
        raise RunError(f"nothing to resume: {out} is not a run directory")
    if not (out / "last.npz").exists():
        raise RunError(f"nothing to resume in {out}: it has no last.npz")
    return read_checkpoint(out / "last.npz")


def keep_model(config: dict[str, dict[str, Any]], original: dict[str, dict[str, Any]], why: str) -> None:
    # model.fused may change: both forms of a cell have the same weights
    if config["model"]["layers"] != original["model"]["layers"]:
        raise cfg.ConfigError(f"{why} keeps the checkpoint's model.layers: leave them out of --config and --set")


def resumed_config(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], RunCheckpoint]:
    """The resumed run's config, with --set and the shortcuts applied (the model cannot change)."""
    if args.config is not None:
        raise cfg.ConfigError(
            "--resume continues with the run's own config: drop --config (change [train] keys with --set)"
        )
    ck = resume_checkpoint(args.out)
    base = copy.deepcopy(ck.config)
    base["train"]["time_budget"] = 0.0  # a budget is for one invocation: give it again to stop this one
    config = apply_shortcuts(cfg.apply_overrides(base, args.overrides), args)
    keep_model(config, ck.config, "--resume")
    return config, ck


def run_trainer(make_trainer: Any) -> int:
    """Build and run a trainer; a Ctrl-C outside the loop's own handling still ends without a traceback."""
    try:
        return make_trainer().run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(args: argparse.Namespace) -> int:
    from models.trainer import Trainer

    if args.resume:
        config, ck = resumed_config(args)
        corpus = args.corpus or Path(ck.meta.get("corpus", {}).get("path", ""))
        return run_trainer(lambda: Trainer(config, corpus, args.out, resume=ck, force=args.force))
    config = cfg.load_file(args.config) if args.config is not None else cfg.defaults()
    config = apply_shortcuts(cfg.apply_overrides(config, args.overrides), args)
    corpus = args.corpus or DEFAULT_CORPUS
    if args.corpus is None and not corpus.exists():
        raise RunError(f"default corpus {corpus} is missing: run `make train` (it fetches it) or pass --corpus PATH")
    return run_trainer(lambda: Trainer(config, corpus, args.out, force=args.force))
