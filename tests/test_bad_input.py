"""Every user mistake: one line on stderr, exit status 2, no traceback, nothing written or overwritten."""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import gpu_unavailable_reason

from cli.main import main
from tinygraph import checkpoint as ckpt_io

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"
TEXT = "".join(f"ACT {i % 5}. Enter a lord, a lady and a fool.\n" for i in range(80))


# --- crafted checkpoints: the world's best.npz with one thing changed -----------------------------------

Entries = dict[str, bytes]


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _meta(entries: Entries) -> dict:
    return json.loads(np.lib.format.read_array(io.BytesIO(entries["__tinygraph__.npy"])).tobytes())


def _with_meta(entries: Entries, **changes: object) -> Entries:
    doc = _meta(entries)
    doc["meta"].update(changes)
    return entries | {"__tinygraph__.npy": npy(np.frombuffer(json.dumps(doc).encode(), np.uint8))}


def _lying_header(entries: Entries, name: str, shape: tuple[int, ...]) -> Entries:
    """``name``'s header claims ``shape``; its data stays as it was."""
    raw = io.BytesIO(entries[name])
    np.lib.format.read_magic(raw)
    _, fortran, dtype = np.lib.format.read_array_header_1_0(raw)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": shape}
    )
    return entries | {name: head.getvalue() + raw.read()}


def _bigger_layers(entries: Entries) -> Entries:
    config = _meta(entries)["meta"]["config"]
    config["model"]["layers"][1]["hidden_size"] = 10**6
    return _with_meta(entries, config=config)


CRAFTED: dict[str, Callable[[Entries], Entries]] = {
    "huge.npz": lambda e: _lying_header(e, "model/0.weight.npy", (10**9, 10**6)),
    "reshaped.npz": lambda e: e | {"model/0.weight.npy": npy(np.zeros((3, 8), np.float32))},
    "pickled.npz": lambda e: e | {"model/evil.npy": npy(np.array([{"run": "rm -rf ~"}], dtype=object))},
    "extra.npz": lambda e: e | {"notes.txt": b"hello"},
    "intweights.npz": lambda e: (
        e | {"model/2.bias.npy": npy(np.zeros(_meta(e)["meta"]["optimizer"]["shapes"][-1], np.int32))}
    ),
    "stray.npz": lambda e: e | {"optim/m.99.npy": npy(np.zeros(3, np.float32))},
    "stateless.npz": lambda e: {k: v for k, v in e.items() if not k.startswith("state/")},
    "badstep.npz": lambda e: _with_meta(e, step="ten"),
    "badcorpus.npz": lambda e: _with_meta(e, corpus={"path": 42}),
    "biglayers.npz": _bigger_layers,
}


def craft(source: Path, out: Path, change: Callable[[Entries], Entries]) -> None:
    with zipfile.ZipFile(source) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in change(entries).items():
            zf.writestr(name, data)


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
        for name, change in CRAFTED.items():
            craft(self.ckpt, root / name, change)
        (root / "craftedrun").mkdir()  # a run whose last.npz claims an enormous array
        craft(self.ckpt, root / "craftedrun" / "last.npz", CRAFTED["huge.npz"])
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
HUGE_LAYERS = (
    'model.layers=[{type="Embedding", dim=8}, {type="LSTM", hidden_size=1000000}, {type="Dense", size="vocab"}]'
)
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
    # crafted or corrupt checkpoints: refused before any array is read, never with a MemoryError
    "a header claiming an enormous array": (_use("sample", "huge.npz"), "not a tinygraph checkpoint: array"),
    "eval of a header claiming an enormous array": (_use("eval", "huge.npz"), "declares shape (1000000000, 1000000)"),
    "finetune from a header claiming an enormous array": (_finetune("huge.npz", "good.txt"), "declares shape"),
    "resume from a header claiming an enormous array": (
        lambda w: ["train", "--resume", "--out", str(w.root / "craftedrun")],
        "not a tinygraph checkpoint",
    ),
    "weights of another shape": (_use("sample", "reshaped.npz"), "its layers make it (23, 8)"),
    "an object array": (_use("eval", "pickled.npz"), "pickle"),
    "an entry that is no array": (_use("sample", "extra.npz"), "unexpected entry 'notes.txt'"),
    "integer weights": (_use("sample", "intweights.npz"), "not floating point"),
    "an optimizer buffer of no parameter": (_use("sample", "stray.npz"), "unexpected array 'optim/m.99'"),
    "a carried state without its arrays": (_use("sample", "stateless.npz"), "not a tinygraph checkpoint"),
    "a step that is not a number": (_use("sample", "badstep.npz"), "damaged metadata: step"),
    "a corpus record that is not a path": (_use("eval", "badcorpus.npz"), "damaged metadata: corpus"),
    "metadata layers larger than the weights": (_use("sample", "biglayers.npz"), "not a tinygraph checkpoint"),
    # sizes that cannot fit in memory: refused before anything is allocated, with the estimate
    "a model too large for memory": (lambda w: _train(w, "good.txt", "--set", HUGE_LAYERS), "memory available"),
    "a batch too large for memory": (
        lambda w: _train(w, "good.txt", "--set", "train.batch_size=1000000000"),
        "need at least",
    ),
    "a sequence too long for memory": (lambda w: _train(w, "good.txt", "--set", "train.seq_len=10000000000"), "TiB"),
    "finetune into a batch too large for memory": (
        _finetune("run", "good.txt", "--set", "train.batch_size=10000000000"),
        "memory available",
    ),
    "resume into a batch too large for memory": (
        lambda w: ["train", "--resume", "--out", str(w.run), "--set", "train.batch_size=10000000000"],
        "memory available",
    ),
    "a seed beyond 64 bits": (lambda w: _train(w, "good.txt", "--set", "train.seed=18446744073709551616"), "64-bit"),
    "min_lr above the learning rate": (lambda w: _train(w, "good.txt", "--set", "train.min_lr=1.0"), "train.min_lr"),
    # options of every command: out of range or of the wrong type, one line naming the option
    "train: --steps not an integer": (lambda w: _train(w, "good.txt", "--steps", "1e3"), "argument --steps"),
    "train: negative --steps": (lambda w: _train(w, "good.txt", "--steps", "-5"), "--steps"),
    "train: --time-budget nan": (lambda w: _train(w, "good.txt", "--time-budget", "nan"), "--time-budget"),
    "train: --device unknown": (lambda w: _train(w, "good.txt", "--device", "tpu"), "argument --device"),
    "train: an unknown option": (lambda w: [*_train(w, "good.txt"), "--stpes", "5"], "--stpes"),
    "finetune: zero --steps": (_finetune("run", "good.txt", "--steps", "0"), "--steps"),
    "finetune: --time-budget not a number": (_finetune("run", "good.txt", "--time-budget", "soon"), "--time-budget"),
    "sample: --length not an integer": (_use("sample", "run", "--length", "many"), "argument --length"),
    "sample: --temperature not a number": (_use("sample", "run", "--temperature", "warm"), "argument --temperature"),
    "sample: --temperature infinite": (_use("sample", "run", "--temperature", "inf"), "--temperature"),
    "sample: negative --temperature": (_use("sample", "run", "--temperature", "-0.5"), "--temperature"),
    "sample: negative --top-k": (_use("sample", "run", "--top-k", "-3"), "--top-k"),
    "sample: negative --seed": (_use("sample", "run", "--seed", "-1"), "--seed"),
    "sample: without --checkpoint": (lambda w: ["sample", "--length", "3"], "--checkpoint"),
    "eval: --device unknown": (_use("eval", "run", "--device", "tpu"), "argument --device"),
    "eval: without --checkpoint": (lambda w: ["eval", "--json"], "--checkpoint"),
    "graph: zero --steps": (lambda w: ["graph", "--steps", "0", "--out", str(w.root / "g.svg")], "--steps"),
    "graph: too many --layers": (lambda w: ["graph", "--layers", "9", "--out", str(w.root / "g.svg")], "--layers"),
    "graph: negative --seed": (lambda w: ["graph", "--seed", "-2", "--out", str(w.root / "g.svg")], "--seed"),
    "graph: --out not an svg": (lambda w: ["graph", "--out", str(w.root / "g.png")], "--out"),
    "graph: --out under a file": (lambda w: ["graph", "--out", str(w.root / "plainfile" / "g.svg")], "--out"),
    "graph: --out unwritable": (lambda w: ["graph", "--out", "/sys/tinygraph-test.svg"], "--out"),
    "graph: --level unknown": (lambda w: ["graph", "--level", "gate"], "argument --level"),
    "gradflow: one --steps": (lambda w: ["gradflow", "--steps", "1", "--out", str(w.root / "f.svg")], "--steps"),
    "gradflow: zero --hidden-size": (
        lambda w: ["gradflow", "--hidden-size", "0", "--out", str(w.root / "f.svg")],
        "--hidden-size",
    ),
    "gradflow: --out under a file": (lambda w: ["gradflow", "--out", str(w.root / "plainfile" / "f.svg")], "--out"),
    "gradflow: an unknown cell": (lambda w: ["gradflow", "--cell", "lstm,transformer"], "argument --cell"),
    "bench: zero --repeats": (lambda w: ["bench", "--repeats", "0"], "--repeats"),
    "bench: negative --warmup": (lambda w: ["bench", "--warmup", "-1"], "--warmup"),
    "bench: negative --pause": (lambda w: ["bench", "--pause", "-1"], "--pause"),
    "bench: negative --gemm-size": (lambda w: ["bench", "--gemm-size", "-8"], "--gemm-size"),
    "bench: --profile in a missing directory": (
        lambda w: ["bench", "--profile", str(w.root / "nodir" / "p.txt")],
        "--profile",
    ),
    "bench: --repeats not an integer": (lambda w: ["bench", "--repeats", "ten"], "argument --repeats"),
}


def refused(world: World, capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    """``argv`` fails as a user mistake: exit 2, one line naming ``words``, the world untouched."""
    before = world.snapshot()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own mistakes (a wrong type, an unknown option) end this way
        rc = exc.code
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
