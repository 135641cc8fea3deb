"""How many pixels a record may hold, read from headers before any decode, and how a bigger
picture is made to fit (`detrec preprocess --max-pixels N [--downscale]`). Pillow only.

Why a limit at all: every record must decode in training, in both decoders, and in predict.
TensorFlow's JPEG decoder (tensorflow/core/lib/jpeg/jpeg_mem.cc) refuses a picture whose
width * height * components reaches 2**29 ("Image too large"). Measured with TF 2.21 and
3-channel JPEGs: 13377x13377 decodes and 13378x13378 does not, in `decode_jpeg` (evaluation,
predict), `decode_and_crop_jpeg` (training) and `decode_image` alike; only `decode_jpeg(ratio=8)`,
preprocess's own 1/8-scale check, still passes, which is how a 13500x13500 photo used to pass
`--verify-images full` and then stop training. DALI's CPU decoder hits the same libjpeg-turbo
check but falls back to another decoder and accepts such pictures, so TensorFlow is the binding
limit: MAX_PIXELS = (2**29 - 1) // 3 = 178,956,970 pixels (a grey JPEG would be allowed three
times as many; one number for all keeps the rule simple). Pillow's decompression-bomb error
starts at the very same count (2 * Image.MAX_IMAGE_PIXELS), so no picture within the limit
trips it. No side may exceed 65500 either: libjpeg's JPEG_MAX_DIMENSION, past which no JPEG
decoder or encoder we use goes (a 70000x10 PNG cannot become a JPEG).

Sizes are read with Pillow's format plugin itself (`open_lazily(unchecked=True)`), which
reads the header only: Image.open's decompression-bomb check would raise before saying how
large the picture is, and the limit here is our own.

Shrinking: a JPEG is decoded at the largest of libjpeg's DCT scales (1/1, 1/2, 1/4, 1/8) whose
output fits, so memory stays within the limit for any size a JPEG header can claim (65500^2
/ 64 < MAX_PIXELS); only if even 1/8 does not fit a smaller limit is the result resized. Other
formats have no scaled decode: they are decoded whole and resized, so they are shrunk only up
to DECODE_LIMIT pixels (twice MAX_PIXELS: ~1.4 GB for RGBA while it lasts); past that they are
too large, downscale or not.

Resizing to a shorter side (`--shorter-side N`): a picture whose shorter side is over N gets
exactly N there, its longer side scaled alike and rounded to the nearest pixel (halves up),
so a 640x480 photo becomes 341x256. A JPEG is decoded at the coarsest DCT scale whose output
is still at least that size (Pillow's draft mode: less to decode, no detail below the target
lost), then resized with Lanczos (core/images.py, after its orientation and colours).
"""

from __future__ import annotations

import io
import math

from PIL import (BmpImagePlugin, GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin,
                 WebPImagePlugin)

# TensorFlow's decoders refuse width * height * 3 >= 2**29 (see the module docstring).
MAX_PIXELS = (2**29 - 1) // 3
# libjpeg's JPEG_MAX_DIMENSION: the longest side any JPEG decoder or encoder here handles.
MAX_SIDE = 65500
# The most pixels a picture without a scaled decode (not a JPEG) is decoded whole to be shrunk.
DECODE_LIMIT = 2 * MAX_PIXELS
# What `core.images.sniff` calls each format -> Pillow's name of its plugin; opening with only
# that plugin keeps a file from being read by whichever of Pillow's ~40 readers claims it.
PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP"}
_DCT_SCALES = (1, 2, 4, 8)
# Each format's plugin class: constructing it reads the header, without Image.open's bomb check.
_PLUGINS = {"jpeg": JpegImagePlugin.JpegImageFile, "png": PngImagePlugin.PngImageFile,
            "gif": GifImagePlugin.GifImageFile, "bmp": BmpImagePlugin.BmpImageFile,
            "tiff": TiffImagePlugin.TiffImageFile, "webp": WebPImagePlugin.WebPImageFile}


def fits(width: int, height: int, max_pixels: int = MAX_PIXELS) -> bool:
    """Whether a width x height picture is within `max_pixels` and MAX_SIDE."""
    return width * height <= max_pixels and max(width, height) <= MAX_SIDE


def excess(width: int, height: int, max_pixels: int = MAX_PIXELS) -> str:
    """Why a picture is too large for a record ("" when it fits): for error messages."""
    if max(width, height) > MAX_SIDE:
        return f"{width}x{height}: a side over {MAX_SIDE} pixels, the most a JPEG can have"
    if width * height > max_pixels:
        return f"{width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} (--max-pixels)"
    return ""


def target_size(width: int, height: int, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The largest size of the same aspect (within rounding) that fits."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)), MAX_SIDE / max(width, height))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    while not fits(w, h, max_pixels):  # float rounding may leave it one pixel over
        w, h = (w - 1, h) if w >= h else (w, h - 1)
    return w, h


def shorter_side_size(width: int, height: int, side: int) -> tuple[int, int] | None:
    """(width, height) with the shorter side `side`, the aspect kept and the longer side
    rounded to the nearest pixel (halves up); None when the shorter side is `side` or less."""
    short, long = min(width, height), max(width, height)
    if short <= side:
        return None
    scaled = (2 * long * side + short) // (2 * short)  # integers: no float rounding at .5
    return (scaled, side) if width >= height else (side, scaled)


def open_lazily(data: bytes, kind: str, unchecked: bool = False) -> Image.Image:
    """Pillow's image object with only the header read (the pixels are decoded on `load`).

    Args:
      data: the file's bytes.
      kind: the sniffed format (a key of PILLOW_FORMATS).
      unchecked: without Pillow's decompression-bomb check, for reading the size and for
        `shrink` (callers check the size against MAX_PIXELS / DECODE_LIMIT themselves).

    Raises:
      PIL.Image.DecompressionBombError: a picture past Pillow's limit (not when unchecked).
      PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError: not a readable picture.
    """
    if unchecked and kind in _PLUGINS:
        return _PLUGINS[kind](io.BytesIO(data))
    return Image.open(io.BytesIO(data), formats=[PILLOW_FORMATS[kind]])


def shrinkable(width: int, height: int, kind: str) -> bool:
    """Whether `shrink` may decode a picture this large (any JPEG; others up to DECODE_LIMIT)."""
    return kind == "jpeg" or width * height <= DECODE_LIMIT


def shrink(img: Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decodes a lazily opened picture into at most `max_pixels` (and MAX_SIDE per side).

    A JPEG is decoded at the largest DCT scale whose output fits (so memory never exceeds the
    limit); anything else is decoded whole and resized. The result keeps the source's `info`
    (its EXIF, so an orientation can still be applied).
    """
    width, height = img.size
    if img.format == "JPEG":
        for scale in _DCT_SCALES:
            scaled = (-(-width // scale), -(-height // scale))
            if fits(*scaled, max_pixels):
                break
        img.draft(img.mode, scaled)
    img.load()
    if fits(*img.size, max_pixels):
        return img
    resized = img.resize(target_size(*img.size, max_pixels), Image.Resampling.LANCZOS)
    resized.info = dict(img.info)
    return resized
