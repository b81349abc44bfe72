"""``tinygraph bench --quality``: both sides train for a tiny budget and the log, table and plot are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import BenchError, quality
from bench.probe import torch_version
from charlm import config as cfg
from cli.main import main

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text(TEXT)
    return p


def test_the_tinygraph_side_writes_log_table_and_plot(tmp_path: Path, corpus: Path) -> None:
    config = cfg.resolve(TINY, ["train.eval_interval=5"])
    report = quality.run_quality(config, corpus, tmp_path / "q", 0.01, sides=("tinygraph",))
    rows = [json.loads(line) for line in (tmp_path / "q" / "quality.jsonl").read_text().splitlines()]
    assert rows and {r["side"] for r in rows} == {"tinygraph"}
    assert all(r.keys() >= {"step", "seconds", "minutes", "val_loss", "threads"} for r in rows)
    assert rows[-1]["seconds"] >= 0.6  # it ran to the budget, then evaluated
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert (tmp_path / "q" / "quality.svg").read_text().lstrip().startswith("<?xml")
    assert "tinygraph" in (tmp_path / "q" / "quality.txt").read_text()
    assert report.files[0] == tmp_path / "q" / "quality.jsonl"


@pytest.mark.skipif(torch_version() is None, reason="torch is not installed (the optional peer)")
def test_the_cli_runs_both_sides_on_the_same_corpus(tmp_path: Path, corpus: Path, capsys) -> None:
    out = tmp_path / "q"
    argv = ["bench", "--quality", "--minutes", "0.01", "--corpus", corpus, "--config", TINY, "--out", out]
    assert main([str(a) for a in argv]) == 0
    table = capsys.readouterr().out
    assert "tinygraph" in table and "torch" in table and "quality.svg" in table
    rows = [json.loads(line) for line in (out / "quality.jsonl").read_text().splitlines()]
    assert {r["side"] for r in rows} == {"tinygraph", "torch"}
    svg = (out / "quality.svg").read_text()
    assert "tinygraph" in svg and "torch" in svg  # both curves, in the legend


def test_a_missing_corpus_or_an_unsupported_model_is_one_line(tmp_path: Path, capsys) -> None:
    argv = ["bench", "--quality", "--minutes", "0.01", "--corpus", str(tmp_path / "none.txt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--corpus" in err and "none.txt" in err and err.count("\n") == 1
    config = cfg.defaults()
    config["model"]["layers"] = [
        {"type": "Embedding", "dim": 4},
        {"type": "CIFG", "hidden_size": 4},
        {"type": "Dense", "size": "vocab"},
    ]
    with pytest.raises(BenchError, match="torch has no CIFG"):
        quality.model_size(config)
