"""Learning-rate schedules: plateau patience, warm-up ramp, cosine shape and end value, state round trips,
and the events every schedule answers alike (on_step, on_eval, on_resume)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.optim import SGD
from tinygraph.schedules import CosineWithWarmup, FixedLR, ReduceLROnPlateau, Schedule


def optimizer(lr: float = 1.0) -> SGD:
    return SGD([tg.tensor(np.zeros(2), requires_grad=True)], lr=lr)


def test_plateau_waits_patience_then_halves():
    opt = optimizer(1.0)
    sched = ReduceLROnPlateau(opt, factor=0.5, patience=2)
    assert sched.step(10.0) == 1.0  # first metric is the best so far
    assert sched.step(9.0) == 1.0  # improvement
    assert sched.step(9.5) == 1.0  # bad 1
    assert sched.step(9.0) == 1.0  # bad 2 (equal is not better)
    assert sched.step(9.2) == 0.5  # bad 3 > patience: reduce, count restarts
    assert sched.num_bad == 0 and sched.num_reductions == 1
    assert sched.step(9.1) == 0.5
    assert sched.step(9.1) == 0.5
    assert sched.step(8.0) == 0.5  # improvement resets the count
    assert sched.step(8.5) == 0.5 and sched.step(8.5) == 0.5
    assert sched.step(8.5) == 0.25
    assert opt.lr == 0.25


def test_plateau_patience_zero_reduces_on_every_bad_step():
    opt = optimizer(1.0)
    sched = ReduceLROnPlateau(opt, factor=0.1, patience=0)
    sched.step(1.0)
    sched.step(2.0)
    assert opt.lr == pytest.approx(0.1)
    sched.step(3.0)
    assert opt.lr == pytest.approx(0.01)


def test_plateau_threshold_is_relative_and_min_lr_is_a_floor():
    opt = optimizer(1.0)
    sched = ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.01, min_lr=0.3)
    sched.step(100.0)
    sched.step(99.5)  # less than 1% better: not an improvement
    assert opt.lr == 0.5 and sched.best == 100.0
    sched.step(98.0)  # 2% better
    assert opt.lr == 0.5 and sched.best == 98.0
    sched.step(float("nan"))  # counts as bad
    assert opt.lr == 0.3
    sched.step(99.0)
    assert opt.lr == 0.3 and sched.num_reductions == 2


def test_plateau_state_round_trip():
    opt = optimizer(1.0)
    sched = ReduceLROnPlateau(opt, patience=3)
    for m in [5.0, 4.0, 4.5, 4.6]:
        sched.step(m)
    state = json.loads(json.dumps(sched.state_dict()))
    again = ReduceLROnPlateau(optimizer(1.0), patience=7)
    again.load_state_dict(state)
    assert again.best == 4.0 and again.num_bad == 2 and again.patience == 3
    # both continue identically: two more bad steps reduce
    for s in (sched, again):
        s.step(4.7)
        s.step(4.8)
        assert s.optimizer.lr == 0.5
    # before any metric, best is None (JSON has no infinity), and the state survives JSON
    fresh = ReduceLROnPlateau(optimizer()).state_dict()
    assert fresh["best"] is None
    assert json.loads(json.dumps(fresh)) == fresh


def test_warmup_ramp_then_cosine_to_min_lr():
    opt = optimizer(0.0)
    sched = CosineWithWarmup(opt, base_lr=1.0, warmup_steps=4, total_steps=14, min_lr=0.1)
    ramp = [sched.step(s) for s in range(4)]
    assert ramp == [0.25, 0.5, 0.75, 1.0]
    assert sched.step(4) == 1.0  # cosine starts at the top
    assert sched.step(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down
    # cos(pi/10) = 0.9510565163
    assert sched.step(5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + 0.9510565163))
    lrs = [sched.step(s) for s in range(4, 15)]
    assert all(a > b for a, b in itertools.pairwise(lrs))  # strictly decreasing
    assert sched.step(14) == pytest.approx(0.1) and opt.lr == pytest.approx(0.1)
    assert sched.step(1000) == pytest.approx(0.1)  # stays at the end value


def test_cosine_without_warmup_and_state_round_trip():
    opt = optimizer()
    sched = CosineWithWarmup(opt, base_lr=0.5, warmup_steps=0, total_steps=10)
    assert sched.step(0) == 0.5
    assert sched.step(10) == pytest.approx(0.0, abs=1e-15)
    sched.step(3)
    again = CosineWithWarmup(optimizer(), base_lr=9.0, warmup_steps=1, total_steps=2)
    again.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    assert again.last_step == 3 and again.lr_at(3) == sched.lr_at(3) == opt.lr
    assert again.lr_at(6) == pytest.approx(0.25 * (1 + math.cos(math.pi * 0.6)))


def test_each_schedule_follows_its_own_event_and_ignores_the_other():
    fixed, plateau = FixedLR(optimizer(1.0)), ReduceLROnPlateau(optimizer(1.0), patience=0)
    cosine = CosineWithWarmup(optimizer(0.0), base_lr=1.0, warmup_steps=2, total_steps=10)
    for sched in (fixed, plateau, cosine):
        assert isinstance(sched, Schedule)
    for s in range(3):
        for sched in (fixed, plateau, cosine):
            sched.on_step(s)
    assert fixed.optimizer.lr == 1.0 and plateau.optimizer.lr == 1.0  # they ignore steps
    assert cosine.optimizer.lr == cosine.lr_at(2) and cosine.last_step == 2
    for loss in (3.0, 4.0):
        for sched in (fixed, plateau, cosine):
            sched.on_eval(loss)
    assert fixed.optimizer.lr == 1.0 and cosine.optimizer.lr == cosine.lr_at(2)  # they ignore evaluations
    assert plateau.optimizer.lr == 0.5 and plateau.best == 3.0  # the second loss was no better: patience 0


def test_on_resume_takes_back_only_what_the_schedule_cannot_recompute():
    saved = ReduceLROnPlateau(optimizer(), patience=5)
    saved.on_eval(2.0)
    saved.on_eval(2.5)
    plateau = ReduceLROnPlateau(optimizer())
    plateau.on_resume(json.loads(json.dumps(saved.state_dict())))
    assert plateau.best == 2.0 and plateau.num_bad == 1 and plateau.patience == 5
    for state in (None, {"kind": "cosine", "last_step": 3}, {"kind": "none"}):  # another schedule's, or none
        fresh = ReduceLROnPlateau(optimizer())
        fresh.on_resume(state)
        assert fresh.best is None and fresh.num_bad == 0
    # the cosine rate is a function of the step and of its settings, which the resumed run may change
    old = CosineWithWarmup(optimizer(), base_lr=1.0, warmup_steps=0, total_steps=10)
    old.on_step(4)
    longer = CosineWithWarmup(optimizer(), base_lr=1.0, warmup_steps=0, total_steps=40)
    longer.on_resume(old.state_dict())
    assert longer.total_steps == 40
    fixed = FixedLR(optimizer(0.3))
    fixed.on_resume({"kind": "plateau"})
    assert fixed.optimizer.lr == 0.3 and fixed.state_dict() == {"kind": "none"}


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda o: ReduceLROnPlateau(o, factor=1.5), "factor"),
        (lambda o: ReduceLROnPlateau(o, patience=-1), "patience"),
        (lambda o: CosineWithWarmup(o, 1.0, warmup_steps=5, total_steps=3), "warmup_steps"),
        (lambda o: CosineWithWarmup(o, 1.0, warmup_steps=0, total_steps=0), "total_steps"),
        (lambda o: CosineWithWarmup(o, 1.0, 0, 10, min_lr=2.0), "min_lr"),
        (lambda o: CosineWithWarmup(o, 1.0, 0, 10).step(-1), "step"),
        (lambda o: ReduceLROnPlateau(o).load_state_dict({"kind": "cosine"}), "'cosine'"),
        (lambda o: CosineWithWarmup(o, 1.0, 0, 10).load_state_dict({"kind": "cosine"}), "lacks"),
    ],
)
def test_bad_settings_are_user_errors(build, match):
    with pytest.raises(tg.TinygraphError, match=match):
        build(optimizer())


def test_cosine_to_end_reaches_min_lr_exactly_when_the_run_ends():
    from tinygraph.schedules import CosineToEnd

    opt = optimizer()
    sched = CosineToEnd(opt, base_lr=1.0, warmup_steps=0, total_steps=100, min_lr=0.1)
    sched.on_step(5, progress=0.0)
    assert opt.lr == 1.0
    sched.on_step(6, progress=0.5)  # half the time budget spent, whatever the step
    assert opt.lr == pytest.approx(0.55)
    sched.on_step(7, progress=1.0)
    assert opt.lr == pytest.approx(0.1) and sched.last_progress == 1.0
    sched.on_step(8, progress=1.7)  # past the end: stays at the floor
    assert opt.lr == pytest.approx(0.1)
    # no progress given: the fraction of the steps, a function of the step alone (exact resumes)
    assert sched.lr_at(50) == pytest.approx(0.55) and sched.lr_at(100) == pytest.approx(0.1)
    warm = CosineToEnd(optimizer(), base_lr=1.0, warmup_steps=4, total_steps=100)
    assert warm.lr_at(0, 0.0) == 0.25 and warm.lr_at(3, 0.0) == 1.0
    assert warm.lr_at(1, 0.5) == pytest.approx(0.5 * 0.5)  # the warm-up scales the cosine
    state = json.loads(json.dumps(sched.state_dict()))
    assert state["kind"] == "cosine_to_end"
    again = CosineToEnd(optimizer(), base_lr=1.0, warmup_steps=0, total_steps=100)
    again.on_resume(state)  # nothing to take back: progress is reported afresh
    assert again.last_progress is None
    with pytest.raises(tg.TinygraphError, match="min_lr"):
        CosineToEnd(optimizer(), base_lr=1.0, warmup_steps=0, total_steps=10, min_lr=2.0)
