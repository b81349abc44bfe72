"""Starting N data-parallel ranks on this machine: ``tinygraph train --nproc N`` runs ``mpiexec``.

:func:`launch` checks what the job needs before starting anything (MPI installed, ``mpiexec``
found, N within this machine's cores unless oversubscribing), sets each rank's BLAS threads so
that ranks x threads fits the cores, and runs ``mpiexec -n N python -m cli COMMAND ...``.  The
ranks' output (stdout and stderr) is relayed as it comes (rank 0's progress bar included;
``PROGRESS_ENV`` tells rank 0 when the launcher writes to a terminal), less ``mpiexec``'s own
multi-line banners: when a rank dies, the relay prints one line naming it and how it ended instead.
Ctrl-C is passed on to ``mpiexec`` once per press: the first makes every rank save and stop, a
second aborts.

A job across machines is started with the cluster's launcher instead (``mpiexec -hosts``,
``srun``): see docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from charlm.distributed import BLAS_VARS, PIDS_ENV, PROGRESS_ENV, DistributedError, blas_threads_per_rank, cores

# Lines of MPICH's launcher (hydra) and library that a job's user need not read: the banner around
# a rank that ended badly (summed up in one line by the relay) and MPI_Abort's echo of the rank's
# own message.
_NOISE = re.compile(
    rb"^(=+|=   .*|YOUR APPLICATION TERMINATED WITH THE EXIT STRING: .*|"
    rb"This typically refers to a problem with your application\.|Please see the FAQ page for debugging suggestions|"
    rb"Abort\(\d+\) on node \d+.*|\[mpiexec@[^\]]*\] Exit codes: .*)\r?$"
)
_NOISE_STARTS = (b"=", b"YOUR", b"This", b"Please", b"Abort", b"[mpiexec@")
_PID = re.compile(rb"^=   PID (\d+) RUNNING AT (\S+)")
_CODE = re.compile(rb"^=   EXIT CODE: (\d+)")
_EXIT_STRING = re.compile(rb"^YOUR APPLICATION TERMINATED WITH THE EXIT STRING: (.*?)\r?$")


def find_mpiexec() -> str:
    """The ``mpiexec`` of the MPI that mpi4py loads: the one installed beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("mpiexec")
    if found is None:
        raise DistributedError(
            "--nproc needs mpiexec, found neither beside this python nor on PATH: "
            "install the dist extra: pip install -e '.[dist]' (mpi4py and the mpich runtime)"
        )
    return found


def check_request(nproc: int, oversubscribe: bool) -> None:
    """Refuse, before starting anything, a job this machine cannot run well or at all."""
    if nproc < 1:
        raise DistributedError(f"--nproc must be >= 1, got {nproc}")
    if nproc > cores() and not oversubscribe:
        raise DistributedError(
            f"--nproc {nproc} is more than the {cores()} cores here: ranks sharing a core slow every step to "
            "the slowest; pass --oversubscribe to run them anyway"
        )
    if importlib.util.find_spec("mpi4py") is None:
        raise DistributedError(
            "--nproc needs MPI, which is not installed: pip install -e '.[dist]' (mpi4py and the mpich runtime)"
        )


def rank_environment(nproc: int, pids: str) -> dict[str, str]:
    """The ranks' environment: BLAS threads that fit the cores (unless the user set them), the
    progress bar when the launcher writes to a terminal, and where each rank leaves its pid."""
    env = dict(os.environ)
    if not any(env.get(v) for v in BLAS_VARS):
        threads = str(blas_threads_per_rank(nproc))
        env.update(dict.fromkeys(BLAS_VARS, threads))
    if sys.stderr.isatty():
        env[PROGRESS_ENV] = "1"
        env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
    env[PIDS_ENV] = pids
    return env


@dataclass
class _Death:
    """What mpiexec's banner said of a rank that ended badly."""

    pid: int | None = None
    code: int | None = None
    how: str = ""  # its exit string, e.g. "Killed (signal 9)"

    @property
    def seen(self) -> bool:
        return self.pid is not None or self.code is not None


def _may_be_noise(start: bytes) -> bool:
    """Whether a line that begins with ``start`` may turn out to be one of mpiexec's banner lines."""
    return any(start[: len(n)] == n[: len(start)] for n in _NOISE_STARTS)


class _Relay:
    """Copies one of mpiexec's output streams to ours as it arrives, dropping its banners and noting
    (in ``death``, shared by the relays) which process they said died and how."""

    def __init__(self, out: IO[bytes], death: _Death):
        self.out = out
        self.death = death
        self.pending = b""
        self.partial = False  # the start of the pending line was already written (a progress bar)
        self.blank = False  # a blank line held back: it opens the banner, or is written before the next line

    def feed(self, chunk: bytes) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self._line(line)
            self.partial = False
        # a line still open (a progress bar redrawn with \r) goes out now, unless it may be a banner's
        if self.pending and (self.partial or not _may_be_noise(self.pending)):
            self._flush_blank()
            self.out.write(self.pending)
            self.out.flush()
            self.pending, self.partial = b"", True

    def _line(self, line: bytes) -> None:
        if self.partial:
            self.out.write(line + b"\n")
            self.out.flush()
            return
        if m := _PID.match(line):
            self.death.pid = int(m.group(1))
        elif m := _CODE.match(line):
            self.death.code = int(m.group(1))
        elif m := _EXIT_STRING.match(line):
            self.death.how = m.group(1).decode(errors="replace")
        if _NOISE.match(line):
            self.blank = False  # the blank line before a banner belongs to it
            return
        if not line.strip(b"\r"):
            self._flush_blank()
            self.blank = True
            return
        self._flush_blank()
        self.out.write(line + b"\n")
        self.out.flush()

    def _flush_blank(self) -> None:
        if self.blank:
            self.out.write(b"\n")
            self.blank = False

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = b""
        self._flush_blank()
        self.out.flush()


def _rank_of(pids: Path, pid: int, nproc: int) -> str:
    """'rank R of N (pid P)' for a pid a rank left in the pid directory, else 'a rank of N (pid P)'."""
    for f in pids.glob("rank-*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(f.read_text().split()[0]) == pid:
                return f"rank {f.name.removeprefix('rank-')} of {nproc} (pid {pid})"
    return f"a rank of {nproc} (pid {pid})"


def _describe(death: _Death, pids: Path, nproc: int) -> str:
    """How the rank mpiexec's banner named ended, in words."""
    who = _rank_of(pids, death.pid, nproc) if death.pid is not None else f"a rank of {nproc}"
    code = death.code
    if code is not None and 0 < code < 64 and "signal" in death.how.lower():
        with contextlib.suppress(ValueError):
            how = f"was killed by signal {code} ({signal.Signals(code).name})"
            return f"{who} {how}"
    how = f"ended with exit status {code}" if code is not None else "ended"
    return f"{who} {how} before the job finished"


def _relay_all(relays: dict[int, _Relay]) -> None:
    """Relay every pipe (stdout and stderr of mpiexec: its banners go to stdout) until all are closed."""
    with selectors.DefaultSelector() as sel:
        for fd in relays:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            for key, _ in sel.select():
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    relays[key.fd].feed(chunk)
                else:
                    sel.unregister(key.fd)
                    relays[key.fd].close()


@contextlib.contextmanager
def _forward_signals(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM/SIGHUP reach mpiexec once each (it runs in its own process group,
    so a terminal's Ctrl-C reaches it through us alone); mpiexec passes them to every rank."""

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def launch(command: str, argv: list[str], nproc: int, *, oversubscribe: bool = False, out: Path | None = None) -> int:
    """Run ``tinygraph COMMAND ARGV`` as ``nproc`` ranks on this machine; returns the job's exit status.

    ``out``: the run directory, named in the line that reports a rank's death (its last checkpoint
    is intact: rank 0 writes checkpoints atomically).
    """
    check_request(nproc, oversubscribe)
    mpiexec = find_mpiexec()
    with tempfile.TemporaryDirectory(prefix="tinygraph-ranks.") as own:
        tmp = os.environ.get(PIDS_ENV) or own  # where the ranks leave their pids (a caller may choose)
        pids = Path(tmp)
        cmd = [mpiexec, "-n", str(nproc), sys.executable, "-m", "cli", command, *argv]
        # one terminal for both: one pipe keeps rank 0's lines and its progress bar in order
        merged = sys.stdout.isatty() and sys.stderr.isatty()
        proc = subprocess.Popen(
            cmd,
            env=rank_environment(nproc, tmp),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merged else subprocess.PIPE,
            process_group=0,
        )
        death = _Death()
        relays = {proc.stdout.fileno(): _Relay(sys.stdout.buffer, death)}  # type: ignore[union-attr]
        if proc.stderr is not None:
            relays[proc.stderr.fileno()] = _Relay(sys.stderr.buffer, death)
        with _forward_signals(proc):
            _relay_all(relays)
            rc = proc.wait()
        if not death.seen:
            return rc
        kept = ""
        if out is not None and (out / "last.npz").exists():
            kept = f"; {out / 'last.npz'} is the last checkpoint"
        print(
            f"tinygraph {command}: {_describe(death, pids, nproc)}; all ranks were stopped{kept}",
            file=sys.stderr,
            flush=True,
        )
        return 1
