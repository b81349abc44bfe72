"""The memory tasks: what the generators make, what the model computes, that short instances get
solved, the comparison table and plot, and the ``tinygraph memory-task`` command."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import tasks
import tinygraph as tg
from cli.main import main
from tasks.memory import Adding, Copy, MemoryNet, Result, TaskError, make_task, train

CELLS = ["rnn", "lstm", "gru", "cifg"]


# --- the generators -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [2, 3, 9, 50])
def test_adding_marks_one_value_in_each_half_and_asks_for_their_sum(length: int) -> None:
    x, y = Adding(length).batch(np.random.default_rng(length), 200)
    assert x.shape == (200, length, 2) and x.dtype == np.float32 and y.shape == (200, 1, 1)
    values, marks = x[:, :, 0], x[:, :, 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(np.unique(marks)) <= {0.0, 1.0}
    assert (marks.sum(axis=1) == 2).all()
    half = length // 2
    assert (marks[:, :half].sum(axis=1) == 1).all() and (marks[:, half:].sum(axis=1) == 1).all()
    np.testing.assert_allclose(y[:, 0, 0], (values * marks).sum(axis=1), rtol=1e-6)


def test_adding_baseline_is_what_always_answering_one_scores() -> None:
    task = Adding(20)
    _, y = task.batch(np.random.default_rng(0), 50_000)
    assert task.error(np.ones_like(y), y) == pytest.approx(task.baseline, rel=0.02)
    assert task.error(y, y) == 0.0


@pytest.mark.parametrize(("length", "symbols", "span"), [(7, 8, 3), (5, 2, 2), (30, 4, 5)])
def test_copy_shows_the_symbols_then_blanks_then_go_then_asks_for_them(length: int, symbols: int, span: int) -> None:
    task = Copy(length, symbols, span)
    x, y = task.batch(np.random.default_rng(1), 100)
    assert x.shape == (100, length, symbols + 2) and y.shape == (100, span)
    assert (x.sum(axis=2) == 1).all()  # one-hot at every step
    ids = x.argmax(axis=2)
    np.testing.assert_array_equal(ids[:, :span], y)
    assert ((y >= 0) & (y < symbols)).all()
    go = length - span - 1
    assert (ids[:, go] == symbols + 1).all()
    blanks = np.r_[span:go, go + 1 : length]
    assert (ids[:, blanks] == symbols).all()
    assert task.answer_steps == span and task.outputs == symbols and task.inputs == symbols + 2


def test_copy_error_counts_wrong_symbols_and_guessing_scores_the_baseline() -> None:
    task = Copy(12, symbols=4, span=3)
    _, y = task.batch(np.random.default_rng(2), 20_000)
    perfect = np.eye(4)[y]  # logits peaked at the right symbol
    assert task.error(perfect, y) == 0.0
    one_wrong = perfect.copy()
    one_wrong[0, 0] = np.roll(one_wrong[0, 0], 1)
    assert task.error(one_wrong, y) == pytest.approx(1 / y.size)
    guesses = np.random.default_rng(3).standard_normal(perfect.shape)
    assert task.error(guesses, y) == pytest.approx(task.baseline, abs=0.01)


@pytest.mark.parametrize(
    ("name", "length", "options", "match"),
    [
        ("adding", 1, {}, "length must be an integer >= 2"),
        ("copy", 6, {}, r"length must be an integer >= 2 \* span \+ 1"),
        ("copy", 20, {"symbols": 1}, "symbols must be an integer >= 2"),
        ("copy", 20, {"span": 0}, "span must be an integer >= 1"),
        ("adding", 5.5, {}, "length must be an integer"),
        ("counting", 10, {}, "unknown task 'counting'"),
    ],
)
def test_bad_task_settings_are_refused_with_their_name(name: str, length: int, options: dict, match: str) -> None:
    with pytest.raises(TaskError, match=match):
        make_task(name, length, **options)


# --- the model and the training loop ----------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_the_model_answers_on_the_last_steps_only(cell: str) -> None:
    task = Copy(9, symbols=5, span=2)
    net = MemoryNet(cell, task.inputs, 6, task.outputs, task.answer_steps).astype(np.float64)
    x, _ = task.batch(np.random.default_rng(0), 3)
    pred = net(x.astype(np.float64))
    assert pred.shape == (3, 2, 5)
    out, _ = net.rnn(tg.tensor(x.astype(np.float64)))
    np.testing.assert_allclose(pred.numpy(), net.head(out[:, -2:]).numpy())


@pytest.mark.parametrize("task", [Adding(6), Copy(7, symbols=3, span=2)], ids=["adding", "copy"])
def test_the_task_loss_backpropagates_through_the_unrolled_net_to_every_input_step(task: Adding | Copy) -> None:
    tg.manual_seed(0)
    net = MemoryNet("lstm", task.inputs, 4, task.outputs, task.answer_steps).astype(np.float64)
    x, y = task.batch(np.random.default_rng(0), 2)
    check = tg.gradcheck(lambda xs: task.loss(net(xs), y), [x.astype(np.float64)], tol=1e-6)
    assert check.ok, str(check)
    assert check.numeric_max[0] > 0


def test_forget_bias_sets_the_lstm_forget_gate_and_nothing_else() -> None:
    hidden = 5
    tg.manual_seed(0)
    net = MemoryNet("lstm", 2, hidden, 1, 1, forget_bias=1.0)
    b_ih, b_hh = net.rnn.bias_ih_l0.numpy(), net.rnn.bias_hh_l0.numpy()
    assert (b_ih[hidden : 2 * hidden] == 1.0).all() and (b_hh[hidden : 2 * hidden] == 0.0).all()
    tg.manual_seed(0)
    plain = MemoryNet("lstm", 2, hidden, 1, 1, forget_bias=None)
    others = np.r_[0:hidden, 2 * hidden : 4 * hidden]
    np.testing.assert_array_equal(plain.rnn.bias_ih_l0.numpy()[others], b_ih[others])
    assert np.abs(plain.rnn.bias_ih_l0.numpy()[hidden : 2 * hidden]).max() < 1 / np.sqrt(hidden)
    tg.manual_seed(0)
    gru = MemoryNet("gru", 2, hidden, 1, 1, forget_bias=1.0)  # no forget gate: untouched
    assert np.abs(gru.rnn.bias_ih_l0.numpy()).max() < 1 / np.sqrt(hidden)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("name", "length"), [("adding", 6), ("copy", 7)])
def test_every_cell_solves_a_short_instance(name: str, length: int, cell: str) -> None:
    result = train(make_task(name, length), cell, hidden=32, steps=1500, eval_every=25)
    assert result.solved, result.summary()
    assert result.final_error < result.threshold
    assert result.steps == result.solved_at  # stopped at the first evaluation that solved it
    assert result.history[0][0] == 0 and result.history[-1] == (result.solved_at, result.final_error)
    assert result.history[0][1] > result.threshold  # the untrained net had not solved it


def test_an_unsolved_run_trains_its_budget_and_says_so() -> None:
    result = train(Adding(40), "rnn", hidden=8, steps=30, eval_every=20)
    assert not result.solved and result.steps == 30
    assert [s for s, _ in result.history] == [0, 20, 30]  # the last step is always evaluated
    assert "not solved in 30 steps" in result.summary()


def test_keep_going_trains_past_the_solving_step() -> None:
    result = train(Copy(7), "rnn", hidden=32, steps=300, eval_every=25, stop_when_solved=False)
    assert result.solved and result.steps == 300 and result.solved_at < 300


def test_a_run_is_reproducible_from_its_seed() -> None:
    a, b, c = (train(Adding(8), "gru", hidden=8, steps=40, eval_every=20, seed=s) for s in (3, 3, 4))
    assert a.history == b.history
    assert a.history != c.history


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"lr": 0.0}, "lr must be"),
        ({"clip": float("inf")}, "clip must be"),
        ({"hidden": 0}, "hidden must be"),
        ({"eval_every": 0}, "eval_every must be"),
        ({"cell": "tcn"}, "unknown cell 'tcn'"),
    ],
)
def test_bad_training_settings_are_refused(options: dict, match: str) -> None:
    options = {"cell": "gru", **options}
    with pytest.raises(TaskError, match=match):
        train(Adding(5), steps=1, **options)


# --- comparing cells ------------------------------------------------------------------------------


def _result(cell: str, length: int, solved_at: int | None, error: float, task: str = "adding") -> Result:
    return Result(task, cell, length, solved_at or 100, solved_at, error, 1 / 6, 0.01, "MSE", 0.1, [(0, 0.2)])


def test_the_table_has_a_row_per_length_and_a_column_per_cell() -> None:
    results = [_result("rnn", 10, 350, 0.0081), _result("gru", 10, 50, 0.0012), _result("rnn", 20, None, 0.1667)]
    lines = tasks.table(results).splitlines()
    assert lines[0].split() == ["task", "T", "RNN", "GRU"]
    assert lines[1].split() == ["adding", "10", "350", "/", "0.0081", "50", "/", "0.0012"]
    assert lines[2].split() == ["adding", "20", "-", "/", "0.1667"]


def test_compare_trains_every_cell_at_every_length_on_the_same_budget() -> None:
    seen = []
    results = tasks.compare("copy", ["rnn", "gru"], [7, 8], on_result=seen.append, hidden=4, steps=3, eval_every=5)
    assert [(r.task, r.length, r.cell, r.steps) for r in results] == [
        ("copy", 7, "rnn", 3),
        ("copy", 7, "gru", 3),
        ("copy", 8, "rnn", 3),
        ("copy", 8, "gru", 3),
    ]
    assert seen == results


def test_the_plot_is_an_svg_with_a_panel_per_task(tmp_path: Path) -> None:
    results = [
        _result("rnn", 10, 350, 0.0081),
        _result("rnn", 20, None, 0.1667),
        Result("copy", "gru", 7, 50, 50, 0.0, 7 / 8, 0.01, "error rate", 0.1, [(0, 0.9)]),
    ]
    path = tasks.plot_by_length(results, tmp_path / "memory.svg")
    assert ET.parse(path).getroot().tag.endswith("svg")
    svg = path.read_text()
    # matplotlib draws text as paths and names it in a comment
    assert "adding: after at most 350 training steps" in svg and "copy: after at most 50 training steps" in svg
    assert path.read_bytes() == tasks.plot_by_length(results, tmp_path / "again.svg").read_bytes()


# --- the command ----------------------------------------------------------------------------------


def test_the_command_reports_steps_to_solve_and_final_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory-task", "--task", "copy", "--cell", "rnn", "--length", "7", "--hidden-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "step      0  error rate" in out
    assert "steps to solve: " in out and "not solved" not in out
    assert "final error rate: 0.0" in out


def test_the_command_compares_lists_into_a_table_and_a_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "adding.svg"
    argv = ["memory-task", "--cell", "rnn,gru", "--length", "4,6", "--steps", "5", "--hidden-size", "4"]
    assert main([*argv, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "not solved in 5 steps" in out
    table = out[out.index("task ") :].splitlines()
    assert table[0].split() == ["task", "T", "RNN", "GRU"] and [ln.split()[:2] for ln in table[1:3]] == [
        ["adding", "4"],
        ["adding", "6"],
    ]
    assert plot.is_file() and f"wrote {plot}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--length", "1"], "--length must be between 2 and 10000, got 1"),
        (["--task", "copy", "--length", "6"], "--length must be between 7 (2 * --span + 1"),
        (["--task", "copy", "--span", "0"], "--span must be between 1 and 1000, got 0"),
        (["--steps", "0"], "--steps must be between 1 and"),
        (["--hidden-size", "0"], "--hidden-size must be between 1 and 4096"),
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--clip", "0"], "--clip must be a finite number > 0"),
        (["--forget-bias", "inf"], "--forget-bias must be a finite number or 'none'"),
        (["--plot", "out.pdf"], "--plot must name an .svg or .png file"),
        (["--plot", "no/such/dir/out.svg"], "--plot no/such/dir/out.svg: no directory"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--cell", "lstm,tcn"], "cells are a comma-separated list of"),
        (["--length", "10,x"], "lengths are comma-separated integers"),
    ],
)
def test_the_command_refuses_bad_options_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        code = main(["memory-task", *args])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
