"""Module: a named tree of parameters and sub-modules, with a training/evaluation switch.

Parameter names are dotted paths (``rnn.weight_hh_l0``), the names a ``state_dict`` uses and the
names a parameter tensor carries in ``.name`` (shown on graph nodes that use it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

import tinygraph as tg
from tinygraph import backend
from tinygraph.errors import TinygraphError


class StateDictError(TinygraphError):
    """Weights that do not fit the model: a missing, unexpected or wrongly shaped array."""


class Module:
    training: bool = True

    def __init__(self) -> None:
        self._params: dict[str, tg.Tensor] = {}
        self._children: dict[str, Module] = {}

    # --- building -------------------------------------------------------------------------------
    def add_parameter(self, name: str, data: Any) -> tg.Tensor:
        p = tg.tensor(data, requires_grad=True, name=name)
        self._params[name] = p
        return p

    def add_module(self, name: str, module: Module) -> Module:
        self._children[name] = module
        return module

    def __getattr__(self, name: str) -> Any:
        # called only when ordinary lookup fails: lstm.weight_hh_l0 as in torch
        registry = self.__dict__.get("_params", {}) | self.__dict__.get("_children", {})
        if name in registry:
            return registry[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # --- reading --------------------------------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, tg.Tensor]]:
        for name, p in self._params.items():
            yield prefix + name, p
        for name, child in self._children.items():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list[tg.Tensor]:
        return [p for _, p in self.named_parameters()]

    def modules(self) -> Iterator[Module]:
        yield self
        for child in self._children.values():
            yield from child.modules()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host (NumPy) copies of every parameter, by dotted name: checkpoints load on any device."""
        arrays = {}
        for name, p in self.named_parameters():
            host = backend.to_numpy(p.data)
            arrays[name] = host.copy() if host is p.data else host  # a device array arrives as a fresh copy
        return arrays

    def load_state_dict(self, arrays: dict[str, Any]) -> None:
        """Copy ``arrays`` into the parameters in place (they keep their device and dtype)."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(arrays))
        unexpected = sorted(set(arrays) - set(params))
        if missing or unexpected:
            raise StateDictError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
        for name, p in params.items():  # every shape checked before anything is copied
            if tuple(arrays[name].shape) != p.shape:
                got = tuple(arrays[name].shape)
                raise StateDictError(f"weight {name} has shape {got}, the model expects {p.shape}")
        for name, p in params.items():
            a = arrays[name]
            xp = backend.get_array_module(p.data)
            p.data[...] = xp.asarray(backend.to_device(a, backend.device_of(p.data)), dtype=p.dtype)

    def astype(self, dtype: Any) -> Module:
        """Convert every parameter in place (float64 for gradient checks)."""
        for _, p in self.named_parameters():
            p.data = p.data.astype(dtype)
        return self

    # --- mode -----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError
