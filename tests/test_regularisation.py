"""The regularisers of the training recipe: locked dropout, weight drop (DropConnect on W_hh),
output dropout, and their [train] keys; none of them acts in evaluation mode."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models
import tinygraph as tg
from charlm import config as cfg
from charlm.checkpoint import build_model
from charlm.trainer import Trainer

LAYERS = [
    {"type": "Embedding", "dim": 5},
    {"type": "LSTM", "hidden_size": 6, "num_layers": 2, "dropout": 0.3},
    {"type": "Dense", "size": "vocab"},
]


def ids(batch: int, steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 7, size=(batch, steps))


def check(fn: Any, *inputs: np.ndarray) -> None:
    result = tg.gradcheck(fn, list(inputs), tol=1e-6, rtol_each=1e-5)
    assert result.ok, str(result)


def test_locked_dropout_shares_one_mask_over_time() -> None:
    x = tg.tensor(np.ones((9, 4, 5)))
    tg.manual_seed(3)
    y = tg.dropout(x, 0.5, shared_axes=(0,)).numpy()
    np.testing.assert_array_equal(y, np.broadcast_to(y[:1], y.shape))  # every step the same mask
    assert set(np.unique(y)) == {0.0, 2.0}


def test_locked_dropout_gradcheck_with_a_fixed_seed() -> None:
    def fn(t: tg.Tensor) -> tg.Tensor:
        tg.manual_seed(11)
        return tg.dropout(t, 0.4, shared_axes=(0,))

    check(fn, np.random.default_rng(1).uniform(-2, 2, (4, 3, 5)))


def lstm_with_weight_drop(p: float) -> models.LSTM:
    tg.manual_seed(0)
    return models.LSTM(3, 4, weight_drop=p).astype(np.float64)  # type: ignore[return-value]


def test_weight_drop_gradcheck_through_the_unroll() -> None:
    lstm = lstm_with_weight_drop(0.5)

    def fn(x: tg.Tensor, w_hh: tg.Tensor) -> tg.Tensor:
        lstm._params["weight_hh_l0"] = w_hh
        tg.manual_seed(7)  # the same DropConnect mask at every evaluation
        return lstm.unroll(x)[0]

    rng = np.random.default_rng(2)
    check(fn, rng.uniform(-1, 1, (5, 2, 3)), rng.uniform(-0.5, 0.5, (16, 4)))


def test_weight_drop_masks_the_gradient_of_w_hh_with_one_mask_per_batch() -> None:
    lstm = lstm_with_weight_drop(0.5)
    x = tg.tensor(np.random.default_rng(3).uniform(-1, 1, (6, 2, 3)))
    tg.manual_seed(9)
    out, _ = lstm.unroll(x)
    out.sum().backward()
    dropped = lstm.weight_hh_l0.grad == 0
    # the mask is the first draw from the framework's stream, made once before the unroll: the
    # entries it dropped got no gradient from any step of the window, the others got one
    tg.manual_seed(9)
    kept = tg.random.get_rng().random((16, 4)) >= 0.5
    np.testing.assert_array_equal(~dropped, kept)
    assert 0.25 < dropped.mean() < 0.75


def test_weight_drop_does_nothing_in_eval_mode() -> None:
    x = tg.tensor(np.random.default_rng(4).uniform(-1, 1, (6, 2, 3)))
    plain, dropped = lstm_with_weight_drop(0.0), lstm_with_weight_drop(0.6)
    dropped.eval()
    np.testing.assert_array_equal(plain.unroll(x)[0].numpy(), dropped.unroll(x)[0].numpy())
    dropped.train()
    assert not np.array_equal(plain.unroll(x)[0].numpy(), dropped.unroll(x)[0].numpy())


def charlm(**train: Any) -> models.CharLM:
    config = cfg.defaults()
    config["model"]["layers"] = LAYERS
    config["train"].update(train)
    tg.manual_seed(0)
    return build_model(config, 7)


def test_the_train_keys_reach_the_model() -> None:
    model = charlm(weight_drop=0.25, locked_dropout=True, output_dropout=0.4)
    lstm = model.recurrent_layers()[0]
    assert (lstm.weight_drop, lstm.locked, model.output_dropout, model.locked) == (0.25, True, 0.4, True)
    assert charlm().recurrent_layers()[0].weight_drop == 0.0


def test_regularised_model_in_eval_mode_equals_the_plain_one() -> None:
    plain = charlm()
    regular = charlm(weight_drop=0.3, locked_dropout=True, output_dropout=0.5)
    x, y = ids(3, 8), ids(3, 8, seed=1)
    plain.eval()
    regular.eval()
    np.testing.assert_array_equal(plain.loss(x, y)[0].numpy(), regular.loss(x, y)[0].numpy())
    regular.train()
    assert regular.loss(x, y)[0].item() != plain.loss(x, y)[0].item()


def test_output_dropout_is_locked_over_time_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[int, ...], float, tuple[int, ...]]] = []
    real = tg.dropout

    def spy(x: Any, p: float, training: bool = True, rng: Any = None, shared_axes: tuple[int, ...] = ()) -> Any:
        calls.append((tuple(x.shape), p, tuple(shared_axes)))
        return real(x, p, training, rng, shared_axes)

    monkeypatch.setattr(tg, "dropout", spy)
    model = charlm(output_dropout=0.5, locked_dropout=True)
    model.train()
    model.forward_time_major(ids(2, 5).T)
    # between the two LSTM layers (0.3) and before the Dense (0.5), both one mask per sequence
    assert ((5, 2, 6), 0.3, (0,)) in calls and ((5, 2, 6), 0.5, (0,)) in calls
    calls.clear()
    model.eval()
    model.forward_time_major(ids(2, 5).T)
    assert all(not shared or p == 0.3 for _, p, shared in calls)
    assert ((5, 2, 6), 0.5, (0,)) not in calls


@pytest.mark.parametrize(
    "key, value",
    [
        ("weight_drop", 1.0),
        ("weight_drop", -0.1),
        ("output_dropout", 1.5),
        ("locked_dropout", 1),
        ("schedule", "cosine_to_nowhere"),
    ],
)
def test_bad_regulariser_values_are_one_line_errors_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(cfg.ConfigError, match=rf"train\.{key}") as info:
        cfg.apply_overrides(cfg.defaults(), [f"train.{key}={value}"])
    assert "\n" not in str(info.value)


def test_the_new_keys_parse_from_overrides() -> None:
    config = cfg.apply_overrides(
        cfg.defaults(),
        [
            "train.weight_drop=0.2",
            "train.locked_dropout=true",
            "train.output_dropout=0.3",
            "train.schedule=cosine_budget",
        ],
    )
    tc = config["train"]
    assert (tc["weight_drop"], tc["locked_dropout"], tc["output_dropout"], tc["schedule"]) == (
        0.2,
        True,
        0.3,
        "cosine_budget",
    )


TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))


def run_config(**train: Any) -> cfg.Config:
    config = cfg.load_file(Path(__file__).resolve().parent.parent / "configs" / "tiny.toml")
    config["train"].update(sample_length=0, eval_interval=5, **train)
    return config


def test_cosine_budget_ends_at_min_lr_when_the_steps_run_out(tmp_path: Path) -> None:
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    config = run_config(steps=10, schedule="cosine_budget", min_lr=1e-4, time_budget=0.0, weight_drop=0.3)
    trainer = Trainer(config, corpus, tmp_path / "run", stdout=io.StringIO())
    assert trainer.run() == 0
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # the last step ran at progress 9/10: the cosine's last value before the floor
    assert lrs[-1] == pytest.approx(1e-4 + (0.01 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 0.9)))


def test_cosine_budget_follows_the_clock_when_a_time_budget_is_set(tmp_path: Path, monkeypatch: Any) -> None:
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    config = run_config(steps=1000, schedule="cosine_budget", time_budget=100.0)
    trainer = Trainer(config, corpus, tmp_path / "run", stdout=io.StringIO())
    clock = iter([0.0, 25.0, 50.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    assert trainer._progress(0.0) == 0.0  # step 0, no time spent
    trainer.progress.step = 500
    assert trainer._progress(0.0) == 0.5  # half the steps is further along than a quarter of the time
    trainer.progress.step = 10
    assert trainer._progress(0.0) == 0.5  # half the budget is further along than 1% of the steps


def test_a_regularised_run_resumes_bit_for_bit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main
    from tinygraph import checkpoint as ckpt_io

    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT)
    keys = ["train.weight_drop=0.3", "train.locked_dropout=true", "train.output_dropout=0.2"]
    # (a cosine's rate depends on train.steps, which differs between the two runs: tiny.toml's plateau)
    keys += ["train.optimizer=adamw", "train.eval_interval=3", "train.sample_length=0"]
    layers = (
        'model.layers=[{type="Embedding", dim=6}, {type="LSTM", hidden_size=8, num_layers=2}, '
        '{type="Dense", size="vocab"}]'
    )
    tiny = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"

    def train(out: Path, steps: int, *more: str) -> None:
        sets = [a for k in [*keys, layers, "train.dropout=0.2"] for a in ("--set", k)]
        argv = ["train", "--config", str(tiny), "--corpus", str(corpus), "--out", str(out), "--steps", str(steps)]
        assert main([*argv, *sets, "--time-budget", "0", *more]) == 0, capsys.readouterr().err

    train(tmp_path / "straight", 8)
    train(tmp_path / "split", 4)
    assert main(["train", "--resume", "--out", str(tmp_path / "split"), "--steps", "8"]) == 0
    a, _ = ckpt_io.load(tmp_path / "straight" / "last.npz")
    b, _ = ckpt_io.load(tmp_path / "split" / "last.npz")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
