"""Array backend: NumPy on the CPU, CuPy on the GPU, chosen per array.

Op bodies call ``xp = get_array_module(x)`` and use ``xp`` for every array call,
so one body serves both libraries (as Chainer does).  The *default device* only
decides where new arrays (parameters, constants made from Python data) live.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

from tinygraph.errors import TinygraphError

DEFAULT_DTYPE = np.float32


class DeviceError(TinygraphError):
    """Raised when the GPU is asked for but CuPy or a GPU is missing."""


_cupy: ModuleType | None = None
_device: str | None = None  # None: not chosen yet, read TINYGRAPH_DEVICE on first use


def _load_cupy() -> ModuleType:
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as exc:
            raise DeviceError(
                "the GPU needs CuPy: `pip install -e .[gpu]` (CUDA 12), or the cupy-cuda* build of your CUDA"
            ) from exc
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDA driver missing or broken
            raise DeviceError(f"CuPy is installed but no usable GPU was found ({exc})") from exc
        if count < 1:
            raise DeviceError("CuPy is installed but no GPU was found")
        _cupy = cupy
    return _cupy


def _check_name(device: Any) -> str:
    name = device.strip().lower() if isinstance(device, str) else device
    if name not in ("cpu", "gpu"):
        raise DeviceError(f"unknown device {device!r}: use 'cpu' or 'gpu'")
    return name


def set_device(device: str) -> None:
    """Choose where new arrays live: 'cpu' (NumPy) or 'gpu' (CuPy)."""
    global _device
    device = _check_name(device)
    if device == "gpu":
        _load_cupy()
    _device = device


def get_device() -> str:
    """The default device; TINYGRAPH_DEVICE is read here, the first time it is needed (not at import)."""
    if _device is None:
        env = os.environ.get("TINYGRAPH_DEVICE", "").strip()
        try:
            set_device(env or "cpu")
        except DeviceError as exc:
            raise DeviceError(f"TINYGRAPH_DEVICE={env}: {exc}") from exc
    return _device  # type: ignore[return-value]


def default_xp() -> ModuleType:
    """The array module of the default device."""
    return _load_cupy() if get_device() == "gpu" else np


def get_array_module(*arrays: Any) -> ModuleType:
    """NumPy or CuPy, whichever owns the first array that is not a NumPy one."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def is_gpu_array(a: Any) -> bool:
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def device_of(a: Any) -> str:
    """'gpu' for a CuPy array, 'cpu' for anything else."""
    return "gpu" if is_gpu_array(a) else "cpu"


def to_numpy(a: Any) -> np.ndarray:
    """A host copy (or the array itself when it already lives on the host)."""
    if is_gpu_array(a):
        return _cupy.asnumpy(a)  # type: ignore[union-attr]
    return np.asarray(a)


def to_device(a: Any, device: str | None = None) -> Any:
    """Move an array to ``device`` (default: the current default device)."""
    device = get_device() if device is None else _check_name(device)
    if device == "gpu":
        return _load_cupy().asarray(a)
    return to_numpy(a)
