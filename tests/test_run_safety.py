"""A run directory under stress: one trainer at a time, and a full disk while saving.

Each refusal is one line on stderr, exit status 2, no traceback, and the bytes of every checkpoint
already in the run unchanged; no partial file is left behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from charlm.run import LOCK_FILE, RunDir, RunError
from cli.main import main
from tinygraph import checkpoint as ckpt_io

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.toml"
TEXT = "".join(f"ACT {i % 5}. Enter a lord, a lady and a fool.\n" for i in range(80))


def files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def checkpoints(run: Path) -> dict[str, bytes]:
    """The run's checkpoints, once it is sure no temporary file was left beside them."""
    assert list(run.glob(".*.tmp")) == []
    return {name: data for name, data in files(run).items() if name in ("last.npz", "best.npz")}


def train_argv(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(TINY), "--corpus", str(corpus), "--out", str(out), *extra]


def one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tinygraph {argv[0]}: error: "), err
    assert words in lines[0], lines[0]
    assert "Traceback" not in out + err
    return lines[0]


@pytest.fixture
def trained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """(corpus, run): a run of 4 steps of the tiny config, with last.npz and best.npz."""
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    run = tmp_path / "run"
    assert main(train_argv(corpus, run, "--steps", "4")) == 0
    capsys.readouterr()
    assert {"last.npz", "best.npz"} <= set(files(run))
    return corpus, run


# --- one writer -----------------------------------------------------------------------------------------


@pytest.fixture
def training_child(trained: tuple[Path, Path]) -> Iterator[subprocess.Popen[str]]:
    """A second process resuming the run, holding its lock: it trains without end and saves nothing."""
    _, run = trained
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    argv = ["train", "--resume", "--out", str(run), "--steps", "100000000", "--set", "train.eval_interval=100000000"]
    child = subprocess.Popen(
        [sys.executable, "-m", "cli", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in child.stdout:  # "resuming ... at step 4": the run directory is prepared and locked
            if line.startswith("resuming"):
                break
        else:
            pytest.fail(f"the training child did not start: {child.stderr.read()}")
        yield child
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_second_trainer_is_refused_and_readers_are_not(trained, training_child, capsys):
    corpus, run = trained
    before = files(run)  # after the child prepared the run: from here on nothing may change
    assert (run / LOCK_FILE).read_text().strip() == str(training_child.pid)
    holder = f"another trainer (pid {training_child.pid}) is writing it"
    one_line_exit_2(capsys, ["train", "--resume", "--out", str(run), "--steps", "9"], holder)
    one_line_exit_2(capsys, ["finetune", "--resume", "--out", str(run)], holder)
    one_line_exit_2(capsys, [*train_argv(corpus, run), "--force"], holder)  # refused before anything is removed
    assert files(run) == before
    # sampling and evaluating read complete checkpoints: allowed while the run trains
    assert main(["sample", "--checkpoint", str(run), "--length", "20", "--seed", "1"]) == 0
    assert main(["eval", "--checkpoint", str(run / "last.npz"), "--json"]) == 0
    assert capsys.readouterr().err == ""
    assert files(run) == before
    # kill -9: the kernel drops the lock with the process, and the run resumes
    training_child.send_signal(signal.SIGKILL)
    training_child.wait()
    assert main(["train", "--resume", "--out", str(run), "--steps", "6"]) == 0
    assert ckpt_io.load(run / "last.npz")[1]["step"] == 6


def test_the_lock_is_held_while_training_and_released_after(trained, capsys, monkeypatch):
    _, run = trained
    seen = []
    real_save = RunDir.save

    def save(self, arrays, meta, best):  # while the trainer saves, the run is locked
        with pytest.raises(RunError, match=f"pid {os.getpid()}"):
            RunDir(run).check_not_in_use()
        seen.append((run / LOCK_FILE).read_text().strip())
        real_save(self, arrays, meta, best)

    monkeypatch.setattr(RunDir, "save", save)
    assert main(["train", "--resume", "--out", str(run), "--steps", "6"]) == 0
    assert seen == [str(os.getpid())]
    assert (run / LOCK_FILE).read_text() == ""  # released: the next trainer may start
    RunDir(run).check_not_in_use()


def test_run_dir_lock_and_release(tmp_path):
    a, b = RunDir(tmp_path), RunDir(tmp_path)
    b.check_not_in_use()  # no lock file yet: free
    a.lock()
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    for refused in ("lock", "check_not_in_use"):
        with pytest.raises(RunError, match=rf"{tmp_path} is in use: another trainer \(pid {os.getpid()}\)"):
            getattr(b, refused)()
    a.lock()  # a writer locking again is a no-op
    a.release()
    a.release()
    b.lock()  # free again
    del b  # a writer that is collected lets go of its lock too
    a.lock()
    a.release()


# --- a full disk while saving -------------------------------------------------------------------------------


def fail_writing(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> list[str]:
    """Saving a checkpoint called one of ``names`` runs out of space half-way through its third array."""
    real_save, real_write = ckpt_io.save, np.lib.format.write_array
    failed: list[str] = []

    def save(path, arrays, meta):
        if Path(path).name not in names:
            return real_save(path, arrays, meta)
        calls = []

        def dying_write(fp, arr, **kw):
            calls.append(1)
            if len(calls) == 3:
                fp.write(b"\x93NUMPY half an array")
                failed.append(Path(path).name)
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(fp, arr, **kw)

        monkeypatch.setattr(np.lib.format, "write_array", dying_write)
        try:
            return real_save(path, arrays, meta)
        finally:
            monkeypatch.setattr(np.lib.format, "write_array", real_write)

    monkeypatch.setattr(ckpt_io, "save", save)
    return failed


def test_a_full_disk_while_saving_last_keeps_every_checkpoint(trained, capsys, monkeypatch):
    _, run = trained
    before = checkpoints(run)
    failed = fail_writing(monkeypatch, ("last.npz", "best.npz"))
    line = one_line_exit_2(capsys, ["train", "--resume", "--out", str(run), "--steps", "8"], "No space left on device")
    assert failed == ["last.npz"]
    assert f"{run / 'last.npz'}: cannot write checkpoint" in line and "the run stopped at step 8" in line
    assert checkpoints(run) == before
    assert ckpt_io.load(run / "last.npz")[1]["step"] == 4


def test_a_full_disk_while_saving_best_keeps_the_old_best(trained, capsys, monkeypatch):
    _, run = trained
    before = checkpoints(run)
    failed = fail_writing(monkeypatch, ("best.npz",))
    line = one_line_exit_2(capsys, ["train", "--resume", "--out", str(run), "--steps", "10"], "best.npz is as it was")
    assert failed == ["best.npz"] and "No space left on device" in line
    assert checkpoints(run)["best.npz"] == before["best.npz"]
    assert ckpt_io.load(run / "last.npz")[1]["step"] == 10  # the new last.npz is complete


def test_a_metrics_line_that_cannot_be_written_is_cut_off(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.log({"step": 1})
    real_write = os.write

    def short_write(fd, data):
        return real_write(fd, data[:5])  # the disk filled up within the line

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(RunError, match="cannot append the metrics"):
        run.log({"step": 2, "val_loss": 1.5})
    monkeypatch.setattr(os, "write", real_write)
    run.log({"step": 3})
    assert [r["step"] for r in run.metrics()] == [1, 3]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 3}\n'


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 1 MB (root only)."""
    mount = shutil.which("mount")
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    disk = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    disk.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=False, capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_really_full_disk(trained, small_disk, capsys):
    _, source = trained
    run = small_disk / "run"
    run.mkdir()
    for name in ("last.npz", "best.npz", "config.toml", "metrics.jsonl"):
        shutil.copy(source / name, run / name)
    stat = os.statvfs(small_disk)
    free = stat.f_bavail * stat.f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 24 * 1024))  # room for config and metrics, not a checkpoint
    before = checkpoints(run)
    line = one_line_exit_2(capsys, ["train", "--resume", "--out", str(run), "--steps", "8"], "No space left on device")
    assert "cannot write checkpoint" in line
    assert checkpoints(run) == before
    assert ckpt_io.load(run / "last.npz")[1]["step"] == 4 and ckpt_io.load(run / "best.npz")[1]["step"] == 4
