"""The run report and what training records for it: probe.npz, samples.jsonl, report.html, and
`tinygraph gradflow --checkpoint`. The page itself is loaded in a real browser in test_browser.py."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import models
import tinygraph as tg
from charlm import config as cfg
from charlm.probe import load_probe
from charlm.run import read_metrics
from charlm.trainer import Trainer
from cli.main import main
from tinygraph import checkpoint as ckpt_io
from viz.bptt_graph import build_drawing
from viz.report import Report, _inline_svg, box_details, render_report

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(80))
SETTINGS = ["train.eval_interval=4", "train.sample_length=24", "train.seq_len=8"]


def train_argv(corpus: Path, out: Path, steps: int, *extra: str) -> list[str]:
    argv = ["train", "--config", str(TINY), "--corpus", str(corpus), "--out", str(out), "--steps", str(steps)]
    for s in SETTINGS:
        argv += ["--set", s]
    return argv + list(extra)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text(TEXT)
    return p


@pytest.fixture
def run(tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    out = tmp_path / "run"
    rc, stdout, err = cli(capsys, *train_argv(corpus, out, 12))
    assert rc == 0, err
    assert "failed" not in err, err
    return out, stdout


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_training_records_the_probe_the_samples_and_writes_the_page(run: tuple[Path, str]) -> None:
    out, stdout = run
    history = load_probe(out)
    assert history is not None
    assert list(history.steps) == [0, 4, 8, 12]  # the starting weights, then every evaluation
    assert history.layers == ["LSTM layer 0"] and history.gates == ["input gate", "forget gate", "output gate"]
    assert history.norms.shape == (4, 1, 16)  # T = twice the training window
    assert np.all(history.norms > 0) and np.all(history.seconds > 0)
    metrics = read_metrics(out / "metrics.jsonl")
    assert list(history.elapsed[1:]) == [r["elapsed_s"] for r in metrics]
    samples = read_metrics(out / "samples.jsonl")
    assert [s["step"] for s in samples] == [4, 8, 12]
    for s in samples:  # the sample recorded is the one printed
        assert f"--- sample at step {s['step']} ---\n{s['text']}\n---" in stdout
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not list(out.glob(".*.tmp")), "a drawing cut short at the end of the run left its temporary file"
    data = page_data(html)
    assert [s["step"] for s in data["samples"]] == [4, 8, 12]
    assert data["probe"]["steps"] == [0, 4, 8, 12] and len(data["probe"]["norms"][0][0]) == 16
    assert set(data["graphs"]) == {"cell", "op"}
    for section in ("training", "samples", "gradflow", "graph"):
        assert f'<section id="{section}">' in html
    assert html.count('class="node" data-box=') > 10


def test_the_page_needs_nothing_from_outside(run: tuple[Path, str]) -> None:
    html = (run[0] / "report.html").read_text(encoding="utf-8")
    assert "<link" not in html and "@import" not in html and " src=" not in html
    # the only URLs are the SVG and XLink namespace names, which nothing fetches
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "ids of the inlined SVGs collide"
    for ref in re.findall(r"url\(#([^)]+)\)", html):
        assert f'id="{ref}"' in html, ref


def test_a_resumed_run_appends_to_the_probe_and_the_samples(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert cli(capsys, *train_argv(corpus, out, 8))[0] == 0
    before = load_probe(out)
    rc, _, err = cli(capsys, "train", "--resume", "--out", out, "--steps", 12)
    assert rc == 0, err
    after = load_probe(out)
    assert list(after.steps) == [0, 4, 8, 12]
    np.testing.assert_array_equal(after.window.x, before.window.x)
    np.testing.assert_array_equal(after.norms[:3], before.norms)
    assert [s["step"] for s in read_metrics(out / "samples.jsonl")] == [4, 8, 12]


def test_the_probe_and_the_report_do_not_change_what_training_computes(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_chain = tmp_path / "with"
    settings = [*SETTINGS, 'model.layers=[{type="Embedding", dim=8}, {type="LSTM", hidden_size=12, dropout=0.0}, '
                '{type="Dropout", p=0.3}, {type="Dense", size="vocab"}]']  # fmt: skip
    argv = ["train", "--config", str(TINY), "--corpus", str(corpus), "--out", str(with_chain), "--steps", "12"]
    for s in settings:
        argv += ["--set", s]
    assert cli(capsys, *argv)[0] == 0
    config = cfg.resolve(TINY, settings, {"steps": 12})
    assert Trainer(config, corpus, tmp_path / "without", stdout=open(tmp_path / "log", "w")).run() == 0
    a, _ = ckpt_io.load(with_chain / "last.npz")
    b, _ = ckpt_io.load(tmp_path / "without" / "last.npz")
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_page_that_cannot_be_written_is_said_once_and_training_goes_on(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    (out / "report.html").mkdir(parents=True)  # nothing can be renamed over a directory
    rc, stdout, err = cli(capsys, *train_argv(corpus, out, 12))
    assert rc == 0
    assert err.count("report page failed") == 1, err
    assert "training goes on" in err
    assert "step 12/12" in stdout and (out / "last.npz").exists()
    assert list(load_probe(out).steps) == [0, 4, 8, 12]  # the other steps of the chain went on


def test_a_probe_that_fails_is_said_once(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import charlm.probe

    def broken(*args: object) -> None:
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(charlm.probe, "run_probe", broken)
    rc, stdout, err = cli(capsys, *train_argv(corpus, tmp_path / "run", 12))
    assert rc == 0 and "step 12/12" in stdout
    assert err.count("BPTT probe failed") == 1 and "probe exploded" in err, err
    assert (tmp_path / "run" / "report.html").exists()


def test_report_command_on_a_run_without_evaluations_and_on_what_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml(cfg.resolve(TINY, [], {})))
    rc, out, err = cli(capsys, "report", run_dir)
    assert rc == 0 and out.strip() == f"wrote {run_dir / 'report.html'}"
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "No evaluation yet" in html and "the first comes at step 10" in html
    for target in (tmp_path / "missing", tmp_path):
        rc, out, err = cli(capsys, "report", target)
        assert rc == 2 and out == ""
        assert err.count("\n") == 1 and "is not a run directory" in err
    rc, _, err = cli(capsys, "report", run_dir, "--out", tmp_path)
    assert rc == 2 and "is a directory" in err


def test_report_command_rewrites_the_page_and_says_what_it_cannot_show(
    run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = run
    (out / "probe.npz").write_bytes(b"damaged")
    rc, stdout, _ = cli(capsys, "report", out, "--out", out / "again.html")
    assert rc == 0 and "again.html" in stdout
    html = (out / "again.html").read_text(encoding="utf-8")
    assert "the BPTT probe cannot be shown" in html and "No BPTT probe recorded" in html
    assert page_data(html)["probe"] is None and len(page_data(html)["samples"]) == 3


def test_graph_details_name_op_scope_shapes_and_gradient() -> None:
    tg.manual_seed(0)
    spec = [{"type": "Embedding", "dim": 3}, {"type": "GRU", "hidden_size": 4}, {"type": "Dense", "size": "vocab"}]
    model = models.CharLM.from_layers(5, spec, fused=False)
    ids = np.arange(6).reshape(2, 3) % 5
    loss, _ = model.loss(ids[:, :-1], ids[:, 1:])
    loss.backward(keep_graph=True)
    drawing = build_drawing(loss, "op")
    details = box_details(loss, drawing)
    assert set(details) == {b.id for b in drawing.boxes}
    update = [d for d in details.values() if d.get("scope", {}).get("part") == "update gate"]
    assert sorted({d["op"] for d in update}) == ["add", "sigmoid"]
    gates = [d for d in update if d["op"] == "sigmoid"]
    assert all(d["scope"]["cell"] == "gru" and d["scope"]["layer"] == 0 for d in gates)
    assert {d["scope"]["t"] for d in gates} == {0, 1}
    assert all(d["outputs"][0].startswith("(2, 4) float32, |dL/d out| ") for d in gates)
    params = [d for d in details.values() if d["kind"].startswith("parameter")]
    assert any(d["text"][0] == "weight_hh_l0" for d in params)
    cell = build_drawing(loss, "cell")
    steps = [d for d in box_details(loss, cell).values() if "parts" in d]
    assert steps and "update gate" in steps[0]["parts"] and "part" not in steps[0]["scope"]


def test_inlined_svgs_get_ids_of_their_own() -> None:
    svg = (
        '<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg width="10pt" height="5pt" viewBox="0 0 10 5" '
        'xmlns="http://www.w3.org/2000/svg"><clipPath id="p1"/>'
        '<g id="a" clip-path="url(#p1)"><use href="#a"/></g></svg>'
    )
    out = _inline_svg(svg, "x", "chart")
    assert out.startswith('<svg class="chart" viewBox="0 0 10 5"')
    assert 'id="x-p1"' in out and "url(#x-p1)" in out and 'href="#x-a"' in out
    ET.fromstring(out)


def test_a_page_for_a_report_with_metrics_only() -> None:
    html = render_report(Report("r", metrics=[{"step": 5, "train_loss": 2.0, "val_loss": 1.9, "lr": 0.01}]))
    assert "No BPTT probe recorded" in html and "No samples recorded" in html and "No graph drawn" in html
    assert page_data(html) == {"samples": [], "probe": None, "heat": None, "graphs": {}, "seqLen": None}


def test_gradflow_of_a_trained_run_beside_its_untrained_config(
    run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = run
    svg = tmp_path / "flow.svg"
    rc, stdout, err = cli(capsys, "gradflow", "--checkpoint", out, "--out", svg)
    assert rc == 0, err
    assert "untrained LSTM layer 0" in stdout and "trained LSTM layer 0" in stdout and f"wrote {svg}" in stdout
    text = svg.read_text()
    assert "untrained: fresh weights (the run" in text or "untrained" in text
    root = ET.fromstring(text)
    axes = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if re.fullmatch(r"axes_\d+", g.get("id", ""))]
    assert len(axes) == 2
    # the trained model's curve is the run's last probe: the same window, the same weights as best.npz
    history = load_probe(out)
    trained = next(line for line in stdout.splitlines() if line.strip().startswith("trained"))
    assert f"|dL/dh_15| = {history.norms[-1, 0, -1]:.3e}" in trained
    for bad in (["--cell", "lstm"], ["--hidden-size", "8"], ["--steps", "1"]):
        rc, _, err = cli(capsys, "gradflow", "--checkpoint", out, "--out", tmp_path / "x.svg", *bad)
        assert rc == 2 and err.count("\n") == 1, bad


def test_the_gates_figure_has_a_panel_per_gated_layer_only() -> None:
    from types import SimpleNamespace

    from viz.report import gates_svg

    nan = np.nan
    mean = np.array([[[0.5, 0.4], [nan, nan]], [[0.6, 0.7], [nan, nan]]])  # (E, L, G): a GRU, then an RNN
    probe = SimpleNamespace(
        steps=np.array([0, 10]),
        layers=["GRU #1 layer 0", "RNN #2 layer 0"],
        gates=["reset gate", "update gate"],
        gate_mean=mean,
        gate_low=np.zeros_like(mean),
        gate_high=np.zeros_like(mean),
    )
    svg = gates_svg(probe)
    assert svg is not None
    assert len(re.findall(r'id="gates-axes_\d+"', svg)) == 1
    probe.gate_mean = np.full_like(mean, nan)
    assert gates_svg(probe) is None
