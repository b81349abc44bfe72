"""tg.gradcheck and tg.gradcheck_directional: they pass correct ops and catch wrong backwards."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tinygraph as tg


class Square(tg.Op):
    """y = x^2, with a switch for a deliberately wrong backward."""

    name = "square"

    def __init__(self, bug: bool = False):
        self.bug = bug

    def forward(self, x: Any) -> Any:
        self.x = x
        return x * x

    def backward(self, gy: Any) -> Any:
        return gy * (3 if self.bug else 2) * self.x  # the bug: 3x instead of 2x


class ScaledProduct(tg.Op):
    """y = a * b; the bug drops a factor in b's gradient only."""

    name = "scaled_product"

    def forward(self, a: Any, b: Any) -> Any:
        self.a, self.b = a, b
        return a * b

    def backward(self, gy: Any) -> tuple[Any, Any]:
        return gy * self.b, gy * self.a * 1.001


class SignFlipForSmallValues(tg.Op):
    """y = x^3 with a backward that is wrong only at one element: a subtle bug."""

    name = "cube"

    def forward(self, x: Any) -> Any:
        self.x = x
        return x**3

    def backward(self, gy: Any) -> Any:
        g = 3 * self.x**2 * gy
        g.reshape(-1)[0] *= -1
        return g


def fresh(cls: type[tg.Op], **kw: Any) -> Callable[..., Any]:
    """A function applying a new op instance per call (an op holds one application's saved arrays)."""

    def apply(*xs: Any) -> Any:
        return cls(**kw)(*xs)

    return apply


X = np.linspace(-1.5, 2.0, 6).reshape(2, 3)


def test_correct_op_passes(device: str) -> None:
    result = tg.gradcheck(fresh(Square), [X])
    assert result.ok and bool(result)
    assert result.errors[0] < 1e-8
    assert "ok" in str(result)


def test_wrong_backward_fails(device: str) -> None:
    result = tg.gradcheck(fresh(Square, bug=True), [X])
    assert not result.ok and not bool(result)
    assert result.worst == pytest.approx(1 / 3, rel=1e-6)  # |3x - 2x| / max|3x|
    assert "FAILED" in str(result)


def test_a_wrong_single_element_fails(device: str) -> None:
    assert not tg.gradcheck(fresh(SignFlipForSmallValues), [X]).ok


def test_errors_are_reported_per_input(device: str) -> None:
    a, b = X, X[::-1] + 3.0
    result = tg.gradcheck(fresh(ScaledProduct), [a, b])
    assert len(result.errors) == 2
    assert result.errors[0] < 1e-8  # a's gradient is right
    assert result.errors[1] == pytest.approx(1e-3, rel=1e-3)  # b's is off by 0.1 %
    assert not result.ok
    assert result.worst == result.errors[1]


def test_integer_inputs_report_none(device: str) -> None:
    targets = np.array([0, 2])
    result = tg.gradcheck(tg.softmax_cross_entropy, [X, targets])
    assert result.ok, str(result)
    assert result.errors[1] is None and result.errors[0] is not None
    assert "-" in str(result)


def test_directional_check_passes_and_catches_the_bug(device: str) -> None:
    good = tg.gradcheck_directional(lambda x, w: tg.tanh(x @ Square()(w)), [X, X.T])
    assert good.ok, str(good)
    assert good.errors[0] < 1e-8
    bad = tg.gradcheck_directional(lambda x, w: tg.tanh(x @ Square(bug=True)(w)), [X, X.T])
    assert not bad.ok
    assert bad.worst > 1e-3


def test_directional_check_skips_integer_inputs(device: str) -> None:
    result = tg.gradcheck_directional(tg.softmax_cross_entropy, [X, np.array([1, 0])])
    assert result.ok, str(result)


def test_multiple_outputs_are_all_checked(device: str) -> None:
    def fn(x: tg.Tensor) -> tuple[tg.Tensor, tg.Tensor]:
        return Square()(x), Square(bug=True)(x) * 0.5

    assert not tg.gradcheck(fn, [X]).ok


def test_inputs_are_copied_to_float64_and_left_untouched(device: str) -> None:
    x32 = tg.tensor(X.astype(np.float32), requires_grad=True)
    before = x32.numpy().copy()
    seen = []

    def fn(t: tg.Tensor) -> tg.Tensor:
        seen.append(t.dtype)
        return t * t

    assert tg.gradcheck(fn, [x32]).ok
    assert set(seen) == {np.dtype(np.float64)}
    np.testing.assert_array_equal(x32.numpy(), before)
    assert x32.grad is None


def test_non_contiguous_inputs_are_perturbed(device: str) -> None:
    # a transposed (F-ordered) input: perturbing a flattened copy would leave the input unchanged
    result = tg.gradcheck(lambda x: tg.tanh(x) * x, [np.asfortranarray(X)])
    assert result.ok, str(result)
    assert tg.gradcheck(lambda x: tg.tanh(x) * x, [X.T]).ok


def test_scalar_inputs(device: str) -> None:
    result = tg.gradcheck(lambda a, b: a * b + tg.exp(a), [np.array(0.3), 1.7])
    assert result.ok, str(result)
    assert len(result.errors) == 2


def test_an_input_the_output_ignores_has_zero_error(device: str) -> None:
    result = tg.gradcheck(lambda a, b: a * 2.0, [X, X])
    assert result.ok and result.errors[1] == 0.0


def test_no_floating_input_is_an_error(device: str) -> None:
    with pytest.raises(ValueError, match="no output depends"):
        tg.gradcheck(lambda t: tg.tensor(np.ones(2)) * 2.0, [np.array([1, 2])])


def test_nan_in_any_input_is_worst() -> None:
    result = tg.GradcheckResult([1e-12, float("nan"), None], tol=1e-6)
    assert math.isnan(result.worst) and not result.ok
    assert not tg.GradcheckResult([float("nan"), 1e-12], tol=1e-6).ok


# --- the element-wise check: errors confined to tiny gradient entries ---------------------------------


class WrongWhereTiny(tg.Op):
    """y = exp(x) with a backward 50 % off, but only where the gradient is below 1e-6."""

    name = "exp_wrong_where_tiny"

    def forward(self, x: Any) -> Any:
        self.y = np.exp(x)
        return self.y

    def backward(self, gy: Any) -> Any:
        g = gy * self.y
        return np.where(self.y < 1e-6, 1.5 * g, g)


SPREAD = np.array([-17.0, -15.0, -1.0, 0.0, 1.0, 2.0])  # exp from 4e-8 to 7.4


def test_an_error_confined_to_tiny_entries_passes_the_normalised_check_only() -> None:
    """The limit documented in tg.gradcheck: max |a - n| / max |n| cannot see this bug; rtol_each can."""
    old = tg.gradcheck(fresh(WrongWhereTiny), [SPREAD])
    assert old.ok and old.worst < 1e-7, str(old)  # missed
    new = tg.gradcheck(fresh(WrongWhereTiny), [SPREAD], rtol_each=1e-5)
    assert not new.ok, str(new)  # caught
    assert new.worst == old.worst and new.worst_each > 1e-4  # 20 times over
    assert "element-wise" in str(new) and "FAILED" in str(new)
    # and the correct op passes both
    good = tg.gradcheck(tg.exp, [SPREAD], rtol_each=1e-5)
    assert good.ok and good.worst_each < 1e-5, str(good)


def test_element_wise_errors_are_reported_per_input_and_none_where_not_asked() -> None:
    result = tg.gradcheck(fresh(ScaledProduct), [X, X[::-1] + 3.0], rtol_each=1e-5)
    assert len(result.each) == 2 and result.each[0] < 1e-8
    assert result.each[1] == pytest.approx(1e-3, rel=1e-2)
    plain = tg.gradcheck(lambda x, ids: Square()(x), [X, np.array([1, 2])])
    assert plain.each == [None, None] and plain.rtol_each is None and plain.ok


def test_numeric_max_says_which_inputs_matter() -> None:
    result = tg.gradcheck(lambda a, b, c: a * 2.0 + b * 1e-3, [X, X, X])
    assert result.numeric_max[0] > 0.5 and 1e-5 < result.numeric_max[1] < 1e-2
    assert result.numeric_max[2] == 0.0  # c is ignored: its gradient is zero, numerically too


def test_a_nan_element_fails_the_element_wise_check() -> None:
    assert not tg.GradcheckResult([1e-9], tol=1e-6, each=[float("nan")], rtol_each=1e-5).ok
    assert tg.GradcheckResult([1e-9], tol=1e-6, each=[1e-6], rtol_each=1e-5).ok


def test_large_inputs_are_differentiated_over_the_step_actually_taken() -> None:
    """Near 1e9, x +- 1e-6 is rounded to a multiple of 1.2e-7: dividing by 2 eps would be 10 % off."""
    result = tg.gradcheck(lambda t: (t - 1e9) * 3.0, [np.array([1e9 + 0.5, 1e9 - 2.0])], rtol_each=1e-8)
    assert result.ok, str(result)
