"""TFRecord framing: uint64 length, masked CRC32C of the length, payload, masked CRC32C of the payload."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator

import google_crc32c

_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8


class ShardError(ValueError):
    """A shard that cannot be read; names the file and, where known, the record index."""

    def __init__(self, path: str | os.PathLike, record: int | None, reason: str):
        self.path, self.record, self.reason = os.fspath(path), record, reason
        where = self.path if record is None else f"{self.path}: record {record}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # crosses process boundaries from conversion workers
        return (ShardError, (self.path, self.record, self.reason))


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def scan_records(path: str | os.PathLike, data: bytes | None = None) -> Iterator[tuple[int, bytes | None, str | None]]:
    """Yields (index, payload, None) per good record and (index, None, reason) per damaged one.

    A damaged payload (data CRC) is passed over and the scan goes on; a damaged header or a
    truncation ends the scan, since nothing after it can be located.
    """
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    view = memoryview(data)
    pos, index, end = 0, 0, len(data)
    while pos < end:
        if end - pos < 12:
            yield index, None, f"truncated header ({end - pos} of 12 bytes)"
            return
        header = bytes(view[pos:pos + 8])
        (length,) = _LEN.unpack(header)
        (len_crc,) = _CRC.unpack_from(view, pos + 8)
        if masked_crc(header) != len_crc:
            yield index, None, "length CRC mismatch (corrupt header)"
            return
        start = pos + 12
        if end - start < length + 4:
            yield index, None, f"truncated payload ({max(end - start - 4, 0)} of {length} bytes)"
            return
        payload = bytes(view[start:start + length])
        (data_crc,) = _CRC.unpack_from(view, start + length)
        if masked_crc(payload) != data_crc:
            yield index, None, "data CRC mismatch (corrupt payload)"
        else:
            yield index, payload, None
        pos = start + length + 4
        index += 1


def iter_records(path: str | os.PathLike, data: bytes | None = None) -> Iterator[bytes]:
    """Yields every record's payload, checking both CRCs; raises ShardError on any damage."""
    for index, payload, reason in scan_records(path, data):
        if reason is not None:
            raise ShardError(path, index, reason)
        yield payload


def frame(payload: bytes) -> bytes:
    header = _LEN.pack(len(payload))
    return header + _CRC.pack(masked_crc(header)) + payload + _CRC.pack(masked_crc(payload))


def write_records(path: str | os.PathLike, payloads: Iterable[bytes]) -> None:
    """Writes a shard atomically: a reader never sees half of it."""
    tmp = f"{os.fspath(path)}.partial"
    with open(tmp, "wb") as f:
        f.write(b"".join(frame(p) for p in payloads))
    os.replace(tmp, path)
