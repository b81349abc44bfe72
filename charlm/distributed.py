"""Data-parallel training on MPI: a job's ranks, their one flat gradient all-reduce, and their failures.

A job is N processes (ranks) started by an MPI launcher: ``tinygraph train --nproc N`` (which runs
``mpiexec``, :mod:`charlm.launch`), ``mpiexec -n N [-hosts ...] tinygraph train ...`` or Slurm's
``srun``.  Every rank builds the same model and reads the same corpus; then, in every step:

* each rank takes its share of the global batch: rows ``[r*B/N, (r+1)*B/N)`` of the batch one
  process would read (:class:`ShardedBatcher`), so the data position stays the global one;
* forward and backward run on that share; the gradients land in one flat buffer that the
  parameters' ``.grad`` arrays are views of (:class:`FlatGradients`, through
  ``tinygraph.graph.set_grad_home``), followed by a few scalars: the share's loss, whether this
  rank was asked to stop (a signal), whether rank 0's time budget is spent, and for each parameter
  whether it got a gradient (one that got none on any rank is skipped by the optimizer, as in one
  process);
* one in-place ``MPI_Allreduce`` sums the buffer and each rank divides it by N: the mean gradient
  of the global batch (each share's loss is a mean over equally many characters), the global mean
  loss, and stop decisions every rank agrees on;
* every rank clips (the global norm: all hold the same gradient) and takes the same optimizer step.

Rank 0 alone evaluates (the validation loss is broadcast, so every rank's learning-rate schedule
moves alike), samples, prints and writes checkpoints; the carried recurrent state and the random
streams of all ranks are gathered into rank 0's checkpoint (:meth:`DataParallel.checkpoint_parts`),
which therefore holds the global state of a one-process run and resumes on any number of ranks.

Dropout: rank 0 draws its masks from the run's random stream (seeded by ``train.seed``), rank r > 0
from a stream seeded by ``(seed, r)``.  Masks of N ranks cannot be the masks of one process (each
draws for its own rows), so with dropout an N-rank run matches a one-process run in distribution,
not bit for bit; without dropout the weights agree to rounding.

Failures (:func:`run_ranks`): setup mistakes are gathered so that rank 0 reports them in one line
and every rank exits with status 2; an error on one rank during training prints one line naming the
rank and calls ``MPI_Abort``, which makes the launcher stop every rank.  A rank that waits in one
collective longer than ``TINYGRAPH_DIST_TIMEOUT`` seconds (a peer hangs) stops the job the same way
(:class:`Watchdog`).  The GPU path (NCCL) is not part of this build: asking for it is an error.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from charlm.corpus import Batch
from tinygraph import backend
from tinygraph import random as tg_random
from tinygraph.errors import TinygraphError
from tinygraph.graph import set_grad_home
from tinygraph.tensor import Tensor

T = TypeVar("T")

EXIT_USER_ERROR = 2
EXIT_FAILED = 1
TIMEOUT_ENV = "TINYGRAPH_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0  # torch.distributed's default collective timeout
PIDS_ENV = "TINYGRAPH_DIST_PIDS"  # a directory where each rank leaves "rank-R" holding "PID HOST"
ABORT_GRACE_S = 0.5  # see Comm.abort
PROGRESS_ENV = "TINYGRAPH_PROGRESS"  # "1": rank 0 shows its progress bar although stderr is no terminal
NCCL_MISSING = "NCCL all-reduce is not available in this build: data-parallel training runs on the CPU (--device cpu)"
# What launchers set in every process they start: MPICH and Intel MPI (hydra) and Slurm's PMI-2,
# Open MPI, PMIx (srun --mpi=pmix).  The size is read where the launcher gives it.
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class DistributedError(TinygraphError):
    """A data-parallel job that cannot run as asked.  ``quiet``: another rank reports it, this one
    only exits (so a mistake every rank makes is one line, not N)."""

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


class AgreedError(DistributedError):
    """A problem every rank finds alike (it follows from values all ranks share): rank 0 reports it."""

    every_rank = True


# --- where this process stands ------------------------------------------------------------------------


def _env_int(names: tuple[str, ...]) -> int | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def launched() -> tuple[int, int | None] | None:
    """(rank, size) as an MPI launcher told this process (size None when it did not say); None outside one."""
    rank = _env_int(RANK_VARS)
    if rank is None:
        return None
    return rank, _env_int(SIZE_VARS)


def cores() -> int:
    """The CPUs this process may run on (not the whole machine's when it is confined)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def blas_threads_per_rank(ranks_here: int) -> int:
    """BLAS threads for each of ``ranks_here`` ranks on one machine, so that ranks x threads fits its cores."""
    return max(1, cores() // max(1, ranks_here))


_thread_limit: Any = None  # threadpoolctl's limiter, kept alive for the process's life


def _limit_blas_threads(threads: int) -> None:
    """Cap NumPy's BLAS at ``threads`` unless the user chose a number in the environment."""
    global _thread_limit
    if any(os.environ.get(v) for v in BLAS_VARS):
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the dist extra installs it; without it BLAS keeps its own count
        return
    _thread_limit = threadpool_limits(limits=threads, user_api="blas")


def join() -> Comm | None:
    """This process's place in a data-parallel job, or None when it runs alone (no launcher, or 1 rank).

    Started by a launcher for N > 1 ranks without a usable MPI, it raises :class:`DistributedError`
    (rank 0 says why; the others are ``quiet``).  Loading MPI initialises it.
    """
    where = launched()
    if where is None:
        return None
    rank, size = where
    if size == 1:
        return None
    who = f"rank {rank}" + (f" of {size}" if size else "")
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(
            f"{who} was started by an MPI launcher but cannot load MPI ({exc}); "
            "install the dist extra: pip install -e '.[dist]' (mpi4py and the mpich runtime)",
            quiet=rank != 0,
        ) from exc
    world = MPI.COMM_WORLD
    if world.Get_size() == 1:
        if size is None:
            return None
        raise DistributedError(
            f"{who}: the launcher started {size} processes but MPI sees a job of 1: the mpiexec is not "
            "from the MPI that mpi4py loads (use the mpiexec installed with the dist extra, beside this python)",
            quiet=rank != 0,
        )
    comm = Comm(MPI, world)
    _limit_blas_threads(blas_threads_per_rank(comm.local_size))
    pids = os.environ.get(PIDS_ENV)
    if pids:
        Path(pids, f"rank-{comm.rank}").write_text(f"{os.getpid()} {comm.host}\n")
    return comm


class Comm:
    """The ranks of a job (MPI's COMM_WORLD) and the few collectives training needs.

    Every collective records when this rank started waiting in it, for the :class:`Watchdog`.
    """

    def __init__(self, mpi: Any, world: Any):
        self.MPI, self.world = mpi, world
        self.rank, self.size = world.Get_rank(), world.Get_size()
        node = world.Split_type(mpi.COMM_TYPE_SHARED)  # the ranks on this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.host = mpi.Get_processor_name()
        self.waiting: tuple[float, str] | None = None  # (since, in what) while inside a collective

    def __repr__(self) -> str:
        return f"Comm(rank {self.rank} of {self.size}, {self.host})"

    @contextmanager
    def _wait(self, what: str) -> Iterator[None]:
        self.waiting = (time.monotonic(), what)
        try:
            yield
        finally:
            self.waiting = None

    def allreduce_sum(self, buf: Any) -> None:
        """Sum ``buf`` (a contiguous host array) over all ranks, in place."""
        with self._wait("the gradient all-reduce"):
            self.world.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def bcast_array(self, a: np.ndarray, root: int = 0) -> None:
        """Overwrite ``a`` with root's ``a`` on every rank."""
        buf = a if a.flags.c_contiguous else np.ascontiguousarray(a)
        with self._wait("a broadcast from rank 0"):
            self.world.Bcast(buf, root=root)
        if buf is not a:
            a[...] = buf

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Root's small Python value (a number, a short list), on every rank."""
        with self._wait("a broadcast from rank 0"):
            return self.world.bcast(obj, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's small Python value, in rank order, on every rank."""
        with self._wait("the other ranks"):
            return self.world.allgather(obj)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        """Every rank's small Python value on root (in rank order); None elsewhere."""
        with self._wait("a gather to rank 0"):
            return self.world.gather(obj, root=root)

    def gather_rows(self, a: np.ndarray, root: int = 0) -> np.ndarray | None:
        """Every rank's ``a`` (same shape everywhere) joined along axis -2 (the batch) on root; None elsewhere."""
        a = np.ascontiguousarray(a)
        out = np.empty((self.size, *a.shape), dtype=a.dtype) if self.rank == root else None
        with self._wait("a gather to rank 0"):
            self.world.Gather(a, out, root=root)
        return np.concatenate(list(out), axis=-2) if out is not None else None

    def abort(self, code: int = EXIT_FAILED) -> None:
        """Stop every rank of the job (the launcher kills them); does not return."""
        sys.stdout.flush()
        sys.stderr.flush()
        # MPICH's launcher relays a rank's output asynchronously and MPI_Abort has it kill the job at
        # once: give it a moment to pass on the line just written (seen lost once in ~10 runs)
        time.sleep(ABORT_GRACE_S)
        self.world.Abort(code)


class Watchdog:
    """Stops the job when this rank has waited in one collective longer than ``timeout`` seconds.

    A rank that dies is noticed by the launcher (hydra kills the job at once); a rank that hangs,
    or dies where the launcher does not notice, would leave the others waiting forever.  The
    timeout is generous (rank 0 may evaluate or write a checkpoint while the others wait):
    ``TINYGRAPH_DIST_TIMEOUT`` seconds, 1800 by default as in torch.distributed; 0 turns it off.
    """

    def __init__(self, comm: Comm, command: str, timeout: float | None = None):
        self.comm, self.command = comm, command
        self.timeout = timeout_from_env() if timeout is None else timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        if self.timeout > 0:
            self._thread = threading.Thread(target=self._watch, name="tinygraph-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        period = min(1.0, self.timeout / 4)
        while not self._stop.wait(period):
            waiting = self.comm.waiting
            if waiting is not None and time.monotonic() - waiting[0] > self.timeout:
                c = self.comm
                print(
                    f"tinygraph {self.command}: rank {c.rank} of {c.size} ({c.host}) waited more than "
                    f"{self.timeout:g} s for {waiting[1]} (another rank hangs or died unnoticed; "
                    f"{TIMEOUT_ENV} sets the limit); stopping all ranks",
                    file=sys.stderr,
                    flush=True,
                )
                c.abort(EXIT_FAILED)


def timeout_from_env() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError as exc:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from exc
    if not (value >= 0 and math.isfinite(value)):
        raise DistributedError(f"{TIMEOUT_ENV} must be a finite number of seconds >= 0, got {raw!r}")
    return value


# --- failures -------------------------------------------------------------------------------------------


def _where(exc: BaseException) -> str:
    """' (at file.py:123)': the innermost frame of the project that raised ``exc``, for a one-line report."""
    frames = traceback.extract_tb(exc.__traceback__)
    root = str(Path(__file__).resolve().parent.parent)
    ours = [f for f in frames if f.filename.startswith(root)] or frames
    if not ours:
        return ""
    f = ours[-1]
    return f" (at {os.path.relpath(f.filename, root)}:{f.lineno})"


def describe_failure(exc: BaseException) -> str:
    """One line: a user mistake's own message, or a bug's type, message and where it was raised."""
    if isinstance(exc, TinygraphError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}{': ' + text if text else ''}{_where(exc)}"


def fail(comm: Comm, command: str, exc: BaseException) -> None:
    """One line naming this rank and the cause, then ``MPI_Abort``: the launcher stops every rank."""
    print(
        f"tinygraph {command}: rank {comm.rank} of {comm.size} ({comm.host}) failed: {describe_failure(exc)}; "
        "stopping all ranks",
        file=sys.stderr,
        flush=True,
    )
    comm.abort(EXIT_FAILED)


def _setup_failures(problems: list[str | None], size: int) -> str:
    failed = [(r, p) for r, p in enumerate(problems) if p is not None]
    if len(failed) == size and len({p for _, p in failed}) == 1:
        return failed[0][1]  # every rank made the same mistake: it is the user's, not a rank's
    rank, problem = failed[0]
    more = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
    return f"rank {rank} of {size}: {problem}{more}"


def run_ranks(comm: Comm, command: str, setup: Callable[[], T], body: Callable[[T], int]) -> int:
    """Run ``setup`` on every rank, agree that it worked everywhere, then ``body``; returns the exit status.

    ``setup`` must not communicate (a rank that fails in it would leave the others waiting): the
    ranks agree on its outcome in one allgather afterwards.  A mistake (a :class:`TinygraphError`)
    on any rank is raised on rank 0 alone, for the CLI to print as one line, and every rank
    returns 2.  In ``body``, an error every rank raises alike (``every_rank`` set on it, such as a
    diverged loss, which follows from all-reduced values) is reported by rank 0 likewise; any
    other exception on any rank is one line naming the rank and stops the job (:func:`fail`).
    """
    made: Any = None
    problem: str | None = None
    try:
        made = setup()
    except TinygraphError as exc:
        problem = str(exc)
    except BaseException as exc:
        fail(comm, command, exc)
    with Watchdog(comm, command):
        problems = comm.allgather(problem)
        if any(p is not None for p in problems):
            if comm.rank == 0:
                raise DistributedError(_setup_failures(problems, comm.size))
            return EXIT_USER_ERROR
        try:
            return body(made)
        except TinygraphError as exc:
            if not getattr(exc, "every_rank", False):
                fail(comm, command, exc)
            if comm.rank == 0:
                raise
            return EXIT_USER_ERROR
        except BaseException as exc:
            fail(comm, command, exc)
    raise AssertionError("unreachable: fail() aborts")  # pragma: no cover


# --- the gradient buffer --------------------------------------------------------------------------------


class FlatGradients:
    """Every parameter's gradient as a view of one contiguous buffer, followed by ``extras`` scalars.

    The views are the parameters' gradient homes (``tinygraph.graph.set_grad_home``): backward
    writes each gradient into its view, so after it the buffer holds the whole gradient and one
    all-reduce moves it, with no packing or unpacking copy.  All parameters must share one dtype.
    """

    def __init__(self, params: list[Tensor], extras: int = 0):
        if not params:
            raise DistributedError("no parameters to train")
        dtypes = {p.data.dtype for p in params}
        if len(dtypes) != 1:
            raise DistributedError(f"the parameters mix dtypes ({', '.join(sorted(map(str, dtypes)))})")
        self.params = list(params)
        xp = backend.get_array_module(params[0].data)
        self.size = sum(int(p.size) for p in params)
        self.buffer = xp.zeros(self.size + extras, dtype=params[0].data.dtype)
        self.grads = self.buffer[: self.size]
        self.extras = self.buffer[self.size :]
        self.views = []
        offset = 0
        for p in self.params:
            view = self.buffer[offset : offset + p.size].reshape(p.shape)
            offset += p.size
            set_grad_home(p, view)
            self.views.append(view)

    @property
    def nbytes(self) -> int:
        """Bytes one all-reduce moves (gradients and extras)."""
        return int(self.buffer.nbytes)

    def collect(self) -> list[bool]:
        """After backward: every gradient in its view (zeros for a parameter that got none); returns
        which parameters got one."""
        got = []
        for p, view in zip(self.params, self.views):
            got.append(p.grad is not None)
            if p.grad is view:
                continue
            if p.grad is None:
                view.fill(0)
            else:  # a gradient set by hand, not by the walk
                view[...] = p.grad
            p.grad = view
        return got

    def release(self) -> None:
        """The parameters' gradients go back to plain ``.grad`` arrays."""
        for p in self.params:
            set_grad_home(p, None)


# --- what the trainer asks of the job -----------------------------------------------------------------


def _map_state(fn: Callable[[Any], Any], state: Any) -> Any:
    """``state`` (nested tuples/lists of tensors or arrays) with ``fn`` applied to every array."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return Tensor(fn(state.data))
    if isinstance(state, (tuple, list)):
        return type(state)(_map_state(fn, s) for s in state)
    return fn(state)


class ShardedBatcher:
    """One rank's share of a batcher: rows ``[r*B/N, (r+1)*B/N)`` of every batch the whole job reads.

    Every rank runs the global batcher (same text, same random generator) and keeps its rows, so the
    position saved in a checkpoint is the global one and resumes on any number of ranks.  Attributes
    it does not define (``epoch``, ``position``, ...) are the global batcher's; ``batch_size`` is the
    global B, ``local_batch_size`` this rank's share.
    """

    def __init__(self, batcher: Any, rank: int, size: int):
        global_b = batcher.batch_size
        if global_b % size:
            raise DistributedError(
                f"{global_b} streams (train.batch_size) cannot be shared evenly by {size} ranks: "
                f"use a batch size that is a multiple of {size}"
            )
        self.inner = batcher
        self.batch_size = global_b
        self.local_batch_size = global_b // size
        self.rows = slice(rank * self.local_batch_size, (rank + 1) * self.local_batch_size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    def next(self) -> Batch:
        b = self.inner.next()
        return Batch(np.ascontiguousarray(b.x[self.rows]), np.ascontiguousarray(b.y[self.rows]), b.reset)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.inner.load_state_dict(d)


class DataParallel:
    """A trainer's side of a job: shares of batches, the initial weights, the step's all-reduce,
    and what rank 0's checkpoints need from the other ranks.  Also usable without a trainer
    (the benchmark's scaling runs)."""

    # the scalars after the gradients in the all-reduced buffer; then one per parameter: got a gradient
    LOSS, SIGNAL, BUDGET = range(3)

    def __init__(self, comm: Comm):
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size
        self.is_root = comm.rank == 0
        self.flat: FlatGradients | None = None
        self.reduce_seconds = 0.0  # time spent in the all-reduce, summed (the benchmark reads it)

    def shard(self, batcher: Any) -> ShardedBatcher:
        return ShardedBatcher(batcher, self.rank, self.size)

    def check_device(self, device: str) -> None:
        if device != "cpu":
            raise DistributedError(NCCL_MISSING)

    def local_rows(self, state: Any, global_batch: int) -> Any:
        """This rank's rows of a carried state saved by a one-process (or any-N) run of ``global_batch`` streams."""
        share = global_batch // self.size

        def rows(a: Any) -> Any:
            if a.shape[-2] != global_batch:
                raise DistributedError(
                    f"the checkpoint's carried state has {a.shape[-2]} streams, the run reads {global_batch}"
                )
            index = (Ellipsis, slice(self.rank * share, (self.rank + 1) * share), slice(None))
            return backend.to_device(np.ascontiguousarray(backend.to_numpy(a)[index]))

        return _map_state(rows, state)

    # --- the start ----------------------------------------------------------------------------------
    def start(self, params: list[Tensor], facts: dict[str, Any]) -> None:
        """Check every rank runs the same job (``facts``: corpus fingerprint, step, ...), give every
        rank rank 0's weights, and set up the flat gradient buffer."""
        everyone = self.comm.allgather(facts)
        for rank, theirs in enumerate(everyone):
            differ = sorted(k for k in facts if theirs.get(k) != everyone[0].get(k))
            if differ:
                raise AgreedError(
                    f"rank {rank} of {self.size} does not run the job rank 0 runs: its {', '.join(differ)} "
                    f"differ ({', '.join(f'{k}={theirs.get(k)!r}' for k in differ)}; rank 0: "
                    f"{', '.join(f'{k}={everyone[0].get(k)!r}' for k in differ)})"
                )
        for p in params:
            self.comm.bcast_array(p.data)
        self.flat = FlatGradients(params, extras=3 + len(params))

    def finish(self) -> None:
        if self.flat is not None:
            self.flat.release()
            self.flat = None

    # --- the step -----------------------------------------------------------------------------------
    def reduce(self, loss: float, *, signal: bool = False, over_budget: bool = False) -> tuple[float, bool, bool]:
        """All-reduce the gradients (already in the flat buffer's views) with this rank's loss and
        stop requests; returns (the global mean loss, whether any rank got a signal, whether rank 0's
        time budget is spent).  Every rank then holds the global mean gradient."""
        flat = self.flat
        assert flat is not None, "DataParallel.start() first"
        e = flat.extras
        e[3:] = flat.collect()
        e[self.LOSS] = loss
        e[self.SIGNAL] = 1.0 if signal else 0.0
        e[self.BUDGET] = 1.0 if over_budget and self.is_root else 0.0
        t0 = time.perf_counter()
        self.comm.allreduce_sum(flat.buffer)
        self.reduce_seconds += time.perf_counter() - t0
        flat.buffer /= self.size
        for p, got in zip(flat.params, e[3:]):
            if got == 0:  # no rank's loss reached it: the optimizer skips it, as in one process
                p.grad = None
        return float(e[self.LOSS]), bool(e[self.SIGNAL] > 0), bool(e[self.BUDGET] > 0)

    def agree(self, problem: TinygraphError | None) -> None:
        """Rank 0's outcome of what it alone did (preparing the run directory), on every rank:
        :class:`AgreedError` everywhere when it failed."""
        text = self.comm.bcast(str(problem) if problem is not None and self.is_root else None)
        if text is not None:
            raise AgreedError(text)

    def share_value(self, value: float | None) -> float:
        """Rank 0's ``value`` (a validation loss) on every rank."""
        return float(self.comm.bcast(value if self.is_root else None))

    # --- checkpoints --------------------------------------------------------------------------------
    def checkpoint_parts(self, state: Any) -> tuple[Any, dict[str, Any]]:
        """(the global carried state, the job's record) on rank 0, (None, {}) on the others.

        Collective: every rank calls it at every save.  The record holds the number of ranks and
        every rank's random stream (its dropout masks), so a resume on as many ranks is exact.
        """
        full = _map_state(lambda a: self.comm.gather_rows(backend.to_numpy(a)), state)
        streams = self.comm.gather(tg_random.get_state())
        if not self.is_root:
            return None, {}
        return full, {"ranks": self.size, "rng": streams}

    def seed_streams(self, seed: int, step: int, record: dict[str, Any] | None = None) -> None:
        """Give rank r > 0 its own random stream (its dropout masks): the one a checkpoint of as many
        ranks saved for it (``record``), else one seeded by ``(seed, r)`` at step 0 and by
        ``(seed, r, step)`` when resuming a checkpoint of another number of ranks.  Rank 0 keeps
        the run's stream, as a one-process run would."""
        if self.is_root:
            return
        if record and record.get("ranks") == self.size and len(record.get("rng", [])) == self.size:
            tg_random.set_state(record["rng"][self.rank])
        else:
            tg_random.manual_seed([seed, self.rank] if step == 0 else [seed, self.rank, step])
