"""--resume continues exactly: 15 steps then a resume to 30 equal 30 straight steps, bit for bit on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from tinygraph import checkpoint as ckpt_io

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"
# dropout everywhere, so the framework's random stream matters too
LAYERS = (
    'model.layers=[{type="Embedding", dim=8}, {type="Dropout", p=0.2}, '
    '{type="LSTM", hidden_size=12, num_layers=2, dropout=0.2}, {type="Dense", size="vocab"}]'
)
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))


def train(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main(["train", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def start(corpus: Path, out: Path, steps: int, batching: str) -> list[object]:
    return [
        "--config", TINY, "--corpus", corpus, "--out", out, "--steps", steps, "--set", LAYERS,
        "--set", f"train.batching={batching}", "--set", "train.eval_interval=4", "--set", "train.patience=0",
        "--set", "train.sample_length=10", "--set", "train.seq_len=8",
    ]  # fmt: skip


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text(TEXT)
    return p


@pytest.mark.parametrize("batching", ["stream", "random"])
def test_fifteen_then_resume_to_thirty_equals_thirty_straight(tmp_path, corpus, capsys, batching):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(capsys, *start(corpus, straight, 30, batching))[0] == 0
    assert train(capsys, *start(corpus, split, 15, batching))[0] == 0
    rc, out, err = train(capsys, "--resume", "--out", split, "--steps", 30)
    assert rc == 0, err
    assert "resuming" in out and "at step 15 of 30" in out
    a, meta_a = ckpt_io.load(straight / "last.npz")
    b, meta_b = ckpt_io.load(split / "last.npz")
    assert meta_a["step"] == meta_b["step"] == 30
    assert sorted(a) == sorted(b)
    assert any(k.startswith("optim/") for k in a)
    for name in a:  # weights, optimizer moments and the carried state
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for key in ("rng", "data", "optimizer", "schedule"):
        assert meta_a[key] == meta_b[key], key
    # the metrics of the resumed run continue the first part's, with no step twice
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12, 15, 16, 20, 24, 28, 30]


def test_resume_drops_metrics_written_after_the_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(capsys, *start(corpus, out, 8, "stream"))[0] == 0
    with open(out / "metrics.jsonl", "a") as f:  # as if killed after logging step 12 but before saving it
        f.write(json.dumps({"step": 12, "val_loss": 9.0}) + "\n" + '{"step": 13, "val_lo')
    assert train(capsys, "--resume", "--out", out, "--steps", 12)[0] == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12] and records[-1]["val_loss"] != 9.0


def test_resume_at_the_end_has_nothing_to_do(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(capsys, *start(corpus, out, 8, "stream"))[0] == 0
    before = (out / "last.npz").read_bytes()
    rc, stdout, _ = train(capsys, "--resume", "--out", out)
    assert rc == 0 and "nothing to do" in stdout
    assert (out / "last.npz").read_bytes() == before


def test_resume_may_change_train_settings_but_not_the_model(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(capsys, *start(corpus, out, 8, "stream"))[0] == 0
    before = (out / "last.npz").read_bytes()
    rc, _, err = train(capsys, "--resume", "--out", out, "--set", 'model.layers=[{type="Embedding", dim=4}]')
    assert rc == 2 and "model.layers" in err
    rc, _, err = train(capsys, "--resume", "--out", out, "--config", TINY)
    assert rc == 2 and "--config" in err
    assert (out / "last.npz").read_bytes() == before
    rc, _, err = train(capsys, "--resume", "--out", out, "--steps", 10, "--set", "train.learning_rate=0.001")
    assert rc == 0, err
    _, meta = ckpt_io.load(out / "last.npz")
    assert meta["step"] == 10 and meta["optimizer"]["lr"] == 0.001


def test_force_starts_over(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert train(capsys, *start(corpus, out, 8, "stream"))[0] == 0
    rc, _, err = train(capsys, *start(corpus, out, 4, "stream"), "--force")
    assert rc == 0, err
    _, meta = ckpt_io.load(out / "last.npz")
    assert meta["step"] == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4]
