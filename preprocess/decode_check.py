"""`--verify-images`: the training decoder's verdict on every JPEG the job keeps as is.

full: TensorFlow's own `decode_jpeg`, at 1/8 scale, and no premature end of JPEG data;
header: no decode (core.images then trusts a well-formed header and end marker). TensorFlow
is imported on first use, on a background thread when a stage warms it up, with its objects
frozen out of the GC.

Premature end: a JPEG cut short but ending with an end marker decodes without an error in
TensorFlow, DALI and Pillow alike (libjpeg warns, and paints the rest grey), so the decode
alone cannot reject it. Two cheap checks do: the scan headers must bring every coefficient to
full precision (jpeg_scans.py: a file that lost its later scans), and the last scan must not
run out of data. For the latter the file is decoded once more with padding put before its end
marker: a complete scan never reads the padding, a cut one decodes it into other pixels
(libjpeg fills missing blocks with zeros, the padding with something else). The second decode
is spent only where a cut can hide: a file of several scans (progressive ones are decoded at
1/4 scale, as their last scans refine only AC coefficients, which 1/8 scale never uses; for
them 1/4 costs the same), or a single-scan file whose last pixel is exactly the grey of an
all-zero block (128, 128, 128), as every cut single scan's is, and real photos' rarely are.
Measured with TF 2.21 on 500x375 JPEGs (2 cores): the 1/8 decode ~1.0 ms (baseline) and
~3.4 ms (progressive, any scale); the scan walk ~10 us (baseline) to ~0.13 ms (progressive);
so a baseline file costs ~1% more than before, a progressive one twice as much.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

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


def warm_up_decoder() -> None:
    """Starts loading the decode check's TensorFlow on a background thread, so that the ~1.5 s
    import overlaps other work (a no-op once it is loaded)."""
    if "tensorflow" not in sys.modules:
        threading.Thread(target=_tensorflow, name="detrec-warm-up", daemon=True).start()


# Stuffed 0xFF bytes: all one-bits, which no Huffman table codes (libjpeg reads them as zeros
# with a warning); enough for the first missing blocks, which is all the comparison needs.
_PADDING = b"\xff\x00" * 64
_EOI = b"\xff\xd9"
_ZERO_BLOCK = 128  # the 1/8-scale pixel of a block whose coefficients are all zero


def tf_decodes(data: bytes) -> bool:
    """Whether tf.io.decode_jpeg(channels=3) - the trainer's decoder - accepts the bytes.

    Decodes at 1/8 scale (libjpeg DCT scaling): every entropy-coded coefficient of every scan
    is still read, so truncation and corrupt data fail exactly as at full size, but the
    inverse DCT and colour conversion cost ~1/64 - the bulk of a full-size decode.

    Raises:
      ImageError: `truncated_image`, a premature end of JPEG data (see the module docstring).
    """
    scans = jpeg_scans.walk(data)
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
    changes the decoded pixels only when the decoder reads it as blocks."""
    body = data.rstrip(b"\x00")[:-len(_EOI)]
    try:
        padded = tf.io.decode_jpeg(body + _PADDING + _EOI, channels=3, ratio=ratio).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
        return True
    return padded.shape != pixels.shape or not (padded == pixels).all()


def checker(verify: str) -> Callable[[bytes], bool] | None:
    """The `decodes` argument of core.images.prepare for a --verify-images mode."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    return tf_decodes if verify == "full" else None
