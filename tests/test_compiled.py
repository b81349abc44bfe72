"""The core's compiled loops (tinygraph.compiled) against their NumPy references, and their fallbacks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from conftest import switched_on

import tinygraph as tg
from tinygraph import compiled, optim


@pytest.fixture
def numba_on() -> Iterator[None]:
    """The compiled loops switched on; without numba the test skips (fails with TINYGRAPH_REQUIRE_NUMBA)."""
    if not compiled.available:
        if switched_on("TINYGRAPH_REQUIRE_NUMBA"):
            pytest.fail("numba is required here (TINYGRAPH_REQUIRE_NUMBA) but cannot be imported")
        pytest.skip("numba is not installed: the compiled loops are not tested here")
    previous = compiled.enabled()
    compiled.set_enabled(True)
    yield
    compiled.set_enabled(previous)


def _train(cls: type[optim.Adam], dtype: type, on: bool, weight_decay: float, steps: int = 25) -> list[np.ndarray]:
    """Parameters after ``steps`` updates with the same random gradients, compiled or NumPy."""
    previous = compiled.enabled()
    compiled.set_enabled(on)
    try:
        rng = np.random.default_rng(0)
        params = [tg.Tensor(rng.standard_normal(s).astype(dtype), True) for s in ((5, 7), (3,), (64, 33), ())]
        opt = cls(params, 3e-2, weight_decay=weight_decay)
        for _ in range(steps):
            for p in params:
                p.grad = rng.standard_normal(p.data.shape).astype(dtype)
            opt.step()
        return [p.data for p in params] + [b for name in ("m", "v") for b in opt.state[name]]
    finally:
        compiled.set_enabled(previous)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-14), (np.float32, 5e-6)])
def test_compiled_adam_follows_the_numpy_update(
    numba_on: None, cls: type[optim.Adam], dtype: type, tol: float, weight_decay: float
) -> None:
    # the compiled loop takes these arrays (so the comparison below is not NumPy against itself)
    p, g, m, v = (np.ones((3, 4), dtype) for _ in range(4))
    hyper = {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": weight_decay}
    assert compiled.adam_update(p, g, m, v, **hyper, decoupled=cls.decoupled, step=1)
    fast, reference = _train(cls, dtype, True, weight_decay), _train(cls, dtype, False, weight_decay)
    for a, b in zip(fast, reference):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_compiled_adam_leaves_arrays_it_does_not_take_to_numpy(numba_on: None) -> None:
    p, m, v = (np.ones((4, 6)) for _ in range(3))
    strided = np.ones((4, 12))[:, ::2]  # a gradient view that is not contiguous
    assert not compiled.adam_update(
        p, strided, m, v, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False, step=1
    )
    assert (p == 1).all() and (m == 1).all() and (v == 1).all()
    # the optimizer then runs its NumPy code on them, with the same result as a contiguous copy
    a, b = tg.Tensor(np.ones((4, 6)), True), tg.Tensor(np.ones((4, 6)), True)
    a.grad, b.grad = strided, np.ascontiguousarray(strided)
    optim.Adam([a], 0.1).step()
    optim.Adam([b], 0.1).step()
    np.testing.assert_allclose(a.data, b.data, rtol=1e-15)


def test_switched_off_the_loops_do_nothing() -> None:
    previous = compiled.enabled()
    compiled.set_enabled(False)
    try:
        p = np.ones(3)
        taken = compiled.adam_update(
            p, p, p.copy(), p.copy(), lr=0.1, betas=(0.9, 0.9), eps=1e-8, weight_decay=0.0, decoupled=False, step=1
        )
        assert not taken and (p == 1).all()
    finally:
        compiled.set_enabled(previous)


@pytest.mark.parametrize("shape", [(1, 1), (3, 70), (2048, 512), (33, 65)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_into_equals_numpy(numba_on: None, shape: tuple[int, int], dtype: type) -> None:
    a = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    out = np.empty(shape[::-1], dtype)
    assert compiled._takes(out, a)  # the tiled loop runs, not NumPy's copy
    compiled.transpose_into(out, a)
    np.testing.assert_array_equal(out, a.T)
    # a strided source goes through NumPy's copy, with the same result
    view = np.asfortranarray(a)
    out2 = np.empty(shape[::-1], dtype)
    compiled.transpose_into(out2, view)
    np.testing.assert_array_equal(out2, a.T)
