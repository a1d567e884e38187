"""The real AudioSet bal_train split (../shared beside the checkout), converted and checked whole.

Every number below is one the split is known to have (shared/data/audioset/SOURCE.md, and the
header of Google's balanced_train_segments.csv); every clip's frames are compared byte for byte
with an independent re-parse of the shards.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aer.data.convert import convert, list_shards
from aer.data.datamodule import AudioSetDataModule
from aer.data.labels import read_class_labels
from conftest import REAL_SKIP, ROOT, SHARED, assert_same, expected_split, independent_records, read_h5

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (SHARED / "bal_train").is_dir(), reason=REAL_SKIP)]

SRC = SHARED / "bal_train"
CLIPS, SHARDS, POSITIVES, SHORT = 22_160, 4_070, 52_882, 378


@pytest.fixture(scope="module")
def h5(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real") / "bal_train.h5"
    s = convert(SRC, out, workers=1, progress=False)
    assert (s.clips, s.shards, s.skipped, s.fresh) == (CLIPS, SHARDS, 0, False)
    return out


@pytest.fixture(scope="module")
def got(h5) -> dict:
    return read_h5(h5)


def test_counts(got):
    assert got["features"].shape == (CLIPS, 10, 128) and got["labels"].shape == (CLIPS, 527)
    assert int(got["labels"].sum()) == POSITIVES
    assert int((got["lengths"] < 10).sum()) == SHORT and int((got["lengths"] == 10).sum()) == CLIPS - SHORT
    assert got["lengths"].min() == 1
    assert len(set(got["video_id"])) == CLIPS
    per_class = got["labels"].sum(0)
    assert per_class.min() == 59 and per_class[137] == 6244 and per_class[0] == 5735
    a = got["attrs"]
    assert a["num_shards"] == SHARDS and a["skipped_records"] == 0 and a["num_classes"] == 527
    # SOURCE.md's uint8 mean / std (125.75 / 77.93) are over the zero-padded (N, 10, 128) array
    assert round(float(got["features"].mean()), 2) == 125.75 and round(float(got["features"].std()), 2) == 77.93


def test_every_clip_byte_identical_to_an_independent_parse(got):
    want = expected_split(SRC)
    assert_same(got, want)  # features (padding included), lengths, labels, video_id, start/end times


def test_labels_ids_and_times_match_googles_segment_csv(got):
    mids = {row["mid"]: int(row["index"]) for row in csv.DictReader(open(SHARED / "class_labels_indices.csv"))}
    seg = {}
    with open(SHARED / "balanced_train_segments.csv") as f:
        header = [next(f) for _ in range(3)]
        for row in csv.reader(f, skipinitialspace=True):
            seg[row[0]] = (float(row[1]), float(row[2]), sorted(mids[m] for m in row[3].split(",")))
    assert f"num_ytids={CLIPS}" in header[1] and f"num_positive_labels={POSITIVES}" in header[1]
    assert set(got["video_id"]) == set(seg)
    end_diff = []
    for i, vid in enumerate(got["video_id"]):
        start, end, labels = seg[vid]
        assert np.flatnonzero(got["labels"][i]).tolist() == labels, vid
        assert got["start_time"][i] == start, vid
        end_diff.append(got["end_time"][i] - end)
    end_diff = np.array(end_diff)
    # 38 released records end one second before the CSV says (SOURCE.md): kept as released
    assert (end_diff == 0).sum() == CLIPS - 38 and (end_diff == -1).sum() == 38


def test_shard_order_digest_and_names(got):
    shards = list_shards(SRC)
    assert len(shards) == SHARDS
    whole = hashlib.sha256()
    per_shard = hashlib.sha256()
    for s in shards:
        data = s.read_bytes()
        whole.update(data)
        per_shard.update(hashlib.sha256(data).digest())
    # SOURCE.md: sha256 of all shards concatenated in `LC_ALL=C ls` order
    assert whole.hexdigest() == "29c9bc8bea6f244844f0437e6f730997fe5cf9c0a1ba4b795a90c41f04b556ce"
    assert got["attrs"]["source_sha256"] == per_shard.hexdigest()
    assert all(v[:2] == got_shard for v, got_shard in zip(got["video_id"], _shard_of_each_clip(shards)))


def _shard_of_each_clip(shards):
    for s in shards:
        for _ in independent_records(s.read_bytes()):
            yield s.stem


def test_two_workers_give_exactly_the_same_file_contents(h5, got, tmp_path):
    out = tmp_path / "w2.h5"
    s = convert(SRC, out, workers=2, progress=False)
    assert s.clips == CLIPS
    two = read_h5(out)
    for k in ("features", "lengths", "labels", "video_id", "start_time", "end_time"):
        assert two[k].dtype == got[k].dtype and np.array_equal(two[k], got[k]), k
    for k in ("fingerprint", "source_sha256", "num_shards", "skipped_records", "format_version"):
        assert two["attrs"][k] == got["attrs"][k], k


def test_cli_second_run_is_fresh(h5, tmp_path):
    out = tmp_path / "cli.h5"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "aer.data", "convert", str(SRC), str(out), "--workers", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.startswith(f"wrote {out}: {CLIPS} clips from {SHARDS} shards"), r.stderr
    st = out.stat()
    r = subprocess.run([sys.executable, "-m", "aer.data", "convert", str(SRC), str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0
    assert r.stdout.strip() == f"cache is fresh: {out} ({CLIPS} clips from {SHARDS} shards), nothing to do"
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


def test_datamodule_dev_split_on_the_real_data(h5, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.link(h5, cache / "bal_train.h5")  # the module's conversion, found fresh: nothing is written to ../shared
    dm = AudioSetDataModule(root=str(SHARED), cache_dir=str(cache), batch_size=500)
    dm.setup("fit")
    # the id-keyed split (data.split_seed=0) holds out 19.8% of the 22,160 clips
    assert len(dm.split_info("train")["video_id"]) == 17_779 and len(dm.split_info("val")["video_id"]) == 4_381
    batch = next(iter(dm.train_dataloader()))  # a block of 4 batches of 500 (data.steps_per_fetch's default)
    assert batch["steps"] == [500] * 4
    assert batch["features"].shape == (2000, 10, 128) and batch["y"].shape == (2000, 527)
    names = read_class_labels(SHARED)
    assert len(names) == 527 and names[0] == ("/m/09x0r", "Speech") and names[137][1] == "Music"
