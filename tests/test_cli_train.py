"""End to end, in-process: tinygraph train, sample, eval and finetune on a tiny generated text."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from charlm import config as cfg
from charlm.checkpoint import read_checkpoint, restore_model
from charlm.corpus import Vocab
from charlm.evaluate import score_text
from cli.main import main
from tinygraph import checkpoint as ckpt_io

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"
LINES = [
    "KING: What say you, my lord?",
    "LORD: I say the night is long, my liege.",
    "QUEEN: Then let us go to bed.",
    "KING: Not yet; the stars are out.",
]


def play(n_lines: int = 120, extra: str = "") -> str:
    """A deterministic, repetitive play: small enough to learn a little in a few dozen steps."""
    return "\n".join(LINES[i % len(LINES)] for i in range(n_lines)) + extra + "\n"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def train_args(corpus: Path, out: Path, steps: int = 12, *extra: str) -> list[str]:
    return [
        "train", "--config", str(TINY), "--corpus", str(corpus), "--out", str(out), "--steps", str(steps),
        "--set", "train.eval_interval=4", "--set", "train.sample_length=30", *extra,
    ]  # fmt: skip


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "play.txt"
    p.write_text(play())
    return p


@pytest.fixture
def run_dir(tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "run"
    rc, _, err = cli(capsys, *train_args(corpus, out, 12))
    assert rc == 0, err
    return out


def test_train_writes_a_complete_run_directory(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    rc, stdout, err = cli(capsys, *train_args(corpus, out, 12))
    assert rc == 0, err
    for name in ("last.npz", "best.npz", "config.toml", "metrics.jsonl", "loss.svg", "loss.png"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    assert all(math.isfinite(r["val_loss"]) and math.isfinite(r["train_loss"]) for r in records)
    assert all(r["chars_per_s"] > 0 for r in records)
    assert "--- sample at step 4 ---" in stdout and "--- sample at step 12 ---" in stdout
    assert "step 12/12" in stdout
    # the config written is the config that ran
    expected = cfg.apply_overrides(cfg.load_file(TINY), ["train.eval_interval=4", "train.sample_length=30"])
    expected["train"]["steps"] = 12
    assert cfg.load_file(out / "config.toml") == expected
    last, best = read_checkpoint(out / "last.npz"), read_checkpoint(out / "best.npz")
    assert last.step == 12 and last.vocab == Vocab.from_text(play())
    assert best.meta["val_loss"] == pytest.approx(min(r["val_loss"] for r in records))
    assert last.meta["corpus"]["path"] == str(corpus.resolve())
    assert ET.parse(out / "loss.svg").getroot().tag.endswith("svg")
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))


def test_training_lowers_the_validation_loss(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, *train_args(corpus, out, 60, "--set", "train.eval_interval=20"))
    assert rc == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    uniform = math.log(len(Vocab.from_text(play())))
    assert records[0]["val_loss"] < uniform
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 0.2


def test_sample_is_reproducible_with_a_seed_and_starts_with_the_prime(run_dir, capsys):
    args = ["sample", "--checkpoint", run_dir, "--prime", "KING:", "--length", "40", "--seed", "7"]
    rc, first, err = cli(capsys, *args)
    assert rc == 0, err
    rc, second, _ = cli(capsys, *args)
    assert first == second and first.startswith("KING:") and len(first.rstrip("\n")) == len("KING:") + 40
    assert set(first) <= set(play())
    # top-k 1 is greedy: the seed does not matter
    greedy = [cli(capsys, "sample", "--checkpoint", run_dir / "last.npz", "--top-k", "1", "--seed", s)[1] for s in "12"]
    assert greedy[0] == greedy[1]
    rc, text, _ = cli(capsys, "sample", "--checkpoint", run_dir, "--length", "0")
    assert rc == 0 and text == "\n"


def test_eval_scores_the_validation_split_by_default(run_dir, capsys, corpus):
    rc, out, err = cli(capsys, "eval", "--checkpoint", run_dir, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert {"loss", "bpc", "perplexity", "chars", "unknown_chars"} <= set(doc)
    assert doc["bpc"] == pytest.approx(doc["loss"] / math.log(2))
    assert doc["perplexity"] == pytest.approx(math.exp(doc["loss"]))
    assert doc["chars"] == round(len(play()) * 0.1) - 1 and doc["unknown_chars"] == 0
    rc, out, _ = cli(capsys, "eval", "--checkpoint", run_dir)
    assert rc == 0 and "nats/char" in out and "bits/char" in out and "perplexity" in out


def test_eval_leaves_unknown_characters_out_and_reports_them(run_dir, tmp_path, capsys):
    text = tmp_path / "odd.txt"
    text.write_text("KING: What say you, my lord?\nKING: Zé? #\n")
    rc, out, err = cli(capsys, "eval", "--checkpoint", run_dir, "--corpus", text, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    unknown = sum(c not in play() for c in text.read_text())
    assert doc["unknown_chars"] == unknown == 3
    assert doc["chars"] == len(text.read_text()) - 1 - unknown
    assert "outside the vocabulary" in err and "'#' (1)" in err


def test_scoring_in_windows_carries_the_state(run_dir):
    """Scoring window by window with the state carried equals one pass over the whole text."""
    ck = read_checkpoint(run_dir / "best.npz")
    model = restore_model(ck)
    text = play(3)
    ids = ck.vocab.encode(text)
    with tg.no_grad():
        loss, _ = model.loss(ids[None, :-1], ids[None, 1:])
    windowed = score_text(model, ck.vocab, text, streams=1, seq_len=7)
    assert windowed.chars == len(text) - 1
    assert windowed.loss == pytest.approx(loss.item(), rel=1e-5)


def test_finetune_keeps_the_vocabulary_and_refuses_unknown_characters(run_dir, tmp_path, capsys):
    new = tmp_path / "new.txt"
    new.write_text("\n".join(LINES[::-1] * 30))
    out = tmp_path / "ft"
    rc, _, err = cli(
        capsys, "finetune", "--from", run_dir, "--corpus", new, "--out", out, "--steps", "8",
        "--set", "train.eval_interval=4", "--set", "train.learning_rate=1e-9",
    )  # fmt: skip
    assert rc == 0, err
    ft, base = read_checkpoint(out / "last.npz"), read_checkpoint(run_dir / "best.npz")
    assert ft.vocab == base.vocab and ft.step == 8
    assert ft.meta["finetuned_from"] == str((run_dir / "best.npz").resolve())
    assert ft.config["model"] == base.config["model"]
    assert ft.meta["optimizer"]["step"] == 8  # a fresh optimizer: only the fine-tuning steps
    # the starting point was the checkpoint's weights (a learning rate of 1e-9 barely moved them)
    for name, w in base.group("model").items():
        np.testing.assert_allclose(ft.group("model")[name], w, atol=1e-6)

    odd = tmp_path / "odd.txt"
    odd.write_text("\n".join(LINES * 30) + "\nZebra~\n")
    args = ["finetune", "--from", run_dir / "best.npz", "--corpus", odd, "--out", tmp_path / "ft2", "--steps", "4"]
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "'Z' (1)" in err and "'~' (1)" in err and "--unknown-char" in err
    assert not (tmp_path / "ft2").exists()
    rc, _, err = cli(capsys, *args, "--unknown-char", " ")
    assert rc == 0, err
    meta = read_checkpoint(tmp_path / "ft2" / "last.npz").meta
    assert meta["corpus"]["unknown_char"] == " "


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    rc, stdout, err = cli(capsys, *train_args(corpus, out, 10_000, "--time-budget", "0.001"))
    assert rc == 0, err
    assert "time budget" in stdout
    ck = read_checkpoint(out / "last.npz")
    assert 1 <= ck.step < 10_000
    # and it resumes from there
    rc, _, err = cli(capsys, "train", "--resume", "--out", out, "--steps", str(ck.step + 2))
    assert rc == 0, err
    assert read_checkpoint(out / "last.npz").step == ck.step + 2


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, corpus, capsys, monkeypatch):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, *train_args(corpus, out, 8))
    assert rc == 0, err
    before = (out / "last.npz").read_bytes(), (out / "best.npz").read_bytes()

    import charlm.trainer as trainer_module

    build = trainer_module.build_model

    def poisoned(*a, **k):
        model = build(*a, **k)
        clean, calls = model.loss, []

        def loss(x, y, state=None):
            value, state = clean(x, y, state)
            calls.append(1)
            return (value * float("nan") if len(calls) == 3 else value), state

        model.loss = loss
        return model

    monkeypatch.setattr(trainer_module, "build_model", poisoned)
    rc, _, err = cli(capsys, "train", "--resume", "--out", out, "--steps", "20")
    assert rc == 2
    assert "step 11" in err and "nan" in err and "last.npz is kept" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ((out / "last.npz").read_bytes(), (out / "best.npz").read_bytes()) == before


def test_train_and_sample_on_each_device(device, tmp_path, corpus, capsys):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, *train_args(corpus, out, 4, "--device", device))
    assert rc == 0, err
    arrays, meta = ckpt_io.load(out / "last.npz")
    assert meta["config"]["train"]["device"] == device
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    rc, text, err = cli(capsys, "sample", "--checkpoint", out, "--length", "20", "--seed", "1", "--device", device)
    assert rc == 0, err
    assert len(text) == 21
    rc, doc, err = cli(capsys, "eval", "--checkpoint", out, "--json", "--device", device)
    assert rc == 0, err
    assert math.isfinite(json.loads(doc)["loss"])


def test_the_trainer_tells_on_eval_and_draws_nothing_itself(tmp_path, corpus, capsys):
    from charlm.trainer import Trainer

    calls = []
    config = cfg.resolve(TINY, ["train.eval_interval=3", "train.sample_length=0"], {"steps": 6})
    trainer = Trainer(config, corpus, tmp_path / "run", on_eval=lambda run, record: calls.append((run, record)))
    assert trainer.run() == 0
    assert [record["step"] for _, record in calls] == [3, 6]
    run = calls[0][0]
    assert run.path == tmp_path / "run" and [r["step"] for r in run.metrics()] == [3, 6]
    assert not list(run.path.glob("loss.*"))  # the plot is the CLI's: charlm imports no viz


def test_the_validation_loss_is_the_cross_entropy_of_the_windows(tmp_path, corpus, capsys):
    """The trainer's validation loss (log_softmax under no_grad) equals the training loss op's mean."""
    from charlm.trainer import Trainer

    config = cfg.resolve(TINY, ["train.eval_batches=3"], {"steps": 1})
    trainer = Trainer(config, corpus, tmp_path / "run")
    total, count, state = 0.0, 0, None
    trainer.model.eval()
    with tg.no_grad():
        for b in trainer.data.val_batcher.windows_from_start(3):
            loss, state = trainer.model.loss(b.x, b.y, state)
            total, count = total + loss.item() * b.x.size, count + b.x.size
    trainer.model.train()
    assert trainer.evaluate() == pytest.approx(total / count, rel=1e-6)
    assert trainer.model.training  # evaluation gives the model its mode back


def _imports(package: str) -> set[str]:
    """The top-level packages the modules of ``package`` import, at the top or inside functions."""
    import ast

    found = set()
    for path in (Path(__file__).resolve().parent.parent / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_the_packages_depend_one_way():
    # charlm -> models -> tinygraph; only cli joins them with viz
    assert not _imports("tinygraph") & {"models", "charlm", "viz", "cli", "bench", "data"}
    assert not _imports("models") & {"charlm", "viz", "cli", "bench", "data"}
    assert not _imports("charlm") & {"viz", "cli", "bench", "data"}


def test_python_dash_m_cli_is_the_tinygraph_command():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--help"], cwd=root, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "usage: tinygraph" in done.stdout
    assert not (root / "tinygraph" / "__main__.py").exists()  # the framework does not see the CLI
