"""The benchmark harness: the CharLM training step of tinygraph timed against PyTorch's in the same run.

One row per (config, cell): the whole step (forward, BPTT, global-norm clip 5.0, Adam update)
on real text mapped to a 65-symbol vocabulary, float32.  tinygraph and torch steps alternate
after a warm-up, each after a short pause (``bench.timing.PAUSE_S``), and the medians are
reported, because on a shared machine only a ratio taken in the same minutes means anything.
Alongside: matmul GFLOP/s against this machine's float32 GEMM peak (measured in the same run),
the step's peak memory against the arrays BPTT must keep, and on config M the primitive-op form
of each cell (its graph overhead, in nodes/s).

The entry is :func:`run_benchmark`: ``run_benchmark(Options(...)) -> Report``, then
:func:`format_table` or :func:`to_json`.  A request that cannot run raises :class:`BenchError`.

- ``cases``: the sizes S, M, L, XL (and T for tests), the cells, the step's settings;
- ``options``: the request, checked when it is made;
- ``corpus``: the text, its 65-symbol ids, the batches;
- ``cost``: the FLOP, memory and parameter models;
- ``probe``: the machine (BLAS threads, GEMM peak, load, torch's version);
- ``tinygraph_step`` and ``torch_peer``: the two contestants (torch imported only when installed);
- ``timing``: the interleaved, paused race of one case, and profiling;
- ``report``: the rows, the table and the JSON;
- ``benchmark``: the whole run.
"""

from __future__ import annotations

from bench.benchmark import run_benchmark
from bench.cases import DEFAULT_CELLS
from bench.errors import BenchError
from bench.options import Options
from bench.report import Report, format_table, to_json
from bench.timing import PAUSE_S

__all__ = ["DEFAULT_CELLS", "PAUSE_S", "BenchError", "Options", "Report", "format_table", "run_benchmark", "to_json"]
