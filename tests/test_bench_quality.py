"""``tinygraph bench --quality``: both sides train for tiny budgets; the log, table and plot are written."""

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
    report = quality.run_quality(config, corpus, tmp_path / "q", [0.01], sides=("tinygraph",))
    rows = [json.loads(line) for line in (tmp_path / "q" / "quality.jsonl").read_text().splitlines()]
    assert rows and {r["side"] for r in rows} == {"tinygraph"} and {r["budget"] for r in rows} == {0.01}
    assert all(r.keys() >= {"step", "seconds", "minutes", "val_loss", "threads"} for r in rows)
    assert rows[-1]["seconds"] >= 0.6  # it ran to the budget, then evaluated
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert (tmp_path / "q" / "quality.svg").read_text().lstrip().startswith("<?xml")
    table = (tmp_path / "q" / "quality.txt").read_text()
    assert f"{rows[-1]['val_loss']:.4f}" in table.splitlines()[2]  # the 0.01-minute row: tinygraph's last loss
    assert report.files[0] == tmp_path / "q" / "quality.jsonl"
    assert (tmp_path / "q" / "tinygraph-0.01min" / "last.npz").is_file()


def test_each_budget_is_a_run_of_its_own_for_tinygraph(tmp_path: Path, corpus: Path) -> None:
    config = cfg.resolve(TINY, ["train.eval_interval=1000000", "train.schedule=cosine_budget"])
    report = quality.run_quality(config, corpus, tmp_path / "q", [0.01, 0.005], sides=("tinygraph",))
    assert report.budgets == [0.005, 0.01]
    for m in report.budgets:
        rows = [r for r in report.records if r["budget"] == m]
        assert len(rows) == 1 and m * 60 <= rows[0]["seconds"] < m * 60 + 5  # evaluated once, at its budget
    assert sorted(p.name for p in (tmp_path / "q").glob("tinygraph-*")) == ["tinygraph-0.005min", "tinygraph-0.01min"]


def _torch_run(budget: float, marks: dict[float, float], losses: list[tuple[float, float]]) -> list[dict]:
    """A torch run of ``budget`` minutes as it is logged: (minutes, loss) evaluations, some at ``marks``."""
    rows = []
    for step, (minutes, loss) in enumerate(losses, 1):
        r = {"side": "torch", "budget": budget, "step": step * 10, "seconds": minutes * 60, "minutes": minutes}
        r.update(val_loss=loss, threads=2)
        if minutes in marks.values():
            r["mark"] = next(m for m, at in marks.items() if at == minutes)
        rows.append(r)
    return rows


def test_a_shorter_budget_reads_the_longer_runs_mark_or_last_evaluation_before_it() -> None:
    rows = _torch_run(30, {5: 5.01}, [(2.0, 1.8), (4.5, 1.6), (5.01, 1.55), (9.0, 1.5), (20.0, 1.45), (30.0, 1.47)])
    assert quality.at_budget(rows, "torch", 5) == {"steps": 30, "minutes": 5.01, "val": 1.55, "best": 1.55}
    assert quality.at_budget(rows, "torch", 10) == {"steps": 40, "minutes": 9.0, "val": 1.5, "best": 1.5}
    assert quality.at_budget(rows, "torch", 30) == {"steps": 60, "minutes": 30.0, "val": 1.47, "best": 1.45}
    assert quality.at_budget(rows, "torch", 1) is None  # nothing evaluated that early
    assert quality.at_budget(rows, "torch", 31) is None and quality.at_budget(rows, "tinygraph", 5) is None
    tg_run = [{**r, "side": "tinygraph", "budget": 5} for r in rows[:2]]
    assert quality.at_budget(rows + tg_run, "tinygraph", 5)["val"] == 1.6  # its own run of that budget: the last


def test_the_table_shows_both_sides_at_each_budget_and_the_lead() -> None:
    rows = _torch_run(10, {5: 5.0}, [(5.0, 1.55), (10.0, 1.50)])
    rows += [{**r, "side": "tinygraph", "budget": m, "val_loss": v} for r, m, v in ((rows[0], 5, 1.52),)]
    table = quality.format_table(quality.QualityReport(budgets=[5, 10], records=rows))
    five, ten = table.splitlines()[2:4]
    assert five.split() == ["5", "m", "10", "1.5200", "10", "1.5500", "1.5500", "+0.0300"]
    assert ten.split() == ["10", "m", "-", "-", "20", "1.5000", "1.5000", "-"]


def test_a_torch_curve_is_read_back_from_an_earlier_log(tmp_path: Path, corpus: Path) -> None:
    log = tmp_path / "earlier.jsonl"
    rows = _torch_run(0.02, {0.01: 0.01}, [(0.01, 2.5), (0.02, 2.0)]) + _torch_run(0.05, {}, [(0.05, 1.9)])
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = cfg.resolve(TINY, ["train.eval_interval=1000"])
    report = quality.run_quality(config, corpus, tmp_path / "q", [0.01], torch_log=log)
    torch_rows = [r for r in report.records if r["side"] == "torch"]
    assert torch_rows == rows[:2]  # the shortest run long enough, read as it was logged
    assert "2.5000" in (tmp_path / "q" / "quality.txt").read_text()
    with pytest.raises(BenchError, match=r"no torch run of 0\.1 minutes or more"):
        quality.run_quality(config, corpus, tmp_path / "q2", [0.1], torch_log=log)
    log.write_text("not json\n")
    with pytest.raises(BenchError, match=r"not a quality\.jsonl"):
        quality.run_quality(config, corpus, tmp_path / "q3", [0.01], torch_log=log)


@pytest.mark.parametrize("text", ["5,x", "0", "-1,5", "inf", ""])
def test_minutes_must_be_positive_numbers(text: str) -> None:
    with pytest.raises(BenchError, match="--minutes"):
        quality.parse_minutes(text)
    assert quality.parse_minutes("30,5,10,5") == [5.0, 10.0, 30.0]


@pytest.mark.skipif(torch_version() is None, reason="torch is not installed (the optional peer)")
def test_the_cli_runs_both_sides_on_the_same_corpus(tmp_path: Path, corpus: Path, capsys) -> None:
    out = tmp_path / "q"
    argv = ["bench", "--quality", "--minutes", "0.01,0.02", "--corpus", corpus, "--config", TINY, "--out", out]
    argv += ["--torch-config", TINY]
    assert main([str(a) for a in argv]) == 0
    table = capsys.readouterr().out
    assert "tinygraph" in table and "torch" in table and "quality.svg" in table
    rows = [json.loads(line) for line in (out / "quality.jsonl").read_text().splitlines()]
    assert {(r["side"], r["budget"]) for r in rows} == {("tinygraph", 0.01), ("tinygraph", 0.02), ("torch", 0.02)}
    torch_rows = [r for r in rows if r["side"] == "torch"]
    marked = [r for r in torch_rows if "mark" in r]
    assert [r["mark"] for r in marked] == [0.01] and 0.6 <= marked[0]["seconds"] < 1.2  # scored as 0.01 ran out
    assert "mark" not in torch_rows[-1] and torch_rows[-1]["seconds"] >= 1.2  # and at its end
    svg = (out / "quality.svg").read_text()
    assert "tinygraph" in svg and "torch" in svg  # the curves, in the legend


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
