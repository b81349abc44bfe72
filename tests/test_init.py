"""Initialisers: shapes, dtypes, devices, statistics, orthogonality, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import backend, init


def host(a):
    return backend.to_numpy(a)


def test_uniform_range_mean_and_dtype(device):
    w = init.uniform((200, 300), -0.08, 0.08)
    assert backend.get_array_module(w) is backend.default_xp()
    assert w.shape == (200, 300) and w.dtype == np.float32
    h = host(w)
    assert h.min() >= -0.08 and h.max() <= 0.08
    assert abs(h.mean()) < 0.002  # 60,000 draws: the mean's std is 0.08/sqrt(3)/245 ~ 0.0002
    assert h.std() == pytest.approx(0.16 / np.sqrt(12), rel=0.02)
    assert init.uniform(5, 0.0, 1.0, dtype=np.float64).dtype == np.float64


def test_xavier_uniform_bound_and_variance():
    w = host(init.xavier_uniform((100, 400), gain=2.0))
    bound = 2.0 * np.sqrt(6.0 / 500)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert w.var() == pytest.approx(bound**2 / 3, rel=0.03)  # = gain^2 * 2 / (fan_in + fan_out)
    # trailing dimensions count as receptive field, as in torch
    w3 = host(init.xavier_uniform((8, 4, 3)))
    assert np.abs(w3).max() <= np.sqrt(6.0 / (12 + 24))


@pytest.mark.parametrize("shape", [(16, 16), (64, 16), (16, 64), (12, 2, 3)])
def test_orthogonal(shape):
    w = host(init.orthogonal(shape, gain=1.0, dtype=np.float64))
    assert w.shape == shape and w.dtype == np.float64
    m = w.reshape(shape[0], -1)
    rows, cols = m.shape
    if rows >= cols:
        np.testing.assert_allclose(m.T @ m, np.eye(cols), atol=1e-12)  # W^T W = I
    else:
        np.testing.assert_allclose(m @ m.T, np.eye(rows), atol=1e-12)  # W W^T = I


def test_orthogonal_lstm_shape_gain_and_float32(device):
    h = 8
    w = init.orthogonal((4 * h, h), gain=0.5)
    assert w.dtype == np.float32 and backend.get_array_module(w) is backend.default_xp()
    w = host(w).astype(np.float64)
    np.testing.assert_allclose(w.T @ w, 0.25 * np.eye(h), atol=1e-6)


def test_orthogonal_is_not_biased_by_qr_signs():
    # without the sign fix, numpy's QR makes R's diagonal negative-leaning; with it the diagonal
    # of many draws of Q has mean ~0
    diag = np.concatenate([np.diag(host(init.orthogonal((4, 4), dtype=np.float64))) for _ in range(300)])
    assert abs(diag.mean()) < 0.1


def test_seeded_and_reproducible():
    tg.manual_seed(123)
    a = host(init.uniform((3, 3), -1, 1))
    b = host(init.orthogonal((4, 2)))
    tg.manual_seed(123)
    np.testing.assert_array_equal(a, host(init.uniform((3, 3), -1, 1)))
    np.testing.assert_array_equal(b, host(init.orthogonal((4, 2))))
    assert not np.array_equal(a, host(init.uniform((3, 3), -1, 1)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: init.uniform((2, 2), 1.0, -1.0), "low <= high"),
        (lambda: init.uniform((2, -1), 0.0, 1.0), "shape"),
        (lambda: init.xavier_uniform((5,)), "2 dimensions"),
        (lambda: init.orthogonal((5,)), "2 dimensions"),
    ],
)
def test_bad_arguments_are_user_errors(call, match):
    with pytest.raises(tg.TinygraphError, match=match):
        call()
