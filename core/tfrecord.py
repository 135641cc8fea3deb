"""TFRecord framing, both directions, and DALI's `.idx` lines: the one place that knows the format.

A record on disk is: u64 payload length, the masked CRC32C of those 8 bytes, the payload, the
payload's masked CRC32C. The writer frames records itself (no TensorFlow in the Beam workers,
and it learns each record's offset for the DALI index); the inspector and the trainer's
shard check walk frames with `read_frames`, which knows every record's byte offset and can
seek past payloads — TensorFlow's readers can do neither.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Callable, Iterator

import google_crc32c

HEADER = struct.Struct("<QI")
FOOTER = struct.Struct("<I")
OVERHEAD = HEADER.size + FOOTER.size


def masked_crc32c(data: bytes) -> int:
    """TFRecord's CRC: CRC32C rotated right by 15 bits plus a constant (TensorFlow's crc32c::Mask)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(payload: bytes) -> tuple[bytes, bytes]:
    """The framing to write around `payload`: head (u64 length and its masked CRC32C) and
    tail (the payload's masked CRC32C). Returned apart, not joined, so the payload is never
    copied just to be framed."""
    length = len(payload)
    return (HEADER.pack(length, masked_crc32c(struct.pack("<Q", length))),
            FOOTER.pack(masked_crc32c(payload)))


def record_span(payload_len: int) -> int:
    """Bytes one framed record occupies on disk."""
    return payload_len + OVERHEAD


def index_line(offset: int, payload_len: int) -> str:
    """One line of DALI's `tfrecord2idx` index: the record's offset and its framed size."""
    return f"{offset} {record_span(payload_len)}\n"


def parse_index(text: str) -> list[tuple[int, int]]:
    """(offset, framed size) per line of a `.idx` file; ValueError on a malformed line."""
    spans = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"line {number} is not `offset size`: {line[:80]!r}")
        spans.append((int(parts[0]), int(parts[1])))
    return spans


@dataclasses.dataclass(frozen=True)
class Frame:
    """One framed record: where it starts, its payload size, the payload when it was read."""

    index: int
    offset: int
    length: int
    payload: bytes | None


class FrameError(Exception):
    """The bytes at `offset` are not a valid TFRecord frame (record `index` of the file)."""

    def __init__(self, offset: int, index: int, reason: str):
        super().__init__(reason)
        self.offset, self.index, self.reason = offset, index, reason


def read_frames(stream, size: int, want: Callable[[int], bool], hasher=None) -> Iterator[Frame]:
    """Walks a TFRecord file frame by frame, yielding each record's offset and (maybe) payload.

    The length CRC is always checked (8 bytes, free) so a flipped length bit is caught before
    it sends the walk astray, and a length past the end of the file is reported before any
    read (a crafted 2^40 length costs nothing). A payload is read, and its CRC checked, only
    when `want(index)` says so or a `hasher` needs every byte; otherwise the walk seeks past
    it, which is what keeps counting fast on large shards.

    Args:
      stream: a binary file object positioned at 0 (local or remote).
      size: the file's size in bytes, so truncation is found without reading past the end.
      want: record index -> whether its payload is needed.
      hasher: a hashlib object fed every byte of the file, in order, when given.

    Raises:
      FrameError: at the first frame that is truncated or fails a CRC.
    """
    offset = index = 0
    while offset < size:
        left = size - offset
        if left < HEADER.size and index == 0:
            raise FrameError(offset, index, f"not a TFRecord file ({left} bytes, shorter than one record header)")
        if left < HEADER.size:
            raise FrameError(offset, index, f"truncated: {left} trailing byte(s), a record header needs {HEADER.size}")
        header = stream.read(HEADER.size)
        if len(header) != HEADER.size:
            raise FrameError(offset, index, "file shrank while being read")
        length, length_crc = HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            if index == 0:
                raise FrameError(offset, index, "not a TFRecord file (the first record header fails its CRC)")
            raise FrameError(offset, index, "length CRC mismatch: corrupt record length or length CRC")
        span = record_span(length)
        if span > left:
            raise FrameError(offset, index, f"truncated: record of {length} bytes needs {span} bytes, {left} left")
        payload = None
        if hasher is not None or want(index):
            payload = stream.read(length)
            footer = stream.read(FOOTER.size)
            if len(payload) != length or len(footer) != FOOTER.size:
                raise FrameError(offset, index, "file shrank while being read")
            if hasher is not None:
                hasher.update(header)
                hasher.update(payload)
                hasher.update(footer)
            if masked_crc32c(payload) != FOOTER.unpack(footer)[0]:
                raise FrameError(offset, index, "data CRC mismatch: corrupt payload or payload CRC")
        else:
            stream.seek(offset + span)
        yield Frame(index, offset, length, payload if want(index) else None)
        offset += span
        index += 1
