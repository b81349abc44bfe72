"""Signals against a real training process: kill -9 at random moments never leaves an unloadable
last.npz, and Ctrl-C (SIGINT) or SIGTERM save, exit cleanly and can be resumed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charlm.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.toml"
TEXT = "".join(f"{i:03d} Now is the winter of our discontent made glorious summer.\n" for i in range(60))

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def start(corpus: Path, out: Path, *extra: str, resume: bool = False) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["TINYGRAPH_DEVICE"] = "cpu"
    argv = [sys.executable, "-m", "cli", "train", "--out", str(out)]
    if resume:  # the run's own config
        argv += ["--resume", *extra]
    else:  # checkpoint at every step, so that kills land in saves
        argv += [
            "--config", str(TINY), "--corpus", str(corpus), "--steps", "100000", "--set", "train.eval_interval=1",
            "--set", "train.eval_batches=1", "--set", "train.sample_length=5", *extra,
        ]  # fmt: skip
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


# Bounds on a stuck process, not timing checks: a busy two-core machine (a CI neighbour, a parallel
# test run) can stretch a start-up that takes 2 s when quiet to over a minute.
STUCK_S = 300.0


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = STUCK_S) -> None:
    """Until ``path`` is (re)written: the process is past its start-up and training."""
    deadline = time.monotonic() + timeout
    before = _mtime(path)
    while _mtime(path) == before:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training exited early ({proc.returncode}): {out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} never appeared")
        time.sleep(0.02)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text(TEXT)
    return p


def test_repeated_kill_9_always_leaves_a_loadable_checkpoint(tmp_path, corpus):
    out = tmp_path / "run"
    rng = random.Random(4)
    steps = []
    for attempt in range(4):
        proc = start(corpus, out, resume=attempt > 0)
        # it checkpoints every step: the kill lands in a save, a plot or a step
        wait_for(out / "last.npz", proc)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        ck = read_checkpoint(out / "last.npz")  # raises if the file were torn
        assert ck.step >= (steps[-1] if steps else 1)
        steps.append(ck.step)
    assert steps[-1] > steps[0]  # the resumed runs made progress between kills
    # a run killed mid-write leaves at most a temporary file, which the next start clears away
    proc = start(corpus, out, "--steps", str(steps[-1] + 2), resume=True)
    _, err = proc.communicate(timeout=STUCK_S)
    assert proc.returncode == 0, err
    assert read_checkpoint(out / "last.npz").step == steps[-1] + 2
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(("sig", "name"), [(signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")])
def test_a_signal_saves_and_exits_cleanly(tmp_path, corpus, sig, name):
    out = tmp_path / "run"
    proc = start(corpus, out)
    wait_for(out / "last.npz", proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=STUCK_S)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"{name}: saved" in stdout and "--resume" in stdout
    step = read_checkpoint(out / "last.npz").step
    assert step >= 1
    # continues from the saved step
    proc = start(corpus, out, "--steps", str(step + 1), resume=True)
    stdout, stderr = proc.communicate(timeout=STUCK_S)
    assert proc.returncode == 0, stderr
    assert f"at step {step} of {step + 1}" in stdout
