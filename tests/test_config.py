"""charlm.config: defaults, TOML files, --set overrides, errors that name the key, and resolving a run's config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from charlm import config as cfg

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_default_toml_lists_exactly_the_defaults():
    # configs/default.toml is what a user reads; charlm/config.py is what runs: they must agree
    assert cfg.load_file(CONFIGS / "default.toml") == cfg.defaults()
    text = (CONFIGS / "default.toml").read_text()
    for section, keys in cfg.SCHEMA.items():
        for key in keys:
            assert f"\n{key} = " in text, f"{section}.{key} missing from configs/default.toml"


def test_every_shipped_config_loads():
    for path in sorted(CONFIGS.glob("*.toml")):
        config = cfg.load_file(path)
        assert config["model"]["layers"][0]["type"] == "Embedding"


def test_a_file_overrides_only_what_it_sets(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[train]\nsteps = 7\nlearning_rate = 1\noptimizer = "sgd"\n')
    config = cfg.load_file(p)
    assert config["train"]["steps"] == 7
    assert config["train"]["learning_rate"] == 1.0 and isinstance(config["train"]["learning_rate"], float)
    assert config["train"]["optimizer"] == "sgd"
    assert config["train"]["seq_len"] == cfg.defaults()["train"]["seq_len"]
    assert config["model"] == cfg.defaults()["model"]


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[train]\nstep = 5\n", "unknown key train.step"),
        ("[trian]\nsteps = 5\n", "unknown section [trian]"),
        ('[train]\nsteps = "5"\n', "train.steps"),
        ("[train]\nsteps = 2.5\n", "train.steps"),
        ("[train]\nsteps = true\n", "train.steps"),
        ("[train]\nsteps = 0\n", "train.steps"),
        ("[train]\nlearning_rate = -1.0\n", "train.learning_rate"),
        ("[train]\nlearning_rate = nan\n", "train.learning_rate"),
        ('[train]\noptimizer = "adamax"\n', "train.optimizer"),
        ('[train]\nschedule = "step"\n', "train.schedule"),
        ("[train]\ndropout = 1.0\n", "train.dropout"),
        ("[model]\nfused = 1\n", "model.fused"),
        ("[model]\nlayers = []\n", "model.layers"),
        ("[model]\nlayers = [1, 2]\n", "model.layers[0]"),
        ("[model]\nlayers = [{dim = 3}]\n", "model.layers[0]"),
        ('[model]\nlayers = [{type = "Embedding", dim = 4}, {type = "Transformer"}]\n', "unknown layer type"),
        ('[model]\nlayers = [{type = "Embedding", dim = 4}, {type = "LSTM"}]\n', "needs hidden_size"),
        ('[model]\nlayers = [{type = "Embedding", dim = 4}]\n', "last of model.layers"),
        ("[train\n", "invalid TOML"),
        ("train = 3\n", "train"),
    ],
)
def test_bad_files_name_the_key_and_the_file(tmp_path, toml, words):
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load_file(p)
    msg = str(err.value)
    assert words in msg and str(p) in msg and "\n" not in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(cfg.ConfigError, match="no such file"):
        cfg.load_file(tmp_path / "nope.toml")


def test_overrides_are_toml_values_or_bare_strings():
    config = cfg.apply_overrides(
        cfg.defaults(),
        [
            "train.steps=12",
            "train.learning_rate=3e-4",
            "train.optimizer=adamw",
            'train.batching="random"',
            "model.fused=false",
            'model.layers=[{type="Embedding", dim=4}, {type="GRU", hidden_size=8}, {type="Dense", size="vocab"}]',
        ],
    )
    t = config["train"]
    assert (t["steps"], t["learning_rate"], t["optimizer"], t["batching"]) == (12, 3e-4, "adamw", "random")
    assert config["model"]["fused"] is False
    assert config["model"]["layers"][1] == {"type": "GRU", "hidden_size": 8}


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.steps=abc", "train.steps"),
        ("train.stepz=3", "unknown key train.stepz"),
        ("steps=3", "section.key=value"),
        ("train.steps", "section.key=value"),
        ("model.layers=[{type=", "not valid TOML"),
        ("data.path=x", "unknown section [data]"),
    ],
)
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.apply_overrides(cfg.defaults(), [override])
    assert words in str(err.value)


def test_to_toml_reads_back_the_same_config(tmp_path):
    config = cfg.apply_overrides(
        cfg.defaults(),
        ['train.optimizer="sgd"', 'model.layers=[{type="Embedding", dim=4}, {type="Dense", size="vocab"}]'],
    )
    p = tmp_path / "round.toml"
    p.write_text(cfg.to_toml(config))
    assert cfg.load_file(p) == config
    # strings are escaped: a quote and a non-ASCII character survive the trip
    config["model"]["layers"][0]["note"] = 'e"q \u00e9'
    assert tomllib.loads(cfg.to_toml(config)) == config


def test_train_dropout_fills_only_unset_rates():
    layers = [
        {"type": "Embedding", "dim": 4},
        {"type": "LSTM", "hidden_size": 8},
        {"type": "GRU", "hidden_size": 8, "dropout": 0.3},
        {"type": "Dropout"},
        {"type": "Dense", "size": "vocab"},
    ]
    out = cfg.layers_with_dropout(layers, 0.2)
    assert out[1]["dropout"] == 0.2 and out[2]["dropout"] == 0.3 and out[3]["p"] == 0.2
    assert "dropout" not in layers[1]  # the input is not modified
    assert cfg.layers_with_dropout(layers, 0.0) == layers


def test_validate_fills_missing_keys_and_rejects_unknown_ones():
    config = cfg.validate({"train": {"steps": 3}})
    assert config["train"]["steps"] == 3 and config["train"]["seq_len"] == cfg.defaults()["train"]["seq_len"]
    with pytest.raises(cfg.ConfigError):
        cfg.validate({"train": {"bogus": 1}})


def test_the_default_run_builds_and_has_a_time_budget():
    # `make train` must end within about ten minutes whatever the machine: the budget is the safety net
    from charlm.checkpoint import build_model

    config = cfg.defaults()
    assert 0 < config["train"]["time_budget"] <= 600
    model = build_model(config, vocab_size=84)
    assert model.vocab_size == 84 and len(model.recurrent_layers()) == 1


def test_train_dropout_fills_every_recurrent_type_of_the_registry():
    from models.recurrent import CELLS

    for cls in CELLS.values():
        layers = [
            {"type": "Embedding", "dim": 4},
            {"type": cls.__name__, "hidden_size": 8},
            {"type": "Dense", "size": 3},
        ]
        assert cfg.layers_with_dropout(layers, 0.25)[1]["dropout"] == 0.25


# --- resolve: the one place a run's config is made ---------------------------------------------------


def test_resolve_a_new_run_applies_file_then_overrides_then_shortcuts(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\nsteps = 7\nseq_len = 9\n")
    config = cfg.resolve(p, ["train.steps=8", "train.batch_size=3"], {"steps": 11, "time_budget": None})
    t = config["train"]
    assert (t["steps"], t["seq_len"], t["batch_size"]) == (11, 9, 3)
    assert t["time_budget"] == cfg.defaults()["train"]["time_budget"]
    assert cfg.resolve() == cfg.defaults()


def test_resolve_a_shortcut_error_names_the_option():
    with pytest.raises(cfg.ConfigError, match="--time-budget"):
        cfg.resolve(shortcuts={"time_budget": -1.0})


def test_resolve_a_resumed_run_keeps_its_config_and_drops_its_time_budget(tmp_path):
    saved = cfg.apply_overrides(cfg.defaults(), ["train.steps=10", "train.time_budget=30", "train.seq_len=5"])
    config = cfg.resolve(overrides=["train.learning_rate=0.5"], shortcuts={"steps": 20}, checkpoint=saved, resume=True)
    t = config["train"]
    assert (t["steps"], t["seq_len"], t["learning_rate"], t["time_budget"]) == (20, 5, 0.5, 0.0)
    assert saved["train"]["time_budget"] == 30  # the checkpoint's config is not modified
    assert cfg.resolve(shortcuts={"time_budget": 9}, checkpoint=saved, resume=True)["train"]["time_budget"] == 9
    with pytest.raises(cfg.ConfigError, match="drop --config"):
        cfg.resolve(tmp_path / "c.toml", checkpoint=saved, resume=True)


def test_resolve_a_continued_run_keeps_the_layers_but_may_change_fused(tmp_path):
    saved = cfg.defaults()
    layers = 'model.layers=[{type="Embedding", dim=4}, {type="GRU", hidden_size=8}, {type="Dense", size="vocab"}]'
    with pytest.raises(cfg.ConfigError, match=r"--resume keeps the checkpoint's model.layers"):
        cfg.resolve(overrides=[layers], checkpoint=saved, resume=True)
    p = tmp_path / "new.toml"
    p.write_text('[model]\nlayers = [{type = "Embedding", dim = 4}, {type = "Dense", size = "vocab"}]\n')
    with pytest.raises(cfg.ConfigError, match=r"finetune keeps the checkpoint's model.layers"):
        cfg.resolve(p, checkpoint=saved)
    tuned = cfg.resolve(overrides=["model.fused=false", "train.steps=5"], checkpoint=saved)
    assert tuned["model"]["fused"] is False and tuned["train"]["steps"] == 5
    assert tuned["train"]["time_budget"] == saved["train"]["time_budget"]  # fine-tuning keeps the budget
