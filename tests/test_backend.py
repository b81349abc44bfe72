"""Backend: device choice and its errors, TINYGRAPH_DEVICE read lazily, host/device transfers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REQUIRE_GPU, gpu_unavailable_reason

import tinygraph as tg
from tinygraph import backend

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def restore_device() -> Iterator[None]:
    previous = tg.get_device()
    yield
    tg.set_device(previous)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "TINYGRAPH_DEVICE"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )


def test_gpu_without_cupy_is_a_clear_device_error(restore_device: None) -> None:
    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is available here: the missing-GPU error cannot be provoked")
    before = tg.get_device()
    with pytest.raises(tg.DeviceError, match=r"^(the GPU needs CuPy|CuPy is installed but no (usable )?GPU)") as info:
        tg.set_device("gpu")
    assert isinstance(info.value, tg.TinygraphError)
    message = str(info.value)
    assert "CuPy" in message or "GPU" in message
    assert "\n" not in message
    assert tg.get_device() == before  # a failed switch changes nothing


@pytest.mark.parametrize("name", ["tpu", "cuda:0", "", 3])
def test_unknown_device_names_error(restore_device: None, name: object) -> None:
    with pytest.raises(tg.DeviceError, match="unknown device"):
        tg.set_device(name)  # type: ignore[arg-type]


def test_device_names_are_case_insensitive(restore_device: None) -> None:
    tg.set_device(" CPU ")
    assert tg.get_device() == "cpu"


def test_cpu_device_uses_numpy(restore_device: None) -> None:
    tg.set_device("cpu")
    assert backend.default_xp() is np
    assert isinstance(tg.tensor([1.0]).data, np.ndarray)


def test_env_var_is_not_read_at_import() -> None:
    code = "import tinygraph as tg, tinygraph.backend as b\nassert b._device is None, b._device\nprint('imported')\n"
    result = run_python(code, TINYGRAPH_DEVICE="no-such-device")
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout


def test_env_var_gpu_errors_only_when_the_device_is_needed() -> None:
    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is available here: TINYGRAPH_DEVICE=gpu would just work")
    code = (
        "import tinygraph as tg\n"
        "print('imported', flush=True)\n"
        "try:\n"
        "    tg.tensor([1.0])\n"
        "except tg.DeviceError as exc:\n"
        "    print('DeviceError:', exc)\n"
    )
    result = run_python(code, TINYGRAPH_DEVICE="gpu")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "imported"
    assert lines[1].startswith("DeviceError: TINYGRAPH_DEVICE=gpu:")


def test_env_var_with_an_unknown_name_is_named_in_the_error() -> None:
    code = "import tinygraph as tg\ntry:\n    tg.get_device()\nexcept tg.DeviceError as exc:\n    print(exc)\n"
    result = run_python(code, TINYGRAPH_DEVICE="tpu")
    assert result.returncode == 0, result.stderr
    assert "TINYGRAPH_DEVICE=tpu" in result.stdout and "unknown device" in result.stdout


def test_env_var_cpu_is_honoured() -> None:
    result = run_python("import tinygraph as tg\nprint(tg.get_device())", TINYGRAPH_DEVICE="CPU")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu"


def test_to_numpy_and_to_device_on_cpu(restore_device: None) -> None:
    tg.set_device("cpu")
    a = np.arange(6.0).reshape(2, 3)
    assert backend.to_numpy(a) is a  # no copy for a host array
    np.testing.assert_array_equal(backend.to_numpy([1, 2]), [1, 2])
    moved = backend.to_device(a, "cpu")
    assert isinstance(moved, np.ndarray)
    np.testing.assert_array_equal(moved, a)
    assert isinstance(backend.to_device([1.0, 2.0]), np.ndarray)  # default device
    assert backend.device_of(a) == "cpu" and not backend.is_gpu_array(a)
    with pytest.raises(tg.DeviceError, match="unknown device"):
        backend.to_device(a, "tpu")


def test_get_array_module_picks_numpy_for_host_data() -> None:
    assert tg.get_array_module(np.ones(2)) is np
    assert tg.get_array_module(np.ones(2), 3.0) is np
    assert tg.get_array_module() is np


def test_round_trip_through_the_device_fixture(device: str) -> None:
    a = np.arange(4.0)
    on = backend.to_device(a)
    assert backend.device_of(on) == device
    np.testing.assert_array_equal(backend.to_numpy(on), a)
    assert tg.get_array_module(on) is backend.default_xp()


# --- TINYGRAPH_REQUIRE_GPU: on a GPU machine, a broken CuPy or driver must not pass as "skipped" -----

TINY_TESTS = """
from test_gpu import gpu  # noqa: F401 - test_gpu's fixture, as its tests use it


def test_on_each_device(device):
    assert device in ("cpu", "gpu")


def test_on_the_gpu(gpu):
    assert gpu.__name__ == "cupy"
"""


@pytest.mark.parametrize("required", ["1", "0", None], ids=["set", "zero", "unset"])
def test_require_gpu_turns_a_missing_gpu_into_a_failure(tmp_path: Path, required: str | None) -> None:
    """pytest on a generated file with the ``device`` and ``gpu`` fixtures, in a subprocess."""
    (tmp_path / "test_tiny.py").write_text(TINY_TESTS)
    env = {k: v for k, v in os.environ.items() if k not in ("TINYGRAPH_DEVICE", REQUIRE_GPU)}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    if required is not None:
        env[REQUIRE_GPU] = required
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "conftest", "-p", "no:cacheprovider", "test_tiny.py"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    if gpu_unavailable_reason() is None:  # a GPU machine: everything runs, whatever the switch says
        assert result.returncode == 0 and "3 passed" in summary, result.stdout + result.stderr
    elif required == "1":
        assert result.returncode == 1, result.stdout + result.stderr
        assert "1 passed, 2 errors" in summary, result.stdout  # failed in the fixtures: errors
        assert result.stdout.count(f"{REQUIRE_GPU} is set but the GPU backend is unavailable") == 2, result.stdout
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 passed, 2 skipped" in summary, result.stdout
        assert result.stdout.count("GPU backend not tested here") == 2, result.stdout
