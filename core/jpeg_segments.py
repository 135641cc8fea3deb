"""The one walk over a JPEG's marker segments, shared by the header check (core.images) and
the scan check (preprocess/jpeg_scans.py), so the two never disagree about where a segment is.

A JPEG is SOI, then segments (0xFF, a marker byte, a 2-byte length that counts itself), with
entropy-coded scan data after each SOS segment, then EOI. Scan data holds no marker: a 0xFF
in it is followed by a stuffed 0x00 or a restart marker (RST0-7), so the next segment after a
scan is found with one regex search, without decoding anything. Whatever follows EOI (a
phone's trailer, a second picture, padding) is no part of the picture: every decoder stops
at the first EOI, and so does this walk.
"""

from __future__ import annotations

import re
from typing import Iterator

# Frame headers (SOFn) carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but don't.
SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
SOS, EOI, APP1, APP2 = 0xDA, 0xD9, 0xE1, 0xE2
# TEM, SOI, RST0-7: markers without a length field.
STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
# Not a marker: the byte where one must start is not 0xFF (a corrupt header or a bad length).
JUNK = -1
# A marker after entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart marker
# nor another 0xFF (a fill byte before the marker itself).
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """A JPEG's segments in file order, from just after SOI, as (marker, start, end):
    data[start:end] is all of one, marker and length field included (`end` may lie past the
    data's end when the file is cut inside it). Plain tuples: this runs on every image.

    Lazy: the scan data after an SOS is searched through only when the next segment is asked
    for, so a caller that stops at the frame header reads nothing past it. Ends after EOI, at
    the end of the data, or with (JUNK, pos, pos) where a marker should start and none does.
    """
    pos, end = 2, len(data)
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            yield JUNK, pos, pos
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in STANDALONE or marker == EOI:
            yield marker, pos, pos + 2
            if marker == EOI:
                return
            pos += 2
            continue
        if pos + 4 > end:
            return
        segment_end = pos + 2 + ((data[pos + 2] << 8) | data[pos + 3])
        yield marker, pos, segment_end
        pos = segment_end
        if marker == SOS:
            found = _MARKER_AFTER_SCAN.search(data, pos)
            if found is None:
                return
            pos = found.start()


def end_of_image(data: bytes) -> int | None:
    """The offset just past the JPEG's EOI marker (its first, the one decoders stop at), or
    None when the walk meets none (a file cut short, or a corrupt header)."""
    for marker, _, end in segments(data):
        if marker == EOI:
            return end
    return None
