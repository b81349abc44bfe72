"""A benchmark request (which configs and cells, how many steps, on which device), checked as it is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.cases import CONFIGS, DEFAULT_CELLS, DEFAULT_CONFIGS
from bench.errors import BenchError
from bench.timing import PAUSE_S
from models.recurrent import CELLS


@dataclass
class Options:
    """What ``tinygraph bench`` was asked for; a mistake raises :class:`BenchError` here, before any work."""

    configs: str | None = None  # comma-separated names of CONFIGS; None: DEFAULT_CONFIGS[device]
    cells: str = DEFAULT_CELLS  # comma-separated keys of models.recurrent.CELLS
    repeats: int = 10  # timed steps per contestant
    warmup: int = 2  # untimed steps first
    corpus: str | None = None  # UTF-8 text; None: data/shakespeare.txt when prepared, else generated
    device: str = "cpu"  # "cpu" or "gpu": the device the caller has set
    primitive: bool = True  # time the primitive-op cells too on PRIMITIVE_CONFIGS
    profile: str | None = None  # cProfile the timed tinygraph steps; write the top to this file
    gemm_size: int | None = None  # n of the n x n GEMM that measures the peak; None: by device
    pause: float = PAUSE_S  # idle seconds before every step
    config_names: list[str] = field(init=False)
    cell_names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.config_names = _parse_list(self.configs or DEFAULT_CONFIGS[self.device], CONFIGS, "configs", upper=True)
        self.cell_names = _parse_list(self.cells, CELLS, "cells", upper=False)
        if self.repeats < 1:
            raise BenchError("--repeats must be at least 1")
        if self.warmup < 0:
            raise BenchError("--warmup cannot be negative")


def _parse_list(value: str, known: dict[str, Any], what: str, upper: bool) -> list[str]:
    names = [v.strip().upper() if upper else v.strip().lower() for v in value.split(",") if v.strip()]
    if not names:
        raise BenchError(f"--{what} is empty")
    shown = [k for k in known if k != "T"]
    for name in names:
        if name not in known:
            raise BenchError(f"unknown {what[:-1]} {name!r}: choose from {','.join(shown)}")
    return list(dict.fromkeys(names))
