"""Whether a JPEG holds all of its scans: the structural half of `--verify-images full`'s
"premature end of JPEG data" check (decode_check.py holds the decoding half).

A JPEG cut short and given back its end marker (a partial download "repaired", a carved file)
decodes without an error in every decoder we use: libjpeg warns "premature end of data
segment" and paints what is missing grey. When the cut falls before the last scan of a
progressive JPEG, the scans after it are simply absent, and so are the coefficients only they
carry; the 1/8-scale decode check cannot see that (it uses only DC coefficients), but the scan
headers can. Walking the segments (core/jpeg_segments.py: no entropy decoding, the scan data is
skipped with one regex search) costs microseconds.

The rule: a progressive frame must bring every coefficient (0..63) of every component to full
precision (a scan with successive-approximation Al 0 covering it); a sequential frame must scan
every component. A cut inside the *last* scan leaves every scan header in place: that is the
decoding half's to find (decode_check.py), told by `Scans.count` where to look.
"""

from __future__ import annotations

from typing import NamedTuple

from detrec.core import jpeg_segments as js

_COEFFICIENTS = 64


class Scans(NamedTuple):
    """What the segment walk found: `missing` is "" when every scan is there, else what is
    not (for an error message); `count` the scans seen; `progressive` the frame's kind."""

    missing: str
    count: int
    progressive: bool


def walk(data: bytes) -> Scans:
    """The scans of a JPEG, judged by the rule in the module docstring.

    Only structure is judged; a malformed stream (a segment running past the end, no frame
    header) is left to the header check and the decoder, and passes here.
    """
    count = 0
    progressive = False
    components: list[int] = []
    precision: dict[int, list[int]] = {}  # component id -> lowest Al seen per coefficient (99: none)
    for marker, start, end in js.segments(data):
        if marker == js.JUNK:
            return Scans("", count, progressive)
        if marker == js.EOI:
            break
        body = data[start + 4:end]
        if marker in js.SOF and len(body) >= 6:
            progressive = marker in js.PROGRESSIVE
            components = [body[6 + 3 * i] for i in range(body[5]) if 6 + 3 * i < len(body)]
            precision = {c: [99] * _COEFFICIENTS for c in components}
        if marker != js.SOS:
            continue
        if not body or len(body) < 1 + 2 * body[0] + 3:
            return Scans("", count, progressive)
        count += 1
        members = body[0]
        ss, se, al = body[1 + 2 * members], body[2 + 2 * members], body[3 + 2 * members] & 0x0F
        for i in range(members):
            levels = precision.get(body[1 + 2 * i])
            if levels is None:
                continue
            if progressive:
                levels[ss:se + 1] = [min(level, al) for level in levels[ss:se + 1]]
            else:
                levels[:] = [0] * _COEFFICIENTS
        if not progressive and all(min(precision[c]) == 0 for c in components):
            return Scans("", count, False)  # the usual interleaved sequential JPEG: nothing to search for
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
