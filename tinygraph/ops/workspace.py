"""Large work arrays kept for reuse from one training step to the next (NumPy only).

A training step allocates the same large arrays every time: input projections, gate activations,
gradients.  glibc hands blocks this big back to the kernel when they are freed, so the next step's
arrays arrive as fresh pages that fault in one 4 KiB page at a time as they are first written:
about 11,000 page faults in each step of a 2-layer LSTM (config M of ``tinygraph bench``) before
this pool, 27 after, and a step 19% shorter (docs/bench_cpu.md).  ``empty``
keeps every array of at least ``MIN_BYTES`` it made and hands it out again once nothing else
references it: CPython's reference count says so (a NumPy view holds its base, so an array some
view still reads is never handed out).  On CuPy, whose memory pool already does this, and on
Python implementations without reference counts, ``empty`` is plain ``xp.empty``.

Arrays come back uninitialised, as from ``np.empty``.  The pool is bounded: past ``MAX_BYTES``
the least recently used free arrays are dropped; ``clear()`` drops them all.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from typing import Any

import numpy as np

MIN_BYTES = 1 << 20  # below this, pooling saves less time than it costs memory (freed arrays stay held)
MAX_BYTES = 1 << 31  # what the pool may hold, in use or free, before it drops free arrays
PER_SHAPE = 8  # arrays of one shape and dtype kept at most

_pool: OrderedDict[tuple[tuple[int, ...], str], list[np.ndarray]] = OrderedDict()
_held = 0  # bytes of all pooled arrays


def _refs(arrays: list[np.ndarray], i: int) -> int:
    return sys.getrefcount(arrays[i])


# What _refs reports for an array nothing but the pool references (2 on CPython 3.11: the list
# and the call's argument); measured, not assumed, since interpreters differ in what they count.
_FREE_REFS = _refs([np.empty(0)], 0) if sys.implementation.name == "cpython" else -1


def _is_free(arrays: list[np.ndarray], i: int) -> bool:
    return _refs(arrays, i) == _FREE_REFS


def empty(shape: tuple[int, ...], dtype: Any, xp: Any = np) -> Any:
    """An uninitialised array, reused from an earlier step when one of this shape is free."""
    if xp is not np or _FREE_REFS < 0:
        return xp.empty(shape, dtype=dtype)
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    key = (shape, dtype.str)
    arrays = _pool.get(key)
    if arrays is not None:
        _pool.move_to_end(key)
        for i in range(len(arrays)):
            if _is_free(arrays, i):
                return arrays[i]
        if len(arrays) >= PER_SHAPE:
            return np.empty(shape, dtype=dtype)
    else:
        arrays = _pool[key] = []
    _make_room(nbytes)
    a = np.empty(shape, dtype=dtype)
    arrays.append(a)
    global _held
    _held += nbytes
    return a


def _make_room(nbytes: int) -> None:
    """Drop free arrays, least recently used shapes first, until ``nbytes`` more fit under MAX_BYTES."""
    global _held
    for key in list(_pool):
        if _held + nbytes <= MAX_BYTES:
            return
        arrays = _pool[key]
        for i in reversed(range(len(arrays))):
            if _is_free(arrays, i):
                _held -= arrays.pop(i).nbytes
        if not arrays:
            del _pool[key]


def clear() -> None:
    """Forget every pooled array (those still in use live on with their users)."""
    global _held
    _pool.clear()
    _held = 0


def held_bytes() -> int:
    """Bytes of the arrays the pool keeps, in use or free."""
    return _held
