"""Every code block of docs/tutorial.md runs, as printed, and prints what the tutorial shows.

The tutorial's chapters are its ``## N.`` sections.  The ```python blocks of a chapter run in
order in one namespace (a fresh one per chapter, so each chapter imports what it uses), with the
working directory in a temporary folder, where the pictures the blocks write land.  An ```output
block that follows a python block (with nothing but blank lines between) is what that block must
print.  Its info string may carry options:

* ``rtol=R``: numbers are compared with relative tolerance R (the rest of the text exactly); without
  it numbers must be equal as numbers (``0.50`` and ``0.5`` are).
* ``full``: printed by the full-size run only.  The test runs the tutorial with
  ``TINYGRAPH_TUTORIAL_QUICK=1``, which chapter 7 reads to train on short sequences with a tiny
  budget (the same code, smaller numbers), so it does not check these blocks; ``make docs`` runs
  everything at full size and does.

Every picture a chapter shows (``![...](tutorial/NAME)``) must have been written by its code.
A chapter that imports torch is skipped, with the reason, where torch is not installed.

``make docs`` runs this file as a script: ``python tests/test_tutorial.py --out docs/tutorial``
runs every chapter at full size in that folder, which regenerates the pictures, and checks every
output block (a ``full`` block that differs is reported, not fatal: training curves depend on the
CPU's rounding, and the pictures come from the same run).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
QUICK_ENV = "TINYGRAPH_TUTORIAL_QUICK"

_FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_PICTURE = re.compile(r"!\[[^\]]*\]\(tutorial/([^)\s]+)\)")


@dataclass
class Block:
    code: str
    line: int  # 1-based line of the opening fence in the tutorial
    expected: str | None = None
    rtol: float = 0.0
    full_only: bool = False


@dataclass
class Chapter:
    title: str
    line: int
    blocks: list[Block] = field(default_factory=list)
    pictures: list[str] = field(default_factory=list)

    @property
    def needs_torch(self) -> bool:
        return any(re.search(r"^\s*import torch\b", b.code, re.M) for b in self.blocks)


def parse(text: str) -> list[Chapter]:
    """The chapters (``## `` sections) with their python blocks, expected outputs and pictures."""
    chapters: list[Chapter] = []
    lines = text.splitlines()
    i = 0
    last: Block | None = None  # the python block an output block may belong to
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            chapters.append(Chapter(line[3:].strip(), i + 1))
            last = None
        elif chapters:
            chapters[-1].pictures += _PICTURE.findall(line)
        fence = _FENCE.match(line)
        if not fence:
            if line.strip():
                last = None
            i += 1
            continue
        lang, info = fence.group(1), fence.group(2).split()
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{TUTORIAL.name}:{start + 1}: code block never closed")
        i += 1
        content = "\n".join(body) + "\n"
        if lang == "python" and chapters:
            last = Block(content, start + 1)
            chapters[-1].blocks.append(last)
            continue
        if lang == "output":
            if last is None or last.expected is not None:
                raise ValueError(f"{TUTORIAL.name}:{start + 1}: an output block must follow a python block")
            last.expected = content
            for opt in info:
                if opt == "full":
                    last.full_only = True
                elif opt.startswith("rtol="):
                    last.rtol = float(opt[5:])
                else:
                    raise ValueError(f"{TUTORIAL.name}:{start + 1}: unknown output option {opt!r}")
        last = None
    return chapters


def _close(a: str, b: str, rtol: float) -> bool:
    x, y = float(a), float(b)
    if x == y:
        return True
    return math.isfinite(x) and math.isfinite(y) and abs(x - y) <= rtol * max(abs(x), abs(y))


def output_mismatch(printed: str, expected: str, rtol: float) -> str | None:
    """None when ``printed`` matches ``expected``; otherwise the first differing line, explained."""
    got = [ln.rstrip() for ln in printed.strip("\n").splitlines()]
    want = [ln.rstrip() for ln in expected.strip("\n").splitlines()]
    for k in range(max(len(got), len(want))):
        g = got[k] if k < len(got) else "<no line>"
        w = want[k] if k < len(want) else "<no line>"
        same_text = _NUMBER.split(g) == _NUMBER.split(w)
        gn, wn = _NUMBER.findall(g), _NUMBER.findall(w)
        if same_text and len(gn) == len(wn) and all(_close(a, b, rtol) for a, b in zip(gn, wn)):
            continue
        return f"output line {k + 1}:\n  printed:  {g}\n  expected: {w}"
    return None


class BlockError(AssertionError):
    """A block raised, printed other than the page shows, or a picture the page shows was not written."""


def one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """NumPy's BLAS on one thread, where threadpoolctl can set it.

    The tutorial's matrices are small: a second thread gains little, and on a busy machine the two
    spin waiting for each other (README, "Threads").  The test and ``make docs`` run alike, so
    they print the same numbers.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def run_chapter(chapter: Chapter, folder: Path, full: bool) -> list[str]:
    """Run a chapter's blocks in ``folder``; raise on an error or a checked mismatch.

    Returns the notes on ``full`` blocks that could not be (quick run) or did not (full run) match.
    """
    namespace: dict[str, object] = {"__name__": "__tutorial__"}
    notes = []
    previous = Path.cwd()
    os.chdir(folder)
    try:
        with one_blas_thread():
            for block in chapter.blocks:
                note = run_block(block, chapter, namespace, full)
                if note is not None:
                    notes.append(note)
    finally:
        os.chdir(previous)
    missing = [p for p in chapter.pictures if not (folder / p).is_file()]
    if missing:
        raise BlockError(f"chapter {chapter.title!r} shows pictures its code did not write: {missing}")
    return notes


def run_block(block: Block, chapter: Chapter, namespace: dict[str, object], full: bool) -> str | None:
    """Run one block and check what it printed; a note (not an error) for a ``full`` block not matched."""
    out = io.StringIO()
    where = f"{TUTORIAL.name}:{block.line} (chapter {chapter.title!r})"
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block.code, where, "exec", dont_inherit=True), namespace)
    except Exception as exc:
        raise BlockError(f"{where}: the block raised {type(exc).__name__}: {exc}") from exc
    if block.expected is None:
        return None
    if block.full_only and not full:
        return f"{where}: output printed by the full-size run only; not checked here"
    problem = output_mismatch(out.getvalue(), block.expected, block.rtol)
    if problem is None:
        return None
    message = f"{where}: {problem}\n--- printed:\n{out.getvalue()}"
    if block.full_only:
        return message
    raise BlockError(message)


def torch_missing() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"torch is not installed ({exc}); `make oracle` installs it"
    return None


CHAPTERS = parse(TUTORIAL.read_text(encoding="utf-8"))


def test_the_tutorial_has_its_chapters_in_order() -> None:
    numbers = [int(m.group(1)) for c in CHAPTERS if (m := re.match(r"(\d+)\.", c.title))]
    assert numbers == list(range(1, 9)), [c.title for c in CHAPTERS]
    assert all(c.blocks for c in CHAPTERS if re.match(r"\d+\.", c.title))


def test_every_picture_the_page_shows_is_in_the_repository() -> None:
    """``make docs`` wrote them; a picture added to the page without running it would be missing."""
    shown = [p for c in CHAPTERS for p in c.pictures]
    assert shown, "the tutorial shows no pictures"
    missing = [p for p in shown if not (TUTORIAL.parent / "tutorial" / p).is_file()]
    assert not missing, f"run `make docs`: docs/tutorial/ lacks {missing}"


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if c.blocks], ids=lambda c: c.title.split(" ")[0].strip("."))
def test_chapter_runs_and_prints_what_it_shows(
    chapter: Chapter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if chapter.needs_torch and (reason := torch_missing()):
        pytest.skip(f"chapter {chapter.title!r} compares with PyTorch: {reason}")
    monkeypatch.setenv(QUICK_ENV, "1")
    notes = run_chapter(chapter, tmp_path, full=False)
    with capsys.disabled():
        for note in notes:
            print(f"\n  {note}", end="")


# --- the checker checks ------------------------------------------------------------------------


def test_output_comparison_tolerates_only_what_it_is_told() -> None:
    assert output_mismatch("loss 0.50 ok\n", "loss 0.5 ok", 0.0) is None
    assert output_mismatch("loss 0.51\n", "loss 0.5", 0.0) is not None
    assert output_mismatch("loss 0.51\n", "loss 0.5", 0.05) is None
    assert output_mismatch("loss 0.51\n", "cost 0.51", 0.05) is not None
    assert output_mismatch("a 1\nb 2\n", "a 1", 0.0) is not None
    assert output_mismatch("[[ 0.1 -0.2]]", "[[ 0.1 -0.2]]", 0.0) is None


def test_parse_pairs_each_output_with_the_python_block_before_it() -> None:
    text = "\n".join(
        [
            "## 1. One",
            "![a picture](tutorial/one.svg)",
            "```python",
            "print(1)",
            "```",
            "",
            "```output rtol=0.1",
            "1",
            "```",
            "```python",
            "x = 2",
            "```",
            "some words",
            "```output",
            "2",
            "```",
        ]
    )
    with pytest.raises(ValueError, match="must follow a python block"):
        parse(text)
    (chapter,) = parse(text.rsplit("some words", 1)[0])
    assert chapter.pictures == ["one.svg"]
    assert [(b.expected, b.rtol) for b in chapter.blocks] == [("1\n", 0.1), (None, 0.0)]


# --- make docs ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the tutorial at full size; its pictures land in --out.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tutorial")
    parser.add_argument("--chapter", type=int, action="append", help="run only these chapters (repeatable)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.pop(QUICK_ENV, None)
    notes, failed = [], 0
    for chapter in CHAPTERS:
        number = re.match(r"(\d+)\.", chapter.title)
        if not chapter.blocks or (args.chapter and (not number or int(number.group(1)) not in args.chapter)):
            continue
        if chapter.needs_torch and (reason := torch_missing()):
            print(f"skipped {chapter.title}: {reason}")
            continue
        print(f"{chapter.title} ...", end=" ", flush=True)
        start = time.perf_counter()
        try:
            notes += run_chapter(chapter, args.out.resolve(), full=True)
        except BlockError as exc:
            failed += 1
            print(f"FAILED\n{exc}", file=sys.stderr)
            continue
        print(f"{time.perf_counter() - start:.1f} s")
    for note in notes:
        print(f"note: {note}\n(the tutorial shows other numbers than this machine printed: update its output block)")
    print(f"pictures in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
