"""Shared fixtures: every test that takes ``device`` runs on NumPy and, where present, on CuPy."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import pytest

import models
import tinygraph as tg


@cache
def gpu_unavailable_reason() -> str | None:
    """Why the CuPy backend cannot be tested here (None when it can)."""
    previous = tg.get_device()
    try:
        tg.set_device("gpu")
    except tg.DeviceError as exc:
        return str(exc)
    tg.set_device(previous)
    return None


@pytest.fixture(params=["cpu", "gpu"])
def device(request: pytest.FixtureRequest) -> Iterator[str]:
    """The default device for the test: 'cpu' (NumPy) or 'gpu' (CuPy, skipped with its reason)."""
    if request.param == "gpu":
        reason = gpu_unavailable_reason()
        if reason:
            pytest.skip(f"GPU backend not tested here: {reason}")
    previous = tg.get_device()
    tg.set_device(request.param)
    try:
        yield request.param
    finally:
        tg.set_device(previous)


@pytest.fixture(autouse=True)
def _fresh_random_stream() -> None:
    tg.manual_seed(0)


def bind(module: models.Module, tensors: dict[str, tg.Tensor]) -> None:
    """Make ``module`` compute with the given tensors as its parameters (so gradcheck can perturb them)."""
    for name, t in tensors.items():
        *path, leaf = name.split(".")
        owner = module
        for part in path:
            owner = owner._children[part]
        old = owner._params[leaf]
        owner._params[leaf] = t
        if getattr(owner, leaf, None) is old:
            setattr(owner, leaf, t)
