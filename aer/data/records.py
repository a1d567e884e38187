"""One AudioSet clip: parsed from a `SequenceExample` payload, checked, and written back."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from aer.data.proto import SequenceExample

NUM_CLASSES = 527
MAX_FRAMES = 10
EMBED_DIM = 128
# The release quantises each embedding value to a uint8; x / FEATURE_SCALE is the [0, 1] scale models see.
FEATURE_SCALE = 255.0


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
    feat = ctx.get(key)  # get, unlike [], adds no entry for a missing key
    if feat is None:
        if required:
            raise RecordError(f"missing context feature '{key}'")
        return None
    if feat.WhichOneof("kind") != kind:
        raise RecordError(f"context feature '{key}' is {feat.WhichOneof('kind')}, expected {kind}")
    return getattr(feat, kind).value


# One frame of `audio_embedding` as protobuf serializes it: FeatureList.feature (field 1, 134 bytes)
# holding Feature.bytes_list (field 1, 131 bytes) holding BytesList.value (field 1, 128 bytes).
FRAME_HEAD = bytes.fromhex("0a86010a83010a8001")
FRAME_WIRE = len(FRAME_HEAD) + EMBED_DIM
_FRAME_ROWS = re.compile(b"(?:" + re.escape(FRAME_HEAD) + b".{%d})*" % EMBED_DIM, re.DOTALL)


def _frames_wire(feature_list, n: int, video_id: str) -> bytes:
    """The frames as n rows of FRAME_WIRE bytes (FRAME_HEAD, then the frame's 128 bytes).

    Protobuf serializes canonically, so the re-serialized list has exactly this layout when every
    frame is a bytes_list of one 128-byte value; only a clip that does not (or that carries unknown
    fields) takes the frame-by-frame path, which names the first bad frame.
    """
    wire = feature_list.SerializeToString()
    if len(wire) == n * FRAME_WIRE and _FRAME_ROWS.fullmatch(wire):
        return wire
    rows = []
    for t, f in enumerate(feature_list.feature):
        vals = f.bytes_list.value  # empty unless the feature's kind is bytes_list
        if len(vals) != 1 or len(vals[0]) != EMBED_DIM:
            size = len(vals[0]) if len(vals) == 1 else f"{len(vals)} values"
            raise RecordError(f"{video_id}: embedding frame {t} is {size} bytes, expected {EMBED_DIM}")
        rows.append(FRAME_HEAD + vals[0])
    return b"".join(rows)


def parse_record(payload: bytes, num_classes: int = NUM_CLASSES,
                 max_frames: int = MAX_FRAMES) -> tuple[str, float, float, list[int], bytes, int]:
    """Checks one record; (video_id, start, end, labels, frames wire, n frames), wire as `_frames_wire`.

    The converter's fast path: no per-clip numpy; `parse_clip` is the same checks, returning a Clip.
    """
    try:
        ex = SequenceExample.FromString(payload)
    except DecodeError as e:
        raise RecordError(f"not a SequenceExample ({e})") from None
    # Fast path first: a non-empty value list implies the feature is of that kind, so only an
    # empty or missing one goes through _context_value's full checks (and its error messages).
    ctx = ex.context.feature
    get = ctx.get
    feat = get("video_id")
    vid = feat.bytes_list.value if feat is not None else ()
    if len(vid) != 1:
        vid = _context_value(ctx, "video_id", "bytes_list")
        raise RecordError(f"video_id has {len(vid)} values, expected 1")
    try:
        video_id = vid[0].decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError("video_id is not UTF-8") from None
    feat = get("labels")
    labels = list(feat.int64_list.value) if feat is not None else []
    if not labels:
        _context_value(ctx, "labels", "int64_list")  # missing or another kind: raises; empty: allowed
    elif min(labels) < 0 or max(labels) >= num_classes:
        bad = next(i for i in labels if not 0 <= i < num_classes)
        raise RecordError(f"{video_id}: label {bad} outside 0..{num_classes - 1}")
    times = []
    for key in ("start_time_seconds", "end_time_seconds"):
        feat = get(key)
        vals = feat.float_list.value if feat is not None else ()
        if not vals:
            vals = _context_value(ctx, key, "float_list", required=False)  # another kind: raises
        times.append(float(vals[0]) if vals else float("nan"))
    seq = ex.feature_lists.feature_list.get("audio_embedding")
    if seq is None:
        raise RecordError(f"{video_id}: missing feature_list 'audio_embedding'")
    n = len(seq.feature)
    if not 1 <= n <= max_frames:
        raise RecordError(f"{video_id}: {n} embedding frames, expected 1..{max_frames}")
    return video_id, times[0], times[1], labels, _frames_wire(seq, n, video_id), n


def wire_frames(wire: bytes, n: int) -> np.ndarray:
    """uint8 (n, 128) frames out of `_frames_wire` rows."""
    return np.frombuffer(wire, dtype=np.uint8).reshape(n, FRAME_WIRE)[:, len(FRAME_HEAD):]


def parse_clip(payload: bytes, num_classes: int = NUM_CLASSES, max_frames: int = MAX_FRAMES) -> Clip:
    video_id, start, end, labels, wire, n = parse_record(payload, num_classes, max_frames)
    return Clip(video_id, start, end, np.array(labels, dtype=np.int64), np.ascontiguousarray(wire_frames(wire, n)))


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
    # Deterministic: map entries in key order, so a demo seed gives the same bytes in every process.
    return ex.SerializeToString(deterministic=True)
