"""The bench package and ``tinygraph bench``: the FLOP and memory models by hand, the text pipeline, tiny runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import cases, corpus, cost, gemm_floor, probe
from cli.main import main

# config T (1 layer, emb 8, hidden 16, batch 2, seq 5) is the benchmark's hidden hook for tests
TINY = ["bench", "--configs", "T", "--repeats", "1", "--warmup", "1", "--gemm-size", "64", "--pause", "0"]
TINY += ["--no-primitive"]


def gemm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def test_matmul_flops_single_lstm_layer_by_hand() -> None:
    # 1 layer, emb 2, hidden 3, batch 1, seq 1, vocab 5: W_ih (12, 2), W_hh (12, 3), dense (5, 3)
    cfg = cases.Config("x", layers=1, emb=2, hidden=3, batch=1, seq=1)
    forward = gemm(1, 2, 12) + gemm(1, 3, 12) + gemm(1, 3, 5)  # 48 + 72 + 30
    assert forward == 150
    assert cost.matmul_flops("lstm", cfg, vocab=5) == 3 * 150


def test_matmul_flops_two_layer_gru_and_rnn_by_hand() -> None:
    cfg = cases.Config("x", layers=2, emb=2, hidden=3, batch=2, seq=3)
    n = 6  # batch * seq rows
    # GRU: 3 gates -> 9 columns; layer 0 reads emb 2, layer 1 reads hidden 3
    gru_fwd = gemm(n, 2, 9) + gemm(n, 3, 9) + gemm(n, 3, 9) + gemm(n, 3, 9) + gemm(n, 3, 5)
    assert cost.matmul_flops("gru", cfg, vocab=5) == 3 * gru_fwd == 4104
    rnn_fwd = gemm(n, 2, 3) + gemm(n, 3, 3) + gemm(n, 3, 3) + gemm(n, 3, 3) + gemm(n, 3, 5)
    assert cost.matmul_flops("rnn", cfg, vocab=5) == 3 * rnn_fwd
    # CIFG couples i and f: three gate blocks, like the GRU
    assert cost.matmul_flops("cifg", cfg, vocab=5) == cost.matmul_flops("gru", cfg, vocab=5)


def test_kept_bytes_by_hand() -> None:
    cfg = cases.Config("x", layers=2, emb=4, hidden=3, batch=2, seq=5)
    n = 10
    # LSTM: embedding out (n*4) + per layer n*(4 gates + c + h)*3 + softmax n*7
    assert cost.kept_bytes("lstm", cfg, vocab=7) == 4 * (n * 4 + 2 * n * 6 * 3 + n * 7)
    assert cost.kept_bytes("rnn", cfg, vocab=7, itemsize=8) == 8 * (n * 4 + 2 * n * 1 * 3 + n * 7)


def test_parameter_count_matches_torch_layout() -> None:
    pytest.importorskip("torch")
    from bench import torch_peer

    cfg = cases.Config("x", layers=2, emb=5, hidden=7, batch=1, seq=1)
    for cell in ("lstm", "gru", "rnn"):
        step = torch_peer.TorchStep(cell, vocab=11, emb=5, hidden=7, layers=2, device="cpu")
        assert sum(p.numel() for p in step.params) == cost.parameter_count(cell, cfg, vocab=11), cell


def test_torch_peer_gets_the_threads_it_is_given() -> None:
    torch = pytest.importorskip("torch")
    from bench import torch_peer

    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch_peer.configure(n, "cpu")
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)


def test_text_to_ids_keeps_the_most_frequent_characters() -> None:
    rare = "".join(chr(0x100 + i) for i in range(100))  # 100 characters seen once
    text = "e" * 50 + "t" * 40 + rare
    ids = corpus.text_to_ids(text, vocab=65)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert ids.max() == 64 and ids.min() == 0
    assert (ids[:50] == 0).all() and (ids[50:90] == 1).all()  # most frequent first
    assert (ids[-36:] == 64).all()  # the tail shares the last symbol
    small = corpus.text_to_ids("abca")
    assert small.tolist() == [0, 1, 2, 0]


def test_generated_text_is_deterministic_and_varied() -> None:
    a, b = corpus.generated_text(5000), corpus.generated_text(5000)
    assert a == b and len(a) == 5000
    assert len(set(a)) >= 30 and "\n" in a and ":" in a


def test_batches_are_shifted_windows() -> None:
    ids = np.arange(1000, dtype=np.int64)
    batches = corpus.make_batches(ids, batch=3, seq=7, count=2)
    assert len(batches) == 2
    for x, y in batches:
        assert x.shape == y.shape == (3, 7)
        np.testing.assert_array_equal(y, x + 1)
    x, y = corpus.make_batches(np.array([1, 2, 3]), batch=2, seq=10, count=1)[0]  # shorter than a window
    assert x.shape == (2, 10) and set(x.ravel()) <= {1, 2, 3}


def test_gemm_peak_is_a_positive_rate() -> None:
    assert probe.gemm_peak_gflops(np, 64, 2, lambda: None) > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--configs", "Q"], "unknown config 'Q'"),
        (["--cells", "lstm,tcn"], "unknown cell 'tcn'"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--corpus", "/nonexistent/text.txt"], "no such file"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main([*TINY, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_empty_and_binary_corpus_are_rejected(tmp_path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    for path, message in ((empty, "the file is empty"), (binary, "looks binary")):
        assert main([*TINY, "--corpus", str(path)]) == 2
        assert message in capsys.readouterr().err


def _rows(capsys: pytest.CaptureFixture, argv: list[str], base: list[str] = TINY) -> tuple[list[dict], str]:
    assert main([*base, "--json", *argv]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def _check_tinygraph_figures(row: dict) -> None:
    cfg = cases.CONFIGS["T"]
    assert row["config"] == "T" and row["device"] == "cpu"
    assert row["chars_per_step"] == cfg.batch * cfg.seq
    assert row["matmul_flops_per_step"] == cost.matmul_flops(row["cell"], cfg)
    assert row["tg_ms"] > 0
    assert math.isclose(row["tg_chars_per_s"], row["chars_per_step"] / (row["tg_ms"] / 1e3), rel_tol=1e-9)
    assert math.isclose(row["tg_gflops"], row["matmul_flops_per_step"] / row["tg_ms"] / 1e6, rel_tol=1e-9)
    assert math.isclose(row["tg_peak_share"], row["tg_gflops"] / row["gemm_peak_gflops"], rel_tol=1e-9)
    assert row["kept_bytes"] == cost.kept_bytes(row["cell"], cfg)
    assert row["tg_peak_bytes"] > 0  # tracemalloc saw the step's NumPy buffers
    assert math.isclose(row["mem_ratio"], row["tg_peak_bytes"] / row["kept_bytes"])
    assert row["nodes_per_step"] > cfg.seq  # at least one node per time step
    assert abs(row["tg_first_loss"] - math.log(cases.VOCAB)) < 1.0  # an untrained model on 65 symbols


def test_end_to_end_without_torch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path) -> None:
    monkeypatch.setattr(probe, "torch_version", lambda: None)
    corpus = tmp_path / "text.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 20, encoding="utf-8")
    rows, err = _rows(capsys, ["--corpus", str(corpus), "--cells", "lstm,cifg"])
    assert [(r["cell"], r["form"]) for r in rows] == [("lstm", "fused"), ("cifg", "fused")]
    for row in rows:
        _check_tinygraph_figures(row)
        assert row["ratio"] is None and row["torch_ms"] is None
    assert "torch is not installed" in err
    # the table says so too
    assert main([*TINY, "--corpus", str(corpus), "--cells", "rnn"]) == 0
    table = capsys.readouterr().out
    assert "ratio" in table and "note: torch is not installed" in table and "\nT      rnn   fused" in table


def test_end_to_end_against_torch(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torch")
    rows, _ = _rows(capsys, [])
    assert [r["cell"] for r in rows] == ["lstm", "gru", "rnn"]
    for row in rows:
        _check_tinygraph_figures(row)
        assert row["torch_ms"] > 0 and row["torch_version"] == probe.torch_version()
        assert math.isclose(row["ratio"], row["tg_chars_per_s"] / row["torch_chars_per_s"], rel_tol=1e-9)
        assert abs(row["torch_first_loss"] - math.log(cases.VOCAB)) < 0.5


def test_primitive_row_reports_graph_overhead(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(probe, "torch_version", lambda: None)
    rows, _ = _rows(capsys, ["--cells", "lstm"], base=[a for a in TINY if a != "--no-primitive"])
    fused, primitive = rows
    assert (fused["form"], primitive["form"]) == ("fused", "primitive")
    _check_tinygraph_figures(primitive)
    assert primitive["nodes_per_step"] > fused["nodes_per_step"]  # gates as separate nodes
    assert math.isclose(primitive["primitive_over_fused"], primitive["tg_ms"] / fused["tg_ms"], rel_tol=1e-9)
    assert math.isclose(primitive["nodes_per_s"], primitive["nodes_per_step"] / primitive["tg_ms"] * 1e3)
    assert fused["primitive_over_fused"] is None


@pytest.mark.parametrize("choice", ["numpy", "numba"])
def test_each_row_names_the_gate_math_it_ran(
    choice: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from models import cells

    if choice not in cells.gate_maths():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(probe, "torch_version", lambda: None)
    previous = cells.get_gate_math()
    try:
        rows, _ = _rows(capsys, ["--cells", "lstm,gru", "--gate-math", choice])
        assert [r["gate_math"] for r in rows] == [choice, choice]
        assert main([*TINY, "--cells", "rnn", "--gate-math", choice]) == 0
        assert f"\nT      rnn   fused     {choice:<5}" in capsys.readouterr().out
    finally:
        cells.set_gate_math(previous)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "cifg"])
def test_gemm_floor_times_every_product_of_the_step(cell: str, capsys: pytest.CaptureFixture[str]) -> None:
    parts = gemm_floor.gemm_floor(cell, cases.CONFIGS["T"])
    assert len(parts) == 8 and all(np.isfinite(s) and s >= 0 for s in parts.values())
    assert parts["recurrent forward, h_{t-1} W_hh^T (T x layers)"] > 0
    assert parts["input projections after the first layer"] == 0  # T has one layer
    assert gemm_floor.main(["--configs", "T", "--cells", cell]) == 0
    assert f"T {cell}: GEMM floor" in capsys.readouterr().out
