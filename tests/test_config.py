"""charlm.config: defaults, TOML files, --set overrides, errors that name the key, and resolving a run's config."""

from __future__ import annotations

import math
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


# --- ranges between keys, and the memory a run would take ------------------------------------------


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.seed=18446744073709551616", "train.seed in --set must be a 64-bit integer"),
        ("train.steps=-9223372036854775809", "train.steps"),
        ("train.eval_interval=0", "train.eval_interval"),
        ("train.sample_length=-1", "train.sample_length"),
        ("train.lr_factor=1.0", "train.lr_factor"),
        ("train.val_fraction=0", "train.val_fraction"),
        ("train.temperature=0", "train.temperature"),
        ("train.time_budget=inf", "train.time_budget"),
        ("train.weight_decay=-0.1", "train.weight_decay"),
    ],
)
def test_every_numeric_key_has_its_range(override, words):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.resolve(overrides=[override])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_min_lr_may_not_exceed_the_learning_rate():
    with pytest.raises(cfg.ConfigError, match=r"train.min_lr \(0.1\) must not exceed train.learning_rate"):
        cfg.resolve(overrides=["train.min_lr=0.1", "train.learning_rate=0.01"])
    assert cfg.resolve(overrides=["train.min_lr=0.01", "train.learning_rate=0.01"])["train"]["min_lr"] == 0.01


EVERY_LAYER = [
    {"type": "Embedding", "dim": 5},
    {"type": "LSTM", "hidden_size": 7, "num_layers": 2, "dropout": 0.1},
    {"type": "Dropout", "p": 0.2},
    {"type": "GRU", "hidden_size": 6},
    {"type": "RNNBlock", "hidden_size": 4, "cell": "CIFG", "num_layers": 2},
    {"type": "RNN", "hidden_size": 3},
    {"type": "Dense", "size": 9},
    {"type": "Dense", "size": "vocab"},
]


def test_parameter_shapes_are_the_models_without_building_it():
    from charlm import memory
    from models import CharLM

    model = CharLM.from_layers(11, EVERY_LAYER)
    built = {name: tuple(a.shape) for name, a in model.state_dict().items()}
    assert list(memory.parameter_shapes(EVERY_LAYER, 11).items()) == list(built.items())  # names, order, shapes


def test_kept_bytes_by_hand_and_for_every_layer_type():
    from charlm import memory

    n = 2 * 3  # B * T
    layers = [{"type": "Embedding", "dim": 4}, {"type": "GRU", "hidden_size": 5}, {"type": "Dense", "size": "vocab"}]
    assert memory.kept_bytes(layers, 7, 2, 3) == 4 * (n * 4 + n * 5 * 5 + n * 7)
    assert memory.kept_bytes(layers, 7, 2, 3, itemsize=8) == 8 * (n * 4 + n * 5 * 5 + n * 7)
    # embedding 5; LSTM 2 x 6 x 7 + a dropout mask of 7; Dropout 7; GRU 5 x 6; RNNBlock (CIFG) 2 x 5 x 4 and
    # its output 6; RNN 1 x 3; Dense 9; Dense vocab 11
    per_position = 5 + (2 * 6 * 7 + 7) + 7 + 5 * 6 + (2 * 5 * 4 + 6) + 3 + 9 + 11
    assert memory.kept_bytes(EVERY_LAYER, 11, 2, 3) == 4 * n * per_position


def test_the_training_estimate_counts_weights_gradients_optimizer_and_activations():
    from charlm import memory

    layers = cfg.defaults()["model"]["layers"]
    params = sum(math.prod(s) for s in memory.parameter_shapes(layers, 65).values())
    for name, buffers in (("adam", 2), ("sgd", 1), ("adagrad", 1)):
        est = memory.training_estimate(layers, 65, 32, 64, name)
        assert est.parameters == params and est.weights == est.gradients == 4 * params
        assert est.optimizer == buffers * 4 * params
        assert est.activations == memory.kept_bytes(layers, 65, 32, 64)
        assert est.total == est.weights * (2 + buffers) + est.activations


HUGE = 'model.layers=[{type="Embedding", dim=8}, {type="LSTM", hidden_size=1000000}, {type="Dense", size="vocab"}]'


@pytest.mark.parametrize(
    "override",
    [HUGE, "train.batch_size=1000000000", "train.seq_len=100000000000"],
)
def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_estimate(override):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.resolve(overrides=[override])
    msg = str(err.value)
    assert "need at least" in msg and "memory available" in msg and "\n" not in msg, msg


def test_the_memory_check_uses_what_the_device_has(monkeypatch):
    from charlm import memory
    from charlm.checkpoint import build_model

    config = cfg.defaults()
    need = cfg.check_memory(config, 65)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": need.total)  # no room left for the rest
    with pytest.raises(cfg.ConfigError) as err:
        build_model(config, 65)
    assert f"need about {need.describe()}" in str(err.value)
    assert f"more than the {memory.format_bytes(need.total)} of memory available" in str(err.value)
    # sampling and scoring need the weights only
    assert build_model(config, 65, training=False).vocab_size == 65
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": need.weights)
    with pytest.raises(cfg.ConfigError, match=r"the weights of model\.layers need"):
        build_model(config, 65, training=False)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": None)  # unknown: not refused
    assert cfg.check_memory(config, 65) == need


def test_an_allocation_that_fails_anyway_is_one_error(monkeypatch):
    from charlm.checkpoint import build_model
    from models import CharLM

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.0 TiB")

    monkeypatch.setattr(CharLM, "from_layers", out_of_memory)
    with pytest.raises(cfg.ConfigError, match="cannot be allocated: out of memory"):
        build_model(cfg.defaults(), 65)


def test_available_memory_from_meminfo_and_cgroups(tmp_path):
    from charlm import memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2000000 kB\n")
    assert memory._meminfo_available(meminfo) == 2_000_000 * 1024
    meminfo.write_text("garbage")
    assert memory._meminfo_available(meminfo) is None
    root = tmp_path / "cgroup"
    (root / "memory" / "jobs" / "me").mkdir(parents=True)
    (root / "memory" / "jobs" / "me" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    (root / "memory" / "jobs" / "memory.limit_in_bytes").write_text("1000000\n")
    (root / "memory" / "jobs" / "memory.usage_in_bytes").write_text("400000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/jobs/me\n3:cpu:/\n")
    assert memory.cgroup_available(proc, root) == 600_000  # the parent's limit binds
    (root / "user.slice").mkdir()
    (root / "user.slice" / "memory.max").write_text("500000\n")
    (root / "user.slice" / "memory.current").write_text("100000\n")
    proc.write_text("0::/user.slice\n")
    assert memory.cgroup_available(proc, root) == 400_000
    (root / "user.slice" / "memory.max").write_text("max\n")
    assert memory.cgroup_available(proc, root) is None
    assert memory.host_available_bytes() is None or memory.host_available_bytes() > 0
