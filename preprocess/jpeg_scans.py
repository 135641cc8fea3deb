"""Whether a JPEG holds all of its scans: the structural half of `--verify-images full`'s
"premature end of JPEG data" check (decode_check.py holds the decoding half).

A JPEG cut short and given back its end marker (a partial download "repaired", a carved file)
decodes without an error in every decoder we use: libjpeg warns "premature end of data
segment" and paints what is missing grey. When the cut falls before the last scan of a
progressive JPEG, the scans after it are simply absent, and so are the coefficients only they
carry; the 1/8-scale decode check cannot see that (it uses only DC coefficients), but the scan
headers can. Walking the segments (no entropy decoding: the data between markers is skipped
with one regex search) costs microseconds.

The rule: a progressive frame must bring every coefficient (0..63) of every component to full
precision (a scan with successive-approximation Al 0 covering it); a sequential frame must scan
every component. A cut inside the *last* scan leaves every scan header in place: that is the
decoding half's to find (decode_check.py), told by `Scans.count` where to look.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# A marker after entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart marker
# (RST0-7 sit inside scan data) nor another 0xFF (a fill byte before the marker itself).
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = {0x01, 0xD8} | set(range(0xD0, 0xD8))  # TEM, SOI, RST0-7: no length field
_COEFFICIENTS = 64


class Scans(NamedTuple):
    """What the segment walk found: `missing` is "" when every scan is there, else what is
    not (for an error message); `count` the scans seen; `progressive` the frame's kind."""

    missing: str
    count: int
    progressive: bool


def missing_scans(data: bytes) -> str:
    """What a JPEG's scans leave out ("" when nothing): a description for an error message."""
    return walk(data).missing


def walk(data: bytes) -> Scans:
    """The scans of a JPEG, judged by the rule in the module docstring.

    Only structure is judged; a malformed stream (a segment running past the end, no frame
    header) is left to the header check and the decoder, and passes here.
    """
    pos, end = 2, len(data)
    count = 0
    progressive = False
    components: list[int] = []
    precision: dict[int, list[int]] = {}  # component id -> lowest Al seen per coefficient (99: none)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return Scans("", count, progressive)
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == _EOI:
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        segment = data[pos + 4:pos + 2 + length]
        if marker in _SOF and len(segment) >= 6:
            progressive = marker in _PROGRESSIVE
            components = [segment[6 + 3 * i] for i in range(segment[5]) if 6 + 3 * i < len(segment)]
            precision = {c: [99] * _COEFFICIENTS for c in components}
        pos += 2 + length
        if marker != _SOS:
            continue
        if not segment or len(segment) < 1 + 2 * segment[0] + 3:
            return Scans("", count, progressive)
        count += 1
        members = segment[0]
        ss, se, al = segment[1 + 2 * members], segment[2 + 2 * members], segment[3 + 2 * members] & 0x0F
        for i in range(members):
            levels = precision.get(segment[1 + 2 * i])
            if levels is None:
                continue
            if progressive:
                levels[ss:se + 1] = [min(level, al) for level in levels[ss:se + 1]]
            else:
                levels[:] = [0] * _COEFFICIENTS
        if not progressive and all(min(precision[c]) == 0 for c in components):
            return Scans("", count, False)  # the usual interleaved sequential JPEG: nothing to search for
        found = _MARKER_AFTER_SCAN.search(data, pos)
        if found is None:
            break
        pos = found.start()
    if not components:
        return Scans("", count, progressive)
    unscanned = [c for c in components if min(precision[c]) == 99]
    if unscanned:
        return Scans(f"no scan of component{'s' if len(unscanned) > 1 else ''} {', '.join(map(str, unscanned))}",
                     count, progressive)
    short = [c for c in components if any(level != 0 for level in precision[c])]
    if short:
        return Scans(f"the scans end before component{'s' if len(short) > 1 else ''} {', '.join(map(str, short))} "
                     "reach full precision (premature end of JPEG data)", count, progressive)
    return Scans("", count, progressive)
