"""`--verify-images`: the training decoder's verdict on every JPEG the job keeps as is.

full: the file is entropy-decoded whole (at 1/8 scale) by libjpeg-turbo through simplejpeg in
strict mode, where any libjpeg warning (corrupt data, a premature end) fails the decode too. A
file that decodes that cleanly is accepted: TensorFlow's `decode_jpeg` runs the same library
and fails only on libjpeg errors and on running out of data, neither of which a clean decode
met (its other limits, size and kind, core.images checks first). Every other file (a warning,
an error) gets TensorFlow's own verdict, below, so the answer is always the training
decoder's; a worker imports TensorFlow only when it meets such a file. On 21,500 damaged
variants of baseline, progressive, grey and tiny JPEGs (bytes flipped, cut, inserted, removed)
not one decoded cleanly that TensorFlow refused (tests/test_decode_check.py checks a sample).
Measured on 2 cores, 440x350 JPEGs: 0.74 ms of CPU per file vs 0.81 ms for TensorFlow's 1/8
decode, without its ~3.7 s import and its thread pools in every Beam worker.
header: no decode (core.images then trusts a well-formed header and end marker).

Premature end: a JPEG cut short but ending with an end marker decodes without an error in
TensorFlow, DALI and Pillow alike (libjpeg warns, and paints the rest grey), so the decode
alone cannot reject it. Strict mode sees the warning; TensorFlow's verdict needs two cheap
checks more: the scan headers must bring every coefficient to full precision (jpeg_scans.py: a
file that lost its later scans, which no decoder warns about, so both paths run it), and the
last scan must not run out of data. For the latter the file is decoded once more with padding
put before its end marker: a complete scan never reads the padding, a cut one decodes it into
other pixels (libjpeg fills missing blocks with zeros, the padding with something else). The
second decode is spent only where a cut can hide: a file of several scans, or a single-scan
file whose last pixel is exactly the grey of an all-zero block (128, 128, 128), as every cut
single scan's is, and real photos' rarely are. TensorFlow decodes a sequential file at 1/8
scale and a progressive one at 1/4: a progressive file's last scans refine only AC
coefficients, which a 1/8-scale picture (one pixel per block: its DC coefficient) never shows,
so a cut in them would leave the two decodes equal; at 1/4 each block has four pixels, and the
AC coefficients shape them. Either scale entropy-decodes every scan, which is most of a
progressive file's cost.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

import simplejpeg

from detrec.core import jpeg_segments
from detrec.core.images import ImageError
from detrec.preprocess import jpeg_scans, longlived

VERIFY_MODES = ("full", "header")
_tf_lock = threading.Lock()


def _tensorflow():
    """TensorFlow, imported on first use, its objects then frozen out of the cyclic GC."""
    with _tf_lock:
        if "tensorflow" not in sys.modules:
            with longlived.importing():
                import tensorflow  # noqa: F401
    return sys.modules["tensorflow"]


# Stuffed 0xFF bytes: all one-bits, which no Huffman table codes (libjpeg reads them as zeros
# with a warning); enough for the first missing blocks, which is all the comparison needs.
_PADDING = b"\xff\x00" * 64
_EOI = b"\xff\xd9"
_ZERO_BLOCK = 128  # every pixel, at any scale, of a block whose coefficients are all zero


def decodes(data: bytes) -> bool:
    """`--verify-images full`: whether tf.io.decode_jpeg(channels=3) accepts the bytes, asking
    TensorFlow only when libjpeg does not decode them cleanly (see the module docstring).

    Raises:
      ImageError: `truncated_image`, scans missing or a premature end of JPEG data.
    """
    scans = jpeg_scans.walk(data)
    if scans.missing:
        raise ImageError("truncated_image", f"truncated JPEG: {scans.missing}")
    return decodes_cleanly(data) or tf_decodes(data, scans)


def decodes_cleanly(data: bytes) -> bool:
    """Whether libjpeg-turbo decodes every scan at 1/8 scale without an error or a warning."""
    try:
        simplejpeg.decode_jpeg(data, "rgb", min_height=1, min_width=1, min_factor=8, strict=True)
    except Exception:  # ValueError for libjpeg's errors and warnings; anything else: ask TensorFlow
        return False
    return True


def tf_decodes(data: bytes, scans: jpeg_scans.Scans | None = None) -> bool:
    """Whether tf.io.decode_jpeg(channels=3) - the trainer's decoder - accepts the bytes.

    Decodes scaled down (libjpeg DCT scaling: 1/8, or 1/4 for a progressive file, see the
    module docstring): every entropy-coded coefficient of every scan is still read, so
    truncation and corrupt data fail exactly as at full size, but the inverse DCT and colour
    conversion, the bulk of a full-size decode, cost 1/64 (1/16).

    Raises:
      ImageError: `truncated_image`, a premature end of JPEG data (see the module docstring).
    """
    scans = scans or jpeg_scans.walk(data)
    if scans.missing:
        raise ImageError("truncated_image", f"truncated JPEG: {scans.missing}")
    tf = _tensorflow()
    ratio = 4 if scans.progressive else 8
    try:
        pixels = tf.io.decode_jpeg(data, channels=3, ratio=ratio).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
        return False
    grey_tail = pixels.size > 0 and bool((pixels[-1, -1] == _ZERO_BLOCK).all())
    if (scans.count > 1 or grey_tail) and _reads_past_end(tf, data, pixels, ratio):
        raise ImageError("truncated_image", "truncated JPEG: the scan data ends before the last block "
                                            "(premature end of JPEG data, an end marker appended)")
    return True


def _reads_past_end(tf, data: bytes, pixels, ratio: int) -> bool:
    """Whether the last scan wants more data than it has: padding put before the end marker
    changes the decoded pixels only when the decoder reads it as blocks. The end marker is
    the first one, where decoders stop (bytes after it are no part of the picture)."""
    end = jpeg_segments.end_of_image(data) or len(data.rstrip(b"\x00"))
    body = data[:end - len(_EOI)]
    try:
        padded = tf.io.decode_jpeg(body + _PADDING + _EOI, channels=3, ratio=ratio).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
        return True
    return padded.shape != pixels.shape or not (padded == pixels).all()


def checker(verify: str) -> Callable[[bytes], bool] | None:
    """The `decodes` argument of core.images.prepare for a --verify-images mode."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    return decodes if verify == "full" else None
