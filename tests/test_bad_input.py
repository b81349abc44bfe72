"""Every user mistake: one line on stderr, exit status 2, no traceback, nothing written or overwritten."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import gpu_unavailable_reason

from cli.main import main
from tinygraph import checkpoint as ckpt_io

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"
TEXT = "".join(f"ACT {i % 5}. Enter a lord, a lady and a fool.\n" for i in range(80))


class World:
    """Files for the bad commands to trip over, made once: a good corpus, a trained run, bad files."""

    def __init__(self, root: Path):
        self.root = root
        self.corpus = root / "good.txt"
        self.corpus.write_text(TEXT)
        self.run = root / "run"
        assert main(self.train(self.corpus, self.run, "--steps", "4")) == 0
        self.ckpt = self.run / "best.npz"
        raw = self.ckpt.read_bytes()
        self.files = {
            "empty.txt": b"",
            "binary.bin": bytes(range(256)) * 4,
            "latin1.txt": "Où est la café?\n".encode("latin-1") * 20,
            "short.txt": b"tiny\n",
            "unknown.txt": "\u00bf\u20ac\u00a1\u00f1".encode() * 50,  # not one character of TEXT
            "truncated.npz": raw[: len(raw) // 2],
            "empty.npz": b"",
            "corrupt.npz": raw[:2000] + bytes(b ^ 0xFF for b in raw[2000:2100]) + raw[2100:],
            "text.npz": b"this is not an archive\n",
            "bad.toml": b"[train]\nsteps = 10\nlearnig_rate = 0.1\n",
            "badvalue.toml": b'[train]\nsteps = "ten"\n',
            "badlayer.toml": b'[model]\nlayers = [{type = "Embedding", dim = 4}, {type = "Transformer"}]\n',
            "invalid.toml": b"[train\n",
        }
        for name, content in self.files.items():
            (root / name).write_bytes(content)
        (root / "other.txt").write_text(TEXT[::-1])  # a good text, but not the run's
        np.savez(root / "foreign.npz", w=np.zeros(3))
        ckpt_io.save(root / "other.npz", {"w": np.zeros(3)}, {"note": "not a language model"})
        # the run's checkpoint, as if its corpus had been edited or deleted since training
        arrays, meta = ckpt_io.load(self.ckpt)
        for name, path in (("edited.npz", root / "other.txt"), ("orphan.npz", root / "deleted.txt")):
            ckpt_io.save(root / name, arrays, {**meta, "corpus": {**meta["corpus"], "path": str(path)}})
        (root / "plainfile").write_text("x")
        (root / "emptyrun").mkdir()
        (root / "tornrun").mkdir()  # a run whose last.npz was cut short (by a full disk, say)
        (root / "tornrun" / "last.npz").write_bytes(raw[: len(raw) // 3])

    def train(self, corpus: Path, out: Path, *extra: str) -> list[str]:
        return ["train", "--config", str(TINY), "--corpus", str(corpus), "--out", str(out), *extra]

    def snapshot(self) -> dict[str, bytes | None]:
        return {str(p.relative_to(self.root)): p.read_bytes() if p.is_file() else None for p in self.root.rglob("*")}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("bad_input"))


def _train(w: World, corpus: str, *extra: str) -> list[str]:
    return w.train(w.root / corpus, w.root / "new", *extra)


def _config(name: str) -> Callable[[World], list[str]]:
    return lambda w: w.train(w.corpus, w.root / "new", "--config", str(w.root / name))


def _use(command: str, ckpt: str, *extra: str) -> Callable[[World], list[str]]:
    """sample/eval a checkpoint named relative to the world (``run`` is the trained run)."""
    return lambda w: [command, "--checkpoint", str(w.root / ckpt), *(str(w.root / e) if "." in e else e for e in extra)]


def _finetune(ckpt: str, corpus: str, *extra: str) -> Callable[[World], list[str]]:
    return lambda w: ["finetune", "--from", str(w.root / ckpt), "--corpus", str(w.root / corpus),
                      "--out", str(w.root / "new"), *extra]  # fmt: skip


NEW_LAYERS = 'model.layers=[{type="Embedding", dim=3}, {type="Dense", size="vocab"}]'
CASES: dict[str, tuple[Callable[[World], list[str]], str]] = {
    # corpus
    "missing corpus": (lambda w: _train(w, "nope.txt"), "no such file"),
    "empty corpus": (lambda w: _train(w, "empty.txt"), "empty"),
    "binary corpus": (lambda w: _train(w, "binary.bin"), "binary"),
    "non-UTF-8 corpus": (lambda w: _train(w, "latin1.txt"), "not UTF-8"),
    "corpus shorter than a window": (lambda w: _train(w, "short.txt"), "too short"),
    "corpus is a directory": (lambda w: _train(w, "emptyrun"), "directory"),
    # config
    "unknown key in a config file": (_config("bad.toml"), "train.learnig_rate"),
    "bad value in a config file": (_config("badvalue.toml"), "train.steps"),
    "invalid TOML": (_config("invalid.toml"), "invalid TOML"),
    "missing config file": (_config("none.toml"), "no such file"),
    "unknown layer type": (_config("badlayer.toml"), "Transformer"),
    "unknown key in --set": (lambda w: _train(w, "good.txt", "--set", "train.sequence=5"), "train.sequence"),
    "unknown section in --set": (lambda w: _train(w, "good.txt", "--set", "optim.lr=5"), "[optim]"),
    "bad value in --set": (lambda w: _train(w, "good.txt", "--set", "train.seq_len=-3"), "train.seq_len"),
    "wrong type in --set": (lambda w: _train(w, "good.txt", "--set", "train.clip=yes"), "train.clip"),
    "bad --steps": (lambda w: _train(w, "good.txt", "--steps", "0"), "steps"),
    "bad --time-budget": (lambda w: _train(w, "good.txt", "--time-budget", "-1"), "time_budget"),
    # output directory
    "existing run without --resume": (lambda w: w.train(w.corpus, w.run), "already holds a run"),
    "output under a file": (lambda w: w.train(w.corpus, w.root / "plainfile" / "run"), "cannot write"),
    "output is a file": (lambda w: w.train(w.corpus, w.root / "plainfile"), "not a directory"),
    "resume without a run": (lambda w: ["train", "--resume", "--out", str(w.root / "emptyrun")], "nothing to resume"),
    "resume a missing dir": (lambda w: ["train", "--resume", "--out", str(w.root / "nodir")], "nothing to resume"),
    "resume a truncated last.npz": (lambda w: ["train", "--resume", "--out", str(w.root / "tornrun")], "truncated"),
    "resume on another corpus": (
        lambda w: ["train", "--resume", "--out", str(w.run), "--corpus", str(w.root / "other.txt")],
        "not the text this run was trained on",
    ),
    # checkpoints
    "missing checkpoint": (_use("sample", "nope.npz"), "no such checkpoint"),
    "empty checkpoint": (_use("sample", "empty.npz"), "empty"),
    "truncated checkpoint": (_use("eval", "truncated.npz"), "truncated"),
    "corrupt checkpoint": (_use("sample", "corrupt.npz"), "corrupt"),
    "text as a checkpoint": (_use("sample", "text.npz"), "not a tinygraph checkpoint"),
    "foreign npz": (_use("eval", "foreign.npz"), "not a tinygraph checkpoint"),
    "checkpoint of something else": (_use("sample", "other.npz"), "not of a character language model"),
    "run dir without best.npz": (_use("sample", "emptyrun"), "no best.npz"),
    "finetune from a corrupt checkpoint": (_finetune("corrupt.npz", "good.txt"), "corrupt"),
    # sampling and evaluation
    "prime outside the vocabulary": (_use("sample", "run", "--prime", "Zebra"), "'Z' (1)"),
    "zero temperature": (_use("sample", "run", "--temperature", "0"), "--temperature"),
    "negative length": (_use("sample", "run", "--length", "-1"), "--length"),
    "top-k of zero": (_use("sample", "run", "--top-k", "0"), "--top-k"),
    "eval of a text with no known character": (_use("eval", "run", "--corpus", "unknown.txt"), "nothing to score"),
    "eval of a binary file": (_use("eval", "run", "--corpus", "binary.bin"), "binary"),
    "eval of a missing file": (_use("eval", "run", "--corpus", "nope.txt"), "no such file"),
    "eval after the corpus changed": (_use("eval", "edited.npz"), "has changed since training"),
    "eval after the corpus was deleted": (_use("eval", "orphan.npz"), "is gone"),
    # fine-tuning
    "finetune onto unknown characters": (_finetune("run", "unknown.txt"), "outside the checkpoint's vocabulary"),
    "unknown-char outside the vocabulary": (
        _finetune("run", "unknown.txt", "--unknown-char", "#"),
        "not in the checkpoint's vocabulary",
    ),
    "unknown-char of two characters": (_finetune("run", "good.txt", "--unknown-char", "ab"), "one character"),
    "finetune without --from": (lambda w: ["finetune", "--corpus", str(w.corpus)], "--from"),
    "finetune from a foreign npz": (_finetune("foreign.npz", "good.txt"), "not a tinygraph checkpoint"),
    "finetune on a missing corpus": (_finetune("run", "nope.txt"), "no such file"),
    "finetune on a binary corpus": (_finetune("run", "binary.bin"), "binary"),
    "finetune changing the layers": (_finetune("run", "good.txt", "--set", NEW_LAYERS), "model.layers"),
}


def refused(world: World, capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    """``argv`` fails as a user mistake: exit 2, one line naming ``words``, the world untouched."""
    before = world.snapshot()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tinygraph {argv[0]}: error: ") and words in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert world.snapshot() == before


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2_and_changes_nothing(world, capsys, case):
    make_argv, words = CASES[case]
    refused(world, capsys, make_argv(world), words)


def test_an_output_directory_without_write_permission(world, capsys):
    locked = world.root / "locked"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root (or a file system without permissions) writes anyway
            pytest.skip("this user can write to a read-only directory")
        refused(world, capsys, world.train(world.corpus, locked / "run"), "cannot write")
        refused(world, capsys, world.train(world.corpus, locked), "cannot write")
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/sys"), reason="needs Linux's /sys")
def test_an_output_directory_nobody_can_create(world, capsys):
    # creating a directory in sysfs is refused even to root: an unwritable place that needs no chmod
    refused(world, capsys, world.train(world.corpus, Path("/sys/tinygraph-test-run")), "cannot write")


def test_default_corpus_missing_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "make train" in err and "--corpus" in err
    assert list(tmp_path.iterdir()) == []


def test_gpu_without_cupy_or_a_gpu(world, capsys):
    reason = gpu_unavailable_reason()
    if reason is None:
        pytest.skip("a GPU is available here: --device gpu is not a mistake")
    before = world.snapshot()
    for argv in (
        _train(world, "good.txt", "--device", "gpu"),
        ["sample", "--checkpoint", str(world.run), "--device", "gpu"],
        ["eval", "--checkpoint", str(world.run), "--device", "gpu"],
    ):
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 2 and len(err.strip().splitlines()) == 1 and ("CuPy" in err or "GPU" in err), err
        assert "Traceback" not in out + err
    assert world.snapshot() == before
