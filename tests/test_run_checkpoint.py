"""charlm.checkpoint: what a run's checkpoint may hold, checked before its arrays are read.

Every checkpoint a run writes, whatever its layers, optimizer and batching, reads back; one whose
arrays do not fit its metadata, or would not fit in memory, is refused with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_config import EVERY_LAYER

from charlm import memory
from charlm.checkpoint import check_layout, read_checkpoint, restore_model
from cli.main import main
from tinygraph import checkpoint as ckpt_io
from tinygraph.checkpoint import CheckpointError

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"
TEXT = "".join(f"Scene {i % 7}: a king, a queen, a knave.\n" for i in range(60))


def toml_layers() -> str:
    """Every layer type, as a --set value (TOML inline tables)."""
    tables = ("{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in t.items()) + "}" for t in EVERY_LAYER)
    return f"model.layers=[{', '.join(tables)}]"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(TEXT)
    return path


@pytest.mark.parametrize(
    "overrides",
    [
        [toml_layers()],
        [toml_layers(), "train.batching=random", "train.optimizer=sgd"],
        ["train.optimizer=rmsprop"],
        ["train.optimizer=adagrad", "model.fused=false"],
        ["train.optimizer=adamw", "train.dropout=0.2"],
    ],
)
def test_every_checkpoint_a_run_writes_reads_back(tmp_path, corpus, capsys, overrides):
    out = tmp_path / "run"
    sets = [a for o in overrides for a in ("--set", o)]
    assert (
        main(["train", "--config", str(TINY), "--corpus", str(corpus), "--out", str(out), "--steps", "3", *sets]) == 0
    )
    capsys.readouterr()
    for name in ("last.npz", "best.npz"):
        ck = read_checkpoint(out / name)
        assert ck.step == 3 and ck.group("model")
        restore_model(ck)
    raw, _ = ckpt_io.load(out / "last.npz")  # nothing was dropped by the checks
    assert sorted(raw) == sorted(read_checkpoint(out / "last.npz").arrays)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--config", str(TINY), "--corpus", str(corpus), "--out", str(out), "--steps", "2"]) == 0
    return ckpt_io.load(out / "last.npz")


def headers(arrays: dict[str, np.ndarray]) -> dict[str, ckpt_io.ArrayHeader]:
    return {k: ckpt_io.ArrayHeader(tuple(a.shape), a.dtype, False) for k, a in arrays.items()}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda a, m: a.pop("model/1.weight_hh_l0"), "lacks the weights 'model/1.weight_hh_l0'"),
        (lambda a, m: a.update({"model/9.weight": np.zeros(2, np.float32)}), "unexpected array 'model/9.weight'"),
        (lambda a, m: a.update({"extra": np.zeros(2, np.float32)}), "unexpected array 'extra'"),
        (lambda a, m: a.update({"optim/m.0": np.zeros((2, 2), np.float32)}), "its parameter has"),
        (lambda a, m: a.update({"optim/evil.0": np.zeros(2, np.float32)}), "unexpected array 'optim/evil.0'"),
        (lambda a, m: a.update({"state/0": np.zeros((1, 4, 99), np.float32)}), "carries (1, batch, 16)"),
        (lambda a, m: a.update({"state/0": np.zeros((1, 3, 16), np.float32)}), "do not fit together"),
        (lambda a, m: a.update({"state/7": np.zeros((1, 4, 16), np.float32)}), "unexpected array 'state/7'"),
        (lambda a, m: m.update({"carried_state": {"tensor": 0}}), "carried_state"),
        (lambda a, m: m.update({"vocab": "abc"}), "damaged metadata"),
        (lambda a, m: m.update({"config": {"train": {"steps": -1}}}), "damaged metadata"),
        (lambda a, m: m.pop("step"), "has no step"),
        (lambda a, m: m.update({"step": -3}), "damaged metadata: step"),
        (lambda a, m: m.update({"best_val_loss": float("nan")}), "best_val_loss"),
        (lambda a, m: m.update({"corpus": {"path": "x", "unknown_char": "ab"}}), "corpus"),
        (lambda a, m: m.update({"kind": "something else"}), "not of a character language model"),
    ],
)
def test_a_layout_that_does_not_fit_its_metadata_is_refused(saved, change, fragment):
    arrays, meta = dict(saved[0]), json.loads(json.dumps(saved[1]))
    change(arrays, meta)
    with pytest.raises(CheckpointError) as info:
        check_layout(meta, headers(arrays))
    assert fragment in str(info.value), str(info.value)


def test_a_checkpoint_larger_than_memory_is_refused_before_reading(tmp_path, saved, monkeypatch):
    arrays, meta = saved
    path = tmp_path / "c.npz"
    ckpt_io.save(path, arrays, meta)
    need = sum(a.nbytes for a in arrays.values())
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": need)  # 90 % of it may be planned on
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert f"its arrays need {memory.format_bytes(need)} of memory" in str(info.value)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 2 * need)
    assert read_checkpoint(path).step == 2
