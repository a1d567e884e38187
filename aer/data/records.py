"""One AudioSet clip: parsed from a `SequenceExample` payload, checked, and written back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from aer.data.proto import SequenceExample

NUM_CLASSES = 527
MAX_FRAMES = 10
EMBED_DIM = 128


class RecordError(ValueError):
    """A record that parses but is not a valid AudioSet clip."""


@dataclass
class Clip:
    video_id: str
    start_time: float
    end_time: float
    labels: np.ndarray  # int64 class indices
    frames: np.ndarray  # uint8 (n_frames, 128)


def _context_value(ctx, key: str, kind: str, required: bool = True):
    if key not in ctx:
        if required:
            raise RecordError(f"missing context feature '{key}'")
        return None
    feat = ctx[key]
    if feat.WhichOneof("kind") != kind:
        raise RecordError(f"context feature '{key}' is {feat.WhichOneof('kind')}, expected {kind}")
    return getattr(feat, kind).value


def parse_clip(payload: bytes, num_classes: int = NUM_CLASSES, max_frames: int = MAX_FRAMES) -> Clip:
    try:
        ex = SequenceExample.FromString(payload)
    except DecodeError as e:
        raise RecordError(f"not a SequenceExample ({e})") from None
    ctx = ex.context.feature
    vid = _context_value(ctx, "video_id", "bytes_list")
    if len(vid) != 1:
        raise RecordError(f"video_id has {len(vid)} values, expected 1")
    try:
        video_id = vid[0].decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError("video_id is not UTF-8") from None
    labels = np.fromiter(_context_value(ctx, "labels", "int64_list"), dtype=np.int64)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise RecordError(f"{video_id}: label {int(bad[0])} outside 0..{num_classes - 1}")
    start = _context_value(ctx, "start_time_seconds", "float_list", required=False)
    end = _context_value(ctx, "end_time_seconds", "float_list", required=False)
    lists = ex.feature_lists.feature_list
    if "audio_embedding" not in lists:
        raise RecordError(f"{video_id}: missing feature_list 'audio_embedding'")
    seq = lists["audio_embedding"].feature
    n = len(seq)
    if not 1 <= n <= max_frames:
        raise RecordError(f"{video_id}: {n} embedding frames, expected 1..{max_frames}")
    rows = []
    for t, f in enumerate(seq):
        vals = f.bytes_list.value
        if f.WhichOneof("kind") != "bytes_list" or len(vals) != 1 or len(vals[0]) != EMBED_DIM:
            size = len(vals[0]) if len(vals) == 1 else f"{len(vals)} values"
            raise RecordError(f"{video_id}: embedding frame {t} is {size} bytes, expected {EMBED_DIM}")
        rows.append(vals[0])
    frames = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(n, EMBED_DIM)
    return Clip(video_id, float(start[0]) if start else float("nan"),
                float(end[0]) if end else float("nan"), labels, frames)


def serialize_clip(clip: Clip) -> bytes:
    ex = SequenceExample()
    ctx = ex.context.feature
    ctx["video_id"].bytes_list.value.append(clip.video_id.encode())
    ctx["start_time_seconds"].float_list.value.append(clip.start_time)
    ctx["labels"].int64_list.value.extend(int(i) for i in clip.labels)
    ctx["end_time_seconds"].float_list.value.append(clip.end_time)
    seq = ex.feature_lists.feature_list["audio_embedding"].feature
    for row in np.asarray(clip.frames, dtype=np.uint8):
        seq.add().bytes_list.value.append(row.tobytes())
    return ex.SerializeToString()
