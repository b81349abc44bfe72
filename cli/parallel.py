"""``--nproc N``: how ``tinygraph train`` and ``finetune`` run as one process, as a job's rank, or as its launcher.

* ``--nproc N`` (N > 1): this process only launches ``mpiexec -n N`` running the same command
  without ``--nproc`` (:func:`charlm.launch.launch`) and returns the job's exit status.
* started by an MPI launcher (``mpiexec``, ``srun``, or the above): this process is one rank; the
  command's trainer is built on every rank, the ranks agree it was, then they train together
  (:func:`charlm.distributed.run_ranks`).  A rank that cannot load MPI exits with status 2 (rank 0
  says why, in one line).
* otherwise: one process, as always.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from charlm import distributed
from charlm.launch import launch
from charlm.trainer import EXIT_INTERRUPTED, Trainer

HIDDEN_FROM_RANKS = ("help", "nproc", "oversubscribe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train on N data-parallel ranks on this machine (mpiexec; needs the dist extra); "
        "the global batch is unchanged, each rank reads train.batch_size / N streams",
    )
    parser.add_argument(
        "--oversubscribe", action="store_true", help="allow --nproc above the number of cores of this machine"
    )
    parser.set_defaults(command_parser=parser)  # relaunch_argv reads the options back from it


def relaunch_argv(args: argparse.Namespace) -> list[str]:
    """The command's options as given (less ``--nproc`` and ``--oversubscribe``), for the ranks to parse again."""
    argv: list[str] = []
    for action in args.command_parser._actions:
        if not action.option_strings or action.dest in HIDDEN_FROM_RANKS:
            continue
        value = getattr(args, action.dest, action.default)
        if value is None or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true
            argv.append(flag)
        elif isinstance(value, list):  # append (--set)
            argv += [f"{flag}={v}" for v in value]
        else:
            argv.append(f"{flag}={value}")
    return argv


def run_command(
    args: argparse.Namespace,
    command: str,
    build: Callable[[argparse.Namespace, distributed.Comm | None], Trainer],
    run: Callable[[Trainer], int],
) -> int:
    """Run ``tinygraph COMMAND``: launch a job (``--nproc``), take part in one as a rank, or train alone.

    ``build(args, comm)`` makes the trainer (it must not communicate); ``run(trainer)`` trains.
    """
    if args.nproc is not None and args.nproc != 1:  # --nproc 1 is one process, no MPI needed
        return launch(command, relaunch_argv(args), args.nproc, oversubscribe=args.oversubscribe, out=args.out)
    try:
        comm = distributed.join()
    except distributed.DistributedError as exc:
        if exc.quiet:  # rank 0 says it
            return distributed.EXIT_USER_ERROR
        raise
    if comm is not None:
        return distributed.run_ranks(comm, command, lambda: build(args, comm), run)
    try:
        return run(build(args, None))
    except KeyboardInterrupt:  # a Ctrl-C outside the loop's own handling still ends without a traceback
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
