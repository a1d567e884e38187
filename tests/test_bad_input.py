"""Bad shards: one clear line naming the shard and the record, exit code 1, and no output file.

Every case puts one bad record (index 2 of 4) into one shard of a small split and checks the
converter in-process, through the CLI's main(), and (for a few) as a real `python -m aer.data`
subprocess; with --on-bad-record skip the bad record is skipped and counted instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from aer.cli import data as main
from aer.data.convert import convert, partial_path
from aer.data.proto import SequenceExample
from aer.data.records import Clip, serialize_clip
from aer.data.tfrecord import ShardError, frame
from conftest import ROOT, assert_same, expected_split, read_h5


def _clip(vid: str, n: int = 10, labels=(3, 77)) -> Clip:
    rng = np.random.default_rng(zlib.crc32(vid.encode()))
    return Clip(vid, 10.0, 10.0 + n, np.array(labels), rng.integers(0, 256, (n, 128), dtype=np.uint8))


def _edit(mutate):
    def build(vid: str) -> bytes:
        ex = SequenceExample.FromString(serialize_clip(_clip(vid)))
        mutate(ex)
        return frame(ex.SerializeToString())
    return build


def _emb(ex):
    return ex.feature_lists.feature_list["audio_embedding"].feature


def _flip(offset: int):
    """A good record with one byte flipped, `offset` counted from the record's start (<0: from its end)."""
    def build(vid: str) -> bytes:
        rec = bytearray(frame(serialize_clip(_clip(vid))))
        rec[offset] ^= 0x04
        return bytes(rec)
    return build


# name: (builder of the bad record's bytes, expected reason, does the scan stop there)
CASES = {
    "truncated": (lambda vid: frame(serialize_clip(_clip(vid)))[:700], r"truncated payload \(684 of \d+ bytes\)", True),
    "truncated-header": (lambda vid: frame(serialize_clip(_clip(vid)))[:7], r"truncated header \(7 of 12 bytes\)",
                         True),
    "length-crc": (_flip(9), r"length CRC mismatch \(corrupt header\)", True),
    "length-field": (_flip(0), r"length CRC mismatch \(corrupt header\)", True),
    "data-crc": (_flip(-2), r"data CRC mismatch \(corrupt payload\)", False),
    "payload-byte": (_flip(300), r"data CRC mismatch \(corrupt payload\)", False),
    "missing-embedding": (_edit(lambda ex: ex.feature_lists.feature_list.pop("audio_embedding")),
                          r"bad02: missing feature_list 'audio_embedding'", False),
    "missing-labels": (_edit(lambda ex: ex.context.feature.pop("labels")), r"missing context feature 'labels'", False),
    "embedding-127": (_edit(lambda ex: _emb(ex)[6].bytes_list.value.__setitem__(0, b"\1" * 127)),
                      r"bad02: embedding frame 6 is 127 bytes, expected 128", False),
    "embedding-129": (_edit(lambda ex: _emb(ex)[0].bytes_list.value.__setitem__(0, b"\1" * 129)),
                      r"bad02: embedding frame 0 is 129 bytes, expected 128", False),
    "label-527": (_edit(lambda ex: ex.context.feature["labels"].int64_list.value.append(527)),
                  r"bad02: label 527 outside 0\.\.526", False),
    "label-negative": (_edit(lambda ex: ex.context.feature["labels"].int64_list.value.insert(0, -3)),
                       r"bad02: label -3 outside 0\.\.526", False),
    "zero-frames": (_edit(lambda ex: _emb(ex).__delitem__(slice(None))),
                    r"bad02: 0 embedding frames, expected 1\.\.10", False),
    "eleven-frames": (_edit(lambda ex: _emb(ex).add().bytes_list.value.append(b"\2" * 128)),
                      r"bad02: 11 embedding frames, expected 1\.\.10", False),
    "not-a-sequence-example": (lambda vid: frame(b"\x0a\xff\xff\xff\xff\x0f"), r"not a SequenceExample", False),
}


def make_split(root: Path, case: str | None) -> Path:
    """Two shards, 'aa' (4 good clips) and 'ba' (clips 0, 1, then the bad one, then 3)."""
    src = root / "bal_train"
    src.mkdir(parents=True, exist_ok=True)
    (src / "aa.tfrecord").write_bytes(b"".join(frame(serialize_clip(_clip(f"aa{i:02d}"))) for i in range(4)))
    recs = [frame(serialize_clip(_clip(f"ba{i:02d}"))) for i in range(4)]
    if case is not None:
        recs[2] = CASES[case][0]("bad02")
        if case.startswith("truncated"):
            recs = recs[:3]  # a truncated record can only be the last one
    (src / "ba.tfrecord").write_bytes(b"".join(recs))
    return src


def cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aer.data", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("case", list(CASES))
def test_error_names_shard_and_record_and_writes_nothing(case, tmp_path, capsys):
    src = make_split(tmp_path, case)
    bad = src / "ba.tfrecord"
    out = tmp_path / "out" / "bal_train.h5"
    reason = CASES[case][1]
    with pytest.raises(ShardError, match=rf"^{bad}: record 2: .*{reason}") as e:
        convert(src, out, progress=False)
    assert (e.value.path, e.value.record) == (str(bad), 2)
    assert not out.exists() and not partial_path(out).exists()
    # the CLI's main(): one line on stderr, exit code 1, no traceback
    assert main(["convert", str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: record 2: "), err
    assert "Traceback" not in err
    assert not out.exists()
    # a valid file already at the output path (from the intact split) is left as it was
    convert(make_split(tmp_path / "clean", None), out, progress=False)
    before, st = out.read_bytes(), out.stat()
    with pytest.raises(ShardError, match=rf"^{bad}: record 2: "):
        convert(src, out, progress=False)
    assert out.read_bytes() == before and (out.stat().st_ino, out.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert not partial_path(out).exists()


@pytest.mark.parametrize("case", list(CASES))
def test_skip_counts_the_bad_record_and_keeps_the_rest(case, tmp_path, capsys):
    src = make_split(tmp_path, case)
    out = tmp_path / "bal_train.h5"
    assert main(["convert", str(src), str(out), "--on-bad-record", "skip"]) == 0
    stdout = capsys.readouterr().out
    stops = CASES[case][2]
    kept = 4 + 2 + (0 if stops or case.startswith("truncated") else 1)
    assert f": {kept} clips from 2 shards" in stdout and "1 bad records skipped" in stdout, stdout
    assert f"  skipped: {src / 'ba.tfrecord'}: record 2: " in stdout
    got = read_h5(out)
    assert got["attrs"]["skipped_records"] == 1
    assert list(got["video_id"]) == ["aa00", "aa01", "aa02", "aa03", "ba00", "ba01"] + ([] if kept == 6 else ["ba03"])
    clean = make_split(tmp_path / "clean", None)
    want = expected_split(clean)
    keep = [i for i, v in enumerate(want["video_id"]) if v in set(got["video_id"])]
    assert_same(got, {k: v[keep] for k, v in want.items()})


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated", "length-crc", "data-crc"])
def test_cli_subprocess_keeps_a_previous_valid_file(case, tmp_path):
    src = make_split(tmp_path, None)
    out = tmp_path / "bal_train.h5"
    r = cli("convert", src, out)
    assert r.returncode == 0, r.stderr
    before, st = out.read_bytes(), out.stat()
    make_split(tmp_path, case)  # the shard changes under the cache: a rebuild is due, and fails
    r = cli("convert", src, out, "--workers", "2" if case == "data-crc" else "1")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {src / 'ba.tfrecord'}: record 2: ")
    assert "Traceback" not in r.stderr
    assert out.read_bytes() == before and out.stat().st_mtime_ns == st.st_mtime_ns
    assert not partial_path(out).exists()


@pytest.mark.slow
def test_cli_skip_summary_in_a_subprocess(tmp_path):
    src = make_split(tmp_path, "label-527")
    out = tmp_path / "bal_train.h5"
    r = cli("convert", src, out, "--on-bad-record", "skip", "--workers", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out}: 7 clips from 2 shards") and lines[0].endswith("1 bad records skipped")
    assert lines[1] == f"  skipped: {src / 'ba.tfrecord'}: record 2: bad02: label 527 outside 0..526"


def test_every_record_bad_is_an_error_even_when_skipping(tmp_path, capsys):
    src = tmp_path / "bal_train"
    src.mkdir()
    (src / "xx.tfrecord").write_bytes(CASES["label-527"][0]("bad02"))
    out = tmp_path / "o.h5"
    assert main(["convert", str(src), str(out), "--on-bad-record", "skip"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no valid clips in any shard" in err
    assert not out.exists() and not partial_path(out).exists()


@pytest.mark.slow
def test_an_error_in_the_first_shard_beats_later_ones_with_workers(tmp_path):
    """With workers, the error reported is still the first bad record in shard order."""
    src = make_split(tmp_path, "data-crc")
    (src / "zz.tfrecord").write_bytes(b"\x00" * 5)
    os.rename(src / "ba.tfrecord", src / "ab.tfrecord")
    with pytest.raises(ShardError, match=r"ab\.tfrecord: record 2: data CRC"):
        convert(src, tmp_path / "o.h5", workers=2, progress=False)
