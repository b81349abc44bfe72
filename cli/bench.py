"""``tinygraph bench``: the CharLM training step timed against PyTorch in the same run (the ``bench`` package).

This module only reads the options, sets the device once and prints the report; a request the
benchmark cannot run raises :class:`bench.BenchError`, which ``cli.main`` prints as one line (exit 2).
``--nproc N`` times data-parallel training instead: N ranks against one process (``bench.scaling``).
``--quality --minutes 5,10,30`` trains the config and torch's nn.LSTM for those budgets and compares
their validation loss against wall-clock (``bench.quality``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bench
import tinygraph as tg
from cli.options import at_least, writable_file
from models import cells
from tinygraph import compiled


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated sizes: S (1x128, batch 32, seq 50), M (2x256, emb 64, batch 32, seq 100), "
        "L (2x512, emb 128, batch 64, seq 100), XL (2x1024, emb 256, batch 128, seq 100); "
        "default S,M,L (and XL with --device gpu)",
    )
    parser.add_argument(
        "--cells",
        default=None,
        help=f"comma-separated: lstm,gru,rnn,cifg; default {bench.DEFAULT_CELLS} (lstm with --nproc)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of a table")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per contestant (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default %(default)s)")
    parser.add_argument("--corpus", default=None, help="UTF-8 text to train on (default: data/shakespeare.txt if "
                        "prepared, else a generated text)")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="NumPy+CPU torch, or CuPy+CUDA torch")
    parser.add_argument(
        "--no-primitive",
        dest="primitive",
        action="store_false",
        help="skip the primitive-op cells (fused=False) that are otherwise timed on config M",
    )
    parser.add_argument(
        "--gate-math",
        choices=("numba", "numpy"),
        default=None,
        help="the fused cells' CPU gate math and the optimizer's update: numba (compiled; the default where "
        "installed) or numpy (the reference)",
    )
    parser.add_argument("--profile", metavar="FILE", help="cProfile the timed tinygraph steps; write the top to FILE")
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="time data-parallel training instead: N ranks x 1 BLAS thread against 1 process x N threads and "
        "1 x 1, with the scaling efficiency and the bytes all-reduced per step (needs the dist extra)",
    )
    parser.add_argument("--oversubscribe", action="store_true", help="allow --nproc above the number of cores")
    parser.add_argument(
        "--quality",
        action="store_true",
        help="compare learning instead: the config and torch's nn.LSTM, trained for the --minutes budgets on "
        "--corpus; writes OUT/quality.jsonl, quality.txt and quality.svg",
    )
    parser.add_argument(
        "--minutes",
        default="4",
        metavar="M[,M...]",
        help="--quality: wall-clock budgets, e.g. 5,10,30; tinygraph trains once per budget, torch once for the "
        "longest, scored at each (default %(default)s)",
    )
    parser.add_argument("--config", default=None, help="--quality: tinygraph's TOML config (default: the defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="--quality: a key")
    parser.add_argument(
        "--torch-config",
        default=None,
        metavar="FILE",
        help="--quality: torch's recipe as a TOML config (size, batches, rate, clip; default: tinygraph's; "
        "configs/torch_peer.toml is the published one)",
    )
    parser.add_argument(
        "--torch-log",
        default=None,
        metavar="FILE",
        help="--quality: read torch's curve from an earlier run's quality.jsonl instead of training torch",
    )
    parser.add_argument("--only", choices=("tinygraph", "torch"), default=None, help="--quality: run one side only")
    parser.add_argument("--out", default="runs/quality", help="--quality: the directory written (default %(default)s)")
    parser.add_argument("--gemm-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pause", type=float, default=bench.PAUSE_S, help=argparse.SUPPRESS)  # tests: 0


def run(args: argparse.Namespace) -> int:
    if args.gemm_size is not None:
        at_least("--gemm-size", args.gemm_size, 1)
    at_least("--pause", args.pause, 0)
    if args.profile is not None:
        writable_file("--profile", Path(args.profile), makes_parents=False)
    options = bench.Options(
        configs=args.configs,
        cells=args.cells or ("lstm" if args.nproc is not None else bench.DEFAULT_CELLS),
        repeats=args.repeats,
        warmup=args.warmup,
        corpus=args.corpus,
        device=args.device,
        primitive=args.primitive,
        profile=args.profile,
        gemm_size=args.gemm_size,
        pause=args.pause,
    )
    if args.quality:
        return _quality(args)
    if args.nproc is not None:
        return _scaling(args, options)
    if args.gate_math is not None:
        cells.set_gate_math(args.gate_math)  # GateMathError (one line) where numba is missing
        compiled.set_enabled(args.gate_math == "numba")  # Adam's update and the W_hh transpose alike
    previous_device = tg.get_device()
    tg.set_device(args.device)  # DeviceError (a TinygraphError) when the GPU is asked for but missing
    try:
        report = bench.run_benchmark(options, progress=_progress)
    finally:
        tg.set_device(previous_device)
    if args.json:
        print(bench.to_json(report))
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        print(bench.format_table(report))
    return 0


def _scaling(args: argparse.Namespace, options: bench.Options) -> int:
    from bench import scaling
    from charlm.distributed import NCCL_MISSING

    if args.device != "cpu":
        raise bench.BenchError(NCCL_MISSING)
    report = scaling.run_scaling(
        options.config_names,
        options.cell_names,
        args.nproc,
        repeats=options.repeats,
        warmup=options.warmup,
        corpus=options.corpus,
        oversubscribe=args.oversubscribe,
        progress=_progress,
    )
    print(scaling.scaling_json(report) if args.json else scaling.format_scaling(report))
    return 0


def _quality(args: argparse.Namespace) -> int:
    from bench import quality
    from bench.corpus import DEFAULT_CORPUS
    from charlm import config as cfg

    corpus = Path(args.corpus) if args.corpus else DEFAULT_CORPUS
    if not corpus.is_file():
        raise bench.BenchError(f"--quality needs a text: --corpus FILE ({corpus} is not there)")
    minutes = quality.parse_minutes(args.minutes)
    config = cfg.resolve(args.config, args.set)
    torch_config = cfg.resolve(args.torch_config) if args.torch_config is not None else None
    report = quality.run_quality(
        config,
        corpus,
        Path(args.out),
        minutes,
        torch_config=torch_config,
        torch_log=args.torch_log,
        sides=quality.SIDES if args.only is None else (args.only,),
        progress=_progress,
    )
    print(quality.format_table(report), end="")
    print("wrote " + ", ".join(str(p) for p in report.files))
    return 0


def _progress(case: str) -> None:
    print(f"bench: {case} ...", file=sys.stderr, flush=True)
