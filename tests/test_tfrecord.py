"""TFRecord framing and record parsing, checked against an independent reader written here.

The independent reader (`independent_records`, `wire_parse`, `mask` in conftest) shares no code with
aer.data: it walks the TFRecord framing and the protobuf wire format by hand.
"""

from __future__ import annotations

import pickle
import struct

import google_crc32c
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aer.data.records import Clip, RecordError, parse_clip, parse_record, serialize_clip
from aer.data.tfrecord import ShardError, frame, iter_records, masked_crc, scan_records, write_records
from conftest import REAL_SKIP, SHARED, independent_records, mask, wire_parse


# ---------------------------------------------------------------- framing
def _clip(i: int = 0, n: int = 10, labels=(1, 5)) -> Clip:
    rng = np.random.default_rng(i)
    return Clip(f"vid{i:08d}", 30.0 + i, 40.0 + i, np.array(labels), rng.integers(0, 256, (n, 128), dtype=np.uint8))


def test_masked_crc_matches_the_published_crc32c_and_tensorflowsmask():
    assert google_crc32c.value(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    for data in (b"", b"a", b"123456789", bytes(range(256))):
        assert masked_crc(data) == mask(google_crc32c.value(data))
    assert masked_crc(b"") == 0xA282EAD8  # crc32c("") = 0, masked


def test_frame_layout_is_length_crc_payload_crc():
    rec = frame(b"hello")
    assert len(rec) == 8 + 4 + 5 + 4
    assert struct.unpack("<Q", rec[:8])[0] == 5
    assert struct.unpack("<I", rec[8:12])[0] == mask(google_crc32c.value(rec[:8]))
    assert rec[12:17] == b"hello"
    assert struct.unpack("<I", rec[17:])[0] == mask(google_crc32c.value(b"hello"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_round_trip_any_payloads(payloads):
    data = b"".join(frame(p) for p in payloads)
    assert list(iter_records("x.tfrecord", data)) == payloads
    assert independent_records(data) == payloads
    assert [(i, p, r) for i, p, r in scan_records("x", data)] == [(i, p, None) for i, p in enumerate(payloads)]


def test_empty_shard_has_no_records(tmp_path):
    p = tmp_path / "e.tfrecord"
    p.write_bytes(b"")
    assert list(iter_records(p)) == []


def test_write_records_is_atomic_and_readable(tmp_path):
    p = tmp_path / "a.tfrecord"
    write_records(p, [b"x", b"yz"])
    assert list(iter_records(p)) == [b"x", b"yz"]
    assert [q.name for q in tmp_path.iterdir()] == ["a.tfrecord"]


def _three() -> bytes:
    return frame(b"first") + frame(b"second") + frame(b"third")


def test_data_crc_mismatch_names_the_record_and_the_scan_goes_on():
    data = bytearray(_three())
    second = len(frame(b"first"))
    data[second + 12] ^= 0x01  # a payload byte of record 1
    scanned = list(scan_records("s.tfrecord", bytes(data)))
    assert scanned == [(0, b"first", None), (1, None, "data CRC mismatch (corrupt payload)"), (2, b"third", None)]
    with pytest.raises(ShardError, match=r"^s\.tfrecord: record 1: data CRC mismatch") as e:
        list(iter_records("s.tfrecord", bytes(data)))
    assert (e.value.path, e.value.record) == ("s.tfrecord", 1)


def test_data_crc_field_itself_damaged():
    data = bytearray(_three())
    data[len(frame(b"first")) - 1] ^= 0x80  # record 0's data CRC
    with pytest.raises(ShardError, match="record 0: data CRC mismatch"):
        list(iter_records("s", bytes(data)))


@pytest.mark.parametrize("where", [0, 7, 8, 11])  # a length byte, or a byte of the length's CRC
def test_length_crc_mismatch_ends_the_scan(where):
    data = bytearray(_three())
    off = len(frame(b"first")) + where
    data[off] ^= 0x10
    scanned = list(scan_records("s", bytes(data)))
    assert scanned == [(0, b"first", None), (1, None, "length CRC mismatch (corrupt header)")]


@pytest.mark.parametrize("cut", [1, 4, 11, 12, 13, 20])
def test_truncation_anywhere_in_the_last_record(cut):
    data = _three()
    size3 = len(frame(b"third"))
    short = data[:len(data) - size3 + cut] if cut < size3 else data[:-1]
    with pytest.raises(ShardError, match=r"record 2: truncated (header|payload)"):
        list(iter_records("s", short))
    assert [p for _, p, r in scan_records("s", short) if r is None] == [b"first", b"second"]


def test_truncated_by_one_byte():
    with pytest.raises(ShardError, match="record 2: truncated payload"):
        list(iter_records("s", _three()[:-1]))


def test_shard_error_survives_pickling_and_is_one_line():
    e = ShardError("/a/b.tfrecord", 3, "data CRC mismatch (corrupt payload)")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.record, e2.reason) == (e.path, e.record, e.reason)
    assert str(e2) == "/a/b.tfrecord: record 3: data CRC mismatch (corrupt payload)"
    assert "\n" not in str(e2)
    assert str(ShardError("/a", None, "no shards")) == "/a: no shards"


# ---------------------------------------------------------------- records
def test_clip_round_trip_and_independent_parse():
    c = _clip(3, n=7, labels=(0, 526, 17))
    payload = serialize_clip(c)
    back = parse_clip(payload)
    assert back.video_id == c.video_id and back.start_time == c.start_time and back.end_time == c.end_time
    assert back.labels.dtype == np.int64 and back.labels.tolist() == [0, 526, 17]
    assert back.frames.dtype == np.uint8 and back.frames.shape == (7, 128) and back.frames.flags.c_contiguous
    np.testing.assert_array_equal(back.frames, c.frames)
    w = wire_parse(payload)
    assert w["video_id"] == c.video_id and w["labels"] == [0, 526, 17] and w["start"] == c.start_time
    assert w["frames"] == [r.tobytes() for r in c.frames]
    vid, start, end, labels, wire, n = parse_record(payload)
    assert (vid, start, end, labels, n) == (c.video_id, c.start_time, c.end_time, [0, 526, 17], 7)


def test_frames_fast_path_and_slow_path_agree():
    """A frame with an unknown field is still a valid frame: the frame-by-frame path takes it."""
    from aer.data.proto import SequenceExample

    c = _clip(1, n=3)
    ex = SequenceExample.FromString(serialize_clip(c))
    frame1 = ex.feature_lists.feature_list["audio_embedding"].feature[1]
    frame1.MergeFromString(b"\x48\x01")  # field 9, varint 1: unknown to tf.train.Feature
    patched = ex.SerializeToString()
    assert frame1.SerializeToString().endswith(b"\x48\x01") and len(patched) == len(serialize_clip(c)) + 2
    back = parse_clip(patched)
    np.testing.assert_array_equal(back.frames, c.frames)
    assert parse_record(patched)[4] == parse_record(serialize_clip(c))[4]


def test_parse_rejects_a_float_list_frame_of_the_same_wire_size():
    """32 floats serialize to exactly as many bytes as 128 raw bytes: the kind must still be checked."""
    from aer.data.proto import SequenceExample

    ex = SequenceExample.FromString(serialize_clip(_clip(2, n=2)))
    seq = ex.feature_lists.feature_list["audio_embedding"].feature
    seq[1].float_list.value.extend([1.0] * 32)
    assert len(seq[1].SerializeToString()) == len(seq[0].SerializeToString())
    with pytest.raises(RecordError, match="embedding frame 1 is 0 values bytes, expected 128"):
        parse_clip(ex.SerializeToString())


@pytest.mark.parametrize("mutate, message", [
    (lambda ex: ex.context.feature.pop("video_id"), "missing context feature 'video_id'"),
    (lambda ex: ex.context.feature["video_id"].bytes_list.value.append(b"second"), "video_id has 2 values"),
    (lambda ex: ex.context.feature["video_id"].int64_list.value.append(1), "'video_id' is int64_list"),
    (lambda ex: ex.context.feature.pop("labels"), "missing context feature 'labels'"),
    (lambda ex: ex.context.feature["labels"].float_list.value.append(1.0), "'labels' is float_list"),
    (lambda ex: ex.context.feature["labels"].int64_list.value.append(527), "label 527 outside 0..526"),
    (lambda ex: ex.context.feature["labels"].int64_list.value.append(-1), "label -1 outside 0..526"),
    (lambda ex: ex.context.feature["start_time_seconds"].bytes_list.value.append(b"x"),
     "'start_time_seconds' is bytes_list"),
    (lambda ex: ex.feature_lists.feature_list.pop("audio_embedding"), "missing feature_list 'audio_embedding'"),
    (lambda ex: ex.feature_lists.feature_list["audio_embedding"].feature.add().bytes_list.value.append(b"1" * 128),
     "11 embedding frames, expected 1..10"),
    (lambda ex: ex.feature_lists.feature_list["audio_embedding"].feature[4].bytes_list.value.__setitem__(0, b"1" * 127),
     "embedding frame 4 is 127 bytes"),
    (lambda ex: ex.feature_lists.feature_list["audio_embedding"].feature[2].bytes_list.value.append(b"1" * 128),
     "embedding frame 2 is 2 values bytes"),
])
def test_invalid_records_are_named(mutate, message):
    from aer.data.proto import SequenceExample

    ex = SequenceExample.FromString(serialize_clip(_clip(5)))
    mutate(ex)
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_clip(ex.SerializeToString())


def test_zero_frames_and_garbage_are_rejected():
    from aer.data.proto import SequenceExample

    ex = SequenceExample.FromString(serialize_clip(_clip(6)))
    del ex.feature_lists.feature_list["audio_embedding"].feature[:]
    with pytest.raises(RecordError, match="0 embedding frames"):
        parse_clip(ex.SerializeToString())
    for junk in (b"\xff\xff\xff", b"\x0a\x80", b"\x0a\x03\x0a\x01\xff"):
        with pytest.raises(RecordError):
            parse_clip(junk)


def test_optional_times_may_be_absent_and_labels_may_be_empty():
    from aer.data.proto import SequenceExample

    ex = SequenceExample.FromString(serialize_clip(_clip(7, labels=())))
    ex.context.feature.pop("start_time_seconds")
    ex.context.feature.pop("end_time_seconds")
    c = parse_clip(ex.SerializeToString())
    assert np.isnan(c.start_time) and np.isnan(c.end_time) and c.labels.size == 0


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason=REAL_SKIP)
def test_real_shards_reframe_byte_identically():
    """Re-framing real payloads gives the release's bytes back: same CRC and masking as TensorFlow."""
    shards = sorted((SHARED / "bal_train").glob("*.tfrecord"))[::200]
    for path in shards:
        data = path.read_bytes()
        payloads = list(iter_records(path))
        assert payloads == independent_records(data)
        assert b"".join(frame(p) for p in payloads) == data
        for p in payloads:
            c, w = parse_clip(p), wire_parse(p)
            assert c.video_id == w["video_id"] and c.labels.tolist() == w["labels"]
            assert c.frames.tobytes() == b"".join(w["frames"])
            assert c.video_id[:2] == path.stem
