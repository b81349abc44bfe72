"""Data-parallel training on MPI: 2 ranks against 1 process, checkpoints across layouts, failures.

The job tests launch ``mpiexec -n 2`` as a subprocess (each with a timeout) and are skipped, saying
why, when mpi4py or mpiexec is missing; ``make test`` installs both (the ``dist`` extra).  The
exactness tests run this file as a worker script (``python tests/test_distributed.py worker ...``):
it trains in float64, which the command line does not offer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a worker script
    sys.path.insert(0, str(ROOT))

from charlm import distributed  # noqa: E402
from charlm.checkpoint import read_checkpoint  # noqa: E402
from charlm.corpus import RandomBatcher, StreamBatcher  # noqa: E402
from charlm.launch import _Death, _Relay  # noqa: E402

LINES = [
    "KING: What say you, my lord?",
    "LORD: I say the night is long, my liege.",
    "QUEEN: Then let us go to bed.",
    "KING: Not yet; the stars are out.",
]
# small, fast and without dropout (masks of 2 ranks cannot be those of 1 process); 2 layers and
# clipping that bites, so the global norm matters
SETTINGS = [
    'model.layers=[{type="Embedding", dim=8}, {type="LSTM", hidden_size=16, num_layers=2}, '
    '{type="Dense", size="vocab"}]',
    "train.seq_len=12",
    "train.batch_size=4",
    "train.learning_rate=0.01",
    "train.clip=0.5",
    "train.eval_interval=3",
    "train.eval_batches=2",
    "train.sample_length=0",
    "train.time_budget=0",
    'train.schedule="plateau"',  # the rate does not depend on --steps, so a run resumed to more steps is exact
    "train.warmup_steps=0",
    "train.min_lr=0",
]
TIMEOUT = 120  # seconds for one mpiexec job
REQUIRE_MPI = "TINYGRAPH_REQUIRE_MPI"


def mpi_missing() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install -e '.[dist]'; make test installs it)"
    try:
        from charlm.launch import find_mpiexec

        find_mpiexec()
    except distributed.DistributedError as exc:
        return str(exc)
    return None


@pytest.fixture
def mpi() -> None:
    """Skip the test, saying why, where MPI is missing; fail instead when TINYGRAPH_REQUIRE_MPI is set
    (CI sets it: the data-parallel tests must run there, not skip)."""
    reason = mpi_missing()
    if reason is None:
        return
    if os.environ.get(REQUIRE_MPI, "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{REQUIRE_MPI} is set but MPI is missing: {reason}", pytrace=False)
    pytest.skip(f"MPI jobs not tested: {reason}")


needs_mpi = pytest.mark.usefixtures("mpi")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "play.txt"
    path.write_text("\n".join(LINES[i % len(LINES)] for i in range(200)) + "\n", encoding="utf-8")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without a launcher's variables (pytest may itself run under one), one BLAS thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "SLURM_", "MPI_"))}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def mpiexec(n: int) -> list[str]:
    from charlm.launch import find_mpiexec

    return [find_mpiexec(), "-n", str(n)]


def run(cmd: list[str], timeout: float = TIMEOUT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=ROOT,
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def worker(*args: Any) -> list[str]:
    return [sys.executable, __file__, "worker", *map(str, args)]


def tinygraph(*args: Any) -> list[str]:
    return [sys.executable, "-m", "cli", *map(str, args)]


def train_args(corpus: Path, out: Path, steps: int, *extra: str) -> list[str]:
    sets = [a for s in SETTINGS for a in ("--set", s)]
    return ["train", "--corpus", str(corpus), "--out", str(out), "--steps", str(steps), *sets, *extra]


def weights(path: Path) -> dict[str, np.ndarray]:
    ck = read_checkpoint(path)
    return {k: v for k, v in ck.arrays.items() if k.startswith(("model/", "optim/", "state/"))}


def assert_same_run(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=0, atol=atol, err_msg=k)
    ma, mb = read_checkpoint(a).meta, read_checkpoint(b).meta
    assert ma["step"] == mb["step"] and ma["data"] == mb["data"]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# --- exactness --------------------------------------------------------------------------------------------


@needs_mpi
def test_two_ranks_end_at_the_weights_of_one_process_float64(corpus: Path, tmp_path: Path) -> None:
    """After k steps (with an evaluation and a checkpoint on the way), 2 ranks of B/2 streams each hold
    the weights, optimizer moments and carried state of 1 process of B streams, to 1e-12."""
    one, two = tmp_path / "one", tmp_path / "two"
    ok(run(worker(corpus, one, 7)))
    result = ok(run(mpiexec(2) + worker(corpus, two, 7)))
    assert "2 data-parallel ranks of 2 streams" in result.stdout
    assert_same_run(one / "last.npz", two / "last.npz", atol=1e-12)
    losses = [json.loads(line)["train_loss"] for line in (one / "metrics.jsonl").read_text().splitlines()]
    losses2 = [json.loads(line)["train_loss"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(losses2, losses, rtol=1e-12)  # the loss curve is the global mean's


@needs_mpi
def test_two_ranks_match_one_process_in_float32_through_the_cli(corpus: Path, tmp_path: Path) -> None:
    """The command line, float32: equal to rounding; the checkpoint loads in one process and samples."""
    one, two = tmp_path / "one", tmp_path / "two"
    ok(run(tinygraph(*train_args(corpus, one, 6))))
    ok(run(mpiexec(2) + tinygraph(*train_args(corpus, two, 6))))
    assert_same_run(one / "last.npz", two / "last.npz", atol=2e-5)
    meta = read_checkpoint(two / "last.npz").meta
    assert meta["data_parallel"]["ranks"] == 2 and len(meta["data_parallel"]["rng"]) == 2
    sample = ok(run(tinygraph("sample", "--checkpoint", two, "--length", 30, "--seed", 1)))
    assert len(sample.stdout) >= 30


@needs_mpi
def test_a_two_rank_checkpoint_resumes_on_one_rank_exactly(corpus: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    ok(run(worker(corpus, straight, 9)))
    ok(run(mpiexec(2) + worker(corpus, split, 6)))
    ok(run(worker(corpus, split, 9, "--resume")))
    assert_same_run(straight / "last.npz", split / "last.npz", atol=1e-12)


@needs_mpi
def test_a_one_process_checkpoint_resumes_on_two_ranks_exactly(corpus: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    ok(run(worker(corpus, straight, 9)))
    ok(run(worker(corpus, split, 3)))
    ok(run(mpiexec(2) + worker(corpus, split, 9, "--resume")))
    assert_same_run(straight / "last.npz", split / "last.npz", atol=1e-12)


# --- the launcher and failures ----------------------------------------------------------------------------


def start_long_run(corpus: Path, out: Path, pids: Path, *extra: str, **env: str) -> subprocess.Popen[str]:
    """``tinygraph train --nproc 2`` for far more steps than the test waits for; checkpoints every 3 steps."""
    pids.mkdir()
    cmd = tinygraph(*train_args(corpus, out, 100_000, "--nproc", "2", *extra))
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=clean_env(TINYGRAPH_DIST_PIDS=str(pids), **env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rank_pid(pids: Path, rank: int, proc: subprocess.Popen[str], ready: Path | None = None) -> int:
    """The pid of ``rank``, once it has joined the job (and ``ready`` exists, when given)."""
    deadline = time.monotonic() + TIMEOUT
    while not ((pids / f"rank-{rank}").exists() and (ready is None or ready.exists())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the job did not start: {proc.communicate()}")
        time.sleep(0.1)
    return int((pids / f"rank-{rank}").read_text().split()[0])


def finish(proc: subprocess.Popen[str], within: float) -> tuple[int, str, str, float]:
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the job was still running {within} s later:\n{out}\n{err}") from None
    return proc.returncode, out, err, time.monotonic() - start


@needs_mpi
@pytest.mark.parametrize("rank", [1, 0])
def test_killing_a_rank_ends_the_job_within_seconds_with_a_loadable_checkpoint(
    corpus: Path, tmp_path: Path, rank: int
) -> None:
    out, pids = tmp_path / "run", tmp_path / "pids"
    proc = start_long_run(corpus, out, pids)
    os.kill(rank_pid(pids, rank, proc, ready=out / "last.npz"), signal.SIGKILL)
    rc, _, err, seconds = finish(proc, within=30)
    assert rc == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert f"rank {rank} of 2" in lines[0] and "SIGKILL" in lines[0] and "last.npz is the last checkpoint" in lines[0]
    assert read_checkpoint(out / "last.npz").step > 0
    print(f"job ended {seconds:.2f} s after rank {rank} was killed")


@needs_mpi
def test_ctrl_c_saves_once_on_every_rank_and_resumes(corpus: Path, tmp_path: Path) -> None:
    out, pids = tmp_path / "run", tmp_path / "pids"
    proc = start_long_run(corpus, out, pids)
    rank_pid(pids, 1, proc, ready=out / "last.npz")
    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the launcher
    rc, stdout, err, _ = finish(proc, within=30)
    assert rc == 130, err
    saved = [line for line in stdout.splitlines() if line.startswith("SIGINT: saved")]
    assert len(saved) == 1, stdout
    step = read_checkpoint(out / "last.npz").step
    assert f"at step {step};" in saved[0]
    more = ok(run(tinygraph("train", "--resume", "--out", out, "--steps", step + 2)))
    assert f"resuming {out} at step {step}" in more.stdout


@needs_mpi
def test_an_exception_on_one_rank_is_one_line_naming_it_and_stops_the_job(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    start = time.monotonic()
    result = run(mpiexec(2) + worker(corpus, out, 100, "--fail-rank", 1, "--fail-step", 5), timeout=60)
    assert result.returncode != 0
    ours = [line for line in error_lines(result) if line.startswith("tinygraph")]
    assert len(ours) == 1, result.stderr
    assert "rank 1 of 2" in ours[0] and "RuntimeError: injected failure" in ours[0] and "stopping all ranks" in ours[0]
    assert read_checkpoint(out / "last.npz").step == 3
    assert time.monotonic() - start < 30


@needs_mpi
def test_a_hung_rank_stops_the_job_after_the_timeout(corpus: Path, tmp_path: Path) -> None:
    out, pids = tmp_path / "run", tmp_path / "pids"
    # no evaluation (rank 0's evaluations make the others wait, legitimately) and a short timeout
    proc = start_long_run(corpus, out, pids, "--set", "train.eval_interval=100000", TINYGRAPH_DIST_TIMEOUT="3")
    pid = rank_pid(pids, 1, proc)
    time.sleep(1)
    os.kill(pid, signal.SIGSTOP)
    try:
        rc, _, err, _ = finish(proc, within=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the launcher killed it, stopped as it was
            os.kill(pid, signal.SIGCONT)
    assert rc != 0
    assert "rank 0 of 2" in err and "waited more than 3 s" in err and "TINYGRAPH_DIST_TIMEOUT" in err


@needs_mpi
def test_bench_nproc_reports_the_three_setups_and_the_bytes_all_reduced() -> None:
    result = ok(run(tinygraph("bench", "--nproc", 2, "--configs", "T", "--repeats", 2, "--warmup", 1, "--json")))
    (row,) = json.loads(result.stdout)["rows"]
    assert row["threads_seen"] == {"1x1": 1, "1x2": 2, "2x1": 1}
    assert row["allreduce_bytes"] == 4 * (row["params"] + 3 + 7)  # T has 7 parameter arrays: 3 + 7 flags
    assert row["chars_per_s_2x1"] > 0 and 0 < row["efficiency"]
    assert row["first_loss"]["2x1"] == pytest.approx(row["first_loss"]["1x1"], rel=1e-5)


# --- mistakes: one line, exit status 2 ----------------------------------------------------------------------


@needs_mpi
def test_a_batch_the_ranks_cannot_share_is_one_line(corpus: Path, tmp_path: Path) -> None:
    result = run(mpiexec(2) + tinygraph(*train_args(corpus, tmp_path / "r", 4, "--set", "train.batch_size=3")))
    assert result.returncode == 2
    assert error_lines(result) == [
        "tinygraph train: error: 3 streams (train.batch_size) cannot be shared evenly by 2 ranks: "
        "use a batch size that is a multiple of 2"
    ]


@needs_mpi
def test_the_gpu_is_refused_with_a_clear_line(corpus: Path, tmp_path: Path) -> None:
    result = run(mpiexec(2) + tinygraph(*train_args(corpus, tmp_path / "r", 4, "--device", "gpu")))
    assert result.returncode == 2
    assert error_lines(result) == [f"tinygraph train: error: {distributed.NCCL_MISSING}"]


@needs_mpi
def test_a_run_directory_in_use_is_one_line_from_rank_0(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    ok(run(tinygraph(*train_args(corpus, out, 3))))
    result = run(mpiexec(2) + tinygraph(*train_args(corpus, out, 3)))
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "already holds a run" in lines[0], result.stderr


def test_more_ranks_than_cores_needs_oversubscribe(corpus: Path, tmp_path: Path) -> None:
    n = distributed.cores() + 1
    result = run(tinygraph(*train_args(corpus, tmp_path / "r", 4, "--nproc", str(n))))
    assert result.returncode == 2
    assert error_lines(result) == [
        f"tinygraph train: error: --nproc {n} is more than the {n - 1} cores here: ranks sharing a core slow every "
        "step to the slowest; pass --oversubscribe to run them anyway"
    ]


def test_bench_nproc_on_the_gpu_is_refused() -> None:
    result = run(tinygraph("bench", "--nproc", 2, "--device", "gpu"))
    assert result.returncode == 2
    assert error_lines(result) == [f"tinygraph bench: error: {distributed.NCCL_MISSING}"]


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_rank_without_mpi_exits_2_and_rank_0_says_why(corpus: Path, tmp_path: Path, rank: str) -> None:
    hide = "import sys; sys.modules['mpi4py'] = None; from cli.main import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", hide, *train_args(corpus, tmp_path / "r", 4)]
    result = run(cmd, PMI_RANK=rank, PMI_SIZE="2")
    assert result.returncode == 2
    lines = error_lines(result)
    if rank == "1":
        assert lines == []
    else:
        assert len(lines) == 1 and "rank 0 of 2 was started by an MPI launcher but cannot load MPI" in lines[0]
        assert "pip install -e '.[dist]'" in lines[0]
    assert not (tmp_path / "r").exists()


# --- the pieces, in one process -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stream", "random"])
def test_the_shares_of_two_ranks_are_the_global_batch(kind: str) -> None:
    ids = np.arange(1000) % 37

    def batcher() -> StreamBatcher | RandomBatcher:
        return StreamBatcher(ids, 6, 7) if kind == "stream" else RandomBatcher(ids, 6, 7, seed=3)

    whole = batcher()
    shares = [distributed.ShardedBatcher(batcher(), r, 2) for r in range(2)]
    for _ in range(30):  # past an epoch's end for the streams
        b = whole.next()
        parts = [s.next() for s in shares]
        np.testing.assert_array_equal(np.concatenate([p.x for p in parts]), b.x)
        np.testing.assert_array_equal(np.concatenate([p.y for p in parts]), b.y)
        assert all(p.reset == b.reset for p in parts)
    assert shares[1].state_dict() == whole.state_dict()
    assert shares[0].batch_size == 6 and shares[0].local_batch_size == 3


def test_a_batch_not_divisible_by_the_ranks_is_refused() -> None:
    with pytest.raises(distributed.DistributedError, match="multiple of 4"):
        distributed.ShardedBatcher(StreamBatcher(np.arange(500) % 5, 6, 7), 0, 4)


def test_relaunch_argv_gives_the_ranks_the_same_options() -> None:
    from cli.main import build_parser
    from cli.parallel import relaunch_argv

    argv = ["train", "--corpus", "a b.txt", "--steps", "5", "--set", "train.seq_len=8", "--set", "train.clip=0"]
    argv += ["--force", "--nproc", "2", "--oversubscribe", "--time-budget", "1.5"]
    args = build_parser("train").parse_args(argv)
    again = relaunch_argv(args)
    assert "--nproc" not in " ".join(again) and "--oversubscribe" not in again
    reparsed = build_parser("train").parse_args(["train", *again])
    for key in ("corpus", "steps", "overrides", "force", "time_budget", "out", "resume", "device"):
        assert getattr(reparsed, key) == getattr(args, key), key
    assert reparsed.nproc is None


def test_the_relay_drops_mpiexecs_banner_and_keeps_what_it_said() -> None:
    class Sink:
        def __init__(self) -> None:
            self.data = b""

        def write(self, b: bytes) -> None:
            self.data += b

        def flush(self) -> None:
            pass

    banner = (
        b"step 3 line\n\n" + b"=" * 40 + b"\n=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n"
        b"=   PID 4242 RUNNING AT vm\n=   EXIT CODE: 9\n=   CLEANING UP REMAINING PROCESSES\n" + b"=" * 40 + b"\n"
        b"YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)\n"
        b"This typically refers to a problem with your application.\n"
        b"Please see the FAQ page for debugging suggestions\n"
    )
    sink, death = Sink(), _Death()
    relay = _Relay(sink, death)  # type: ignore[arg-type]
    relay.feed(b"\rloss 2.1 |###")  # a progress bar goes out before its line ends
    assert sink.data == b"\rloss 2.1 |###"
    relay.feed(b"   | 3/10\n")
    for i in range(0, len(banner), 7):  # in pieces, as a pipe delivers it
        relay.feed(banner[i : i + 7])
    relay.close()
    assert sink.data == b"\rloss 2.1 |###   | 3/10\nstep 3 line\n"
    assert (death.pid, death.code, death.how) == (4242, 9, "Killed (signal 9)")


class TwinComm:
    """A job of two ranks in one process: the other rank always holds what this one holds."""

    rank, size, local_rank, local_size, host = 0, 2, 0, 2, "here"

    def allreduce_sum(self, buf: np.ndarray) -> None:
        buf *= 2

    def bcast_array(self, a: np.ndarray, root: int = 0) -> None:
        pass

    def allgather(self, obj: Any) -> list[Any]:
        return [obj, obj]


def test_the_step_reduce_averages_and_skips_parameters_no_rank_reached() -> None:
    import tinygraph as tg

    used = tg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    unused = tg.tensor(np.array([3.0]), requires_grad=True)
    dp = distributed.DataParallel(TwinComm())  # type: ignore[arg-type]
    dp.start([used, unused], {"step": 0})
    (used * used).sum().backward()
    loss, signal_seen, over_budget = dp.reduce(1.5, signal=True, over_budget=True)
    assert (loss, signal_seen, over_budget) == (1.5, True, True)
    np.testing.assert_array_equal(used.grad, [2.0, 4.0])
    assert np.shares_memory(used.grad, dp.flat.buffer)  # type: ignore[union-attr]
    assert unused.grad is None  # the optimizer skips it, as one process would
    dp.finish()


def test_setup_failures_name_the_rank_unless_every_rank_failed_alike() -> None:
    assert distributed._setup_failures(["no corpus", "no corpus"], 2) == "no corpus"
    assert distributed._setup_failures([None, "no corpus"], 2) == "rank 1 of 2: no corpus"
    assert distributed._setup_failures(["a", "b", None], 3) == "rank 0 of 3: a (and 1 more rank(s))"


# --- the worker ----------------------------------------------------------------------------------------------


def _worker(argv: list[str]) -> int:
    """Train like ``tinygraph train`` with SETTINGS, in float64, alone or as a rank (under mpiexec).

    ``worker CORPUS OUT STEPS [--resume] [--fail-rank R --fail-step S]``
    """
    import argparse

    import tinygraph as tg
    from charlm import config as cfg
    from charlm.run import RunDir
    from charlm.trainer import Trainer
    from tinygraph import backend

    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("out")
    parser.add_argument("steps", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--fail-step", type=int)
    args = parser.parse_args(argv)
    backend.DEFAULT_DTYPE = tg.DEFAULT_DTYPE = np.float64  # weights and initialisers in float64
    comm = distributed.join()

    def build() -> Trainer:
        resume = read_checkpoint(RunDir(args.out).last_checkpoint()) if args.resume else None
        base = resume.config if resume else None
        config = cfg.resolve(None, SETTINGS, {"steps": args.steps}, checkpoint=base, resume=args.resume)
        trainer = Trainer(config, args.corpus, args.out, resume=resume, comm=comm)
        if comm is not None and comm.rank == args.fail_rank:
            step = trainer._train_step

            def failing(*a: Any) -> float:
                if trainer.step + 1 == args.fail_step:
                    raise RuntimeError("injected failure")
                return step(*a)

            trainer._train_step = failing  # type: ignore[method-assign]
        return trainer

    if comm is None:
        return build().run()
    return distributed.run_ranks(comm, "train", build, lambda t: t.run())


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    sys.exit(_worker(sys.argv[2:]))
