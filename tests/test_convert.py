"""`python -m aer.data convert`: the HDF5 layout, the freshness check, atomicity, and SIGKILL at any moment.
The oracle (conftest's `expected_split`) reads the shards with the independent reader, no aer.data code.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from aer.cli import data as main
from aer.data import convert as conv
from aer.data.convert import FORMAT_VERSION, convert, load_split, partial_path
from aer.data.demo import generate
from aer.data.tfrecord import frame
from conftest import ROOT, assert_same, expected_split, independent_records, read_h5


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aer.data", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """~250 demo clips in ~200 shards: short clips and single-clip shards included."""
    root = tmp_path_factory.mktemp("small")
    generate(root, clips=250, eval_clips=0, seed=3)
    return root / "bal_train"


def test_layout_dtypes_attributes_and_content(small, tmp_path):
    out = tmp_path / "bal_train.h5"
    summary = convert(small, out, progress=False)
    assert not summary.fresh and summary.clips == 250 and summary.skipped == 0
    got, want = read_h5(out), expected_split(small)
    assert got["dtypes"]["features"] == np.uint8 and got["features"].shape == (250, 10, 128)
    assert got["dtypes"]["labels"] == np.bool_ and got["labels"].shape == (250, 527)
    assert got["dtypes"]["start_time"] == np.float32 and got["dtypes"]["end_time"] == np.float32
    assert h5py.check_string_dtype(got["dtypes"]["video_id"]) is not None
    assert got["lengths"].shape == (250,)
    assert_same(got, want)
    # zero padding past each clip's length, and real frames are not all zero
    pad = np.arange(10)[None, :] >= got["lengths"][:, None]
    assert not got["features"][pad].any()
    assert (got["lengths"] < 10).any(), "the demo set should hold short clips"
    a = got["attrs"]
    assert a["format_version"] == FORMAT_VERSION and isinstance(a["fingerprint"], str) and len(a["fingerprint"]) == 64
    assert a["num_classes"] == 527 and a["num_shards"] == len(list(small.glob("*.tfrecord")))
    assert a["skipped_records"] == 0
    loaded = load_split(out)
    assert loaded["lengths"].dtype == np.int64 and loaded["features"].dtype == np.uint8
    assert_same(loaded, want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bal_train.h5"]  # no lock or temporary file left


@pytest.mark.slow  # three CLI processes
def test_cli_second_run_is_fresh_and_leaves_the_file_alone(small, tmp_path):
    out = tmp_path / "o.h5"
    r = run_cli("convert", small, out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {out}: 250 clips from ")
    st = out.stat()
    time.sleep(0.01)
    r = run_cli("convert", small, out, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "cache is fresh" in r.stdout and "nothing to do" in r.stdout
    st2 = out.stat()
    assert (st2.st_ino, st2.st_mtime_ns, st2.st_size) == (st.st_ino, st.st_mtime_ns, st.st_size)
    r = run_cli("convert", small, out, "--force")
    assert r.returncode == 0 and r.stdout.startswith("wrote") and out.stat().st_ino != st.st_ino


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _new_record(video_id: str) -> bytes:
    """A framed record of a clip no shard holds yet (a copied one would be a duplicate clip)."""
    from aer.data.records import Clip, serialize_clip

    frames = np.arange(3 * 128, dtype=np.uint8).reshape(3, 128)
    return frame(serialize_clip(Clip(video_id, 0.0, 3.0, np.array([5]), frames)))


@pytest.mark.parametrize("change", ["add", "remove", "modify", "modify-same-size"])
def test_changed_shards_make_it_rebuild(small, tmp_path, change):
    src = _copy(small, tmp_path / "src")
    out = tmp_path / "o.h5"
    convert(src, out, progress=False)
    ino = out.stat().st_ino
    assert convert(src, out, progress=False).fresh and out.stat().st_ino == ino
    shards = sorted(src.glob("*.tfrecord"))
    time.sleep(0.01)
    if change == "add":
        (src / "zz_extra.tfrecord").write_bytes(_new_record("zzextra0001"))
    elif change == "remove":
        shards[1].unlink()
    elif change == "modify":
        shards[2].write_bytes(shards[2].read_bytes() + _new_record("modified001"))
    else:  # same size, new content: the shard's records in reverse order
        two = next(s for s in shards if len(independent_records(s.read_bytes())) >= 2)
        before = two.read_bytes()
        two.write_bytes(b"".join(frame(r) for r in reversed(independent_records(before))))
        assert len(two.read_bytes()) == len(before) and two.read_bytes() != before
    s = convert(src, out, progress=False)
    assert not s.fresh and out.stat().st_ino != ino
    assert_same(read_h5(out), expected_split(src))
    assert convert(src, out, progress=False).fresh


@pytest.mark.slow
def test_workers_2_equal_workers_1(small, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    convert(small, a, workers=1, progress=False)
    convert(small, b, workers=2, progress=False)
    ga, gb = read_h5(a), read_h5(b)
    assert_same(ga, gb)
    assert ga["attrs"]["fingerprint"] == gb["attrs"]["fingerprint"]
    assert ga["attrs"]["source_sha256"] == gb["attrs"]["source_sha256"]


@pytest.mark.slow
def test_workers_2_with_many_groups_keeps_shard_order(tmp_path, monkeypatch):
    """Tiny groups force many tasks in flight; results must still come back in shard order."""
    root = tmp_path / "d"
    generate(root, clips=400, eval_clips=0, seed=11)
    monkeypatch.setattr(conv, "_groups", lambda shards, target_bytes=0: [[str(p)] for p in shards])
    out = tmp_path / "o.h5"
    convert(root / "bal_train", out, workers=2, progress=False)
    assert_same(read_h5(out), expected_split(root / "bal_train"))


def test_output_appears_only_once_complete(small, tmp_path, monkeypatch):
    out = tmp_path / "o.h5"
    seen = []
    real_append = conv._append

    def spy(dsets, parts):
        seen.append((out.exists(), partial_path(out).exists()))
        return real_append(dsets, parts)

    monkeypatch.setattr(conv, "_WRITE_ROWS", 16)  # many appends
    monkeypatch.setattr(conv, "_append", spy)
    convert(small, out, progress=False)
    assert len(seen) > 3 and all(s == (False, True) for s in seen)
    assert out.exists() and not partial_path(out).exists()


def test_strict_run_does_not_accept_a_cache_that_skipped_records(small, tmp_path):
    from aer.data.tfrecord import ShardError

    src = _copy(small, tmp_path / "src")
    shard = sorted(src.glob("*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[20] ^= 0xFF  # record 0's payload: data CRC mismatch
    shard.write_bytes(bytes(data))
    out = tmp_path / "o.h5"
    s = convert(src, out, on_bad_record="skip", progress=False)
    assert s.skipped == 1 and s.clips == 249
    assert convert(src, out, on_bad_record="skip", progress=False).fresh
    before = out.read_bytes()
    with pytest.raises(ShardError, match=rf"{shard.name}: record 0: data CRC mismatch"):
        convert(src, out, on_bad_record="error", progress=False)
    assert out.read_bytes() == before


def test_other_num_classes_is_not_fresh(small, tmp_path):
    out = tmp_path / "o.h5"
    convert(small, out, progress=False)
    s = convert(small, out, num_classes=600, progress=False)
    assert not s.fresh
    with h5py.File(out) as f:
        assert f["labels"].shape == (250, 600)


def test_bad_arguments_are_clear(small, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        convert(tmp_path / "nope", tmp_path / "o.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .tfrecord shards found"):
        convert(tmp_path / "empty", tmp_path / "o.h5")
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "o.h5")]) == 1  # the CLI, in this process
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    assert main(["convert", str(small), str(tmp_path / "o.h5"), "--on-bad-record", "ignore"]) == 1
    assert capsys.readouterr().err == "error: on_bad_record='ignore': expected one of error, skip\n"
    assert not (tmp_path / "o.h5").exists()


# ---------------------------------------------------------------- SIGKILL at any moment
@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A split that takes about a second to convert: 12,000 demo clips (copies of shards would be duplicate clips)."""
    root = tmp_path_factory.mktemp("big")
    generate(root, clips=12000, eval_clips=0, seed=5)
    return root / "bal_train"


def _kill_after(args: list[str], partial: Path | None, delay: float) -> int:
    """Starts the CLI and SIGKILLs it `delay` s after start, or after `partial` appears if given; its exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "aer.data", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        if partial is not None:
            deadline = time.monotonic() + 60
            while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_nothing_or_the_previous_file(big, tmp_path):
    rng = random.Random(1234)
    out = tmp_path / "bal_train.h5"
    partial = partial_path(out)
    args = ["convert", str(big), str(out)]
    moments = [(None, 0.3), (partial, 0.0), (partial, rng.uniform(0.05, 0.5)), (partial, rng.uniform(0.5, 1.2))]
    # phase 1: no file yet; killed during start-up, as the file is created, mid-conversion, late
    killed = 0
    for wait_for, delay in moments:
        rc = _kill_after(args, wait_for, delay)
        assert rc in (0, -signal.SIGKILL)
        killed += rc != 0
        if out.exists():  # converted before the kill landed (maybe as the process was exiting): complete
            assert_same(read_h5(out), expected_split(big))
            break
    assert killed >= 2
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert not partial.exists()
    want = read_h5(out)
    assert len(want["lengths"]) == 12000
    before = out.read_bytes()
    # phase 2: a valid file exists; forced rebuilds killed at random moments leave it untouched
    for wait_for, delay in moments[2:]:
        rc = _kill_after([*args, "--force"], wait_for, delay)
        assert rc in (0, -signal.SIGKILL)
        if rc == 0:
            assert_same(read_h5(out), want)
            before = out.read_bytes()
        else:
            assert out.read_bytes() == before
    r = run_cli(*args)
    assert r.returncode == 0 and "cache is fresh" in r.stdout, r.stdout + r.stderr
    assert not partial.exists(), "a killed run's .partial outlived the next run"
    assert_same(read_h5(out), want)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the workers are forked on Linux only")
def test_a_conversion_worker_that_dies_is_named_and_leaves_nothing(demo_root, tmp_path, monkeypatch):
    monkeypatch.setattr(conv, "_read_group", lambda *a: os._exit(7))  # forked workers inherit it
    out = tmp_path / "out.h5"
    with pytest.raises(RuntimeError, match=r"conversion worker pid \d+ died \(exit code 7\) reading \S+\.tfrecord"):
        convert(demo_root / "bal_train", out, workers=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_cache_is_never_replaced(small, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("my notes\n")
    with pytest.raises(FileExistsError, match="precious.txt: exists and is not an HDF5 cache"):
        convert(small, precious)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(FileExistsError, match="other.h5: exists and is an HDF5 file aer did not write"):
        convert(small, other)
    assert precious.read_text() == "my notes\n" and list(h5py.File(other)) == ["x"]
