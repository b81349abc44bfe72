"""Checkpoint I/O: round trips, atomic replacement under crashes and kill -9, clear errors for bad files."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import backend, checkpoint
from tinygraph.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "model/weight_hh_l0": rng.standard_normal((4, 3)).astype(np.float32),
        "model/bias.l0": rng.standard_normal(5),  # float64
        "optim/m.3": np.array([[1.5]], dtype=np.float32),
        "steps": np.arange(7, dtype=np.int64),
        "small": np.array([1, -2], dtype=np.int32),
        "mask": np.array([True, False]),
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


META = {
    "step": 12,
    "lr": 0.002,
    "vocab": "abc\n\u00e9\u4e2d",
    "config": {"hidden": [128, 128], "cell": None},
    "ok": True,
}


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert isinstance(got[k], np.ndarray)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)


def stray_files(directory: Path, keep: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != keep)


# --- round trips ---------------------------------------------------------------------------


def test_round_trip_keeps_names_dtypes_values_and_metadata(tmp_path):
    path = tmp_path / "run.npz"
    checkpoint.save(path, sample_arrays(), META)
    arrays, meta = checkpoint.load(path)
    assert_same(arrays, sample_arrays())
    assert meta == META
    assert stray_files(tmp_path, "run.npz") == []
    # an ordinary .npz: NumPy opens it without pickle
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["model/weight_hh_l0"], sample_arrays()["model/weight_hh_l0"])


def test_device_arrays_and_numpy_scalars_in_metadata(tmp_path, device):
    xp = backend.default_xp()
    path = str(tmp_path / "dev.ckpt")  # a str path, and no .npz suffix is forced on it
    checkpoint.save(path, {"w": xp.ones((2, 2), dtype=xp.float32)}, {"loss": np.float32(1.5), "n": np.int64(3)})
    arrays, meta = checkpoint.load(path)
    assert type(arrays["w"]) is np.ndarray and arrays["w"].dtype == np.float32
    assert meta == {"loss": 1.5, "n": 3}
    assert os.listdir(tmp_path) == ["dev.ckpt"]


def test_overwrite_replaces_and_keeps_umask_permissions(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"a": np.zeros(2)}, {"v": 1})
    checkpoint.save(path, {"b": np.ones(3)}, {"v": 2})
    arrays, meta = checkpoint.load(path)
    assert list(arrays) == ["b"] and meta == {"v": 2}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_optimizer_state_through_a_checkpoint_resumes_exactly(tmp_path):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 3)).astype(np.float32)
    grads = [rng.standard_normal((3, 3)).astype(np.float32) for _ in range(4)]

    def steps(p, opt, gs):
        for g in gs:
            p.grad = g
            opt.step()

    p = tg.tensor(w0.copy(), requires_grad=True)
    opt = tg.optim.Adam([p], lr=0.01)
    steps(p, opt, grads[:2])
    o_arrays, o_meta = opt.state_dict()
    checkpoint.save(
        tmp_path / "ck.npz",
        {"model/w": p.data, **{f"optim/{k}": v for k, v in o_arrays.items()}},
        {"optim": o_meta},
    )
    steps(p, opt, grads[2:])

    arrays, meta = checkpoint.load(tmp_path / "ck.npz")
    q = tg.tensor(arrays["model/w"], requires_grad=True)
    opt2 = tg.optim.Adam([q], lr=0.5)
    opt2.load_state_dict({k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}, meta["optim"])
    steps(q, opt2, grads[2:])
    np.testing.assert_array_equal(q.numpy(), p.numpy())


# --- crashes while writing -----------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_crash_mid_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch, error):
    path = tmp_path / "model.npz"
    checkpoint.save(path, sample_arrays(), META)
    before = path.read_bytes()
    real_write = np.lib.format.write_array
    calls = []

    def dying_write(fp, arr, **kw):
        calls.append(1)
        if len(calls) == 3:  # some members already written, this one half-way
            fp.write(b"\x93NUMPY partial")
            raise error
        real_write(fp, arr, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", dying_write)
    expected = CheckpointError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        checkpoint.save(path, {f"x{i}": np.full(1000, i) for i in range(5)}, {"new": True})
    if expected is CheckpointError:
        assert str(path) in str(info.value) and "No space left" in str(info.value)
    assert len(calls) == 3
    assert path.read_bytes() == before
    arrays, meta = checkpoint.load(path)
    assert_same(arrays, sample_arrays())
    assert meta == META
    assert stray_files(tmp_path, "model.npz") == []


def test_crash_before_the_first_save_creates_nothing(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(CheckpointError, match="Input/output error"):
        checkpoint.save(tmp_path / "new.npz", {"a": np.zeros(3)}, {})
    assert os.listdir(tmp_path) == []


KILLED_WRITER = """
import sys, time
import numpy as np
from tinygraph import checkpoint

real_write = np.lib.format.write_array

def stalled_write(fp, arr, **kw):
    real_write(fp, arr, **kw)
    fp.write(b"half of the next member")
    print("writing", flush=True)
    time.sleep(60)

np.lib.format.write_array = stalled_write
checkpoint.save(sys.argv[1], {"w": np.full(50_000, 7.0)}, {"version": "new"})
"""


STUCK_S = 300.0  # a bound on a stuck child, not a timing check


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_mid_write_leaves_old_file_loadable(tmp_path):
    path = tmp_path / "live.npz"
    checkpoint.save(path, {"w": np.arange(4.0)}, {"version": "old"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        # a child stuck before printing must fail the test, not hang it: wait for output with a bound
        ready, _, _ = select.select([child.stdout], [], [], STUCK_S)
        assert ready, f"the writer printed nothing in {STUCK_S:.0f} s"
        assert child.stdout.readline().strip() == "writing"
        temps = stray_files(tmp_path, "live.npz")
        assert len(temps) == 1 and os.path.getsize(tmp_path / temps[0]) > 50_000 * 8  # really mid-write
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    arrays, meta = checkpoint.load(path)
    np.testing.assert_array_equal(arrays["w"], np.arange(4.0))
    assert meta == {"version": "old"}
    # kill -9 leaves its hidden temp file (nothing can remove it); the next save still works
    assert all(name.startswith(".live.npz.") and name.endswith(".tmp") for name in stray_files(tmp_path, "live.npz"))
    checkpoint.save(path, {"w": np.ones(2)}, {"version": "newer"})
    assert checkpoint.load(path)[1] == {"version": "newer"}


# --- files that are not good checkpoints ---------------------------------------------------


def expect_error(path: Path, fragment: str) -> None:
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert isinstance(info.value, tg.TinygraphError)
    assert str(path) in message and "\n" not in message
    assert fragment in message, message


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


def test_missing_empty_and_directory(tmp_path):
    expect_error(tmp_path / "nope.npz", "no such checkpoint file")
    (tmp_path / "empty.npz").write_bytes(b"")
    expect_error(tmp_path / "empty.npz", "empty")
    (tmp_path / "dir.npz").mkdir()
    expect_error(tmp_path / "dir.npz", "directory")


def test_truncated_anywhere(tmp_path):
    good = tmp_path / "good.npz"
    checkpoint.save(good, sample_arrays(), META)
    data = good.read_bytes()
    for cut in [2, 30, 200, len(data) // 2, len(data) - 30, len(data) - 1]:
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        expect_error(bad, "truncated")


def test_corrupt_bytes_are_detected(tmp_path):
    path = tmp_path / "flip.npz"
    weights = np.full(64, 0.125, dtype=np.float64)
    checkpoint.save(path, {"w": weights}, META)
    data = bytearray(path.read_bytes())
    at = data.find(weights.tobytes())
    assert at > 0
    data[at + 100] ^= 0xFF  # one flipped byte inside the array data
    path.write_bytes(bytes(data))
    expect_error(path, "corrupt")


def test_bad_json_and_bad_metadata_entry(tmp_path):
    path = tmp_path / "badjson.npz"
    write_zip(
        path, {"w.npy": npy_bytes(np.zeros(2)), "__tinygraph__.npy": npy_bytes(np.frombuffer(b"{oops", np.uint8))}
    )
    expect_error(path, "not valid JSON")
    path = tmp_path / "badmeta.npz"
    write_zip(path, {"__tinygraph__.npy": npy_bytes(np.zeros(3))})
    expect_error(path, "metadata entry is not JSON")


def test_foreign_files(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(3))
    expect_error(plain, "not a tinygraph checkpoint")
    other = tmp_path / "other.npz"
    doc = json.dumps({"format": "something-else", "version": 1, "meta": {}}).encode()
    write_zip(other, {"__tinygraph__.npy": npy_bytes(np.frombuffer(doc, np.uint8))})
    expect_error(other, "format marker")
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    expect_error(npy, "not an .npz archive")
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am a text file\n")
    expect_error(text, "not an .npz archive")


def test_newer_format_version_and_pickled_member(tmp_path):
    newer = tmp_path / "newer.npz"
    doc = json.dumps({"format": checkpoint.FORMAT, "version": 99, "meta": {}}).encode()
    write_zip(newer, {"__tinygraph__.npy": npy_bytes(np.frombuffer(doc, np.uint8))})
    expect_error(newer, "version 99")
    pickled = tmp_path / "pickled.npz"
    doc = json.dumps({"format": checkpoint.FORMAT, "version": 1, "meta": {}}).encode()
    obj = np.array([{"evil": 1}], dtype=object)
    write_zip(pickled, {"__tinygraph__.npy": npy_bytes(np.frombuffer(doc, np.uint8)), "x.npy": npy_bytes(obj)})
    expect_error(pickled, "pickle")


# --- mistakes when saving ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrays", "meta", "fragment"),
    [
        ({"o": np.array([object()])}, {}, "dtype object"),
        ({"__tinygraph__": np.zeros(1)}, {}, "invalid array name"),
        ({"": np.zeros(1)}, {}, "invalid array name"),
        ({"a": np.zeros(1)}, {"bad": {1, 2}}, "not JSON-serialisable"),
        ({"a": np.zeros(1)}, [1, 2], "must be a dict"),
    ],
)
def test_save_rejects_what_cannot_be_stored(tmp_path, arrays, meta, fragment):
    path = tmp_path / "x.npz"
    with pytest.raises(CheckpointError, match=fragment) as info:
        checkpoint.save(path, arrays, meta)
    assert str(path) in str(info.value)
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_directory_names_the_file(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "c.npz"
    with pytest.raises(CheckpointError, match="cannot write checkpoint") as info:
        checkpoint.save(path, {"a": np.zeros(1)}, {})
    assert str(path) in str(info.value)


# --- crafted files: checked before anything is allocated -------------------------------------------


META_DOC = json.dumps({"format": checkpoint.FORMAT, "version": 1, "meta": {}}).encode()


def npy_with_header(header: dict, data: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    """An .npy entry whose header says what we like, followed by ``data``."""
    import io

    buf = io.BytesIO()
    write = np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0
    write(buf, header)
    return buf.getvalue() + data


def crafted(path: Path, header: dict, data: bytes = b"\0" * 64, **extra: bytes) -> Path:
    write_zip(
        path,
        {"__tinygraph__.npy": npy_bytes(np.frombuffer(META_DOC, np.uint8)), "w.npy": npy_with_header(header, data)}
        | extra,
    )
    return path


@pytest.fixture
def no_data_read(monkeypatch):
    """Fails the test if the data of any entry but the small metadata one is read."""
    real = np.lib.format.read_array
    reads = []

    def guarded_read(fp, *args, **kw):
        if getattr(fp, "name", None) != "__tinygraph__.npy":
            reads.append(fp.name)
            raise AssertionError(f"the data of {fp.name} was read before its layout was checked")
        return real(fp, *args, **kw)

    monkeypatch.setattr(np.lib.format, "read_array", guarded_read)
    return reads


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ({"descr": "<f4", "fortran_order": False, "shape": (10**12, 10**6)}, "declares shape (1000000000000, 1000000)"),
        ({"descr": "<f4", "fortran_order": False, "shape": (2**62, 2**62)}, "but its entry holds 64 bytes"),
        ({"descr": "<f4", "fortran_order": False, "shape": (-4, -4)}, "impossible shape"),
        ({"descr": "<f4", "fortran_order": False, "shape": (1,) * 40}, "impossible shape"),
        ({"descr": "|O", "fortran_order": False, "shape": (8,)}, "pickle"),
        ({"descr": [("a", "<f4"), ("b", "|O")], "fortran_order": False, "shape": (4,)}, "pickle"),
        ({"descr": [("a", "<f4"), ("b", "<i4")], "fortran_order": False, "shape": (8,)}, "plain numbers"),
        ({"descr": "<U4", "fortran_order": False, "shape": (4,)}, "plain numbers"),
        ({"descr": "<M8[s]", "fortran_order": False, "shape": (8,)}, "plain numbers"),
    ],
)
def test_a_header_that_lies_is_refused_before_its_data_is_read(tmp_path, no_data_read, header, fragment):
    path = crafted(tmp_path / "crafted.npz", header)
    expect_error(path, "not a tinygraph checkpoint")
    expect_error(path, fragment)


def test_entries_tinygraph_never_writes(tmp_path, no_data_read):
    good = {"__tinygraph__.npy": npy_bytes(np.frombuffer(META_DOC, np.uint8))}
    for name, members, fragment in [
        ("extra", {"evil.pkl": b"cos\nsystem\n"}, "unexpected entry 'evil.pkl'"),
        ("dir", {"sub/": b""}, "unexpected entry 'sub/'"),
        ("dotnpy", {".npy": npy_bytes(np.zeros(2))}, "unexpected entry '.npy'"),
        ("badheader", {"w.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': oops }\n"}, "unreadable header"),
        ("notnpy", {"w.npy": b"plain bytes, no magic at all"}, "unreadable header"),
        ("version9", {"w.npy": b"\x93NUMPY\x09\x00" + b"\0" * 60}, "unreadable header"),
    ]:
        path = tmp_path / f"{name}.npz"
        write_zip(path, good | members)
        expect_error(path, "not a tinygraph checkpoint")
        expect_error(path, fragment)
    twice = tmp_path / "twice.npz"
    with zipfile.ZipFile(twice, "w") as zf:
        zf.writestr("__tinygraph__.npy", good["__tinygraph__.npy"])
        zf.writestr("w.npy", npy_bytes(np.zeros(2)))
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("w.npy", npy_bytes(np.zeros(10**5)))
    expect_error(twice, "listed twice")
    deflated = tmp_path / "deflated.npz"
    with zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__tinygraph__.npy", good["__tinygraph__.npy"])
        zf.writestr("w.npy", npy_bytes(np.zeros(10**6)))  # 8 MB of zeros in a few kB: a zip bomb's shape
    expect_error(deflated, "is compressed")


def test_a_zip_directory_that_lies_about_sizes(tmp_path, no_data_read):
    path = tmp_path / "good.npz"
    checkpoint.save(path, {"w": np.arange(16.0)}, {})
    data = path.read_bytes()
    central = data.find(b"PK\x01\x02")  # the first entry's record in the central directory
    huge = (0xFFFF0000).to_bytes(4, "little")
    for name, at in (("uncompressed", [24]), ("both", [20, 24])):
        bad = bytearray(data)
        for offset in at:
            bad[central + offset : central + offset + 4] = huge
        (tmp_path / f"{name}.npz").write_bytes(bytes(bad))
        expect_error(tmp_path / f"{name}.npz", "claims 4,294,901,760 bytes")


def test_metadata_entry_bounds(tmp_path, no_data_read, monkeypatch):
    deep = tmp_path / "deep.npz"
    doc = b'{"format": "tinygraph-checkpoint", "version": 1, "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    write_zip(deep, {"__tinygraph__.npy": npy_bytes(np.frombuffer(doc, np.uint8))})
    expect_error(deep, "nested too deeply")
    monkeypatch.setattr(checkpoint, "MAX_META_BYTES", 100)
    path = tmp_path / "big.npz"
    checkpoint.save(path, {"w": np.zeros(2)}, {"notes": "x" * 200})
    expect_error(path, "metadata entry holds")


def test_the_callers_check_sees_every_header_before_any_data(tmp_path, no_data_read):
    path = tmp_path / "c.npz"
    checkpoint.save(path, sample_arrays(), META)
    seen = {}

    def check(meta, headers):
        seen.update(headers)
        assert meta == META
        raise CheckpointError("not a tinygraph checkpoint: the shapes are wrong for this test")

    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path, check)
    assert str(info.value) == f"{path}: not a tinygraph checkpoint: the shapes are wrong for this test"
    want = sample_arrays()
    assert {k: (h.shape, h.dtype) for k, h in seen.items()} == {k: (v.shape, v.dtype) for k, v in want.items()}
    assert all(h.nbytes == want[k].nbytes for k, h in seen.items())
    assert no_data_read == []


def test_a_check_that_passes_loads_the_arrays(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, sample_arrays(), META)
    arrays, _ = checkpoint.load(path, lambda meta, headers: None)
    assert_same(arrays, sample_arrays())
