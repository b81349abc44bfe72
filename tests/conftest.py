"""Shared fixtures: every test that takes ``device`` runs on NumPy and, where present, on CuPy.

``TINYGRAPH_REQUIRE_GPU=1`` turns "no GPU here" from a skip into a failure, for the runs on GPU
machines: a broken CuPy or driver must not leave a green run in which every GPU case skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache

import pytest

import models
import tinygraph as tg
from models import cells
from tinygraph.ops import workspace

REQUIRE_GPU = "TINYGRAPH_REQUIRE_GPU"


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


def switched_on(variable: str) -> bool:
    """True when an environment switch such as TINYGRAPH_REQUIRE_GPU is set (anything but '', 0, false, no)."""
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no")


def gpu_required() -> bool:
    """True when TINYGRAPH_REQUIRE_GPU asks for the GPU tests to run."""
    return switched_on(REQUIRE_GPU)


def skip_without_gpu() -> None:
    """Skip the calling test, with the reason, where the GPU backend is unavailable; fail instead
    when TINYGRAPH_REQUIRE_GPU is set."""
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    if gpu_required():
        pytest.fail(f"{REQUIRE_GPU} is set but the GPU backend is unavailable: {reason}", pytrace=False)
    pytest.skip(f"GPU backend not tested here: {reason}")


@pytest.fixture(params=["cpu", "gpu"])
def device(request: pytest.FixtureRequest) -> Iterator[str]:
    """The default device for the test: 'cpu' (NumPy) or 'gpu' (CuPy, skipped with its reason)."""
    if request.param == "gpu":
        skip_without_gpu()
    previous = tg.get_device()
    tg.set_device(request.param)
    try:
        yield request.param
    finally:
        tg.set_device(previous)


@pytest.fixture(autouse=True)
def _fresh_random_stream() -> None:
    tg.manual_seed(0)


@pytest.fixture
def pooled_workspace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The workspace pool engaged for arrays of every size (it normally starts at MIN_BYTES = 1 MiB,
    above every array of the gradient checks), and empty before and after the test."""
    workspace.clear()
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    try:
        yield
    finally:
        workspace.clear()


@pytest.fixture(params=[False, True], ids=["no-pool", "pool"])
def workspace_pool(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run the test as usual, then again with the pool reusing arrays of every size (see above).

    The pooled run must have taken arrays from the pool, or it tested nothing new.
    """
    if not request.param:
        yield False
        return
    if "device" in request.fixturenames and request.getfixturevalue("device") == "gpu":
        pytest.skip("the workspace pool serves NumPy arrays only (CuPy has a memory pool of its own)")
    request.getfixturevalue("pooled_workspace")
    yield True
    assert workspace.held_bytes() > 0, "the test never took an array from the workspace pool"


@pytest.fixture(params=["numba", "numpy"])
def gate_math(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with each CPU gate math of the fused cells: compiled (numba) and the NumPy reference.

    Where numba is not installed its case skips, saying so; with TINYGRAPH_REQUIRE_NUMBA=1 (CI,
    whose ``make`` installs numba) that is a failure instead.
    """
    if request.param not in cells.gate_maths():
        if switched_on("TINYGRAPH_REQUIRE_NUMBA"):
            pytest.fail("numba is required here (TINYGRAPH_REQUIRE_NUMBA) but cannot be imported")
        pytest.skip("numba is not installed: the compiled gate math is not tested here")
    previous = cells.get_gate_math()
    cells.set_gate_math(request.param)
    try:
        yield request.param
    finally:
        cells.set_gate_math(previous)


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
