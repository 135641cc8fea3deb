"""Pure image checks and fixes: bytes in, a 3-channel-decodable JPEG out (no file access).

Shared by the writer (`detrec preprocess`) and `detrec predict`, so an image reaches a model
along the same road whichever command read it. A good JPEG's bytes are kept untouched (they are what the trainer decodes, and re-encoding
would lose quality). Anything else that is still a picture - CMYK JPEG, PNG/GIF/BMP/WebP/TIFF
named .JPEG, a JPEG TensorFlow refuses - is converted to an RGB JPEG with Pillow, and the
record says so. Empty, truncated and non-image files are rejected with a reason.

The decoder's own verdict (does TensorFlow's JPEG decoder accept these bytes?) is passed in
as `decodes`, so this module needs no TensorFlow: the Beam job passes its 1/8-scale check
(preprocess/decode_check.py), predict its full decode, `--verify-images header` nothing.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from typing import Callable

from PIL import Image, UnidentifiedImageError

from detrec.core.errors import InputError

CONVERT_QUALITY = 95

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but don't.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageError(InputError):
    """An image that cannot become a record."""


@dataclasses.dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    components: int  # 1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK
    progressive: bool


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """What goes into a record: JPEG bytes, their size, and what they were converted from."""

    data: bytes
    width: int
    height: int
    converted_from: str = ""  # "" when the source bytes are kept untouched


def sniff(data: bytes) -> str | None:
    """The real format from the magic bytes (never the file name), or None."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def jpeg_header(data: bytes) -> JpegHeader:
    """Frame size and components from the SOF segment; raises ImageError when malformed."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise ImageError("corrupt_jpeg", f"corrupt JPEG header: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF:
            if pos + 10 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return JpegHeader(width, height, data[pos + 9], marker in (0xC2, 0xC6, 0xCA, 0xCE))
        if marker == 0xDA:  # start of scan before any frame header
            raise ImageError("corrupt_jpeg", "corrupt JPEG: scan data before a frame header")
        pos += 2 + length
    raise ImageError("truncated_image", f"truncated JPEG: no frame header in {end} bytes")


def has_end_marker(data: bytes) -> bool:
    """True when the JPEG ends with EOI (trailing zero padding, as some cameras write, is ok)."""
    return data.rstrip(b"\x00").endswith(b"\xff\xd9")


def _to_rgb_jpeg(data: bytes, source: str) -> PreparedImage:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "P"):
                rgba = img.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                rgb = flat
            else:
                rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError("undecodable_image", f"{source} image does not decode: {exc}") from None
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=CONVERT_QUALITY)
    return PreparedImage(buf.getvalue(), rgb.width, rgb.height, source)


def prepare(data: bytes, decodes: Callable[[bytes], bool] | None = None) -> PreparedImage:
    """Checks an image and returns the JPEG bytes to store.

    Args:
      data: the source file's bytes.
      decodes: whether the training decoder accepts a well-formed JPEG (called on every
        JPEG kept as is); None trusts a well-formed header plus end marker.

    Raises:
      ImageError: empty, truncated, undecodable or not an image at all.
    """
    if not data:
        raise ImageError("empty_file", "empty file (0 bytes)")
    kind = sniff(data)
    if kind is None:
        head = data[:16].decode("ascii", "replace").strip()
        raise ImageError("not_an_image", f"not an image (content starts with {head!r})")
    if kind != "jpeg":
        return _to_rgb_jpeg(data, kind)
    header = jpeg_header(data)
    if not has_end_marker(data):
        raise ImageError("truncated_image", f"truncated JPEG: no end-of-image marker ({len(data)} bytes)")
    if header.components == 4:
        return _to_rgb_jpeg(data, "jpeg-cmyk")
    if header.components not in (1, 3) or header.width == 0 or header.height == 0:
        return _to_rgb_jpeg(data, f"jpeg-{header.components}ch")
    if decodes is not None and not decodes(data):
        # Pillow is more lenient than TensorFlow (e.g. some corrupt-but-complete streams);
        # whatever it can still decode is re-encoded, the rest is rejected.
        return _to_rgb_jpeg(data, "jpeg-undecodable-by-tf")
    return PreparedImage(data, header.width, header.height)
