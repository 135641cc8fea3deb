"""`--verify-images`: the training decoder's verdict on every JPEG the job keeps as is.

full: TensorFlow's own `decode_jpeg`, at 1/8 scale; header: no decode (core.images then
trusts a well-formed header and end marker). TensorFlow is imported on first use, on a
background thread when a stage warms it up, with its objects frozen out of the GC.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

from detrec.preprocess import longlived

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


def tf_decodes(data: bytes) -> bool:
    """Whether tf.io.decode_jpeg(channels=3) - the trainer's decoder - accepts the bytes.

    Decodes at 1/8 scale (libjpeg DCT scaling): every entropy-coded coefficient of every scan
    is still read, so truncation and corrupt data fail exactly as at full size, but the
    inverse DCT and colour conversion cost ~1/64 - the bulk of a full-size decode.
    """
    tf = _tensorflow()
    try:
        tf.io.decode_jpeg(data, channels=3, ratio=8)
        return True
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
        return False


def checker(verify: str) -> Callable[[bytes], bool] | None:
    """The `decodes` argument of core.images.prepare for a --verify-images mode."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    return tf_decodes if verify == "full" else None
