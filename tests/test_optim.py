"""Optimizers: hand-computed steps, convergence on a quadratic, torch parity, state round trips, clipping."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import backend
from tinygraph.optim import SGD, Adagrad, Adam, AdamW, RMSprop, clip_grad_norm, make

P0 = [1.0, -2.0]
G = [0.5, 0.25]


def param(values, dtype=np.float64):
    return tg.tensor(np.array(values, dtype=dtype), requires_grad=True)


def run_steps(opt, p, grads):
    for g in grads:
        p.grad = backend.default_xp().asarray(np.array(g, dtype=p.data.dtype))
        opt.step()
    return backend.to_numpy(p.data)


# --- one step (or two) against numbers worked out by hand --------------------------------


def test_sgd_plain_step():
    p = param(P0)
    # p - lr g = [1 - 0.05, -2 - 0.025]
    np.testing.assert_allclose(run_steps(SGD([p], lr=0.1), p, [G]), [0.95, -2.025], rtol=0, atol=1e-15)


def test_sgd_momentum_two_steps():
    p = param(P0)
    # step 1: buf = g; step 2: buf = 0.9 g + g = [0.95, 0.475]; p = [0.95 - 0.095, -2.025 - 0.0475]
    out = run_steps(SGD([p], lr=0.1, momentum=0.9), p, [G, G])
    np.testing.assert_allclose(out, [0.855, -2.0725], rtol=0, atol=1e-15)


def test_sgd_nesterov_two_steps():
    p = param(P0)
    # step 1: buf = g, d = g + 0.9 buf = 1.9 g -> p = [0.905, -2.0475]
    # step 2: buf = 1.9 g, d = g + 0.9 * 1.9 g = 2.71 g -> p = [0.905 - 0.1355, -2.0475 - 0.06775]
    out = run_steps(SGD([p], lr=0.1, momentum=0.9, nesterov=True), p, [G, G])
    np.testing.assert_allclose(out, [0.7695, -2.11525], rtol=0, atol=1e-15)


def test_sgd_weight_decay_step():
    p = param(P0)
    # d = g + 0.1 p = [0.6, 0.05]; p - 0.1 d = [0.94, -2.005]
    out = run_steps(SGD([p], lr=0.1, weight_decay=0.1), p, [G])
    np.testing.assert_allclose(out, [0.94, -2.005], rtol=0, atol=1e-15)


def test_sgd_nesterov_needs_momentum():
    with pytest.raises(tg.TinygraphError, match="nesterov"):
        SGD([param(P0)], lr=0.1, nesterov=True)


def test_adagrad_two_steps():
    p = param(P0)
    # step 1: sum = g^2, g / sqrt(sum) = 1 -> p = [0.9, -2.1]
    # step 2: sum = 2 g^2, g / sqrt(sum) = 1 / sqrt(2) -> p -= 0.1 / sqrt(2) = 0.0707106781
    out = run_steps(Adagrad([p], lr=0.1, eps=0.0), p, [G, G])
    np.testing.assert_allclose(out, [0.8292893219, -2.1707106781], rtol=0, atol=1e-10)


def test_rmsprop_step_and_momentum():
    p = param(P0)
    # sq = 0.01 g^2, sqrt = 0.1 |g| -> g / sqrt = 10 sign(g); p -= 0.01 * 10 -> [0.9, -2.1]
    np.testing.assert_allclose(run_steps(RMSprop([p], lr=0.01, eps=0.0), p, [G]), [0.9, -2.1], atol=1e-12)
    p = param(P0)
    # momentum 0.9, two equal grads: buf1 = 10; sq2 = 0.0199 g^2, g / sqrt(sq2) = 7.0888120500;
    # buf2 = 9 + 7.0888120500 = 16.0888120500; p = p - 0.01 (buf1 + buf2) sign(g) = p -+ 0.2608881205
    out = run_steps(RMSprop([p], lr=0.01, eps=0.0, momentum=0.9), p, [G, G])
    np.testing.assert_allclose(out, [0.7391118795, -2.2608881205], rtol=0, atol=1e-10)


def test_adam_two_steps():
    p = param(P0)
    # step 1: m_hat = g, v_hat = g^2 -> p -= 0.1 sign(g) = [0.9, -2.1]
    # step 2 with g2 = [-0.5, 0.25]: m = [-0.005, 0.0475], v = [4.9975e-4, 1.249375e-4],
    #   bias1 = 0.19, bias2 = 0.001999 -> m_hat = [-0.0263157895, 0.25], sqrt(v_hat) = [0.5, 0.25]
    #   p -= 0.1 m_hat / sqrt(v_hat) = [-0.0052631579, 0.1]
    out = run_steps(Adam([p], lr=0.1, eps=0.0), p, [G, [-0.5, 0.25]])
    np.testing.assert_allclose(out, [0.9052631579, -2.2], rtol=0, atol=1e-10)


def test_adam_l2_and_adamw_decoupled_weight_decay():
    p = param(P0)
    # Adam adds 0.5 p to the gradient: g' = [1.0, -0.75] -> p -= 0.1 sign(g') = [0.9, -1.9]
    np.testing.assert_allclose(run_steps(Adam([p], lr=0.1, eps=0.0, weight_decay=0.5), p, [G]), [0.9, -1.9])
    p = param(P0)
    # AdamW shrinks first: p *= 1 - 0.1 * 0.5 -> [0.95, -1.9], then p -= 0.1 sign(g) -> [0.85, -2.0]
    np.testing.assert_allclose(run_steps(AdamW([p], lr=0.1, eps=0.0, weight_decay=0.5), p, [G]), [0.85, -2.0])


def test_adamw_default_weight_decay():
    assert AdamW([param(P0)], lr=0.1).weight_decay == 0.01
    assert Adam([param(P0)], lr=0.1).weight_decay == 0.0


# --- behaviour common to all ---------------------------------------------------------------

ALL = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("adagrad", {"lr": 0.5}),
    ("rmsprop", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5}),
    ("adam", {"lr": 0.05}),
    ("adamw", {"lr": 0.05}),
]


@pytest.mark.parametrize(("name", "kw"), ALL)
def test_minimises_a_quadratic(name, kw):
    """f(p) = 0.5 sum a (p - c)^2 through the graph; every optimizer gets close to c."""
    a = tg.tensor(np.array([1.0, 3.0, 0.5, 2.0]))
    c = tg.tensor(np.array([0.5, -1.0, 2.0, 0.0]))
    p = tg.tensor(np.zeros(4, dtype=np.float32), requires_grad=True)
    opt = make(name, [p], **kw)

    def loss():
        return (((p - c) ** 2) * a).sum() * 0.5

    start = loss().item()
    for _ in range(400):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 1e-3 * start
    np.testing.assert_allclose(p.numpy(), c.numpy(), atol=0.05)


@pytest.mark.parametrize(("name", "kw"), ALL)
def test_step_is_in_place_keeps_dtype_and_leaves_grads_alone(device, name, kw):
    p = tg.tensor(np.array([[1.0, -2.0, 3.0]], dtype=np.float32), requires_grad=True)
    q = tg.tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    opt = make(name, [p, q], weight_decay=0.1, **kw)
    data_before = p.data
    g = backend.default_xp().asarray(np.array([[0.5, 0.25, -1.0]], dtype=np.float32))
    p.grad = g
    g_copy = backend.to_numpy(g).copy()
    opt.step()
    opt.step()
    assert p.data is data_before and p.data.dtype == np.float32
    assert backend.get_array_module(p.data) is backend.default_xp()
    np.testing.assert_array_equal(backend.to_numpy(p.grad), g_copy)  # the graph may share grads: read only
    np.testing.assert_array_equal(q.numpy(), np.ones(2, dtype=np.float32))  # no grad: skipped
    assert opt.param_steps == [2, 0] and opt.step_count == 2
    arrays, _ = opt.state_dict()
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert all(k.endswith(".0") for k in arrays)  # no buffers for a parameter that never stepped


def test_zero_grad():
    p, q = param(P0), param(P0)
    p.grad = np.ones(2)
    opt = SGD([p, q], lr=0.1)
    opt.zero_grad()
    assert p.grad is None and q.grad is None


def test_gradient_shape_mismatch_is_a_clear_error():
    p = param(P0)
    p.grad = np.ones(3)
    with pytest.raises(tg.TinygraphError, match=r"shape \(3,\)"):
        SGD([p], lr=0.1).step()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda ps: SGD(ps, lr=-1.0), "lr"),
        (lambda ps: Adam(ps, lr=0.1, betas=(1.0, 0.999)), "beta1"),
        (lambda ps: RMSprop(ps, lr=0.1, alpha=1.5), "alpha"),
        (lambda ps: SGD([], lr=0.1), "at least one"),
        (lambda ps: SGD([ps[0], ps[0]], lr=0.1), "twice"),
        (lambda ps: SGD([np.ones(2)], lr=0.1), "not a Tensor"),
    ],
)
def test_bad_settings_are_user_errors(build, match):
    with pytest.raises(tg.TinygraphError, match=match):
        build([param(P0)])


def test_make_names_and_options():
    p = param(P0)
    for name, cls in [("sgd", SGD), ("adagrad", Adagrad), ("rmsprop", RMSprop), ("adam", Adam), ("AdamW", AdamW)]:
        opt = make(name, [p], 0.01, weight_decay=0.1)
        assert type(opt) is cls and opt.weight_decay == 0.1 and opt.lr == 0.01
    assert make("sgd", [p], 0.1, momentum=0.8, nesterov=True).nesterov
    with pytest.raises(tg.TinygraphError, match="sgd, adagrad, rmsprop, adam, adamw"):
        make("lbfgs", [p], 0.1)
    with pytest.raises(tg.TinygraphError, match="adam"):
        make("adam", [p], 0.1, momentum=0.9)


# --- state ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kw"), [*ALL, ("sgd", {"lr": 0.1, "momentum": 0.9})])
def test_state_dict_resume_continues_identically(device, name, kw):
    rng = np.random.default_rng(1)
    init = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    grads = [[rng.standard_normal(a.shape).astype(np.float32) for a in init] for _ in range(6)]

    def fresh():
        ps = [tg.tensor(a.copy(), requires_grad=True) for a in init]
        return ps, make(name, ps, weight_decay=0.01, **kw)

    def run(ps, opt, gs):
        for step_grads in gs:
            for p, g in zip(ps, step_grads):
                p.grad = backend.default_xp().asarray(g)
            opt.step()

    ps_a, opt_a = fresh()
    run(ps_a, opt_a, grads)  # uninterrupted

    ps_b, opt_b = fresh()
    run(ps_b, opt_b, grads[:3])
    opt_b.lr *= 0.5  # a schedule changed it: must come back too
    arrays, meta = opt_b.state_dict()
    meta = json.loads(json.dumps(meta))  # metadata is JSON-able
    ps_c = [tg.tensor(p.numpy(), requires_grad=True) for p in ps_b]
    opt_c = make(name, ps_c, lr=123.0, weight_decay=0.5)  # wrong settings, fixed by the load
    opt_c.load_state_dict(arrays, meta)
    assert opt_c.lr == opt_b.lr and opt_c.step_count == 3 and opt_c.weight_decay == 0.01
    for buf in arrays.values():
        np.add(buf, 1.0, out=buf)  # the optimizer holds its own copies
    opt_c.lr *= 2.0
    run(ps_c, opt_c, grads[3:])
    for pa, pc in zip(ps_a, ps_c):
        np.testing.assert_array_equal(pa.numpy(), pc.numpy())


def test_load_state_dict_mismatches_raise_and_change_nothing():
    p, q = param([[1.0, 2.0]]), param([3.0])
    opt = Adam([p, q], lr=0.1)
    p.grad, q.grad = np.ones((1, 2)), np.ones(1)
    opt.step()
    arrays, meta = opt.state_dict()
    assert sorted(arrays) == ["m.0", "m.1", "v.0", "v.1"]
    assert meta["kind"] == "adam" and meta["step"] == 1 and meta["hyper"]["betas"] == [0.9, 0.999]

    with pytest.raises(tg.TinygraphError, match=r"'adam'.*'sgd'"):
        SGD([p, q], lr=0.1).load_state_dict(arrays, meta)
    with pytest.raises(tg.TinygraphError, match="2 parameters"):
        Adam([p], lr=0.1).load_state_dict(arrays, meta)
    with pytest.raises(tg.TinygraphError, match="shape"):
        Adam([q, p], lr=0.1).load_state_dict(arrays, meta)
    bad = {**arrays, "m.1": np.zeros(4)}
    target = Adam([p, q], lr=0.5)
    with pytest.raises(tg.TinygraphError, match=r"'m\.1'"):
        target.load_state_dict(bad, meta)
    with pytest.raises(tg.TinygraphError, match="unexpected"):
        target.load_state_dict({**arrays, "w.0": np.zeros((1, 2))}, meta)
    with pytest.raises(tg.TinygraphError, match="malformed"):
        target.load_state_dict(arrays, {"kind": "adam"})
    assert target.lr == 0.5 and target.step_count == 0 and target.state["m"] == [None, None]


# --- parity with torch.optim ---------------------------------------------------------------

TORCH_CASES = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adagrad", {"lr": 0.1, "eps": 1e-10, "weight_decay": 0.02}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.9, "eps": 1e-8}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.01}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-8}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}),
]


@pytest.mark.parametrize(("name", "kw"), TORCH_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch_optim(name, kw, dtype):
    torch = pytest.importorskip("torch")
    torch_cls = {
        "sgd": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": torch.optim.RMSprop,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
    }[name]
    rng = np.random.default_rng(7)
    init = [rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal(6).astype(dtype)]
    ours = [tg.tensor(a.copy(), requires_grad=True) for a in init]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt = make(name, ours, **kw)
    topt = torch_cls(theirs, **kw)
    for step in range(6):
        for i, (p, t) in enumerate(zip(ours, theirs)):
            if step == 2 and i == 1:  # a step without a gradient for one parameter
                p.grad, t.grad = None, None
                continue
            g = rng.standard_normal(p.shape).astype(dtype)
            p.grad, t.grad = g, torch.tensor(g)
        if step == 4:
            opt.lr = topt.param_groups[0]["lr"] = kw["lr"] * 0.5  # as a schedule would
        opt.step()
        topt.step()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=tol, atol=tol)


# --- clipping ------------------------------------------------------------------------------


def test_clip_scales_to_max_norm_and_returns_the_norm():
    p, q = param([0.0, 0.0]), param([0.0])
    p.grad, q.grad = np.array([3.0, 4.0]), np.array([12.0])  # global norm 13
    g = p.grad
    norm = clip_grad_norm([p, q], 6.5)
    assert type(norm) is float and norm == 13.0
    scale = 6.5 / (13.0 + 1e-6)
    assert p.grad is g  # in place
    np.testing.assert_allclose(p.grad, [3.0 * scale, 4.0 * scale], rtol=1e-15)
    np.testing.assert_allclose(q.grad, [12.0 * scale], rtol=1e-15)


def test_clip_below_the_limit_changes_nothing():
    p = param([0.0, 0.0])
    p.grad = np.array([3.0, 4.0])
    q = param([1.0])  # no grad: ignored
    assert clip_grad_norm([p, q], 5.0) == 5.0
    np.testing.assert_array_equal(p.grad, [3.0, 4.0])
    assert q.grad is None and clip_grad_norm([q], 1.0) == 0.0


def test_clip_shared_and_view_gradients_are_scaled_once():
    block = np.array([3.0, 4.0, 0.0, 0.0])
    a, b, c, d = (param(np.zeros(s)) for s in [(4,), (4,), (2,), (2, 2)])
    a.grad = block
    b.grad = block  # one array for two parameters (what an add's backward hands out)
    other = np.array([1.0, 2.0, 2.0, 0.0])
    c.grad = other[:2]  # disjoint views of one block (a concat's backward)
    d.grad = other.reshape(2, 2)  # and an overlapping one
    norm = clip_grad_norm([a, b, c, d], 1.0)
    expected_norm = np.sqrt(2 * 25.0 + 5.0 + 9.0)
    assert norm == pytest.approx(expected_norm)
    s = 1.0 / (expected_norm + 1e-6)
    np.testing.assert_allclose(a.grad, [3 * s, 4 * s, 0, 0])
    np.testing.assert_allclose(b.grad, [3 * s, 4 * s, 0, 0])
    np.testing.assert_allclose(c.grad, [1 * s, 2 * s])
    np.testing.assert_allclose(d.grad, [[1 * s, 2 * s], [2 * s, 0]])
    total = sum(float((x.grad**2).sum()) for x in [a, b, c, d])
    assert np.sqrt(total) == pytest.approx(1.0, rel=1e-5)


def test_clip_through_a_real_graph_with_a_shared_gradient():
    a = tg.tensor(np.zeros(3), requires_grad=True)
    b = tg.tensor(np.zeros(3), requires_grad=True)
    ((a + b) * tg.tensor(np.array([2.0, 2.0, 1.0]))).sum().backward()
    norm = clip_grad_norm([a, b], 1.0)
    assert norm == pytest.approx(np.sqrt(2 * 9.0))
    expected = np.array([2.0, 2.0, 1.0]) / (norm + 1e-6)
    np.testing.assert_allclose(a.grad, expected)
    np.testing.assert_allclose(b.grad, expected)


def test_clip_read_only_gradient_gets_a_scaled_copy():
    p = param([0.0, 0.0])
    ro = np.array([30.0, 40.0])
    ro.flags.writeable = False
    p.grad = ro
    assert clip_grad_norm([p], 5.0) == 50.0
    np.testing.assert_allclose(p.grad, [3.0, 4.0], rtol=1e-6)
    np.testing.assert_array_equal(ro, [30.0, 40.0])


def test_clip_non_finite_norm_is_reported_not_applied():
    p = param([0.0, 0.0])
    p.grad = np.array([np.inf, 1.0])
    assert clip_grad_norm([p], 1.0) == np.inf
    np.testing.assert_array_equal(p.grad, [np.inf, 1.0])
    with pytest.raises(tg.TinygraphError, match="max_norm"):
        clip_grad_norm([p], 0.0)


def test_clip_on_device(device):
    p = tg.tensor(np.zeros(2, dtype=np.float32), requires_grad=True)
    p.grad = backend.default_xp().asarray(np.array([30.0, 40.0], dtype=np.float32))
    assert clip_grad_norm([p], 5.0) == pytest.approx(50.0)
    assert p.grad.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(p.grad), [3.0, 4.0], rtol=1e-5)
