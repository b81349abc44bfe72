"""``tinygraph report RUN``: write ``RUN/report.html``, the page of a training run (``viz.report``).

Everything comes from the run directory: ``metrics.jsonl``, ``samples.jsonl``, ``probe.npz`` (the
BPTT probe, :mod:`charlm.probe`) and ``last.npz``, whose model is run once forward and backward on
the start of the probe's window, graph kept, to draw the unrolled graph: at cell level over a few
steps (fused cells) and at op level over one step (the same weights in primitive cells).  Training
runs this at every evaluation (``cli/callbacks.py``).  A run that has no evaluation yet gets a page
that says so; a directory that is not a run is an error.  What cannot be shown (no Graphviz, an
unreadable probe file) is said on the page, which is written all the same.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from cli.options import writable_file
from tinygraph.errors import TinygraphError

GRAPH_ROWS = 2  # batch of the drawn pass: small, so that the shapes on the boxes read easily
CELL_STEPS = 4  # steps drawn at cell level
WARM_UP = 16  # characters read before the drawn steps, without a graph: the drawn steps start from a real state
RUN_MARKERS = ("config.toml", "metrics.jsonl", "last.npz")
REPORT_FILE = "report.html"


class ReportError(TinygraphError):
    """The report cannot be written (not a run directory)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, metavar="RUN", help="run directory (what tinygraph train --out wrote)")
    parser.add_argument("--out", type=Path, metavar="FILE.html", help="where to write (default RUN/report.html)")
    # training's own refreshes (cli/callbacks.py): print nothing, yield to the training process PID
    parser.add_argument("--background", type=int, metavar="PID", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.out is not None:
        writable_file("--out", args.out)
    if args.background is not None:
        background(args.background)
    path = write_report(args.run, args.out)
    if args.background is None:
        print(f"wrote {path}")
    return 0


def background(parent: int) -> None:
    """A drawing started by a training process: at low priority, and (on Linux) interrupted when that
    process dies, so that a ``kill -9`` of the training leaves no drawing behind it (SIGINT: the
    page's temporary file is removed on the way out)."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, int(signal.SIGINT))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        raise SystemExit(1)  # the training process ended before the signal was armed


def write_report(run_path: str | Path, out: str | Path | None = None) -> Path:
    """Gather what ``run_path`` holds and write its page (default ``run_path/report.html``); returns the path."""
    from tinygraph.atomic import write_atomic
    from viz.report import render_report

    run_path = Path(run_path)
    if not run_path.is_dir() or not any((run_path / f).exists() for f in RUN_MARKERS):
        raise ReportError(f"{run_path} is not a run directory (it has none of {', '.join(RUN_MARKERS)})")
    out = Path(out) if out is not None else run_path / REPORT_FILE
    if out.is_dir():
        raise ReportError(f"--out {out} is a directory")
    return write_atomic(out, render_report(gather(run_path)))


def _layers_text(layers: list[dict[str, Any]]) -> str:
    parts = []
    for layer in layers:
        kind = layer.get("type", "?")
        size = layer.get("hidden_size", layer.get("dim", layer.get("size", layer.get("p"))))
        stack = f" x {layer['num_layers']} layers" if layer.get("num_layers", 1) > 1 else ""
        parts.append(f"{kind}({size}{stack})" if size is not None else kind)
    return " -> ".join(parts)


def _facts(run_path: Path, config: Any, ck: Any, metrics: list[dict[str, Any]], probe: Any) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = []
    if config is not None:
        tc = config["train"]
        facts.append(
            (
                "model",
                _layers_text(config["model"]["layers"]) + ("" if config["model"]["fused"] else ", primitive cells"),
            )
        )
        facts.append(
            (
                "training",
                f"{tc['batch_size']} streams x {tc['seq_len']} characters ({tc['batching']}), {tc['optimizer']} "
                f"at {tc['learning_rate']:g}, schedule {tc['schedule']}, {tc['steps']} steps, device {tc['device']}",
            )
        )
    if ck is not None:
        n = sum(int(a.size) for a in ck.group("model").values())
        corpus = ck.meta.get("corpus") or {}
        facts.append(("parameters", f"{n:,}; vocabulary {len(ck.vocab)} characters"))
        if corpus.get("path"):
            facts.append(("corpus", f"{corpus['path']} ({corpus.get('chars', 0):,} characters)"))
    if metrics:
        last = metrics[-1]
        total = config["train"]["steps"] if config is not None else "?"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last["time"])) if "time" in last else "?"
        spent = float(last.get("elapsed_s") or 0.0)
        seconds = f"{spent:,.{0 if spent >= 10 else 1}f} s"
        facts.append(
            ("progress", f"step {last.get('step')} of {total}, {seconds} of training (last evaluation {when})")
        )
        vals = [r for r in metrics if isinstance(r.get("val_loss"), (int, float)) and math.isfinite(r["val_loss"])]
        if vals:
            best = min(vals, key=lambda r: r["val_loss"])
            v = best["val_loss"]
            facts.append(
                ("best validation loss", f"{v:.4f} nats/char ({v / math.log(2):.3f} bits/char) at step {best['step']}")
            )
        if isinstance(last.get("chars_per_s"), (int, float)):
            facts.append(("speed", f"{last['chars_per_s']:,.0f} chars/s at the last evaluation"))
    if probe is not None and len(probe.steps):
        rows, steps = probe.window.x.shape
        trained = probe.steps > 0
        spent = float(probe.seconds[trained].sum())
        share = spent / float(probe.elapsed[-1]) if probe.elapsed[-1] > 0 else math.nan
        each = spent / max(int(trained.sum()), 1)
        facts.append(
            (
                "BPTT probe",
                f"{rows} rows x {steps} steps of the validation text; {each * 1000:.0f} ms per evaluation, "
                f"{share:.2%} of the training time",
            )
        )
    return facts


def _graph_ids(probe: Any, samples: list[dict[str, Any]], vocab: Any, length: int) -> Any:
    """(rows, ``length``) ids for the drawn pass: the start of the probe's window, else of the samples."""
    import numpy as np

    if probe is not None and probe.window.x.shape[1] >= length:
        return probe.window.x[:GRAPH_ROWS, :length]
    text = "".join(s.get("text", "") for s in samples if isinstance(s.get("text"), str))
    ids = [vocab.index[c] for c in text if c in vocab.index][: GRAPH_ROWS * length]
    if len(ids) < GRAPH_ROWS * length:
        ids = list(np.arange(GRAPH_ROWS * length) % len(vocab))
    return np.asarray(ids, dtype=np.int64).reshape(GRAPH_ROWS, length)


def _graphs(ck: Any, probe: Any, samples: list[dict[str, Any]]) -> list[Any]:
    """The run's model drawn twice: fused cells over CELL_STEPS steps, primitive cells over one."""
    import tinygraph as tg
    from charlm.checkpoint import build_model, load_weights
    from tinygraph import random as tg_random
    from viz.report import graph_view

    views = []
    for key, fused, steps in (("cell", True, CELL_STEPS), ("op", False, 1)):
        config = copy.deepcopy(ck.config)
        config["model"]["fused"] = fused
        state = tg_random.get_state()  # building a model draws initial weights: leave the stream as it was
        try:
            model = build_model(config, len(ck.vocab))
        finally:
            tg_random.set_state(state)
        load_weights(model, ck)
        model.eval()
        ids = _graph_ids(probe, samples, ck.vocab, WARM_UP + steps + 1)
        warm, ids = ids[:, :WARM_UP], ids[:, WARM_UP:]
        with tg.no_grad():
            _, state = model(warm)
        loss, _ = model.loss(ids[:, :-1], ids[:, 1:], state)
        loss.backward(keep_graph=True)
        shown = ck.vocab.decode(ids[0, :-1]).encode("unicode_escape").decode("ascii")
        level = "cell level" if fused else "op level"
        title = (
            f"step {ck.step}: {_layers_text(ck.config['model']['layers'])}, {level}, {steps} step{'s' * (steps > 1)} "
            f"after {WARM_UP} read without a graph, batch {ids.shape[0]}, reading {shown!r}: "
            "mean cross-entropy of the next characters"
        )
        label = f"cell level, {steps} steps" if fused else "op level, 1 step"
        views.append(graph_view(loss, "cell" if fused else "op", key, label, title))
    return views


def gather(run_path: Path) -> Any:
    """The :class:`viz.report.Report` of a run directory; what cannot be read becomes a note on the page."""
    from charlm import config as cfg
    from charlm.checkpoint import read_checkpoint
    from charlm.probe import load_probe
    from charlm.run import read_metrics
    from cli.callbacks import SAMPLES_FILE
    from viz.report import Report

    notes: list[str] = []
    config = ck = probe = None
    if (run_path / "config.toml").exists():
        try:
            config = cfg.load_file(run_path / "config.toml")
        except TinygraphError as exc:
            notes.append(f"config.toml cannot be read: {exc}")
    metrics = read_metrics(run_path / "metrics.jsonl")
    samples = read_metrics(run_path / SAMPLES_FILE)
    try:
        probe = load_probe(run_path)
    except TinygraphError as exc:
        notes.append(f"the BPTT probe cannot be shown: {exc}")
    if (run_path / "last.npz").exists():
        try:
            ck = read_checkpoint(run_path / "last.npz")
        except TinygraphError as exc:
            notes.append(f"the graph cannot be drawn: {exc}")
    if config is None and ck is not None:
        config = ck.config
    report = Report(
        str(run_path),
        facts=_facts(run_path, config, ck, metrics, probe),
        metrics=metrics,
        samples=samples,
        probe=probe,
        seq_len=config["train"]["seq_len"] if config is not None else None,
        notes=notes,
        first_eval=config["train"]["eval_interval"] if config is not None else None,
    )
    if metrics and ck is not None:
        try:
            report.graphs = _graphs(ck, probe, samples)
        except TinygraphError as exc:  # no Graphviz, weights that do not fit: the rest of the page stands
            notes.append(f"the graph cannot be drawn: {exc}")
    return report
