"""TFRecord framing: uint64 length, masked CRC32C of the length, payload, masked CRC32C of the payload."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator

import google_crc32c

from aer.files import atomic_write_bytes

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
    data = bytes(data)  # slices of bytes are what the CRC and the parser take
    crc, unpack_len, unpack_crc = google_crc32c.value, _LEN.unpack_from, _CRC.unpack_from
    pos, index, end = 0, 0, len(data)
    while pos < end:
        if end - pos < 12:
            yield index, None, f"truncated header ({end - pos} of 12 bytes)"
            return
        (length,) = unpack_len(data, pos)
        c = crc(data[pos:pos + 8])  # masked_crc, inlined: this loop runs once per record
        if (((c >> 15) | (c << 17)) + _MASK_DELTA) & 0xFFFFFFFF != unpack_crc(data, pos + 8)[0]:
            yield index, None, "length CRC mismatch (corrupt header)"
            return
        start = pos + 12
        if end - start < length + 4:
            yield index, None, f"truncated payload ({max(end - start - 4, 0)} of {length} bytes)"
            return
        pos = start + length
        payload = data[start:pos]
        c = crc(payload)
        if (((c >> 15) | (c << 17)) + _MASK_DELTA) & 0xFFFFFFFF != unpack_crc(data, pos)[0]:
            yield index, None, "data CRC mismatch (corrupt payload)"
        else:
            yield index, payload, None
        pos += 4
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
    atomic_write_bytes(path, b"".join(frame(p) for p in payloads))
